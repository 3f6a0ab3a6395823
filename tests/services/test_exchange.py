"""Export (native JSON, FHIR R4, Markdown) and import of conversations, on a real SQLite database per test."""

from __future__ import annotations

import copy
import io
import json
import re
import uuid
from datetime import UTC, datetime

import pytest
from pydantic import ValidationError
from sqlalchemy import func, select

from casebook.db import Database
from casebook.models import Conversation, EnteredInError, Message
from casebook.services import conversations, exchange
from casebook.services.errors import InvalidInput, NotFound
from tests.conftest import add_clinician
from tests.fhir_support import assert_valid_bundle

TEXTS = [
    'Mild fever for 3 days',
    'שלום, החום ירד 🙂 — zero\u200bwidth',
    '<img src=x onerror=alert(1)> <script>alert(1)</script> [link](javascript:alert(1)) &amp;',
    'Line one\n# not a heading\n\n> not a quote\n    indented',
]


async def write(database: Database, clinician, patient_id: str, texts: list[str]) -> list[conversations.MessageInfo]:
    async with database.session() as session:
        conversation = await conversations.open_conversation(session, clinician=clinician, patient_id=patient_id)
        posted = []
        for text in texts:
            message, _ = await conversations.post_message(
                session, clinician=clinician, conversation_id=conversation.id, client_id=str(uuid.uuid4()), text=text
            )
            posted.append(message)
        return posted


async def clinical_story(database: Database, username: str = 'ada'):
    """A conversation with unicode, HTML and Markdown texts, a correction and an entered-in-error mark."""
    ada = await add_clinician(database, username, display_name='Dr. Ada')
    posted = await write(database, ada, 'PAT123', TEXTS)
    async with database.session() as session:
        await conversations.post_message(
            session,
            clinician=ada,
            conversation_id=posted[0].conversation_id,
            client_id=str(uuid.uuid4()),
            text='Mild fever for 4 days (correction)',
            amends_id=posted[0].id,
        )
        await conversations.mark_entered_in_error(
            session, clinician=ada, conversation_id=posted[0].conversation_id, message_id=posted[1].id
        )
    return ada


async def export(database: Database, clinician, fmt: str = 'json', patient_id: str = 'PAT123') -> str:
    async with database.session() as session:
        chunks = await exchange.export_conversation(session, clinician=clinician, fmt=fmt, patient_id=patient_id)
        return ''.join([chunk async for chunk in chunks])


async def load(database: Database, clinician, data: str | bytes, **kwargs) -> exchange.ImportResult:
    source = io.BytesIO(data.encode() if isinstance(data, str) else data)
    async with database.session() as session:
        return await exchange.import_conversation(session, clinician=clinician, source=source, **kwargs)


async def counts(database: Database) -> tuple[int, int, int]:
    async with database.session() as session:
        return tuple(
            [
                await session.scalar(select(func.count()).select_from(table))
                for table in (Conversation, Message, EnteredInError)
            ]
        )


@pytest.fixture
async def other_database(new_database):
    """A second, fresh installation to import into, on the same engine as `database`."""
    return await new_database('other')


def conversation_file(messages: list[dict], patient_id: str = 'PAT9') -> str:
    return json.dumps({'format': 'casebook.conversation.v1', 'patient_id': patient_id, 'messages': messages})


def message(n: int, **fields) -> dict:
    return {'sender': 'doctor', 'text': f'note {n}', 'sent_at': f'2026-11-24T09:{n % 60:02d}:00Z', **fields}


# ---------------------------------------------------------------------------------------------------- round trip


