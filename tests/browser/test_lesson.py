"""The lesson's promises (SPEC §1) and bad input (SPEC §5), each a user story in a real headless Chromium.

Every test gets a fresh install (`casebook serve` on an empty data dir) and fresh browsers; a new browser
context is a separate browser with its own cookies — a second computer or a private window.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest
from playwright.sync_api import Error as PlaywrightError
from playwright.sync_api import expect

pytestmark = pytest.mark.browser

ALICE, ALICE_NAME = 'alice', 'Dr Alice Example'
BOB, BOB_NAME = 'bob', 'Dr Bob Second'


def test_lesson_walkthrough_two_clinicians_each_with_their_own_notebook(server, new_visitor, add_clinician):
    """Section 6 of the lesson, end to end, with a second browser and a second clinician."""
    first = new_visitor()
    page = first.page

    # A fresh install: the first visitor is asked to create the first account.
    first.goto('/')
    expect(page.get_by_label('Username')).to_be_visible()
    expect(page.get_by_label('Display name')).to_be_visible()
    expect(page.get_by_label('Password', exact=True)).to_be_visible()
    expect(page.get_by_role('button', name='Create account')).to_be_visible()
    first.create_first_account(ALICE, ALICE_NAME)
    expect(first.header).to_have_text(f'User: {ALICE_NAME} | Patient: (not set)')

    # Open a patient.
    first.patient_input.fill('PAT123')
    page.get_by_role('button', name='Open patient').click()
    expect(first.header).to_have_text(f'User: {ALICE_NAME} | Patient: PAT123')
    expect(page.get_by_text('No messages for PAT123 yet.')).to_be_visible()
    expect(first.messages).to_have_count(0)

    # Send with the button: the text and the sender are shown, the input is cleared.
    first.composer.fill('Mild fever for 3 days')
    page.get_by_role('button', name='Send').click()
    expect(first.messages).to_have_count(1)
    expect(first.message('Mild fever for 3 days')).to_have_count(1)
    expect(first.messages.first.get_by_text('Doctor', exact=True)).to_be_visible()
    expect(first.composer).to_have_value('')
    expect(page.get_by_text('No messages for PAT123 yet.')).to_be_hidden()

    # Send with the Enter key.
    first.composer.fill('Prescribed paracetamol 500 mg')
    first.composer.press('Enter')
    expect(first.messages).to_have_count(2)
    expect(first.messages.nth(1)).to_contain_text('Prescribed paracetamol 500 mg')
    expect(first.messages.nth(1).get_by_text('Doctor', exact=True)).to_be_visible()
    expect(first.composer).to_have_value('')

    # Whitespace only adds nothing. Events reach the server in order, so once the next real message is
    # shown as the third one, the blank send before it has certainly been handled (and added nothing).
    first.composer.fill('   \t  ')
    page.get_by_role('button', name='Send').click()
    first.composer.fill('    ')
    first.composer.press('Enter')
    first.composer.fill('Follow-up in one week')
    page.get_by_role('button', name='Send').click()
    expect(first.messages).to_have_count(3)
    expect(first.messages.nth(2)).to_contain_text('Follow-up in one week')
    alice_texts = ['Mild fever for 3 days', 'Prescribed paracetamol 500 mg', 'Follow-up in one week']

    # A second browser does not get the first one's workspace: it is asked to log in.
    second = new_visitor()
    other = second.page
    second.goto('/')
    expect(other.get_by_label('Username')).to_be_visible()
    expect(other.get_by_label('Password', exact=True)).to_be_visible()
    expect(other.get_by_role('button', name='Log in')).to_be_visible()
    expect(other.get_by_label('Display name')).to_have_count(0)
    expect(second.header).to_have_count(0)
    expect(other.get_by_text(ALICE_NAME)).to_have_count(0)
    expect(other.get_by_text('PAT123')).to_have_count(0)

    # A second clinician, added by the CLI, logs in there and starts with an empty notebook.
    add_clinician(BOB, BOB_NAME)
    second.log_in(BOB, BOB_NAME)
    expect(second.header).to_have_text(f'User: {BOB_NAME} | Patient: (not set)')
    expect(other.get_by_text('PAT123')).to_have_count(0)  # not in the header, the recent list or anywhere
    expect(other.get_by_text(ALICE_NAME)).to_have_count(0)
    expect(second.messages).to_have_count(0)
    assert 'PAT123' not in other.content()

    # The same patient ID opens Bob's own, empty conversation.
    second.open_patient('PAT123', BOB_NAME)
    expect(other.get_by_text('No messages for PAT123 yet.')).to_be_visible()
    expect(second.messages).to_have_count(0)
    for text in alice_texts:
        expect(other.get_by_text(text)).to_have_count(0)
    second.send('Bob was here')
    expect(second.messages).to_have_count(1)

    # Back in the first browser, a reload shows all of Alice's notebook and nothing of Bob's.
    page.reload()
    expect(first.header).to_have_text(f'User: {ALICE_NAME} | Patient: PAT123')
    expect(first.messages).to_have_count(3)
    for index, text in enumerate(alice_texts):
        expect(first.messages.nth(index)).to_contain_text(text)
        expect(first.messages.nth(index).get_by_text('Doctor', exact=True)).to_be_visible()
    expect(page.get_by_text('Bob was here')).to_have_count(0)
    expect(page.get_by_text(BOB_NAME)).to_have_count(0)

    first.assert_clean()
    second.assert_clean()
    server.assert_log_clean()


def test_reload_keeps_header_patient_conversation_and_unsent_draft(server, new_visitor):
    me = new_visitor()
    me.create_first_account(ALICE, ALICE_NAME)
    me.open_patient('PAT123', ALICE_NAME)
    me.send('First note')
    me.send('Second note')

    me.composer.fill('half-written thought')
    me.page.wait_for_timeout(500)  # the typed value travels to the server over the websocket
    me.page.reload()

    expect(me.header).to_have_text(f'User: {ALICE_NAME} | Patient: PAT123')
    expect(me.messages).to_have_count(2)
    expect(me.messages.nth(0)).to_contain_text('First note')
    expect(me.messages.nth(1)).to_contain_text('Second note')
    expect(me.composer).to_have_value('half-written thought')

    # The kept draft is a real draft: Send sends it.
    me.page.get_by_role('button', name='Send').click()
    expect(me.messages).to_have_count(3)
    expect(me.messages.nth(2)).to_contain_text('half-written thought')
    expect(me.composer).to_have_value('')
    me.page.reload()
    expect(me.messages).to_have_count(3)
    expect(me.composer).to_have_value('')  # a sent draft does not come back

    me.assert_clean()
    server.assert_log_clean()


def test_server_restart_keeps_session_header_conversation_and_draft(server, new_visitor):
    me = new_visitor()
    me.create_first_account(ALICE, ALICE_NAME)
    me.open_patient('PAT123', ALICE_NAME)
    me.send('Before the restart, one')
    me.send('Before the restart, two')
    me.composer.fill('draft across a restart')
    me.page.wait_for_timeout(500)  # the typed value travels to the server over the websocket

    server.stop()
    server.start()
    try:
        me.page.reload()
    except PlaywrightError as error:
        # The page may be reloading itself at this very moment (NiceGUI does when its socket reconnects to a
        # server that does not know it), which aborts this reload; either way a fresh page is loading.
        if 'ERR_ABORTED' not in str(error):
            raise
        me.page.wait_for_load_state()
    me.forget_connection_errors()  # the page saw its server go away; those connection errors are expected

    expect(me.header).to_have_text(f'User: {ALICE_NAME} | Patient: PAT123')
    expect(me.page).not_to_have_url(re.compile(r'/login'))  # still signed in
    expect(me.page.get_by_role('button', name='Log in')).to_have_count(0)
    expect(me.messages).to_have_count(2)
    expect(me.messages.nth(0)).to_contain_text('Before the restart, one')
    expect(me.messages.nth(1)).to_contain_text('Before the restart, two')
    expect(me.composer).to_have_value('draft across a restart')

    # The kept draft is sent as it is, and the workspace goes on working after the restart.
    me.page.get_by_role('button', name='Send').click()
    expect(me.messages).to_have_count(3)
    expect(me.messages.nth(2)).to_contain_text('draft across a restart')
    expect(me.composer).to_have_value('')
    me.send('After the restart')
    expect(me.messages).to_have_count(4)

    me.assert_clean()
    server.assert_log_clean()


def test_log_out_returns_to_login_and_back_button_does_not_bring_the_workspace_back(server, new_visitor):
    me = new_visitor()
    page = me.page
    me.create_first_account(ALICE, ALICE_NAME)
    me.open_patient('PAT123', ALICE_NAME)
    me.send('Confidential finding')

    page.get_by_role('button', name='Log out').click()
    expect(page.get_by_role('button', name='Log in')).to_be_visible()
    expect(page).to_have_url(re.compile(r'/login$'))
    expect(me.header).to_have_count(0)

    page.go_back()
    # Whether the browser re-requests the page or restores it, it must end up on the login page.
    expect(page).to_have_url(re.compile(r'/login$'))
    expect(page.get_by_role('button', name='Log in')).to_be_visible()
    expect(me.header).to_have_count(0)
    expect(page.get_by_text('Confidential finding')).to_have_count(0)
    expect(me.messages).to_have_count(0)

    me.goto('/')
    expect(page).to_have_url(re.compile(r'/login$'))
    expect(page.get_by_role('button', name='Log in')).to_be_visible()
    expect(me.header).to_have_count(0)
    expect(page.get_by_text('Confidential finding')).to_have_count(0)

    # Logging in again brings the notebook back, open at the same patient.
    me.log_in(ALICE, ALICE_NAME, patient='PAT123')
    expect(me.message('Confidential finding')).to_have_count(1)

    me.assert_clean()
    server.assert_log_clean()


def test_recent_patients_switch_between_separate_conversations(server, new_visitor):
    me = new_visitor()
    page = me.page
    me.create_first_account(ALICE, ALICE_NAME)
    drawer = page.locator('aside')
    expect(drawer.get_by_text('Recent patients')).to_be_visible()

    me.open_patient('PAT-A', ALICE_NAME)
    me.send('About patient A')
    me.open_patient('PAT-B', ALICE_NAME)
    expect(me.messages).to_have_count(0)  # a new patient starts with an empty conversation
    me.send('About patient B')
    me.send('More about patient B')
    me.open_patient('PAT-C', ALICE_NAME)
    expect(me.messages).to_have_count(0)

    expect(drawer.get_by_text('PAT-A', exact=True)).to_be_visible()
    expect(drawer.get_by_text('PAT-B', exact=True)).to_be_visible()
    expect(drawer.get_by_text('PAT-C', exact=True)).to_be_visible()

    drawer.get_by_text('PAT-A', exact=True).click()
    expect(me.header).to_have_text(f'User: {ALICE_NAME} | Patient: PAT-A')
    expect(me.messages).to_have_count(1)
    expect(me.message('About patient A')).to_have_count(1)
    expect(page.get_by_text('About patient B')).to_have_count(0)

    drawer.get_by_text('PAT-B', exact=True).click()
    expect(me.header).to_have_text(f'User: {ALICE_NAME} | Patient: PAT-B')
    expect(me.messages).to_have_count(2)
    expect(me.messages.nth(0)).to_contain_text('About patient B')
    expect(me.messages.nth(1)).to_contain_text('More about patient B')
    expect(page.get_by_text('About patient A')).to_have_count(0)

    # Sending now goes to PAT-B's conversation only.
    me.send('Third about B')
    drawer.get_by_text('PAT-A', exact=True).click()
    expect(me.header).to_have_text(f'User: {ALICE_NAME} | Patient: PAT-A')
    expect(me.messages).to_have_count(1)
    expect(page.get_by_text('Third about B')).to_have_count(0)

    # The open patient survives a reload.
    page.reload()
    expect(me.header).to_have_text(f'User: {ALICE_NAME} | Patient: PAT-A')
    expect(me.messages).to_have_count(1)

    me.assert_clean()
    server.assert_log_clean()


HOSTILE = [
    '<img src=x onerror=alert(1)>',
    '<script>alert(2)</script>',
    '[link](javascript:alert(3))',
    '**bold**',
    '</script><img src=x onerror=alert(4)>',
]


def _assert_nothing_rendered_as_markup(me) -> None:
    page = me.page
    expect(me.messages).to_have_count(len(HOSTILE))
    for index, text in enumerate(HOSTILE):
        expect(me.messages.nth(index).get_by_text(text, exact=True)).to_be_visible()
    log = page.get_by_role('log')
    expect(log.locator('img')).to_have_count(0)
    expect(page.locator('img[src="x"]')).to_have_count(0)
    expect(log.locator('script')).to_have_count(0)
    expect(log.locator('strong, b, em')).to_have_count(0)
    expect(log.locator('a')).to_have_count(0)
    expect(page.locator('a[href^="javascript:" i]')).to_have_count(0)
    injected = page.evaluate(
        "() => [...document.scripts].filter(s => s.text.trim() === 'alert(2)' || s.src.endsWith('/x')).length"
    )
    assert injected == 0, 'a message became a <script> element'


def test_hostile_message_text_is_shown_as_plain_text(server, new_visitor):
    me = new_visitor()
    me.create_first_account(ALICE, ALICE_NAME)
    me.open_patient('PAT123', ALICE_NAME)
    for text in HOSTILE:
        me.send(text)
    _assert_nothing_rendered_as_markup(me)

    # Stored messages are drawn again on page load, by another path: still plain text.
    me.page.reload()
    expect(me.header).to_have_text(f'User: {ALICE_NAME} | Patient: PAT123')
    _assert_nothing_rendered_as_markup(me)

    assert me.dialogs == []
    me.assert_clean()
    server.assert_log_clean()


def test_over_long_message_is_refused_clearly_and_kept_in_the_box(server, new_visitor):
    me = new_visitor()
    page = me.page
    me.create_first_account(ALICE, ALICE_NAME)
    me.open_patient('PAT123', ALICE_NAME)

    too_long = 'x' * 10_001
    me.composer.fill(too_long)
    page.get_by_role('button', name='Send').click()
    expect(page.get_by_text(re.compile(r'limit is 10,000'))).to_be_visible()
    expect(me.messages).to_have_count(0)
    expect(me.composer).to_have_value(too_long)

    # Enter is refused the same way.
    me.composer.press('Enter')
    expect(page.get_by_text(re.compile(r'limit is 10,000'))).not_to_have_count(0)
    expect(me.composer).to_have_value(too_long)

    # Exactly at the limit it is accepted, and after a reload the refused text did not become a message.
    me.send('y' * 10_000)
    expect(me.messages).to_have_count(1)
    page.reload()
    expect(me.messages).to_have_count(1)
    expect(me.messages.first).to_contain_text('y' * 10_000)
    expect(page.get_by_text(re.compile('x{100}'))).to_have_count(0)

    me.assert_clean()
    server.assert_log_clean()


def test_invalid_patient_ids_are_refused_clearly_and_the_header_is_kept(server, new_visitor):
    me = new_visitor()
    page = me.page
    me.create_first_account(ALICE, ALICE_NAME)
    open_button = page.get_by_role('button', name='Open patient')

    def refused(patient_id: str, message: str, header: str) -> None:
        me.patient_input.fill(patient_id)
        open_button.click()
        expect(page.get_by_text(message)).to_be_visible()
        expect(me.header).to_have_text(f'User: {ALICE_NAME} | Patient: {header}')

    only = re.compile(r'Patient ID: only letters, digits')
    refused('../etc/passwd', only, '(not set)')
    refused(' ', re.compile('Patient ID: please enter one'), '(not set)')

    me.open_patient('PAT-OK', ALICE_NAME)
    expect(page.get_by_text(only)).to_have_count(0)  # the message goes once a valid ID is opened
    me.send('Still here')

    refused('P' * 65, re.compile(r'Patient ID: at most 64 characters'), 'PAT-OK')
    refused("PAT 1'; DROP TABLE messages; --", only, 'PAT-OK')
    me.patient_input.fill('')
    me.patient_input.fill('PAT\u202e321')  # a right-to-left override
    me.patient_input.press('Enter')  # Enter opens, too
    expect(page.get_by_text(only)).to_be_visible()
    expect(me.header).to_have_text(f'User: {ALICE_NAME} | Patient: PAT-OK')

    # Nothing refused reached the recent list, the database still works, spaces around an ID are trimmed.
    drawer = page.locator('aside')
    expect(drawer.get_by_text(re.compile(r'passwd|DROP|PPPP'))).to_have_count(0)
    expect(me.message('Still here')).to_have_count(1)
    me.patient_input.fill('  PAT-TRIM  ')
    open_button.click()
    expect(me.header).to_have_text(f'User: {ALICE_NAME} | Patient: PAT-TRIM')
    me.open_patient('P' * 64, ALICE_NAME)  # exactly 64 is fine

    me.assert_clean()
    server.assert_log_clean()


def test_text_typed_as_the_page_appears_is_not_replaced_by_the_stored_draft(server, new_visitor):
    me = new_visitor()
    page = me.page
    me.create_first_account(ALICE, ALICE_NAME)
    me.open_patient('PAT123', ALICE_NAME)
    me.composer.fill('stale draft from before')
    page.wait_for_timeout(500)  # the typed value travels to the server over the websocket

    # Delay the server's socket.io events to the page (the connection itself is made at once), as a slow
    # network would, until the clinician has typed into the box that is already on screen; then deliver
    # them in order (NiceGUI drops messages that arrive out of order). The page counts the frames it receives,
    # so the test waits for them to be handled instead of for a time.
    typed = 'what the clinician typed just now'
    held: list[str] = []
    sockets: list = []
    to_page = {'frames': 0}
    to_server: list[str] = []
    released = {'yes': False}  # the handlers run on this thread, inside Playwright calls

    def route(ws) -> None:
        upstream = ws.connect_to_server()
        sockets.append(ws)

        def from_server(message) -> None:
            if not released['yes'] and isinstance(message, str) and message.startswith('42'):
                held.append(message)
            else:
                to_page['frames'] += 1
                ws.send(message)

        def from_page(message) -> None:
            to_server.append(message if isinstance(message, str) else '')
            upstream.send(message)

        upstream.on_message(from_server)
        ws.on_message(from_page)

    def until(condition: Callable[[], bool], what: str) -> None:
        for _ in range(500):  # 10 s
            if condition():
                return
            page.wait_for_timeout(20)
        raise AssertionError(f'timed out waiting until {what}')

    page.add_init_script(
        'window.casebookFrames = 0; const NativeSocket = window.WebSocket;'
        'window.WebSocket = class extends NativeSocket { constructor(...args) { super(...args);'
        ' this.addEventListener("message", () => { window.casebookFrames += 1; }); } };'
    )
    page.route_web_socket(re.compile(r'/_nicegui_ws/'), route)
    page.reload()
    expect(me.composer).to_have_value('stale draft from before')
    page.wait_for_function('() => window.did_handshake === true')  # connected: typed text now goes straight out
    assert len(sockets) == 1, 'the page socket did not go through the delaying route'
    me.composer.fill(typed)
    until(lambda: any(typed in message for message in to_server), 'the typed value went to the server')
    released['yes'] = True
    for message in held:  # the delayed messages arrive, in order
        to_page['frames'] += 1
        sockets[-1].send(message)
    page.wait_for_function(f'() => window.casebookFrames >= {to_page["frames"]}')  # every frame reached the page

    assert me.composer.input_value() == typed, 'the typed text was replaced'
    page.get_by_role('button', name='Send').click()
    expect(me.messages).to_have_count(1)
    expect(me.messages.first).to_contain_text('what the clinician typed just now')
