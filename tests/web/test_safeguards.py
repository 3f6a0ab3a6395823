"""Session safeguards as a clinician (and an attacker) meets them: a new identifier at login, automatic
logoff, the Sessions view, changing the password, login throttling."""

from __future__ import annotations

import asyncio

import pytest
from nicegui import app, ui
from nicegui.testing import User
from sqlalchemy import select

from casebook.models import AuditEvent
from casebook.services import accounts, sessions
from casebook.web import runtime
from tests.conftest import PASSWORD
from tests.web.helpers import add, create_first_account, log_in, open_patient, send, should_see_message, still_signed_in


async def audit_rows() -> list[AuditEvent]:
    async with runtime.current().database.session() as session:
        return list(await session.scalars(select(AuditEvent).order_by(AuditEvent.seq)))


@pytest.fixture
def short_idle(monkeypatch: pytest.MonkeyPatch) -> None:
    """Automatic logoff after 6 s (warning 3 s before, checks every 1.5 s); listed before `user` so the
    app is built with it."""
    monkeypatch.setenv('CASEBOOK_IDLE_TIMEOUT_MINUTES', '0.1')


async def test_login_gives_the_browser_a_new_identifier_and_a_planted_one_is_worthless(user: User, create_user) -> None:
    await user.open('/setup')
    planted = user.http_client.cookies.get('session')  # what an attacker could have set in this browser
    planted_id = user.client.request.session['id']
    await create_first_account(user)
    assert user.http_client.cookies.get('session') != planted
    assert user.client.request.session['id'] != planted_id
    assert dict(app.storage._users[planted_id]) == {}  # the old identifier holds nothing
    attacker = create_user()
    attacker.http_client.cookies.set('session', planted)
    await attacker.open('/')
    await attacker.should_see('Your notebook is private to you.')  # the login page, not Ada's notebook


async def test_a_login_ticket_works_once_and_only_for_its_browser(user: User, create_user) -> None:
    await create_first_account(user)
    user.find(kind=ui.button, content='Log out').click()
    await user.should_see('Log in')
    tickets: list[str] = []
    original = ui.navigate.to

    def catch(target, *args, **kwargs):
        if isinstance(target, str) and target.startswith('/login/finish'):
            tickets.append(target)
        return original(target, *args, **kwargs)

    ui.navigate.to = catch
    try:
        await log_in(user, 'ada')
        await user.should_see('User: Dr. Ada')
    finally:
        ui.navigate.to = original
    other = create_user()
    await other.open(tickets[0])  # replayed, from another browser
    await other.should_see('Your notebook is private to you.')


async def test_idle_logoff_warns_first_then_logs_off_on_the_server(short_idle, user: User) -> None:
    await create_first_account(user)
    await open_patient(user, 'PAT1')
    await user.should_see('Still there?', retries=120)
    await user.should_see('You were logged off after 6 seconds without activity.', retries=300)
    logoffs = [row.detail for row in await audit_rows() if row.action == 'logoff']
    assert logoffs == ['idle']


async def test_staying_signed_in_and_typing_keep_the_session(short_idle, user: User) -> None:
    await create_first_account(user)
    await open_patient(user, 'PAT1')
    await user.should_see('Still there?', retries=120)
    user.find(kind=ui.button, content='Stay signed in').click()
    for _ in range(9):  # 9 s of slow typing, longer than the timeout
        user.find(kind=ui.input, content='Type message here').type('.')
        await asyncio.sleep(1)
    send(user, 'still here after 9 s of typing')
    await should_see_message(user, 'still here after 9 s of typing')
    assert not [row for row in await audit_rows() if row.action == 'logoff']


async def another_device(username: str) -> str:
    """A session of this clinician started elsewhere (a phone, another ward's computer); its token."""
    async with runtime.current().database.session() as session:
        clinician = await accounts.find_by_username(session, username)
        return await sessions.start(session, clinician_id=clinician.id, user_agent=PHONE, address='10.1.2.3')