async def test_export_import_export_is_byte_identical(database, other_database):
    ada = await clinical_story(database)
    exported = await export(database, ada)
    bob = await add_clinician(other_database, 'bob')
    result = await load(other_database, bob, exported)
    assert (result.patient_id, result.imported) == ('PAT123', 5)
    assert await export(other_database, bob) == exported
    document = json.loads(exported)
    assert [m['text'] for m in document['messages']] == [*TEXTS, 'Mild fever for 4 days (correction)']
    assert document['messages'][4]['amends'] == document['messages'][0]['id']
    assert document['messages'][1]['entered_in_error'] is True
    assert sum('entered_in_error' in m for m in document['messages']) == 1


async def test_importing_the_same_file_again_imports_nothing(database):
    ada = await clinical_story(database)
    exported = await export(database, ada)
    before = await counts(database)
    assert (await load(database, ada, exported)).imported == 0
    assert await counts(database) == before
    assert await export(database, ada) == exported


async def test_the_native_format_as_exported(database):
    ada = await add_clinician(database, 'ada')
    assert await export_or_none(database, ada) is None  # no conversation yet
    (posted,) = await write(database, ada, 'PAT1', ['Temp 39.4'])
    sent_at = posted.sent_at.isoformat().replace('+00:00', 'Z')
    assert await export(database, ada, patient_id='PAT1') == (
        '{"format": "casebook.conversation.v1", "patient_id": "PAT1", "messages": [\n'
        f'  {{"id": "{posted.client_id}", "sender": "doctor", "text": "Temp 39.4", "sent_at": "{sent_at}"}}\n'
        ']}\n'
    )


async def export_or_none(database, clinician):
    try:
        return await export(database, clinician, patient_id='PAT1')
    except NotFound:
        return None


async def test_an_empty_conversation_round_trips(database, other_database):
    ada = await add_clinician(database, 'ada')
    await write(database, ada, 'EMPTY', [])
    exported = await export(database, ada, patient_id='EMPTY')
    assert json.loads(exported)['messages'] == []
    bob = await add_clinician(other_database, 'bob')
    assert (await load(other_database, bob, exported)).imported == 0
    assert await export(other_database, bob, patient_id='EMPTY') == exported


async def test_import_keeps_sender_and_time_and_the_importer_is_the_author(database):
    ada = await add_clinician(database, 'ada', display_name='Dr. Ada')
    messages = [
        {'sender': 'nurse', 'text': '  Obs stable  ', 'sent_at': '2026-11-24T10:00:00.250+01:00'},
        {
            'id': 'E6A1B1B4-1F0B-4D4B-9E38-2B8F7E5D9C01',
            'sender': 'doctor',
            'text': 'Seen',
            'sent_at': '2026-11-24T09:30Z',
        },
    ]
    assert (await load(database, ada, conversation_file(messages))).imported == 2
    async with database.session() as session:
        conversation = await conversations.open_conversation(session, clinician=ada, patient_id='PAT9')
        shown = await conversations.latest_messages(session, clinician=ada, conversation_id=conversation.id)
        stored = (await session.execute(select(Message.client_id, Message.sent_at))).all()
        raw_times = (await (await session.connection()).exec_driver_sql('SELECT sent_at FROM messages')).scalars().all()
    assert [(m.sender_role, m.text, m.author_name) for m in shown] == [
        ('nurse', 'Obs stable', 'Dr. Ada'),
        ('doctor', 'Seen', 'Dr. Ada'),
    ]
    assert [m.sent_at for m in shown] == [
        datetime(2026, 11, 24, 9, 0, 0, 250000, UTC),
        datetime(2026, 11, 24, 9, 30, tzinfo=UTC),
    ]
    assert uuid.UUID(stored[0].client_id).version == 4  # a message without an id gets a fresh one
    assert stored[1].client_id == 'e6a1b1b4-1f0b-4d4b-9e38-2b8f7e5d9c01'  # ids are kept in canonical form
    if database.engine.dialect.name == 'sqlite':  # imported straight through the driver, stored as the ORM does
        assert all(re.fullmatch(r'\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{6}', t) for t in raw_times)
    else:  # timestamptz: the same instants, whatever the server's time zone
        assert sorted(raw_times) == [m.sent_at for m in shown]
    assert conversation.last_message_at == datetime(2026, 11, 24, 9, 30, tzinfo=UTC)


