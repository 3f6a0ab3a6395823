"""In a real browser: writing on several lines (Enter sends, Shift+Enter breaks the line, an input method's Enter
does neither), pasting, the draft across a reload, the length near the limit, and note templates."""

from __future__ import annotations

import pytest
from playwright.sync_api import expect

pytestmark = pytest.mark.browser

ALICE, ALICE_NAME = 'alice', 'Dr. Alice'
BOB, BOB_NAME = 'bob', 'Dr. Bob'
SOAP = 'S: \nO: \nA: \nP: '


def shown_text(visitor, index: int = -1) -> str:
    """A shown message's text as the page lays it out (line breaks included)."""
    return visitor.messages.nth(index).locator('.casebook-text').inner_text()


def test_several_lines_enter_sends_and_an_input_methods_enter_does_not(new_visitor):
    me = new_visitor()
    me.create_first_account(ALICE, ALICE_NAME)
    me.open_patient('PAT1', ALICE_NAME)
    box = me.composer

    # Shift+Enter twice, then Enter: one message of three lines, shown as three lines
    box.click()
    box.press_sequentially('S: cough 3 days')
    box.press('Shift+Enter')
    box.press_sequentially('O: T 38.4, SpO2 96 %')
    box.press('Shift+Enter')
    box.press_sequentially('A: viral')
    box.press('Enter')
    expect(me.messages).to_have_count(1)
    expect(box).to_have_value('')
    assert shown_text(me) == 'S: cough 3 days\nO: T 38.4, SpO2 96 %\nA: viral'

    # Enter alone sends a line
    box.press_sequentially('one line')
    box.press('Enter')
    expect(me.messages).to_have_count(2)
    assert shown_text(me) == 'one line'

    # a pasted text keeps its line breaks (leading and trailing blank lines trimmed when sent)
    me.context.grant_permissions(['clipboard-read', 'clipboard-write'], origin=me.base_url)
    me.page.evaluate("navigator.clipboard.writeText('\\npasted one\\npasted two\\npasted three\\n\\n')")
    box.focus()
    box.press('Control+V')
    expect(box).to_have_value('\npasted one\npasted two\npasted three\n\n')
    me.page.get_by_role('button', name='Send').click()
    expect(me.messages).to_have_count(3)
    assert shown_text(me) == 'pasted one\npasted two\npasted three'

    # Enter that confirms an input method's composition does not send: it is part of typing. Then a plain
    # Enter sends, through the same path: exactly one message, the composed text, arrives
    box.press_sequentially('日本語')
    box.dispatch_event('compositionstart', {'data': ''})
    box.press('Enter')
    box.dispatch_event('compositionend', {'data': '日本語'})
    box.press('Shift+Enter')
    box.press_sequentially('done')
    box.press('Enter')
    expect(me.messages).to_have_count(4)
    assert shown_text(me).split('\n')[0] == '日本語'
    assert shown_text(me).split('\n')[-1] == 'done'
    expect(me.messages).to_have_count(4)

    # a draft with line breaks survives a reload
    box.press_sequentially('first line')
    box.press('Shift+Enter')
    box.press_sequentially('second line')
    me.page.reload()
    expect(me.composer).to_have_value('first line\nsecond line')

    # near the limit the count shows; over it Send says why and the text stays
    me.composer.fill('x' * 9_500)
    expect(me.page.get_by_text('9,500 of 10,000 characters')).to_be_visible()
    me.composer.fill('y' * 10_001)
    expect(me.page.get_by_text('10,001 of 10,000 characters: 1 too many to send')).to_be_visible()
    me.page.get_by_role('button', name='Send').click()
    expect(me.page.get_by_text('The message has 10,001 characters; the limit is 10,000.')).to_be_visible()
    expect(me.composer).to_have_value('y' * 10_001)
    me.composer.fill('')
    expect(me.page.get_by_text('of 10,000 characters')).to_be_hidden()
    expect(me.messages).to_have_count(4)
    me.assert_clean()


def test_a_template_is_kept_inserted_and_sent_and_is_ones_own(new_visitor, add_clinician):
    me = new_visitor()
    me.create_first_account(ALICE, ALICE_NAME)
    add_clinician(BOB, BOB_NAME)
    page = me.page

    # kept on the Profile: added, then edited
    page.get_by_role('button', name='Profile').click()
    page.get_by_role('button', name='Add template').click()
    page.get_by_label('Template name').fill('SOAP')
    page.get_by_label('Template text').fill(SOAP)
    page.get_by_role('button', name='Save template').click()
    templates = page.get_by_role('list', name='Your templates')
    expect(templates.get_by_role('listitem')).to_have_count(1)
    expect(templates).to_contain_text('SOAP')
    page.get_by_role('button', name='Add template').click()
    page.get_by_label('Template name').fill('Discharge <b>note</b>')
    page.get_by_label('Template text').fill('Discharged home.\nFollow-up: ')
    page.get_by_role('button', name='Save template').click()
    expect(templates.get_by_role('listitem')).to_have_count(2)
    expect(templates.locator('b')).to_have_count(0)  # a name is text, never markup
    page.keyboard.press('Escape')
    expect(page.get_by_role('dialog')).to_be_hidden()

    # `/` in an empty box lists them; the chosen one replaces the `/`, the cursor at its first line's end
    me.open_patient('PAT1', ALICE_NAME)
    me.composer.click()
    me.composer.press('/')
    menu = page.get_by_role('menu')
    expect(menu.get_by_role('menuitem')).to_have_count(3)  # two templates, and Manage templates…
    menu.get_by_role('menuitem', name='SOAP').click()
    expect(me.composer).to_have_value(SOAP)
    assert me.composer.evaluate('(box) => [box.selectionStart, box.selectionEnd]') == [3, 3]
    me.composer.press_sequentially('cough 3 days')
    expect(me.composer).to_have_value('S: cough 3 days\nO: \nA: \nP: ')
    me.composer.press('Enter')
    expect(me.messages).to_have_count(1)
    assert shown_text(me) == 'S: cough 3 days\nO: \nA: \nP:'  # as written; only the end trimmed

    # the Templates button inserts where the cursor is
    me.composer.press_sequentially('Seen today. ')
    page.get_by_role('button', name='Templates').click()
    page.get_by_role('menu').get_by_role('menuitem', name='Discharge <b>note</b>').click()
    expect(me.composer).to_have_value('Seen today. Discharged home.\nFollow-up: ')
    me.composer.press('Enter')
    expect(me.messages).to_have_count(2)

    # another clinician sees none of them
    bob = new_visitor()
    bob.log_in(BOB, BOB_NAME)
    bob.open_patient('PAT1', BOB_NAME)
    bob.page.get_by_role('button', name='Templates').click()
    bob_menu = bob.page.get_by_role('menu')
    expect(bob_menu).to_contain_text('No templates yet.')
    expect(bob_menu.get_by_role('menuitem')).to_have_count(1)  # Manage templates…
    bob.page.keyboard.press('Escape')
    expect(bob_menu).to_be_hidden()

    # edited and deleted on the Profile
    page.get_by_role('button', name='Profile').click()
    page.get_by_role('button', name='Edit SOAP').click()
    page.get_by_label('Template name').fill('SOAP note')
    page.get_by_role('button', name='Save template').click()
    expect(templates).to_contain_text('SOAP note')
    page.get_by_role('button', name='Delete Discharge <b>note</b>').click()
    page.get_by_role('dialog').get_by_role('button', name='Delete', exact=True).click()
    expect(templates.get_by_role('listitem')).to_have_count(1)
    me.assert_clean()
    bob.assert_clean()
