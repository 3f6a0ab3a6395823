"""Whatever is found in a browser's stored notebook is checked before use; bad state signs out, never crashes."""

from __future__ import annotations

import asyncio

import pytest
from nicegui import app, ui
from nicegui.testing import User

from tests.web.helpers import (
    create_first_account,
    log_in,
    notebook_storage,
    open_patient,
    send,
    should_see_message,
    shown_messages,
)


async def restart_storage(mangle=None) -> None:
    """Write the notebooks to disk and forget them in memory, optionally mangling the files in between."""
    for storage in app.storage._users.values():
        await storage.close()
    app.storage._users.clear()
    if mangle is not None:
        for path in app.storage.path.glob('storage-user-*.json'):
            mangle(path)


@pytest.mark.parametrize('content', ['{not json', '', '\x00\x01\x02', '[1, 2, 3]', '"a string"', '{"session": '])
async def test_corrupt_storage_file_means_signed_out(user: User, content: str) -> None:
    await create_first_account(user)
    await open_patient(user, 'PAT123')
    send(user, 'kept in the database')
    await should_see_message(user, 'kept in the database')
    await restart_storage(lambda path: path.write_text(content, encoding='utf-8'))
    await user.open('/')
    await user.should_see('Log in')
    await log_in(user, 'ada')
    await user.should_see('User: Dr. Ada')
    await open_patient(user, 'PAT123')
    await should_see_message(user, 'kept in the database')


@pytest.mark.parametrize(
    'stored',
    [
        {'user_name': 'Dr. Old', 'patient_id': 'PAT123', 'conversation': [{'sender': 'doctor', 'text': 'old'}]},
        {'session': 12345, 'clinician_id': 'one', 'patient_id': ['PAT123'], 'drafts': 'nope'},
        {'session': 'x' * 43, 'clinician_id': 1, 'patient_id': '../../etc', 'drafts': {'PAT1': {'text': 5}}},
        {'session': None, 'timezone': 'Europe/Berlin; alert(1)', 'drafts': {'<b>': {'text': 'x', 'id': 'not-a-uuid'}}},
    ],
)
async def test_outdated_or_tampered_storage_means_signed_out(user: User, stored: dict) -> None:
    await create_first_account(user)
    notebook_storage(user).clear()
    notebook_storage(user).update(stored)
    await user.open('/')
    await user.should_see('Log in')
    await log_in(user, 'ada')
    await user.should_see('User: Dr. Ada | Patient: (not set)')
    assert 'conversation' not in notebook_storage(user)
    assert set(notebook_storage(user)) <= {'session', 'clinician_id', 'patient_id', 'drafts', 'timezone'}


async def test_storage_stays_small_however_long_the_conversation(user: User) -> None:
    await create_first_account(user)
    await open_patient(user, 'PAT123')
    send(user, 'first')
    await should_see_message(user, 'first')
    size_after_one = len(repr(dict(notebook_storage(user))))
    for n in range(20):
        send(user, f'message {n} ' + 'x' * 500)
        await should_see_message(user, f'message {n} ' + 'x' * 500)
    assert len(shown_messages(user)) == 21
    assert len(repr(dict(notebook_storage(user)))) <= size_after_one + 10  # nothing about the conversation is kept


async def test_double_send_stores_and_shows_once(user: User) -> None:
    await create_first_account(user)
    await open_patient(user, 'PAT123')
    user.find(kind=ui.input, content='Type message here').type('only once')
    user.find(kind=ui.button, content='Send').click()
    user.find(kind=ui.button, content='Send').click()  # a double click: the second arrives while the first saves
    user.find(kind=ui.input, content='Type message here').trigger('keydown.enter')
    await should_see_message(user, 'only once')
    await asyncio.sleep(0.5)
    assert shown_messages(user) == ['only once']
    await user.open('/')
    await should_see_message(user, 'only once')
    assert shown_messages(user) == ['only once']