async def test_a_correction_may_amend_a_message_already_in_the_conversation(database):
    ada = await add_clinician(database, 'ada')
    (original,) = await write(database, ada, 'PAT9', ['Temp 39.4'])
    file = conversation_file([message(1, text='Temp 38.4', amends=original.client_id)])
    assert (await load(database, ada, file)).imported == 1
    async with database.session() as session:
        shown = await conversations.latest_messages(session, clinician=ada, conversation_id=original.conversation_id)
    assert [(m.text, m.amends_id, m.corrected) for m in shown] == [
        ('Temp 39.4', None, True),
        ('Temp 38.4', original.id, False),
    ]


async def test_corrections_across_batches_and_marks_of_messages_already_there(database, monkeypatch):
    monkeypatch.setattr(exchange, 'IMPORT_BATCH', 2)
    ids = [str(uuid.uuid4()) for _ in range(6)]
    messages = [
        message(0, id=ids[0]),
        message(1, id=ids[1], amends=ids[0]),
        message(2, id=ids[2], amends=ids[1]),  # corrects the message just before it, in the same batch
        message(3, id=ids[3]),
        message(4, id=ids[4], amends=ids[0], entered_in_error=True),
        message(5, id=ids[5], amends=ids[3]),
    ]
    ada = await add_clinician(database, 'ada')
    assert (await load(database, ada, conversation_file(messages))).imported == 6
    exported = json.loads(await export(database, ada, patient_id='PAT9'))['messages']
    assert [(m['id'], m.get('amends'), m.get('entered_in_error', False)) for m in exported] == [
        (m['id'], m.get('amends'), m.get('entered_in_error', False)) for m in messages
    ]
    messages[3]['entered_in_error'] = True  # marked since the last export: the mark is added, nothing else
    assert (await load(database, ada, conversation_file(messages))).imported == 0
    assert json.loads(await export(database, ada, patient_id='PAT9'))['messages'][3]['entered_in_error'] is True
    assert await counts(database) == (1, 6, 2)


async def test_reading_in_tiny_chunks_splits_characters_and_values_anywhere(database, other_database, monkeypatch):
    ada = await clinical_story(database)
    exported = await export(database, ada)
    monkeypatch.setattr(exchange, 'READ_CHUNK', 7)
    bob = await add_clinician(other_database, 'bob')
    assert (await load(other_database, bob, '\ufeff' + exported)).imported == 5  # a byte order mark is tolerated
    assert await export(other_database, bob) == exported


async def test_progress_is_told_while_checking_then_importing(database):
    ada = await add_clinician(database, 'ada')
    data = conversation_file([message(n) for n in range(50)])
    told: list[tuple[str, int, int]] = []
    await load(database, ada, data, progress=lambda *args: told.append(args))
    phases = [phase for phase, _, _ in told]
    assert phases[0] == 'checking' and phases[-1] == 'importing' and sorted(phases) == phases
    assert told[-1][1:] == (len(data), len(data))


# ---------------------------------------------------------------------------------------------------- FHIR