PHONE = 'Mozilla/5.0 (iPhone; CPU iPhone OS 18_0 like Mac OS X) AppleWebKit/605.1.15 Safari/604.1'


async def test_the_sessions_view_lists_and_ends_other_sessions(user: User) -> None:
    await create_first_account(user)
    phone = await another_device('ada')
    # (that an open tab of an ended session leaves at once is shown in a real browser,
    # tests/browser/test_safeguards.py: simulated users share one `ui.navigate`)
    user.find(kind=ui.button, content='Sessions').click()
    await user.should_see('(this browser)')
    await user.should_see('Safari on iPhone')
    await user.should_see('10.1.2.3')
    user.find(kind=ui.button, content='End all other sessions').click()
    await user.should_see('Ended 1 session.')
    await user.should_see('No other sessions.')
    assert not await still_signed_in(phone)
    await user.open('/')
    await user.should_see('User: Dr. Ada')  # this browser stays signed in


async def test_changing_the_password_ends_the_other_sessions(user: User) -> None:
    await create_first_account(user)
    phone = await another_device('ada')
    user.find(kind=ui.button, content='Profile').click()
    await user.should_see('Change password')
    user.find('Current password').type(PASSWORD)
    user.find('New password').type('password12345')
    user.find(kind=ui.button, content='Change password').click()
    await user.should_see('commonly used passwords')
    user.find(kind=ui.input, content='New password').clear().type('a fresh and private phrase')
    user.find(kind=ui.button, content='Change password').click()
    await user.should_see('Password changed and 1 other session ended.')
    assert not await still_signed_in(phone)
    user.find(kind=ui.button, content='Log out').click()
    await user.should_see('Log in')
    await log_in(user, 'ada', 'a fresh and private phrase')
    await user.should_see('User: Dr. Ada')
    assert 'password-changed' in [row.action for row in await audit_rows()]


@pytest.mark.parametrize('username', ['ada', 'nobody'])
async def test_login_throttling_says_the_same_whether_or_not_the_account_exists(user: User, username: str) -> None:
    await create_first_account(user)
    await add('bob')
    user.find(kind=ui.button, content='Log out').click()
    await user.should_see('Log in')
    for _ in range(3):
        await log_in(user, username, 'not the password at all')
        await user.should_see('Username or password is incorrect.')
    await log_in(user, username, 'not the password at all')
    await user.should_see('Username or password is incorrect.')
    await log_in(user, username, PASSWORD)  # even the right password waits now
    await user.should_see('Too many attempts. Please wait')
    await log_in(user, 'bob')  # another account from the same address is not held up
    await user.should_see('User: Bob')
    actions = [row.action for row in await audit_rows()]
    assert actions.count('sign-in-failed') == 4
    assert actions.count('sign-in-throttled') == 1


async def test_a_password_typed_as_username_never_reaches_the_audit_trail(user: User) -> None:
    await create_first_account(user)
    user.find(kind=ui.button, content='Log out').click()
    await user.should_see('Log in')
    await log_in(user, 'my secret pass phrase!', 'x')
    await user.should_see('Username or password is incorrect.')
    failed = [row for row in await audit_rows() if row.action == 'sign-in-failed']
    assert [row.actor for row in failed] == ['(not a username)']


async def test_what_a_session_does_is_audited(user: User) -> None:
    await create_first_account(user)
    await open_patient(user, 'PAT1')
    send(user, 'Temp 39.4')
    await should_see_message(user, 'Temp 39.4')
    user.find(kind=ui.button, content='Log out').click()
    await user.should_see('Log in')
    rows = await audit_rows()
    assert [row.action for row in rows] == [
        'account-created',
        'sign-in',
        'patient-opened',
        'message-written',
        'logoff',
    ]
    assert {row.actor for row in rows} == {'ada'}
    assert rows[2].patient_id == rows[3].patient_id == 'PAT1'
    assert 'Temp' not in repr([(row.detail, row.patient_id) for row in rows])
