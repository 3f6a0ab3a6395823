"""In a real browser: searching one's notes, the words marked, a result 10,000 messages back opened in context."""

from __future__ import annotations

import pytest
from playwright.sync_api import expect

pytestmark = pytest.mark.browser

ALICE, ALICE_NAME = 'alice', 'Dr. Alice'
HOSTILE = '<b>bold</b> <img src=x onerror=alert(1)> paracetamol given'
OLD = 200  # the message chosen: 10,000 messages back from the newest
TOTAL = OLD + 10_001


def import_notes(server, tmp_path, patient_id: str, texts: list[str]) -> None:
    """The notes imported through the real CLI (`casebook import`), as a clinician's history would be."""
    messages = [
        {'sender': 'doctor', 'text': text, 'sent_at': f'2025-{1 + i // 40_000:02d}-01T00:00:00Z'}
        for i, text in enumerate(texts)
    ]
    server.import_conversation(ALICE, patient_id, messages, tmp_path)


def history() -> list[str]:
    texts = [f'note number {n}' for n in range(TOTAL)]
    texts[OLD] = 'Started paracetamol 1 g four times daily'
    texts[-3] = HOSTILE
    return texts


def test_search_marks_the_words_and_opens_a_result_far_back_in_its_conversation(server, new_visitor, tmp_path):
    me = new_visitor()
    me.create_first_account(ALICE, ALICE_NAME)
    import_notes(server, tmp_path, 'PAT1', history())
    import_notes(server, tmp_path, 'PAT2', ['Fièvre à 38.4 °C', 'Temperature 384 (a typo)'])
    me.open_patient('PAT2', ALICE_NAME)
    page = me.page
    results = page.get_by_role('region', name='Search results')
    hits = results.locator('.casebook-hit')

    # Ctrl+K puts the cursor in the box; the results follow typing; accents and case are ignored
    page.keyboard.press('Control+k')
    box = page.get_by_label('Search notes')
    expect(box).to_be_focused()
    box.press_sequentially('FIEVRE 38.4', delay=20)
    expect(hits).to_have_count(1)
    expect(hits.first).to_contain_text('PAT2')
    expect(hits.first.locator('mark')).to_have_text(['Fièvre', '38.4'])

    # Enter searches; newest first; a note's markup is shown as its characters, never run or rendered
    box.fill('parac')
    box.press('Enter')
    expect(hits).to_have_count(2)
    expect(hits.first).to_contain_text('<b>bold</b> <img src=x onerror=alert(1)> paracetamol given')
    expect(hits.first.locator('b, img')).to_have_count(0)
    expect(hits.first.locator('mark')).to_have_text(['paracetamol'])
    expect(hits.nth(1)).to_contain_text('Started paracetamol 1 g four times daily')

    # nothing found says so; Esc returns to the conversation
    box.fill('zebrafish')
    box.press('Enter')
    expect(results.get_by_text('No notes match.')).to_be_visible()
    page.keyboard.press('Escape')
    expect(results).to_be_hidden()
    expect(me.message('Temperature 384 (a typo)')).to_be_visible()

    # the result 10,000 messages back: its patient opened, the message in view among its neighbours
    box.fill('parac')
    box.press('Enter')
    expect(hits).to_have_count(2)
    hits.nth(1).click()
    expect(results).to_be_hidden()
    expect(me.header).to_have_text(f'User: {ALICE_NAME} | Patient: PAT1')
    chosen = me.message('Started paracetamol 1 g four times daily')
    expect(chosen).to_be_in_viewport()
    expect(page.locator('.casebook-found')).to_have_count(1)
    expect(me.message(f'note number {OLD - 1}')).to_have_count(1)
    expect(me.message(f'note number {OLD + 1}')).to_have_count(1)
    expect(page.get_by_role('list', name='Recent patients').get_by_text('PAT1')).to_be_visible()

    # scrolling up loads older messages, scrolling down newer ones
    page.evaluate('window.scrollTo(0, 0)')
    expect(me.message(f'note number {OLD - 40}')).to_have_count(1)
    for _ in range(3):
        page.evaluate('window.scrollTo(0, document.documentElement.scrollHeight)')
        page.wait_for_timeout(400)
    expect(me.message(f'note number {OLD + 60}')).to_have_count(1)
    me.assert_clean()
    server.assert_log_clean()