async def test_fhir_bundle(database):
    ada = await clinical_story(database)
    bundle = json.loads(await export(database, ada, 'fhir'))
    assert bundle['resourceType'] == 'Bundle' and bundle['type'] == 'collection'
    entries = bundle['entry']
    urls = [entry['fullUrl'] for entry in entries]
    assert len(set(urls)) == len(urls) and all(url.startswith('urn:uuid:') for url in urls)
    kinds = [entry['resource']['resourceType'] for entry in entries]
    assert kinds == ['Patient', 'Practitioner'] + ['Communication'] * 5
    patient, practitioner = entries[0]['resource'], entries[1]['resource']
    assert patient['identifier'] == [{'system': 'urn:casebook:patient-id', 'value': 'PAT123'}]
    assert practitioner['identifier'] == [{'system': 'urn:casebook:username', 'value': 'ada'}]
    assert practitioner['name'] == [{'text': 'Dr. Ada'}]
    communications = [entry['resource'] for entry in entries[2:]]
    assert [c['status'] for c in communications] == ['completed', 'entered-in-error'] + ['completed'] * 3
    assert [c['payload'] for c in communications] == [
        [{'contentString': text}] for text in [*TEXTS, 'Mild fever for 4 days (correction)']
    ]
    references = [c['subject']['reference'] for c in communications] + [
        c['sender']['reference'] for c in communications
    ]
    assert set(references) == {urls[0], urls[1]}
    assert [c.get('inResponseTo') for c in communications] == [None] * 4 + [[{'reference': urls[2]}]]
    assert 'note' in communications[4] and all('note' not in c for c in communications[:4])
    assert all(re.fullmatch(r'\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{6})?Z', c['sent']) for c in communications)
    # the same bundle as an independent FHIR library reads it: the correction and the message in error included
    parsed = [entry.resource for entry in assert_valid_bundle(bundle).entry[2:]]
    assert [c.status for c in parsed] == ['completed', 'entered-in-error'] + ['completed'] * 3
    assert [[r.reference for r in c.inResponseTo or []] for c in parsed] == [[]] * 4 + [[urls[2]]]


def urn() -> str:
    return f'urn:uuid:{uuid.uuid4()}'


def broken(bundle: dict, change) -> dict:
    broken = copy.deepcopy(bundle)
    change(broken['entry'][-1]['resource'])
    return broken


@pytest.mark.parametrize(
    ('change', 'refusal'),
    [  # the library's own reading of FHIR, then the two rules it leaves to us (a required code, a bundle's references)
        pytest.param(lambda c: c.update(reason='unknown to FHIR'), ValidationError, id='a field FHIR does not know'),
        pytest.param(lambda c: c.update(sent='24 Nov 2026 09:00'), ValidationError, id='sent not a dateTime'),
        pytest.param(lambda c: c.update(payload=[{}]), ValidationError, id='a payload without its content'),
        pytest.param(lambda c: c.update(inResponseTo={'reference': urn()}), ValidationError, id='not a list'),
        pytest.param(lambda c: c.update(status='done'), AssertionError, id='a status outside EventStatus'),
        pytest.param(lambda c: c.update(inResponseTo=[{'reference': urn()}]), AssertionError, id='dangling'),
    ],
)
async def test_the_fhir_check_refuses_a_broken_bundle(database, change, refusal):
    """The check is not vacuous: one broken field in an otherwise valid export fails it."""
    ada = await clinical_story(database)
    bundle = json.loads(await export(database, ada, 'fhir'))
    assert_valid_bundle(bundle)
    with pytest.raises(refusal):
        assert_valid_bundle(broken(bundle, change))


# ---------------------------------------------------------------------------------------------------- Markdown


async def test_markdown_transcript(database):
    ada = await clinical_story(database)
    transcript = await export(database, ada, 'markdown')
    assert transcript.startswith('# Patient PAT123\n')
    assert transcript.count('\n## #') == 5 and 'Doctor · Dr. Ada · ' in transcript
    assert '> Mild fever for 3 days\n' in transcript
    assert '> ~~שלום, החום ירד 🙂 — zero\u200bwidth~~' in transcript and '**entered in error**' in transcript
    assert '_corrected by a later message_' in transcript and '_correction of #1_' in transcript
    # HTML, links and entities are shown as typed, and every line of a message stays inside its quote
    assert (
        '> \\<img src=x onerror=alert(1)> \\<script>alert(1)\\</script> \\[link](javascript:alert(1)) \\&amp;'
        in transcript
    )
    assert '> Line one\n> # not a heading\n>\n> > not a quote\n>     indented\n' in transcript
    body = transcript.split('\n## ')[1:]
    for entry in body:
        lines = entry.split('\n')
        assert all(line.startswith('>') for line in lines[2:] if line and not line.startswith('_'))


