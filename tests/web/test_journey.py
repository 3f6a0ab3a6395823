"""The main journey of issue 2 as user stories, on NiceGUI's simulated user (no browser)."""

from __future__ import annotations

import asyncio

from nicegui import app, ui
from nicegui.testing import User
from sqlalchemy import select

from casebook.models import Message
from casebook.web import runtime
from casebook.web.pages import workspace
from tests.conftest import PASSWORD
from tests.web.helpers import (
    add,
    create_first_account,
    handlers_done,
    log_in,
    open_patient,
    send,
    should_see_message,
    shown_messages,
)


def composer(user: User) -> ui.input:
    return user.find(kind=ui.input, content='Type message here').elements.pop()


async def settle(seconds: float = 0.2) -> None:
    await asyncio.sleep(seconds)  # let handlers that await the database finish


async def stored_texts() -> list[str]:
    async with runtime.current().database.session() as session:
        return list((await session.scalars(select(Message.text).order_by(Message.id))).all())


async def test_first_visit_creates_the_admin_later_visits_log_in(user: User, create_user) -> None:
    await create_first_account(user)
    other = create_user()
    await other.open('/')
    await other.should_see('Log in')
    await other.should_not_see('Create account')
    await other.open('/setup')  # the first-run page is gone for good
    await other.should_see('Log in')


async def test_open_patient_and_send_messages(user: User) -> None:
    await create_first_account(user)
    await open_patient(user, 'PAT123')
    await user.should_see('User: Dr. Ada | Patient: PAT123')
    await user.should_see('No messages for PAT123 yet.')
    send(user, 'Mild fever for 3 days')
    await should_see_message(user, 'Mild fever for 3 days')
    await user.should_see('Doctor')
    assert composer(user).value == ''
    send(user, 'Paracetamol given', enter=True)
    await should_see_message(user, 'Paracetamol given')
    await user.should_not_see('No messages for PAT123 yet.')
    assert len(shown_messages(user)) == 2


async def test_enter_opens_a_patient(user: User) -> None:
    await create_first_account(user)
    await open_patient(user, '  PAT9  ', enter=True)
    await user.should_see('User: Dr. Ada | Patient: PAT9')


async def test_empty_and_whitespace_messages_do_nothing(user: User) -> None:
    await create_first_account(user)
    await open_patient(user, 'PAT123')
    send(user, '')
    send(user, '   \t ')
    await handlers_done('Composer.send')  # the two sends have been handled, whatever they did
    assert shown_messages(user) == []
    assert await stored_texts() == []
    assert composer(user).value == '   \t '
    send(user, 'a real note')  # and the same path stores a message: the refusal was the text's, not the path's
    await should_see_message(user, 'a real note')
    assert await stored_texts() == ['a real note']


async def test_over_long_message_is_refused_and_kept(user: User) -> None:
    await create_first_account(user)
    await open_patient(user, 'PAT123')
    text = 'x' * 10_001
    send(user, text)
    await user.should_see('the limit is 10,000')
    assert composer(user).value == text
    assert shown_messages(user) == []
    assert await stored_texts() == []


async def test_invalid_patient_ids_are_explained(user: User) -> None:
    await create_first_account(user)
    for bad, reason in [('../etc/passwd', 'only letters'), ('x' * 65, 'at most 64'), ("P'; DROP", 'only letters')]:
        await open_patient(user, bad, valid=False)
        await user.should_see(reason)
        await user.should_see('Patient: (not set)')


async def test_reload_keeps_patient_conversation_and_draft(user: User) -> None:
    await create_first_account(user)
    await open_patient(user, 'PAT123')
    send(user, 'First note')
    await should_see_message(user, 'First note')
    composer(user).value = 'unsent thought'
    await user.open('/')
    await user.should_see('User: Dr. Ada | Patient: PAT123')
    await should_see_message(user, 'First note')
    assert composer(user).value == 'unsent thought'


async def test_restart_keeps_everything(user: User) -> None:
    await create_first_account(user)
    await open_patient(user, 'PAT123')
    send(user, 'Before the restart')
    await should_see_message(user, 'Before the restart')
    composer(user).value = 'draft across restart'
    await settle()
    # What a restart loses: the in-memory notebooks and the database connections. Both come back from disk.
    workspace.flush_all_drafts()  # the server's shutdown does this before NiceGUI closes the notebooks
    # NiceGUI's shutdown awaits the file writes that started; here, wait until the draft is on disk
    for _ in range(100):
        files = [storage.filepath for storage in app.storage._users.values() if storage.filepath.exists()]
        if any('draft across restart' in path.read_text(encoding='utf-8') for path in files):
            break
        await asyncio.sleep(0.05)
    for storage in app.storage._users.values():
        await storage.close()  # writes the notebook file
    app.storage._users.clear()
    await runtime.current().database.dispose()
    await user.open('/')
    await user.should_see('User: Dr. Ada | Patient: PAT123')
    await should_see_message(user, 'Before the restart')
    assert composer(user).value == 'draft across restart'


