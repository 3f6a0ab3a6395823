"""In a real browser: older pages on scrolling up, live updates between tabs, corrections."""

from __future__ import annotations

import asyncio
import concurrent.futures
import time

import pytest
from playwright.sync_api import expect

from casebook.db import Database
from support import seed_messages

pytestmark = pytest.mark.browser

ALICE, ALICE_NAME = 'alice', 'Dr. Alice'
# true once the page has not scrolled for 300 ms (polled every animation frame)
SCROLL_SETTLED = """() => {
  const now = performance.now();
  if (window.casebookLastY !== window.scrollY) { window.casebookLastY = window.scrollY; window.casebookSince = now; }
  return now - window.casebookSince > 300;
}"""


def seed(data_dir, patient_id: str, count: int) -> None:
    """Messages m0 … m{count-1} for alice, written through the services into the running server's database."""

    async def write() -> None:
        database = Database(f'sqlite+aiosqlite:///{data_dir / "casebook.sqlite3"}')
        try:
            await seed_messages(database, ALICE, patient_id, [f'message number {n}' for n in range(count)])
        finally:
            await database.dispose()

    # Playwright's sync API keeps an event loop running in this thread: write from a thread of its own
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, write()).result()


def test_scrolling_up_loads_older_pages_and_keeps_the_reading_position(server, new_visitor):
    me = new_visitor()
    me.create_first_account(ALICE, ALICE_NAME)
    seed(server.data_dir, 'PAT1', 130)
    me.open_patient('PAT1', ALICE_NAME)
    expect(me.messages).to_have_count(50)
    newest = me.message('message number 129')
    expect(newest).to_be_in_viewport()  # opened at the newest message

    anchor = me.message('message number 80')  # the oldest shown before loading
    me.page.evaluate('window.scrollTo(0, 0)')
    expect(me.messages).to_have_count(100)
    expect(me.messages.first).to_contain_text('message number 30')
    expect(anchor).to_be_in_viewport()  # the reading position is kept: the message read is still in view
    me.page.evaluate('window.scrollTo(0, 0)')
    expect(me.messages).to_have_count(130)
    expect(me.page.get_by_text('Beginning of the conversation')).to_be_visible()
    texts = me.page.get_by_role('article').evaluate_all('els => els.map(e => e.innerText)')
    numbers = [int(t.split('message number ')[1].split()[0]) for t in texts]
    assert numbers == list(range(130))  # in order, no gap, no duplicate
    me.assert_clean()


def test_ones_own_send_scrolls_to_it_from_far_up_and_a_reload_does_not_scroll_again(server, new_visitor):
    me = new_visitor()
    me.create_first_account(ALICE, ALICE_NAME)
    seed(server.data_dir, 'PAT1', 60)
    me.open_patient('PAT1', ALICE_NAME)
    expect(me.message('message number 59')).to_be_in_viewport()
    me.message('message number 12').scroll_into_view_if_needed()
    expect(me.message('message number 59')).not_to_be_in_viewport()
    me.composer.fill('my own newest note')
    me.page.get_by_role('button', name='Send').click()
    expect(me.message('my own newest note')).to_be_in_viewport()  # scrolled there by the card as it was drawn
    me.page.reload()
    expect(me.message('my own newest note')).to_be_in_viewport()  # the workspace opens at the newest
    me.page.wait_for_function(SCROLL_SETTLED)  # the opening's own scrolling done, so what follows is the page's
    me.message('message number 40').scroll_into_view_if_needed()
    me.page.wait_for_timeout(300)
    expect(me.message('my own newest note')).not_to_be_in_viewport()  # and nothing pulls it back down
    me.assert_clean()


def test_a_second_tab_shows_a_new_message_without_reload(server, new_visitor):
    me = new_visitor()
    me.create_first_account(ALICE, ALICE_NAME)
    me.open_patient('PAT1', ALICE_NAME)
    other_tab = me.context.new_page()  # same browser, same clinician
    other_tab.goto(server.base_url + '/')
    expect(other_tab.get_by_text('Conversation about PAT1')).to_be_visible()
    third_tab = me.context.new_page()
    third_tab.goto(server.base_url + '/')
    third_tab.get_by_label('Patient ID').fill('PAT2')
    third_tab.get_by_role('button', name='Open patient').click()
    expect(third_tab.get_by_text('Conversation about PAT2')).to_be_visible()

    me.page.bring_to_front()
    started = time.monotonic()
    me.send('seen in the other tab')
    expect(other_tab.get_by_role('article').get_by_text('seen in the other tab')).to_be_visible()
    print(f'\nlive update reached the other tab {1000 * (time.monotonic() - started):.0f} ms after Send')
    expect(third_tab.get_by_role('article')).to_have_count(0)  # a tab on another patient is not disturbed


def test_correct_and_mark_entered_in_error(server, new_visitor):
    me = new_visitor()
    me.create_first_account(ALICE, ALICE_NAME)
    me.open_patient('PAT1', ALICE_NAME)
    me.send('Temp 39.4')
    me.send('Wrong patient')
    me.messages.nth(0).get_by_role('button', name='Correct or mark this message').click()
    me.page.get_by_label('Corrected text').fill('Temp 38.4')
    me.page.get_by_role('button', name='Save correction').click()
    expect(me.messages).to_have_count(3)
    expect(me.messages.nth(0)).to_contain_text('Corrected below')
    expect(me.messages.nth(2)).to_contain_text('Correction')
    expect(me.messages.nth(2)).to_contain_text('Temp 38.4')

    me.messages.nth(1).get_by_role('button', name='Correct or mark this message').click()
    me.page.get_by_role('button', name='Mark as entered in error').click()
    expect(me.messages.nth(1)).to_contain_text('Entered in error')
    struck = me.messages.nth(1).get_by_text('Wrong patient', exact=True)
    expect(struck).to_have_css('text-decoration-line', 'line-through')
    me.page.reload()
    expect(me.messages).to_have_count(3)
    expect(me.messages.nth(1)).to_contain_text('Entered in error')
    expect(me.messages.nth(0)).to_contain_text('Corrected below')
    me.assert_clean()