# ---------------------------------------------------------------------------------------------------- access


async def test_nobody_else_can_export_a_conversation(database):
    ada = await clinical_story(database)
    eve = await add_clinician(database, 'eve')
    await write(database, eve, 'PAT123', ['Eve’s own note'])  # her own conversation about the same patient
    async with database.session() as session:
        adas = await session.scalar(select(Conversation.id).where(Conversation.clinician_id == ada.id))
        with pytest.raises(NotFound):
            await exchange.export_conversation(session, clinician=eve, fmt='json', conversation_id=adas)
        with pytest.raises(NotFound):
            await exchange.export_conversation(session, clinician=ada, fmt='json', patient_id='PAT404')
        with pytest.raises(InvalidInput):
            await exchange.export_conversation(session, clinician=ada, fmt='pdf', patient_id='PAT123')
    eves = json.loads(await export(database, eve))
    assert [m['text'] for m in eves['messages']] == ['Eve’s own note']


async def test_import_goes_into_the_importers_own_conversation(database):
    ada = await clinical_story(database)
    exported = await export(database, ada)
    eve = await add_clinician(database, 'eve')
    assert (await load(database, eve, exported)).imported == 5  # ids are unique per conversation, not globally
    assert await export(database, eve) == exported
    assert await export(database, ada) == exported


# ---------------------------------------------------------------------------------------------------- bad files


GOOD = [message(1), message(2), message(3)]
ID = str(uuid.uuid4())


def with_fourth(bad: dict) -> str:
    return conversation_file([*GOOD, bad])


BAD_FILES = {
    'empty file': (b'', 'The file is empty.'),
    'not JSON': (b'hello', 'it is not a JSON object'),
    'not UTF-8': (b'{"format": "\xff\xfe"}', 'not UTF-8'),
    'a list': (b'[1, 2]', 'it is not a JSON object'),
    'cut short': (conversation_file(GOOD)[:-30], 'message 3: malformed JSON'),
    'garbage after': (conversation_file(GOOD) + ' {}', 'unexpected data after the conversation'),
    'wrong format tag': (conversation_file(GOOD).replace('conversation.v1', 'conversation.v2'), 'its format is'),
    'no format': (json.dumps({'patient_id': 'P1', 'messages': []}), 'it has no format'),
    'no messages': (json.dumps({'format': 'casebook.conversation.v1', 'patient_id': 'P1'}), 'no messages list'),
    'messages not a list': (
        json.dumps({'format': 'casebook.conversation.v1', 'patient_id': 'P1', 'messages': {}}),
        'messages is not a list',
    ),
    'unknown top-level field': (
        json.dumps({'format': 'casebook.conversation.v1', 'patient_id': 'P1', 'messages': [], 'x': 1}),
        'unexpected top-level field "x"',
    ),
    'bad patient id': (conversation_file(GOOD, patient_id='../etc/passwd'), 'Patient ID: only letters'),
    'patient id too long': (conversation_file(GOOD, patient_id='P' * 65), 'Patient ID: at most 64'),
    'not an object': (with_fourth('text'), 'message 4: not a JSON object'),
    'empty text': (with_fourth(message(4, text=' \n\t ')), 'message 4: text is empty'),
    'text too long': (with_fourth(message(4, text='x' * 10_001)), 'message 4: text has 10,001 characters'),
    'NUL in text': (with_fourth(message(4, text='a\x00b')), 'message 4: text contains a NUL character'),
    'lone surrogate': (with_fourth(message(4, text='a\ud800b')), 'message 4: text contains an unpaired surrogate'),
    'text not a string': (with_fourth(message(4, text=42)), 'message 4: text is not a string'),
    'bad sent_at': (with_fourth(message(4, sent_at='yesterday')), 'message 4: sent_at is not an ISO 8601 time'),
    'naive sent_at': (with_fourth(message(4, sent_at='2026-11-24T09:00:00')), 'message 4: sent_at has no time zone'),
    'wrong sender': (with_fourth(message(4, sender='admin')), 'message 4: sender is not "doctor" or "nurse"'),
    'missing field': (with_fourth({'sender': 'doctor', 'text': 'x'}), 'message 4: sent_at is missing'),
    'unknown field': (with_fourth(message(4, author='eve')), 'message 4: unexpected field "author"'),
    'id not a UUID': (with_fourth(message(4, id='1234')), 'message 4: id is not a UUID'),
    'duplicate id': (
        conversation_file([message(1), message(2, id=ID), message(3), message(4, id=ID)]),
        f'message 4: id {ID} is used by an earlier message',
    ),
    'dangling amends': (with_fourth(message(4, amends=ID)), 'message 4: amends names no earlier message'),
    'amends a later message': (
        conversation_file([message(1), message(2), message(3, amends=ID), message(4, id=ID)]),
        'message 3: amends names no earlier message',
    ),
    'bad mark': (with_fourth(message(4, entered_in_error='yes')), 'message 4: entered_in_error is not true or false'),
}


