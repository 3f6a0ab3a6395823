"""The database unavailable for a moment: the user is told, nothing unsaved is shown as sent, the draft is kept."""

from __future__ import annotations

import logging
import sqlite3

import pytest
from nicegui import ui
from nicegui.testing import User

from casebook.web import runtime
from tests.conftest import PASSWORD
from tests.web.helpers import create_first_account, open_patient, send, should_see_message, shown_messages
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