async def test_recent_patients_switch_conversations(user: User) -> None:
    await create_first_account(user)
    await open_patient(user, 'PAT1')
    send(user, 'note for one')
    await should_see_message(user, 'note for one')
    await open_patient(user, 'PAT2')
    send(user, 'note for two')
    await should_see_message(user, 'note for two')
    await user.should_not_see('note for one')
    user.find(marker='recent-patient-PAT1').click()
    await user.should_see('User: Dr. Ada | Patient: PAT1')
    await should_see_message(user, 'note for one')
    await user.should_not_see('note for two')


async def test_drafts_are_kept_per_patient(user: User) -> None:
    await create_first_account(user)
    await open_patient(user, 'PAT1')
    composer(user).value = 'half a thought about one'
    await open_patient(user, 'PAT2')
    assert composer(user).value == ''
    await open_patient(user, 'PAT1')
    assert composer(user).value == 'half a thought about one'


async def test_two_clinicians_never_see_each_other(user: User, create_user) -> None:
    await create_first_account(user)
    await open_patient(user, 'PAT123')
    send(user, 'Ada private note')
    await should_see_message(user, 'Ada private note')
    await add('bob', 'Dr. Bob')

    bob = create_user()
    await log_in(bob, 'bob')
    await bob.should_see('User: Dr. Bob | Patient: (not set)')
    await bob.should_not_see('PAT123')
    await open_patient(bob, 'PAT123')
    await bob.should_see('No messages for PAT123 yet.')
    await bob.should_not_see('Ada private note')
    send(bob, 'Bob note')
    await should_see_message(bob, 'Bob note')

    await user.open('/')
    await should_see_message(user, 'Ada private note')
    await user.should_not_see('Bob note')


async def test_log_out_returns_to_login_and_stays_out(user: User) -> None:
    await create_first_account(user)
    await open_patient(user, 'PAT123')
    user.find(kind=ui.button, content='Log out').click()
    await user.should_see('Log in')
    await user.open('/')
    await user.should_see('Log in')
    await user.should_not_see('PAT123')


async def test_logging_out_in_one_tab_stops_the_other(user: User) -> None:
    await create_first_account(user)
    await open_patient(user, 'PAT123')
    first_tab = user.client
    await user.open('/')  # a second tab of the same browser
    user.find(kind=ui.button, content='Log out').click()
    await user.should_see('Log in')
    user.client = first_tab  # the first tab still shows the workspace and tries to write
    send(user, 'written after logout')
    await handlers_done('Composer.send')
    assert shown_messages(user) == []
    assert await stored_texts() == []


async def test_wrong_password_does_not_say_which_part_was_wrong(user: User) -> None:
    await create_first_account(user)
    user.find(kind=ui.button, content='Log out').click()
    await user.should_see('Your notebook is private to you.')
    await log_in(user, 'ada', 'not the password at all')
    await user.should_see('Username or password is incorrect.')
    await log_in(user, 'nobody', PASSWORD)
    await user.should_see('Username or password is incorrect.')
    await log_in(user, 'ADA', PASSWORD)
    await user.should_see('User: Dr. Ada')


async def test_first_run_refusals_are_explained(user: User) -> None:
    await user.open('/')
    user.find('Username').type('ada')
    user.find('Display name').type('Dr. Ada')
    user.find('Password').type('short')
    user.find(kind=ui.button, content='Create account').click()
    await user.should_see('at least 12 characters')
    await user.should_see('Create account')


async def test_signed_out_pages_redirect(user: User) -> None:
    """Every page and download: before the first account, to its set-up; after it, signed out, to the login."""
    pages = ('/', '/login', '/setup', '/register', '/admin')
    downloads = ('/export/PAT1/json', '/export/PAT1/fhir', '/export/PAT1/markdown', '/admin/audit.csv')
    for path in pages:
        await user.open(path)
        await user.should_see('Create the first account')
        await user.should_not_see('Patient ID')
    for path in downloads:
        assert (await user.http_client.get(path)).status_code == 401, path
    await create_first_account(user)
    await open_patient(user, 'PAT1')
    user.find(kind=ui.button, content='Log out').click()
    await user.should_see('Log in')
    for path in pages:
        await user.open(path)
        await user.should_see('Log in')
        await user.should_not_see('Create the first account')
        await user.should_not_see('Patient ID')
        await user.should_not_see('Audit log')
    for path in downloads:
        response = await user.http_client.get(path)
        assert response.status_code == 401, path
        assert 'PAT1' not in response.text and 'sign-in' not in response.text


async def test_display_name_can_be_changed(user: User) -> None:
    await create_first_account(user)
    user.find(kind=ui.button, content='Profile').click()
    await user.should_see('Your profile')
    user.find(kind=ui.input, content='Display name').clear().type('   ')
    user.find(kind=ui.button, content='Save').click()
    await user.should_see('Display name: please enter')
    user.find(kind=ui.input, content='Display name').clear().type('Dr. Ada King')
    user.find(kind=ui.button, content='Save').click()
    await user.should_see('User: Dr. Ada King | Patient: (not set)')
    await user.open('/')
    await user.should_see('User: Dr. Ada King | Patient: (not set)')