@pytest.mark.parametrize(('data', 'expected'), BAD_FILES.values(), ids=BAD_FILES.keys())
async def test_a_bad_file_is_refused_in_one_line_and_changes_nothing(database, data, expected):
    ada = await add_clinician(database, 'ada')
    await write(database, ada, 'PAT9', ['Temp 39.4'])
    before = await counts(database)
    with pytest.raises(InvalidInput) as refused:
        await load(database, ada, data)
    assert expected in str(refused.value) and '\n' not in str(refused.value)
    assert await counts(database) == before


async def test_the_first_bad_record_of_a_large_file_is_named(database):
    ada = await add_clinician(database, 'ada')
    messages = [message(n, id=str(uuid.uuid4())) for n in range(5_000)]
    messages[4_320]['sent_at'] = '2026-13-01T00:00:00Z'
    messages[4_999]['text'] = ''
    with pytest.raises(InvalidInput, match=r'^message 4321: sent_at is not an ISO 8601 time with a time zone$'):
        await load(database, ada, conversation_file(messages))
    assert await counts(database) == (0, 0, 0)


async def test_a_dangling_reference_before_another_error_is_the_one_named(database):
    ada = await add_clinician(database, 'ada')
    file = conversation_file([message(1), message(2, amends=ID), message(3), message(4, text='')])
    with pytest.raises(InvalidInput, match=r'^message 2: amends'):
        await load(database, ada, file)


class ChangingFile:
    """Reads as `first` until it is rewound for the importing pass, then as `second`: changed in between."""

    def __init__(self, first: bytes, second: bytes) -> None:
        self.versions = [io.BytesIO(first), io.BytesIO(second)]
        self.rewinds = 0

    def current(self) -> io.BytesIO:
        return self.versions[self.rewinds >= 2]

    def seek(self, offset: int, whence: int = 0) -> int:
        self.rewinds += (offset, whence) == (0, 0)
        return self.current().seek(offset, whence)

    def read(self, size: int = -1) -> bytes:
        return self.current().read(size)


async def test_a_file_changed_during_the_import_leaves_nothing_behind(database, monkeypatch):
    monkeypatch.setattr(exchange, 'IMPORT_BATCH', 10)
    ada = await add_clinician(database, 'ada')
    good = [message(n) for n in range(40)]
    bad = [*good[:30], message(30, text='')]
    source = ChangingFile(conversation_file(good).encode(), conversation_file(bad).encode())
    async with database.session() as session:
        with pytest.raises(InvalidInput, match='message 31: text is empty'):
            await exchange.import_conversation(session, clinician=ada, source=source)
    assert await counts(database) == (0, 0, 0)
