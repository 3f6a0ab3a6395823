"""Single sign-on's effect on the password form (NiceGUI's simulated user, the app's real database): an issuer that
cannot be reached is reported on the login page and passwords still work; CASEBOOK_OIDC_ONLY leaves passwords to the
break-glass account alone; an account made for single sign-on has no password that works. The flow itself is tested
against a real provider in tests/oidc/."""

from __future__ import annotations

import pytest
from nicegui import ui
from nicegui.testing import User

from casebook.services import sso
from casebook.web import runtime
from support import free_port
from tests.web.helpers import add, create_first_account, log_in
from tests.web.test_two_step import audit_rows, log_out

WRONG = 'Username or password is incorrect.'


@pytest.fixture
def unreachable_issuer(monkeypatch: pytest.MonkeyPatch) -> str:
    """Set before `user` builds the app: an issuer where nothing listens."""
    issuer = f'http://127.0.0.1:{free_port()}'
    for name, value in {
        'CASEBOOK_OIDC_ISSUER': issuer,
        'CASEBOOK_OIDC_CLIENT_ID': 'casebook',
        'CASEBOOK_OIDC_CLIENT_SECRET': 'not-used-here-0123456789',
        'CASEBOOK_OIDC_NAME': 'Hospital account',
        'CASEBOOK_BREAK_GLASS_USER': 'ada',
    }.items():
        monkeypatch.setenv(name, value)
    return issuer


async def test_passwords_with_an_unreachable_provider_and_when_only_single_sign_on_is_allowed(
    unreachable_issuer: str, user: User, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    await create_first_account(user)  # ada, the break-glass admin
    warned = [r.getMessage() for r in caplog.records if r.name == 'casebook.web.oidc' and r.levelname == 'WARNING']
    assert warned and warned[0].startswith(f'Single sign-on is not available: {unreachable_issuer}')
    await add('bob', 'Dr. Bob')
    await sso.add_clinician(runtime.current().database.run, username='carol', display_name='Dr. Carol')
    await log_out(user)
    await user.should_see(f'Single sign-on is not available: {unreachable_issuer}')
    await user.should_not_see('Sign in with Hospital account')

    await log_in(user, 'bob')  # passwords still work while single sign-on does not
    await user.should_see('User: Dr. Bob')
    await log_out(user)
    await log_in(user, 'carol')  # an account for single sign-on only: like any wrong password
    await user.should_see(WRONG)

    monkeypatch.setattr(runtime.current().settings, 'oidc_only', True)
    await log_in(user, 'bob')
    await user.should_see(WRONG)
    assert (await audit_rows('sign-in-failed'))[-2:] == [('carol', ''), ('bob', '')]
    await log_in(user, 'ada')  # the break-glass account
    await user.should_see('User: Dr. Ada')


async def test_no_issuer_no_button(user: User) -> None:
    await create_first_account(user)
    await log_out(user)
    await user.should_see(kind=ui.button, content='Log in')
    await user.should_not_see('Sign in with single sign-on')
    await user.should_not_see('Single sign-on')
