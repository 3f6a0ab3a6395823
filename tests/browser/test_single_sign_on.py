"""In a real browser, against a real OpenID provider (tests/oidc/provider.mjs): `Sign in with Hospital account`, the
provider's own login form, the workspace under the provider's name for the clinician; a reload stays signed in; Log
out goes through the provider's end-session page back to Casebook's login page, and the next sign-in asks the
provider's login form again (the next clinician at a shared computer does not walk straight back in). A clinician
the provider knows but Casebook has no account for, or a disabled account, ends on the login page with the reason;
a single sign-on session left alone is logged off by Casebook's idle limit."""

from __future__ import annotations

import json
import re
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import expect

from tests.browser.conftest import Server
from tests.oidc_support import Provider, audit_rows, casebook_env, signing_key

pytestmark = pytest.mark.browser


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    """Casebook and the provider, each told the other's address before either starts."""
    provider = Provider(tmp_path / 'provider.log', OIDC_KEYS=json.dumps([signing_key('first')]))
    running = Server(tmp_path / 'data', tmp_path / 'server.log')
    # idle logoff after 15 s (the warning 7.5 s before): a single sign-on session idles out like any other
    running.extra_env = casebook_env(provider, running.base_url, CASEBOOK_IDLE_TIMEOUT_MINUTES='0.25')
    provider.start(redirect_uris=[running.base_url + '/auth/oidc/callback'], logout_uris=[running.base_url + '/login'])
    try:
        running.start()
        yield running
        running.assert_log_clean()
    finally:
        running.stop()
        provider.stop()


def provider_login(page, login: str) -> None:
    page.get_by_role('button', name='Sign in with Hospital account').click()
    page.locator('input[name="login"]').fill(login)
    page.locator('input[name="password"]').fill('any password at the provider')
    page.get_by_role('button', name='Sign-in').click()


def test_sign_in_through_the_provider_reload_and_log_out_through_it(server: Server, new_visitor) -> None:
    server.casebook('user', 'add', 'ada', '--display-name', 'Ada', '--sso')
    ada = new_visitor()
    ada.goto('/login')
    provider_login(ada.page, 'ada')
    expect(ada.header).to_have_text('User: Dr. Ada Lovelace | Patient: (not set)')  # the provider's `name` claim
    # each step waits for an event answered over the page's socket before leaving the page: a page left within a
    # second of connecting logs NiceGUI's "JavaScript did not respond" (its drawer's question), whatever the way out
    ada.open_patient('PAT1', 'Dr. Ada Lovelace')
    ada.page.reload()
    expect(ada.header).to_have_text('User: Dr. Ada Lovelace | Patient: PAT1')  # still signed in, same notebook
    ada.open_patient('PAT2', 'Dr. Ada Lovelace')

    ada.page.get_by_role('button', name='Log out').click()
    ada.page.get_by_role('button', name='Yes, sign me out').click()  # the provider's end-session page
    expect(ada.page).to_have_url(re.compile(re.escape(server.base_url) + r'/login$'))
    expect(ada.page.get_by_role('button', name='Log in')).to_be_visible()
    ada.page.get_by_role('button', name='Sign in with Hospital account').click()
    expect(ada.page.locator('input[name="login"]')).to_be_visible()  # the provider asks again

    assert audit_rows(server.data_dir, 'sign-in') == [('ada', 'oidc')]
    assert audit_rows(server.data_dir, 'logoff') == [('ada', 'manual')]

    # whatever the provider says: no Casebook account (and none created: CASEBOOK_OIDC_CREATE_ACCOUNTS is off),
    # or a disabled one, ends on the login page with the reason, signed in nowhere
    server.casebook('user', 'add', 'disabled', '--display-name', 'Disabled', '--sso')
    with sqlite3.connect(server.data_dir / 'casebook.sqlite3') as db:
        db.execute("UPDATE clinicians SET disabled = 1 WHERE username = 'disabled'")
    for login, reason in (
        ('grace', 'Single sign-on failed: there is no Casebook account for you; ask an administrator.'),
        ('disabled', 'Single sign-on failed: your Casebook account is disabled.'),
    ):
        refused = new_visitor()
        refused.goto('/login')
        provider_login(refused.page, login)
        expect(refused.page.get_by_text(reason)).to_be_visible()
        expect(refused.page.get_by_role('button', name='Log in')).to_be_visible()
        refused.goto('/')
        expect(refused.page).to_have_url(re.compile(r'/login$'))
    assert [detail for _, detail in audit_rows(server.data_dir, 'sign-in-failed')] == [
        'oidc: unknown-account',
        'oidc: disabled',
    ]
    assert audit_rows(server.data_dir, 'sign-in') == [('ada', 'oidc')]

    # left alone, a single sign-on session is logged off by Casebook like a password one
    idle = new_visitor()
    idle.goto('/login')
    provider_login(idle.page, 'ada')
    expect(idle.header).to_have_text('User: Dr. Ada Lovelace | Patient: (not set)')
    expect(idle.page.get_by_text('You were logged off after 15 seconds without activity.')).to_be_visible(
        timeout=30_000
    )
    assert audit_rows(server.data_dir, 'logoff') == [('ada', 'manual'), ('ada', 'idle')]
    assert audit_rows(server.data_dir, 'sign-in') == [('ada', 'oidc'), ('ada', 'oidc')]
