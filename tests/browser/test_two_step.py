"""In a real browser: two-step sign-in with an authenticator app as a clinician meets it where it is required
(CASEBOOK_REQUIRE_TWO_STEP). The secret is read off the page and the codes computed here (pyotp), as a phone would;
the set-up and the second step, with nothing reachable before them; a code used once; a recovery code; an
administrator's reset sending the clinician's open tab to the login page. (Setting it up on the Profile and
turning it off: tests/web/test_two_step.py.)"""

from __future__ import annotations

import time

import pyotp
import pytest
from playwright.sync_api import expect

from casebook.services import two_step
from support import PASSWORD

pytestmark = pytest.mark.browser

ALICE, ALICE_NAME = 'alice', 'Dr. Alice'
BOB, BOB_NAME = 'bob', 'Dr. Bob'


def password_step(visitor, username: str) -> None:
    visitor.goto('/login')
    visitor.page.get_by_label('Username').fill(username)
    visitor.page.get_by_label('Password', exact=True).fill(PASSWORD)
    visitor.page.get_by_role('button', name='Log in').click()
    expect(visitor.page.get_by_role('button', name='Verify')).to_be_visible()


@pytest.fixture
def server_env() -> dict[str, str]:
    """Two-step sign-in required: the set-up comes right after the password."""
    return {'CASEBOOK_REQUIRE_TWO_STEP': 'true'}


def test_required_set_up_a_code_once_a_recovery_code_and_an_admin_reset(server, new_visitor, add_clinician, tmp_path):
    alice = new_visitor()
    alice.create_first_account(ALICE, ALICE_NAME)
    add_clinician(BOB, BOB_NAME)
    bob = new_visitor()
    page = bob.page

    # required: right after the password, the set-up, and nothing of the workspace before it is done
    bob.goto('/login')
    page.get_by_label('Username').fill(BOB)
    page.get_by_label('Password', exact=True).fill(PASSWORD)
    page.get_by_role('button', name='Log in').click()
    expect(page.get_by_text('This Casebook requires a second step at sign-in.')).to_be_visible()
    page.get_by_role('button', name='Set up two-step sign-in').click()
    secret = page.get_by_label('Secret key').inner_text().strip()  # read off the page, as a phone would
    expect(page.get_by_role('img', name='QR code for your authenticator app')).to_be_visible()
    nothing_yet(bob)
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
    nothing_yet(bob)
    page.get_by_role('button', name='Continue').click()
    expect(bob.header).to_have_text(f'User: {BOB_NAME} | Patient: (not set)')
    log_out(bob)

    # the second step: between the password and the code, nothing of the workspace can be reached
    password_step(bob, BOB)
    nothing_yet(bob)
    # the confirming code was this step's: the next step's code (one step of drift is accepted) signs in
    code = totp.at(time.time() + two_step.STEP_SECONDS)
    page.get_by_label('Code', exact=True).fill(code)
    page.get_by_role('button', name='Verify').click()
    expect(bob.header).to_have_text(f'User: {BOB_NAME} | Patient: (not set)')
    log_out(bob)

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

    # an administrator resets it: Bob's open tab goes to the login page at once, saying why; his next sign-in
    # leads to the set-up again
    alice.goto('/admin')
    alice.page.get_by_role('button', name=f'Reset two-step sign-in of {BOB}').click()
    alice.page.get_by_role('button', name='Reset', exact=True).click()
    expect(alice.page.get_by_text(f'Two-step sign-in of {BOB} reset')).to_be_visible()
    expect(page.get_by_text('An administrator reset your two-step sign-in. Please log in again.')).to_be_visible()
    page.get_by_label('Username').fill(BOB)
    page.get_by_label('Password', exact=True).fill(PASSWORD)
    page.get_by_role('button', name='Log in').click()
    expect(page.get_by_text('This Casebook requires a second step at sign-in.')).to_be_visible()
    alice.assert_clean()
    bob.assert_clean()
    log = server.log()
    assert secret not in log and not any(c in log for c in codes)  # never logged
    server.assert_log_clean()


def nothing_yet(visitor) -> None:
    """Half signed in: another tab of the same browser finds the login page, and an export finds nothing."""
    other_tab = visitor.context.new_page()
    other_tab.goto(visitor.base_url + '/')
    expect(other_tab.get_by_role('button', name='Log in')).to_be_visible()
    assert other_tab.url.endswith('/login')
    other_tab.close()
    export = visitor.context.request.get(visitor.base_url + '/export/P1/json', max_redirects=0)
    assert export.status != 200


def log_out(visitor) -> None:
    visitor.page.get_by_role('button', name='Log out').click()
    expect(visitor.page.get_by_role('button', name='Log in')).to_be_visible()
