"""In a real browser: two-step sign-in with an authenticator app as a clinician meets it. The secret is read off the
Profile and the codes computed here (pyotp), as a phone would; the second step, with nothing reachable before it;
a code used once; a recovery code; an administrator's reset sending the clinician's open tab to the login page."""

from __future__ import annotations

import time

import pyotp
import pytest
from playwright.sync_api import expect

from casebook.services import two_step
from tests.browser_support import PASSWORD

pytestmark = pytest.mark.browser

ALICE, ALICE_NAME = 'alice', 'Dr. Alice'
BOB, BOB_NAME = 'bob', 'Dr. Bob'


def password_step(visitor, username: str) -> None:
    visitor.goto('/login')
    visitor.page.get_by_label('Username').fill(username)
    visitor.page.get_by_label('Password', exact=True).fill(PASSWORD)
    visitor.page.get_by_role('button', name='Log in').click()
    expect(visitor.page.get_by_role('button', name='Verify')).to_be_visible()


def test_set_up_sign_in_with_a_code_once_a_recovery_code_and_an_admin_reset(
    server, new_visitor, add_clinician, tmp_path
):
    alice = new_visitor()
    alice.create_first_account(ALICE, ALICE_NAME)
    add_clinician(BOB, BOB_NAME)
    bob = new_visitor()
    bob.log_in(BOB, BOB_NAME)
    page = bob.page

    # set up on the Profile: the secret read off the page, a code computed from it
    page.get_by_role('button', name='Profile').click()
    page.get_by_role('button', name='Set up two-step sign-in').click()
    secret = page.get_by_label('Secret key').inner_text().strip()
    expect(page.get_by_role('img', name='QR code for your authenticator app')).to_be_visible()
    totp = pyotp.TOTP(secret)
    page.get_by_label('Code', exact=True).fill(totp.now())
    page.get_by_role('button', name='Turn on two-step sign-in').click()
    codes = page.get_by_role('region', name='Recovery codes').inner_text().split()
    assert len(codes) == two_step.RECOVERY_CODES
    with page.expect_download() as download:
        page.get_by_role('button', name='Download recovery codes').click()
    download.value.save_as(tmp_path / 'codes.txt')
    saved = (tmp_path / 'codes.txt').read_text()
    assert all(code in saved for code in codes)
    page.keyboard.press('Escape')
    page.get_by_role('button', name='Log out').click()
    expect(page.get_by_role('button', name='Log in')).to_be_visible()

    # the second step: between the password and the code, nothing of the workspace can be reached
    password_step(bob, BOB)
    other_tab = bob.context.new_page()
    other_tab.goto(bob.base_url + '/')
    expect(other_tab.get_by_role('button', name='Log in')).to_be_visible()
    assert other_tab.url.endswith('/login')
    export = bob.context.request.get(bob.base_url + '/export/P1/json', max_redirects=0)
    assert export.status != 200
    other_tab.close()
    # the confirming code was this step's: the next step's code (one step of drift is accepted) signs in
    code = totp.at(time.time() + two_step.STEP_SECONDS)
    page.get_by_label('Code', exact=True).fill(code)
    page.get_by_role('button', name='Verify').click()
    expect(bob.header).to_have_text(f'User: {BOB_NAME} | Patient: (not set)')
    page.get_by_role('button', name='Log out').click()
    expect(page.get_by_role('button', name='Log in')).to_be_visible()

    # the same code again, in its window: refused
    password_step(bob, BOB)
    page.get_by_label('Code', exact=True).fill(code)
    page.get_by_role('button', name='Verify').click()
    expect(page.get_by_text(two_step.REFUSED)).to_be_visible()

    # a recovery code instead
    page.get_by_role('button', name='Use a recovery code').click()
    page.get_by_label('Recovery code', exact=True).fill(codes[0])
    page.get_by_role('button', name='Verify').click()
    expect(bob.header).to_have_text(f'User: {BOB_NAME} | Patient: (not set)')

    # an administrator resets it: Bob's open tab goes to the login page at once, saying why
    alice.goto('/admin')
    alice.page.get_by_role('button', name=f'Reset two-step sign-in of {BOB}').click()
    alice.page.get_by_role('button', name='Reset', exact=True).click()
    expect(alice.page.get_by_text(f'Two-step sign-in of {BOB} reset')).to_be_visible()
    expect(page.get_by_text('An administrator reset your two-step sign-in. Please log in again.')).to_be_visible()
    bob.log_in(BOB, BOB_NAME)  # the password alone again
    alice.assert_clean()
    bob.assert_clean()
    log = server.log()
    assert secret not in log and not any(c in log for c in codes)  # never logged
    server.assert_log_clean()
