"""Corrections and entered-in-error: nothing is updated or deleted in place."""

from __future__ import annotations

import uuid

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import select

from casebook.models import Base, Message
from casebook.services import conversations, search
from casebook.services.errors import NotFound
from tests.conftest import add_clinician


async def setup_conversation(database, username='ada'):
    ada = await add_clinician(database, username)
    async with database.session() as session:
        conversation = await conversations.open_conversation(session, clinician=ada, patient_id='PAT1')
        original, _ = await conversations.post_message(
            session, clinician=ada, conversation_id=conversation.id, client_id=str(uuid.uuid4()), text='Temp 39.4'
        )
    return ada, conversation, original


async def test_a_correction_is_a_new_message_and_the_original_is_kept(database):
    ada, conversation, original = await setup_conversation(database)
    async with database.session() as session:
        correction, created = await conversations.post_message(
            session,
            clinician=ada,
            conversation_id=conversation.id,
            client_id=str(uuid.uuid4()),
            text='Temp 38.4 (typo)',
            amends_id=original.id,
        )
        shown = await conversations.latest_messages(session, clinician=ada, conversation_id=conversation.id)
    assert created and correction.amends_id == original.id
    assert [(m.text, m.corrected, m.amends_id) for m in shown] == [
        ('Temp 39.4', True, None),
        ('Temp 38.4 (typo)', False, original.id),
    ]


async def test_entered_in_error_keeps_the_message_and_marks_it_once(database):
    ada, conversation, original = await setup_conversation(database)
    async with database.session() as session:
        marked = await conversations.mark_entered_in_error(
            session, clinician=ada, conversation_id=conversation.id, message_id=original.id
        )
        again = await conversations.mark_entered_in_error(
            session, clinician=ada, conversation_id=conversation.id, message_id=original.id
        )
        stored = (await session.scalars(select(Message))).all()
    assert marked.entered_in_error and again.entered_in_error
    assert [(m.text, m.id) for m in stored] == [('Temp 39.4', original.id)]


async def test_no_one_else_can_correct_or_mark(database):
    ada, conversation, original = await setup_conversation(database)
    eve = await add_clinician(database, 'eve')
    async with database.session() as session:
        eves = await conversations.open_conversation(session, clinician=eve, patient_id='PAT1')
        with pytest.raises(NotFound):
            await conversations.mark_entered_in_error(
                session, clinician=eve, conversation_id=conversation.id, message_id=original.id
            )
        with pytest.raises(NotFound):  # a message id from someone else's conversation, through her own
            await conversations.mark_entered_in_error(
                session, clinician=eve, conversation_id=eves.id, message_id=original.id
            )
        with pytest.raises(NotFound):
            await conversations.post_message(
                session,
                clinician=eve,
                conversation_id=eves.id,
                client_id=str(uuid.uuid4()),
                text='x',
                amends_id=original.id,
            )
        with pytest.raises(NotFound):
            await conversations.mark_entered_in_error(
                session, clinician=ada, conversation_id=conversation.id, message_id=10**9
            )


async def test_pages_after_an_id(database):
    ada, conversation, original = await setup_conversation(database)
    async with database.session() as session:
        for n in range(5):
            await conversations.post_message(
                session, clinician=ada, conversation_id=conversation.id, client_id=str(uuid.uuid4()), text=f'n{n}'
            )
        newer = await conversations.messages_after(
            session, clinician=ada, conversation_id=conversation.id, after_id=original.id, limit=3
        )
    assert [m.text for m in newer] == ['n0', 'n1', 'n2']


async def test_migrations_build_exactly_the_models(database):
    async with database.engine.connect() as connection:
        differences = await connection.run_sync(
            lambda sync: compare_metadata(
                MigrationContext.configure(sync, opts={'include_name': search.alembic_include_name}), Base.metadata
            )
        )
    assert differences == []
