"""The workspace at a desktop, a tablet and a phone width: nothing scrolls sideways, the composer is on screen
without scrolling, every control is big enough for a finger, and everything can be done from the keyboard."""

from __future__ import annotations

import pytest

from tests.browser.test_accessibility import WIDTHS, at_width, overflow, small_targets
from tests.browser_support import Visitor, expect

LONG_NOTE = 'Reviewed on the ward round: ' + 'observations stable, ' * 30 + 'plan unchanged.'
UNBROKEN = 'x' * 300  # a pasted identifier or URL with no place to wrap


def composer_on_screen(visitor: Visitor) -> None:
    height = visitor.page.viewport_size['height']
    for control in (visitor.composer, visitor.page.get_by_role('button', name='Send')):
        box = control.bounding_box()
        assert box is not None and 0 <= box['y'] and box['y'] + box['height'] <= height, box


@pytest.mark.parametrize('width', list(WIDTHS))
def test_the_workspace_fits_every_width(new_visitor, width: str) -> None:
    ada = new_visitor()
    at_width(ada, width)
    ada.create_first_account('ada', 'Dr. Ada Lovelace')
    ada.open_patient('PAT123', 'Dr. Ada Lovelace')
    for n in range(12):
        ada.send(f'Note {n}: {LONG_NOTE}' if n % 3 else f'Note {n}')
    ada.send(UNBROKEN)
    # a long draft: the composer grows to about eight lines, then scrolls; it and Send stay on screen
    ada.composer.fill('\n'.join(f'Draft line {n}' for n in range(12)))
    ada.page.wait_for_timeout(300)
    grown = ada.composer.evaluate('(box) => [box.clientHeight, box.scrollHeight]')
    assert 150 <= grown[0] <= 210 < grown[1], grown  # about eight lines of 24 px shown, the rest scrolled
    found = overflow(ada)
    assert found['scroll'] <= 0, found
    composer_on_screen(ada)
    small = small_targets(ada)
    assert not small, '\n'.join(small)
    search = ada.page.get_by_label('Search notes')
    expect(search).to_be_in_viewport()
    search.fill('note')
    search.press('Enter')
    expect(ada.page.get_by_role('region', name='Search results').locator('.casebook-hit')).to_have_count(12)
    found = overflow(ada)
    assert found['scroll'] <= 0, found
    small = small_targets(ada)
    assert not small, '\n'.join(small)
    ada.page.keyboard.press('Escape')
    ada.page.reload()
    expect(ada.messages.last).to_contain_text(UNBROKEN[:50])
    composer_on_screen(ada)
    ada.assert_clean()


def focused_name(visitor: Visitor) -> str:
    return visitor.page.evaluate(
        """() => { const e = document.activeElement;
                   return (e.getAttribute('aria-label') || e.innerText || e.tagName).trim().split('\\n').pop(); }"""
    ).lower()  # innerText follows CSS text-transform


def test_everything_from_the_keyboard(new_visitor) -> None:
    """Alt+P reaches the patient box, Enter opens the patient; Tab reaches the composer in reading order with a
    visible focus ring on the way; Enter sends."""
    ada = new_visitor()
    ada.create_first_account('ada', 'Dr. Ada Lovelace')
    ada.page.locator('body').click(position={'x': 5, 'y': 300})  # focus nowhere in particular
    ada.page.keyboard.press('Alt+p')
    expect(ada.patient_input).to_be_focused()
    ada.page.keyboard.type('PAT123')
    ada.page.keyboard.press('Enter')
    expect(ada.header).to_have_text('User: Dr. Ada Lovelace | Patient: PAT123')
    ada.page.keyboard.press('/')  # not typing (the focus left the box): "/" jumps back to it
    expect(ada.patient_input).to_be_focused()
    visited = []
    for _ in range(40):
        ada.page.keyboard.press('Tab')
        visited.append(focused_name(ada))
        ring = ada.page.evaluate(
            """() => { const e = document.activeElement, s = getComputedStyle(e), field = e.closest('.q-field');
                       if (field) return field.classList.contains('q-field--focused') ? 'field border' : 'none';
                       return s.outlineStyle !== 'none' ? 'outline' : s.boxShadow !== 'none' ? 'ring' : 'none'; }"""
        )  # an input shows focus as Quasar does, by its field's thicker coloured border
        assert ring != 'none', f'no visible focus on {visited[-1]!r}'
        if visited[-1] == 'type message here':
            break
    assert visited[-1] == 'type message here', visited
    assert visited.index('open patient') < visited.index('type message here'), visited
    ada.page.keyboard.type('Sent without a mouse')
    ada.page.keyboard.press('Enter')
    expect(ada.message('Sent without a mouse')).to_have_count(1)
    expect(ada.composer).to_have_value('')
    expect(ada.composer).to_be_focused()
    ada.assert_clean()


def test_on_a_phone_the_header_actions_are_in_a_menu(new_visitor) -> None:
    ada = new_visitor()
    at_width(ada, 'phone')
    ada.create_first_account('ada', 'Dr. Ada Lovelace')
    expect(ada.page.get_by_role('button', name='Sessions')).to_be_hidden()
    ada.open_patient('PAT123', 'Dr. Ada Lovelace')
    recent = ada.page.get_by_role('list', name='Recent patients')
    expect(recent).to_be_hidden()  # the drawer is closed on a phone …
    ada.page.get_by_role('button', name='Recent patients').click()
    expect(recent.get_by_text('PAT123')).to_be_visible()  # … and slides over the page when asked
    assert overflow(ada)['scroll'] <= 0
    ada.page.keyboard.press('Escape')
    ada.page.mouse.click(380, 400)  # outside the drawer closes it
    expect(recent).to_be_hidden()
    ada.page.get_by_role('button', name='More').click()
    expect(ada.page.get_by_role('menuitem')).to_have_count(3)
    for name in ('Admin', 'Sessions', 'Profile'):
        expect(ada.page.get_by_role('menuitem', name=name, exact=True)).to_be_visible()
    ada.page.get_by_role('menuitem', name='Sessions').click()
    expect(ada.page.get_by_text('Every browser where you are signed in.', exact=False)).to_be_visible()
    at_width(ada, 'desktop')
    ada.page.keyboard.press('Escape')
    expect(ada.page.get_by_role('button', name='More')).to_be_hidden()
    expect(ada.page.get_by_role('button', name='Sessions')).to_be_visible()
    ada.assert_clean()
