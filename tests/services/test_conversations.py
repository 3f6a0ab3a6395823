"""Conversations and messages, on a fresh database per test."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st

from casebook.services import conversations
from casebook.services.errors import InvalidInput, NotFound
from tests.conftest import add_clinician


def new_id() -> str:
    return str(uuid.uuid4())


@pytest.mark.parametrize('raw', ['PAT123', '  PAT123  ', 'a', 'x' * 64, 'MRN-0001.a_b'])
def test_valid_patient_ids(raw):
    assert conversations.normalize_patient_id(raw) == raw.strip()


@pytest.mark.parametrize(
    'raw',
    [
        '',
        '   ',
        'x' * 65,
        '../etc/passwd',
        "PAT'1",
        'PAT"1',
        'PAT 1',
        '1; DROP TABLE messages;--',
        'pat\u00e9',
        'PAT\u200b1',
        'PAT/1',
        '<b>',
    ],
)
def test_invalid_patient_ids_are_refused_with_a_reason(raw):
    with pytest.raises(InvalidInput, match='Patient ID'):
        conversations.normalize_patient_id(raw)


@given(st.text(max_size=80))
def test_any_text_either_is_a_clean_patient_id_or_is_refused(raw):
    try:
        patient_id = conversations.normalize_patient_id(raw)
    except InvalidInput:
        return
    assert 1 <= len(patient_id) <= 64
    assert conversations.PATIENT_ID_PATTERN.fullmatch(patient_id)


async def test_one_conversation_per_clinician_and_patient(database):
    ada = await add_clinician(database, 'ada')
    bob = await add_clinician(database, 'bob')
    async with database.session() as session:
        first = await conversations.open_conversation(session, clinician=ada, patient_id='PAT123')
        again = await conversations.open_conversation(session, clinician=ada, patient_id=' PAT123 ')
        bobs = await conversations.open_conversation(session, clinician=bob, patient_id='PAT123')
    assert first.id == again.id
    assert bobs.id != first.id


async def test_opening_the_same_patient_at_once_makes_one_conversation(database):
    ada = await add_clinician(database, 'ada')

    async def open_it() -> int:
        async with database.session() as session:
            return (await conversations.open_conversation(session, clinician=ada, patient_id='PAT1')).id

    ids = await asyncio.gather(*(open_it() for _ in range(5)))
    assert len(set(ids)) == 1


async def test_messages_are_stored_with_author_role_and_utc_time(database):
    ada = await add_clinician(database, 'ada', display_name='Dr. Ada')
    nina = await add_clinician(database, 'nina', role='nurse')
    async with database.session() as session:
        conversation = await conversations.open_conversation(session, clinician=ada, patient_id='PAT1')
        message, created = await conversations.post_message(
            session, clinician=ada, conversation_id=conversation.id, client_id=new_id(), text='  Mild fever  '
        )
        nurses = await conversations.open_conversation(session, clinician=nina, patient_id='PAT1')
        by_nurse, _ = await conversations.post_message(
            session, clinician=nina, conversation_id=nurses.id, client_id=new_id(), text='Obs taken'
        )
    assert created
    assert (message.text, message.sender_role, message.author_name) == ('Mild fever', 'doctor', 'Dr. Ada')
    assert message.sent_at.utcoffset().total_seconds() == 0
    assert by_nurse.sender_role == 'nurse'


async def test_a_retried_send_is_stored_once(database):
    ada = await add_clinician(database, 'ada')
    send_id = new_id()
    async with database.session() as session:
        conversation = await conversations.open_conversation(session, clinician=ada, patient_id='PAT1')

    async def send() -> tuple[int, bool]:
        async with database.session() as session:
            message, created = await conversations.post_message(
                session, clinician=ada, conversation_id=conversation.id, client_id=send_id, text='once'
            )
            return message.id, created

    results = await asyncio.gather(*(send() for _ in range(4)))
    assert len({message_id for message_id, _ in results}) == 1
    assert sum(created for _, created in results) == 1
    async with database.session() as session:
        stored = await conversations.latest_messages(session, clinician=ada, conversation_id=conversation.id)
    assert [m.text for m in stored] == ['once']


@pytest.mark.parametrize(
    ('text', 'reason'),
    [
        ('', 'empty'),
        ('  \n\t ', 'empty'),
        ('x' * 10_001, '10,000'),
        ('a\x00b', 'NUL'),
    ],
)
async def test_bad_messages_are_refused_and_nothing_is_stored(database, text, reason):
    ada = await add_clinician(database, 'ada')
    async with database.session() as session:
        conversation = await conversations.open_conversation(session, clinician=ada, patient_id='PAT1')
        with pytest.raises(InvalidInput, match=reason):
            await conversations.post_message(
                session, clinician=ada, conversation_id=conversation.id, client_id=new_id(), text=text
            )
        assert await conversations.latest_messages(session, clinician=ada, conversation_id=conversation.id) == []


async def test_exactly_ten_thousand_characters_are_accepted(database):
    ada = await add_clinician(database, 'ada')
    async with database.session() as session:
        conversation = await conversations.open_conversation(session, clinician=ada, patient_id='PAT1')
        message, _ = await conversations.post_message(
            session, clinician=ada, conversation_id=conversation.id, client_id=new_id(), text='x' * 10_000
        )
    assert len(message.text) == 10_000


@pytest.mark.parametrize(
    'text',
    [
        '<img src=x onerror=alert(1)>',
        '<script>alert(1)</script>',
        '[x](javascript:a)',
        'مرحبا',
        '🩺 fever',
        'a\u200bb',
        'bell\x07',
        "'; DROP TABLE messages;--",
    ],
)
async def test_any_text_is_stored_exactly(database, text):
    ada = await add_clinician(database, 'ada')
    async with database.session() as session:
        conversation = await conversations.open_conversation(session, clinician=ada, patient_id='PAT1')
        await conversations.post_message(
            session, clinician=ada, conversation_id=conversation.id, client_id=new_id(), text=text
        )
        stored = await conversations.latest_messages(session, clinician=ada, conversation_id=conversation.id)
    assert [m.text for m in stored] == [text]


async def test_another_clinicians_conversation_is_not_found(database):
    ada = await add_clinician(database, 'ada')
    eve = await add_clinician(database, 'eve')
    async with database.session() as session:
        adas = await conversations.open_conversation(session, clinician=ada, patient_id='PAT1')
        with pytest.raises(NotFound):
            await conversations.latest_messages(session, clinician=eve, conversation_id=adas.id)
        with pytest.raises(NotFound):
            await conversations.post_message(
                session, clinician=eve, conversation_id=adas.id, client_id=new_id(), text='sneaky'
            )
        with pytest.raises(NotFound):
            await conversations.latest_messages(session, clinician=eve, conversation_id=99_999)


async def test_pages_of_history_arrive_in_order_without_gap_or_duplicate(database):
    ada = await add_clinician(database, 'ada')
    async with database.session() as session:
        conversation = await conversations.open_conversation(session, clinician=ada, patient_id='PAT1')
        for n in range(120):
            await conversations.post_message(
                session, clinician=ada, conversation_id=conversation.id, client_id=new_id(), text=f'm{n}'
            )
        seen: list[str] = []
        page = await conversations.latest_messages(session, clinician=ada, conversation_id=conversation.id)
        while page:
            seen = [m.text for m in page] + seen
            page = await conversations.latest_messages(
                session, clinician=ada, conversation_id=conversation.id, before_id=page[0].id
            )
    assert seen == [f'm{n}' for n in range(120)]


async def test_recent_conversations_newest_first_and_own_only(database):
    ada = await add_clinician(database, 'ada')
    eve = await add_clinician(database, 'eve')
    async with database.session() as session:
        for patient in ('P1', 'P2', 'P3'):
            await conversations.open_conversation(session, clinician=ada, patient_id=patient)
        await conversations.open_conversation(session, clinician=eve, patient_id='SECRET')
        await conversations.open_conversation(session, clinician=ada, patient_id='P1')
        recent = await conversations.recent_conversations(session, clinician=ada)
    assert [c.patient_id for c in recent] == ['P1', 'P3', 'P2']


@pytest.mark.parametrize('client_id', ['', 'not-a-uuid', 'x' * 36])
async def test_malformed_send_ids_are_refused(database, client_id):
    ada = await add_clinician(database, 'ada')
    async with database.session() as session:
        conversation = await conversations.open_conversation(session, clinician=ada, patient_id='PAT1')
        with pytest.raises(InvalidInput):
            await conversations.post_message(
                session, clinician=ada, conversation_id=conversation.id, client_id=client_id, text='hi'
            )


async def test_broken_unicode_is_refused_with_a_reason(database):
    ada = await add_clinician(database, 'ada')
    async with database.session() as session:
        conversation = await conversations.open_conversation(session, clinician=ada, patient_id='PAT1')
        with pytest.raises(InvalidInput, match='unpaired surrogate'):
            await conversations.post_message(
                session, clinician=ada, conversation_id=conversation.id, client_id=new_id(), text='bad \ud800 text'
            )
