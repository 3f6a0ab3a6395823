"""The database unavailable for a moment: the user is told, nothing unsaved is shown as sent, the draft is kept."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import sqlite3
from collections.abc import Iterator

import pytest
from nicegui import ui
from nicegui.testing import User
from sqlalchemy import func, select

from casebook.db import Database
from casebook.models import AuthSession, Clinician
from casebook.services import accounts, templates
from casebook.web import runtime
from casebook.web.pages.search_panel import HitCard
from support import free_port
from tests.conftest import PASSWORD
from tests.web.helpers import (
    add,
    create_first_account,
    log_in,
    open_patient,
    send,
    should_see_message,
    shown_messages,
)
from tests.web.test_journey import composer, settle, stored_texts


async def test_a_send_while_the_database_is_locked_is_not_acknowledged_and_the_draft_is_kept(
    user: User, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    await create_first_account(user)
    await open_patient(user, 'PAT123')
    send(user, 'saved before')
    await should_see_message(user, 'saved before')

    database_file = runtime.current().settings.data_dir / 'casebook.sqlite3'
    blocker = sqlite3.connect(database_file, timeout=0)
    blocker.execute('BEGIN EXCLUSIVE')  # another process holds the write lock longer than our 5 s busy timeout
    try:
        send(user, 'written during the outage')
        await user.should_see('Not saved', retries=120)
        assert shown_messages(user) == ['saved before']
        assert composer(user).value == 'written during the outage'
    finally:
        blocker.rollback()
        blocker.close()

    user.find(kind=ui.button, content='Send').click()  # the retry the message asks for
    await should_see_message(user, 'written during the outage')
    await settle()
    assert shown_messages(user) == ['saved before', 'written during the outage']
    assert await stored_texts() == ['saved before', 'written during the outage']
    assert composer(user).value == ''
    assert any('message not saved' in record.getMessage() for record in caplog.records)  # logged, but …
    assert not [record for record in caplog.records if 'outage' in record.getMessage()]  # … never the text
    assert not [record for record in caplog.records if PASSWORD in record.getMessage()]


async def test_the_workspace_opens_while_another_process_holds_the_write_lock(user: User) -> None:
    await create_first_account(user)
    await open_patient(user, 'PAT123')
    send(user, 'saved before')
    await should_see_message(user, 'saved before')
    blocker = sqlite3.connect(runtime.current().settings.data_dir / 'casebook.sqlite3', timeout=0)
    blocker.execute('BEGIN EXCLUSIVE')  # e.g. a long `casebook import` writing in one transaction
    try:
        await user.open('/')  # a reload: reads only, so it does not wait for the lock
        await should_see_message(user, 'saved before')
    finally:
        blocker.rollback()
        blocker.close()


@contextlib.contextmanager
def write_lock_held_elsewhere() -> Iterator[None]:
    """Another process's transaction holds SQLite's write lock for longer than our 5 s busy timeout."""
    blocker = sqlite3.connect(runtime.current().settings.data_dir / 'casebook.sqlite3', timeout=0)
    blocker.execute('BEGIN EXCLUSIVE')
    try:
        yield
    finally:
        blocker.rollback()
        blocker.close()


async def live_sessions(username: str) -> int:
    async with runtime.current().database.session() as session:
        query = select(func.count()).select_from(AuthSession).join(Clinician)
        return await session.scalar(query.where(Clinician.username == username, AuthSession.ended_at.is_(None)))


async def test_a_sign_in_the_database_cannot_take_now_says_so_and_can_be_retried(
    user: User, create_user, caplog: pytest.LogCaptureFixture
) -> None:
    await create_first_account(user)
    await add('bob')
    bob = create_user()
    with write_lock_held_elsewhere():
        await log_in(bob, 'bob')
        await bob.should_see('Could not sign you in just now', retries=200)
        assert await live_sessions('bob') == 0
    bob.find(kind=ui.button, content='Log in').click()  # the retry the message asks for, same form
    await bob.should_see('User: Bob | Patient: (not set)')
    assert await live_sessions('bob') == 1
    assert any('sign-in not done' in record.getMessage() for record in caplog.records)
    assert not [record for record in caplog.records if PASSWORD in record.getMessage()]


async def test_an_admin_action_the_database_cannot_take_says_so(user: User) -> None:
    await create_first_account(user)
    await add('bob')
    await user.open('/admin')
    await user.should_see('Add a clinician')
    with write_lock_held_elsewhere():
        user.find(kind=ui.button, content='Disable').click()
        await user.should_see('The database could not be reached. Nothing was changed', retries=200)
    async with runtime.current().database.session() as session:
        assert await accounts.authenticate(session, username='bob', password=PASSWORD) is not None  # not disabled
    user.find(kind=ui.button, content='Disable').click()
    await user.should_see('bob disabled')


async def test_a_log_out_the_database_cannot_take_still_signs_this_browser_out(user: User) -> None:
    await create_first_account(user)
    with write_lock_held_elsewhere():
        user.find(kind=ui.button, content='Log out').click()
        await user.should_see('Log in', retries=200)
    await user.open('/')
    await user.should_see('Log in')


async def test_a_page_whose_database_cannot_be_reached_says_so_instead_of_failing(
    user: User, caplog: pytest.LogCaptureFixture
) -> None:
    await create_first_account(user)
    original = runtime.current()
    port = free_port()  # nothing listens there: a database server that is down
    unreachable = Database(f'postgresql+asyncpg://postgres@127.0.0.1:{port}/casebook')
    runtime.install(dataclasses.replace(original, database=unreachable))
    try:
        for path in ('/', '/login', '/admin'):
            await user.open(path)
            await user.should_see('Casebook cannot reach its database just now')
            await user.should_see('Try again')
    finally:
        runtime.install(original)
        await unreachable.dispose()
    await user.open('/')
    await user.should_see('User: Dr. Ada | Patient: (not set)')
    assert any('page / not shown' in record.getMessage() for record in caplog.records)


async def test_a_search_the_database_cannot_take_says_so_and_shows_nothing_unaudited(user: User) -> None:
    await create_first_account(user)
    await open_patient(user, 'PAT123')
    send(user, 'paracetamol given')
    await should_see_message(user, 'paracetamol given')
    database_file = runtime.current().settings.data_dir / 'casebook.sqlite3'
    blocker = sqlite3.connect(database_file, timeout=0)
    blocker.execute('BEGIN EXCLUSIVE')  # longer than the busy timeout: the search's audit row cannot be written
    try:
        user.find(kind=ui.input, content='Search notes').type('parac').trigger('keydown.enter')
        await user.should_see('Could not search just now: the database could not be reached.', retries=120)
        await user.should_not_see(kind=HitCard)
    finally:
        blocker.rollback()
        blocker.close()
    user.find(kind=ui.input, content='Search notes').trigger('keydown.enter')  # trying again finds it
    await user.should_see(kind=HitCard)


async def test_a_template_the_database_cannot_take_says_so_and_keeps_what_was_typed(user: User) -> None:
    await create_first_account(user)
    user.find(kind=ui.button, content='Profile').click()
    await user.should_see('No templates yet.')
    user.find(kind=ui.button, content='Add template').click()
    name, text = user.find(kind=ui.input, content='Template name'), user.find(kind=ui.input, content='Template text')
    name.type('   ')
    text.type('S: \nO: ')
    user.find(kind=ui.button, content='Save template').click()
    await user.should_see('Template name: please enter one.')  # refused: a clear message, nothing stored
    name.clear().type('SOAP')
    with write_lock_held_elsewhere():
        user.find(kind=ui.button, content='Save template').click()
        await user.should_see('The database could not be reached. Nothing was changed', retries=200)
    assert name.elements.pop().value == 'SOAP' and text.elements.pop().value == 'S: \nO: '  # still there to retry
    async with runtime.current().database.session() as session:
        clinician = await accounts.find_by_username(session, 'ada')
    assert await runtime.current().database.run(lambda s: templates.list_sync(s, clinician_id=clinician.id)) == []
    user.find(kind=ui.button, content='Save template').click()  # the retry, through the same path
    await user.should_see('Template “SOAP” saved.')
    listed = await runtime.current().database.run(lambda s: templates.list_sync(s, clinician_id=clinician.id))
    assert [(t.name, t.text) for t in listed] == [('SOAP', 'S: \nO: ')]
