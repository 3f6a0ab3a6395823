"""Two-step sign-in as the login page, the Profile and the Admin page handle it (NiceGUI's simulated user, the
app's real database): the second step after the password, nothing signed in between, codes and recovery codes
accepted once, refusals throttled and audited, the set-up required by policy, turning it off, an admin's reset."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pyotp
from nicegui import ui
from nicegui.testing import User
from nicegui.testing.user_interaction import UserInteraction
from sqlalchemy import func, select

from casebook.models import AuditEvent, AuthSession, utcnow
from casebook.services import accounts, sessions, two_step
from casebook.web import runtime, two_step_ui
from tests.conftest import PASSWORD
from tests.web.helpers import add, create_first_account, handlers_done, log_in


async def turned_on(username: str) -> tuple[str, list[str]]:
    """Two-step sign-in switched on for `username` through the service, confirmed with the code of the step before
    this one (so the current code is still unused); (secret, recovery codes)."""
    rt = runtime.current()
    key = two_step.key_of(rt.settings)
    async with rt.database.session() as session:
        clinician = await accounts.find_by_username(session, username)
    setup = await rt.database.run(lambda s: two_step.begin_setup(s, clinician.id, key=key))
    before = utcnow() - timedelta(seconds=two_step.STEP_SECONDS)
    code = pyotp.TOTP(setup.secret).at(before)
    codes = await rt.database.run(lambda s: two_step.confirm_setup(s, clinician.id, code, key=key, at=before))
    return setup.secret, codes


async def audit_rows(action: str) -> list[tuple[str, str]]:
    async with runtime.current().database.session() as session:
        rows = await session.execute(
            select(AuditEvent.actor, AuditEvent.detail).where(AuditEvent.action == action).order_by(AuditEvent.seq)
        )
        return [tuple(row) for row in rows]


async def sessions_of(username: str) -> int:
    async with runtime.current().database.session() as session:
        clinician = await accounts.find_by_username(session, username)
        query = select(func.count()).where(AuthSession.clinician_id == clinician.id, AuthSession.ended_at.is_(None))
        return await session.scalar(query)


def click(user: User, label: str) -> None:
    user.find(kind=ui.button, content=label).click()


async def log_out(user: User) -> None:
    click(user, 'Log out')
    await user.should_see('Your notebook is private to you.')


async def verify(user: User, code: str, *, box: str = 'Code') -> None:
    await user.should_see('Verify')
    user.find(kind=ui.input, content=box).clear().type(code)
    click(user, 'Verify')
    await handlers_done('second_step.<locals>.verify')


async def test_second_step_comes_after_the_password_and_nothing_is_signed_in_before_it(user: User) -> None:
    await create_first_account(user)
    await add('bob', 'Dr. Bob')
    secret, _ = await turned_on('bob')
    await log_out(user)
    await log_in(user, 'bob')
    await user.should_see('Two-step sign-in')
    await user.should_see('Use a recovery code')
    # between the password and the code: no session, so no workspace and no download
    assert await sessions_of('bob') == 0
    assert await audit_rows('sign-in') == [('ada', 'password')]
    page = await user.http_client.get('/', follow_redirects=False)
    assert page.status_code == 303 and page.headers['location'] == '/login'
    export = await user.http_client.get('/export/P1/json', follow_redirects=False)
    assert export.status_code in (303, 401, 403) and 'P1' not in export.text
    await verify(user, pyotp.TOTP(secret).now())
    await user.should_see('User: Dr. Bob | Patient: (not set)')
    assert await sessions_of('bob') == 1
    assert await audit_rows('sign-in') == [('ada', 'password'), ('bob', 'password+code')]


async def test_a_code_signs_in_once_and_wrong_codes_are_throttled(user: User) -> None:
    await create_first_account(user)
    await add('bob', 'Dr. Bob')
    secret, _ = await turned_on('bob')
    await log_out(user)
    await log_in(user, 'bob')
    code = pyotp.TOTP(secret).now()
    await verify(user, code)
    await user.should_see('User: Dr. Bob')
    await log_out(user)
    await log_in(user, 'bob')
    await user.should_see('Two-step sign-in')
    await verify(user, code)  # the same code, in its window: refused, worded like any wrong code
    await user.should_see(two_step.REFUSED)
    assert await sessions_of('bob') == 0
    wrong = '000000' if code != '000000' else '111111'
    for _ in range(4):  # three free failures per account; this one's refusal (above) was the first
        await verify(user, wrong)
    await user.should_see('Too many attempts. Please wait')
    refused = await audit_rows('sign-in-failed')
    assert refused and all(row == ('bob', 'code refused') for row in refused)
    assert await audit_rows('sign-in-throttled')
    assert await sessions_of('bob') == 0


async def test_a_recovery_code_signs_in_once(user: User) -> None:
    await create_first_account(user)
    await add('bob', 'Dr. Bob')
    _, codes = await turned_on('bob')
    await log_out(user)
    await log_in(user, 'bob')
    await user.should_see('Use a recovery code')
    click(user, 'Use a recovery code')
    await verify(user, codes[3].upper(), box='Recovery code')  # as typed from paper: case does not matter
    await user.should_see('User: Dr. Bob')
    assert await audit_rows('recovery-code-used') == [('bob', '9 left')]
    assert (await audit_rows('sign-in'))[-1] == ('bob', 'password+recovery-code')
    await log_out(user)
    await log_in(user, 'bob')
    await user.should_see('Use a recovery code')
    click(user, 'Use a recovery code')
    await verify(user, codes[3], box='Recovery code')
    await user.should_see(two_step.REFUSED)
    assert await sessions_of('bob') == 0


async def test_a_pending_sign_in_expires(user: User, monkeypatch) -> None:
    await create_first_account(user)
    await add('bob', 'Dr. Bob')
    secret, _ = await turned_on('bob')
    await log_out(user)
    monkeypatch.setattr(two_step_ui, 'PENDING_SECONDS', 0.2)
    await log_in(user, 'bob')
    await user.should_see('Use a recovery code')
    await asyncio.sleep(0.3)
    await verify(user, pyotp.TOTP(secret).now())
    await user.should_see(two_step_ui.TOO_SLOW)
    await user.should_see('Password')
    assert await sessions_of('bob') == 0


async def test_policy_requires_a_set_up_before_anything_else(user: User, monkeypatch) -> None:
    await create_first_account(user)
    await add('bob', 'Dr. Bob')
    await log_out(user)
    monkeypatch.setattr(runtime.current().settings, 'require_two_step', True)
    await log_in(user, 'bob')
    await user.should_see('This Casebook requires a second step at sign-in')
    click(user, 'Set up two-step sign-in')
    await user.should_see('Secret key')
    secret = next(e for e in user.client.elements.values() if e.props.get('aria-label') == 'Secret key').text
    assert (await user.http_client.get('/', follow_redirects=False)).headers['location'] == '/login'
    user.find(kind=ui.input, content='Code').type('12345')
    click(user, 'Turn on two-step sign-in')
    await user.should_see('Code: the 6 digits your authenticator app shows for Casebook.')
    user.find(kind=ui.input, content='Code').clear().type(pyotp.TOTP(secret).now())
    click(user, 'Turn on two-step sign-in')
    await user.should_see('Download recovery codes')
    region = next(e for e in user.client.elements.values() if e.props.get('aria-label') == 'Recovery codes')
    assert len(region.text.split('\n')) == two_step.RECOVERY_CODES
    assert await sessions_of('bob') == 0  # not before the recovery codes were shown and taken note of
    click(user, 'Continue')
    await user.should_see('User: Dr. Bob')
    assert await audit_rows('two-step-on') == [('bob', 'authenticator app')]


async def test_set_up_on_the_profile_and_turned_off_with_password_and_code(user: User) -> None:
    await create_first_account(user)
    click(user, 'Profile')
    await user.should_see('Off: your password alone signs you in.')
    click(user, 'Set up two-step sign-in')
    await user.should_see('Secret key')
    secret = next(e for e in user.client.elements.values() if e.props.get('aria-label') == 'Secret key').text
    totp = pyotp.TOTP(secret)
    user.find(kind=ui.input, content='Code').type(totp.now())
    click(user, 'Turn on two-step sign-in')
    await user.should_see('Two-step sign-in is on.')
    await user.should_see('Download recovery codes')
    click(user, 'Done')
    await user.should_see('10 unused recovery codes left.')
    click(user, 'Turn off two-step sign-in')
    await user.should_see('To turn two-step sign-in off')
    user.find(kind=ui.input, content='Password').type('not the password at all')
    user.find(kind=ui.input, content='Code').type(totp.now())
    click(user, 'Turn off')
    await user.should_see('The password or the code is not right. Nothing was changed.')
    assert await audit_rows('code-refused') == [('ada', 'turning two-step off')]
    user.find(kind=ui.input, content='Password').clear().type(PASSWORD)
    user.find(kind=ui.input, content='Code').clear().type(totp.at(utcnow() + timedelta(seconds=30)))
    click(user, 'Turn off')
    await user.should_see('Two-step sign-in is off.')
    assert await audit_rows('two-step-off') == [('ada', 'own')]


async def test_an_admin_reset_ends_the_clinicians_sessions(user: User) -> None:
    """(Their open tabs leaving at once is seen in Chromium, tests/browser/test_two_step.py: NiceGUI's simulated
    users share one `ui.navigate`, so a second simulated clinician cannot show it.)"""
    await create_first_account(user)
    await add('bob', 'Dr. Bob')
    await turned_on('bob')
    async with runtime.current().database.session() as session:
        bob = await accounts.find_by_username(session, 'bob')
        await sessions.start(session, clinician_id=bob.id)
        await sessions.start(session, clinician_id=bob.id)
    assert await sessions_of('bob') == 2
    await user.open('/admin')
    await user.should_see('Dr. Bob')
    reset = [e for e in user.client.elements.values() if e.props.get('aria-label') == 'Reset two-step sign-in of bob']
    assert len(reset) == 1
    UserInteraction(user, {reset[0]}, None).click()
    await user.should_see('Reset two-step sign-in of bob?')
    confirm = {e for e in user.client.elements.values() if isinstance(e, ui.button) and e.text == 'Reset'}
    UserInteraction(user, confirm, None).click()
    await user.should_see('Two-step sign-in of bob reset: authenticator app off, 0 passkeys removed, 2 sessions ended.')
    assert await sessions_of('bob') == 0
    assert await audit_rows('reset-two-step') == [('ada', 'bob')]
    assert not await runtime.current().database.run(lambda s: two_step.is_on(s, bob.id))
