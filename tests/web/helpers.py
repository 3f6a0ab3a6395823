"""Steps of the user stories, for NiceGUI's simulated `User`."""

from __future__ import annotations

import asyncio

from nicegui import app, background_tasks, ui
from nicegui.testing import User

from casebook.services import sessions
from casebook.web import runtime
from casebook.web.message_list import MessageCard
from tests.conftest import PASSWORD, add_clinician


async def create_first_account(user: User, username: str = 'ada', display_name: str = 'Dr. Ada') -> None:
    await user.open('/')
    await user.should_see('Create account')
    user.find('Username').type(username)
    user.find('Display name').type(display_name)
    user.find('Password').type(PASSWORD)
    user.find(kind=ui.button, content='Create account').click()
    await user.should_see(f'User: {display_name} | Patient: (not set)')


async def add(username: str, display_name: str | None = None, role: str = 'doctor') -> None:
    """A clinician added by an admin, in the app's own database."""
    await add_clinician(runtime.current().database, username, display_name=display_name, role=role)


async def log_in(user: User, username: str, password: str = PASSWORD) -> None:
    await user.open('/login')
    user.find('Username').type(username)
    user.find('Password').type(password)
    user.find(kind=ui.button, content='Log in').click()


async def open_patient(user: User, patient_id: str, *, enter: bool = False, valid: bool = True) -> None:
    user.find(kind=ui.input, content='Patient ID').clear().type(patient_id)
    if enter:
        user.find(kind=ui.input, content='Patient ID').trigger('keydown.enter')
    else:
        user.find(kind=ui.button, content='Open patient').click()
    if valid:
        await user.should_see(f'Conversation about {patient_id.strip()}')


def notebook_storage(user: User):
    """The browser's `app.storage.user` as the page now in front of `user` sees it (the identifier changes
    at every login, so the test's own `app.storage.user` would be the one from before)."""
    return app.storage._users[user.client.request.session['id']]


def send(user: User, text: str, *, enter: bool = False) -> None:
    user.find(kind=ui.input, content='Type message here').clear().type(text)
    if enter:
        user.find(kind=ui.input, content='Type message here').trigger('keydown.enter')
    else:
        user.find(kind=ui.button, content='Send').click()


def shown_messages(user: User) -> list[str]:
    """The texts of the messages in the conversation, in page order (not the composer's draft)."""
    logs = [element for element in user.client.elements.values() if element.props.get('role') == 'log']
    return [card.text for log in logs for card in log.default_slot.children if isinstance(card, MessageCard)]


async def should_see_message(user: User, text: str) -> None:
    """Wait (up to 5 s) until a message with exactly this text is shown in the conversation."""
    for _ in range(100):
        if text in shown_messages(user):
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f'message {text!r} not shown; shown: {shown_messages(user)}')


HANDLERS_TIMEOUT = 10.0  # seconds


async def handlers_done(*handlers: str) -> None:
    """Until no task of these event handlers (`'Composer.send'`, `'AdminPage._show_clinicians.<locals>.<lambda>'`:
    NiceGUI names a handler's task after the handler) is running,
    its database work included: after this, that an action left no trace is shown, not assumed after a sleep."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + HANDLERS_TIMEOUT

    def running() -> list[str]:
        names = [task.get_name() for task in background_tasks.running_tasks]
        return [name for name in names if any(handler in name for handler in handlers)]

    while busy := running():
        assert loop.time() < deadline, f'handlers still running after {HANDLERS_TIMEOUT} s: {busy}'
        await asyncio.sleep(0.01)


async def still_signed_in(token: str) -> bool:
    """Whether this session token still signs its tab in (looked up without touching its last-seen time)."""
    rt = runtime.current()
    async with rt.database.session() as session:
        return await sessions.resolve(session, token, max_age=rt.session_max_age, touch=False) is not None
