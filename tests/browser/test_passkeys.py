"""Passkeys end to end in Chromium, with Chromium's own virtual authenticator (DevTools WebAuthn domain): a
platform authenticator holding discoverable credentials and verifying its user, as a laptop's fingerprint reader.

The page is opened at http://localhost:PORT: without CASEBOOK_PUBLIC_URL that is where passkeys work (an IP
address such as 127.0.0.1 cannot be a WebAuthn relying party id), and the same app opened at 127.0.0.1 says so.
"""

from __future__ import annotations

from playwright.sync_api import expect

from support import PASSWORD
from tests.browser.conftest import Server
from tests.browser_support import visitors

AUTHENTICATOR = {
    'protocol': 'ctap2',
    'transport': 'internal',
    'hasResidentKey': True,
    'hasUserVerification': True,
    'isUserVerified': True,
    'automaticPresenceSimulation': True,
}


def with_authenticator(visitor) -> tuple[str, object]:
    """A virtual authenticator in the visitor's page: its id, and the DevTools session that made it."""
    cdp = visitor.context.new_cdp_session(visitor.page)
    cdp.send('WebAuthn.enable')
    return cdp.send('WebAuthn.addVirtualAuthenticator', {'options': AUTHENTICATOR})['authenticatorId'], cdp


def test_add_a_passkey_sign_in_with_it_remove_it_and_the_wrong_address(browser, server, add_clinician, tmp_path):
    add_clinician('ada', 'Ada Lovelace')
    with visitors(browser, f'http://localhost:{server.port}') as new_visitor:
        ada = new_visitor()
        page = ada.page
        _authenticator, cdp = with_authenticator(ada)
        ada.log_in('ada', 'Ada Lovelace')

        page.get_by_role('button', name='Profile').click()
        page.get_by_label('Passkey name').fill('Ward laptop')
        page.get_by_role('button', name='Add a passkey').click()
        listed = page.get_by_role('list', name='Your passkeys')
        expect(listed.get_by_role('listitem')).to_have_count(1)
        expect(listed).to_contain_text('Ward laptop')
        expect(listed).to_contain_text('never used')
        assert len(cdp.send('WebAuthn.getCredentials', {'authenticatorId': _authenticator})['credentials']) == 1
        page.keyboard.press('Escape')
        page.get_by_role('button', name='Log out').click()

        page.get_by_role('button', name='Sign in with a passkey').click()  # no username, no password
        expect(ada.header).to_have_text('User: Ada Lovelace | Patient: (not set)')
        page.get_by_role('button', name='Profile').click()
        listed = page.get_by_role('list', name='Your passkeys')
        expect(listed).to_contain_text('last used')
        listed.get_by_role('button', name='Remove Ward laptop').click()
        page.get_by_role('dialog', name='Remove passkey Ward laptop').get_by_role('button', name='Remove').click()
        expect(listed.get_by_role('listitem')).to_have_count(0)
        expect(page.get_by_text('No passkeys yet.')).to_be_visible()
        page.keyboard.press('Escape')
        page.get_by_role('button', name='Log out').click()

        # the device still holds it; Casebook no longer accepts it
        page.get_by_role('button', name='Sign in with a passkey').click()
        expect(page.get_by_role('alert')).to_have_text('That passkey was not accepted.')
        expect(page.get_by_label('Password', exact=True)).to_be_visible()
        page.get_by_label('Username').fill('ada')
        page.get_by_label('Password', exact=True).fill(PASSWORD)
        page.get_by_role('button', name='Log in').click()  # one refusal does not lock the password out
        expect(ada.header).to_have_text('User: Ada Lovelace | Patient: (not set)')
        page.get_by_role('button', name='Profile').click()  # (and the page is connected before it is closed)
        expect(page.get_by_text('No passkeys yet.')).to_be_visible()
        ada.assert_clean()

    with visitors(browser, server.base_url) as new_visitor:  # the same app at http://127.0.0.1:PORT
        elsewhere = new_visitor()
        with_authenticator(elsewhere)
        elsewhere.goto('/')
        elsewhere.page.get_by_role('button', name='Sign in with a passkey').click()
        expect(elsewhere.page.get_by_role('alert')).to_have_text(
            f'Passkeys work only at http://localhost:{server.port} here, or set CASEBOOK_PUBLIC_URL to the address '
            'clinicians open (a name, not an IP address, for example https://casebook.example.org).'
        )
        elsewhere.assert_clean()
    server.assert_log_clean()

    # CASEBOOK_PUBLIC_URL names another host: the browser itself refuses (SecurityError), and the page says where
    named = Server(tmp_path / 'named', tmp_path / 'named.log', {'CASEBOOK_PUBLIC_URL': 'https://casebook.example.org'})
    named.start()
    try:
        named.casebook('user', 'add', 'ada', '--display-name', 'Ada', '--password-stdin', stdin=PASSWORD + '\n')
        with visitors(browser, f'http://localhost:{named.port}') as new_visitor:
            there = new_visitor()
            with_authenticator(there)
            there.goto('/')
            there.page.get_by_role('button', name='Sign in with a passkey').click()
            expect(there.page.get_by_role('alert')).to_have_text(
                'The browser refused: passkeys here work only at https://casebook.example.org. '
                'Open Casebook at that address.'
            )
            there.assert_clean()
        named.assert_log_clean()
    finally:
        named.stop()
