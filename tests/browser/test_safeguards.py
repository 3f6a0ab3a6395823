"""Safeguards in a real browser: ended sessions leave every open tab at once, automatic logoff warns first,
headers and cookies as promised, and the console stays clean under the Content-Security-Policy."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

pytestmark = pytest.mark.browser

ADA, ADA_NAME = 'ada', 'Dr Ada Example'
BOB, BOB_NAME = 'bob', 'Dr Bob Second'


def test_logging_out_in_one_tab_sends_the_other_tab_to_the_login_page_at_once(server, new_visitor):
    me = new_visitor()
    me.create_first_account(ADA, ADA_NAME)
    me.open_patient('PAT1', ADA_NAME)
    other_tab = me.context.new_page()
    other_tab.goto(server.base_url + '/')
    expect(other_tab.get_by_role('article')).to_have_count(0)
    expect(other_tab.locator('header').get_by_text(re.compile(r'^\s*User: '))).to_contain_text('PAT1')
    me.page.get_by_role('button', name='Log out').click()
    expect(me.page).to_have_url(re.compile(r'/login$'))
    # the other tab, untouched, leaves by itself within moments
    expect(other_tab).to_have_url(re.compile(r'/login$'), timeout=3000)
    expect(other_tab.get_by_role('button', name='Log in')).to_be_visible()
    me.assert_clean()


def test_disabling_an_account_ends_its_open_tab_at_once(server, new_visitor, add_clinician):
    admin = new_visitor()
    admin.create_first_account(ADA, ADA_NAME)
    add_clinician(BOB, BOB_NAME)
    bob = new_visitor()
    bob.log_in(BOB, BOB_NAME)
    bob.open_patient('PAT2', BOB_NAME)
    admin.goto('/admin')
    admin.page.get_by_role('group').filter(has_text='bob').get_by_role('button', name='Disable').click()
    expect(admin.page.get_by_text('bob disabled; 1 session ended.')).to_be_visible()
    expect(bob.page).to_have_url(re.compile(r'/login$'), timeout=3000)
    expect(bob.page.get_by_text('Your account was disabled by an administrator.')).to_be_visible()
    admin.assert_clean()
    bob.assert_clean()


def test_headers_and_the_session_cookie(server, new_visitor):
    me = new_visitor()
    response = me.page.goto(server.base_url + '/login')
    headers = response.headers
    policy = headers['content-security-policy']
    assert "frame-ancestors 'none'" in policy and "default-src 'self'" in policy and "object-src 'none'" in policy
    assert headers['cache-control'] == 'no-store'
    assert headers['x-content-type-options'] == 'nosniff'
    assert headers['referrer-policy'] == 'no-referrer'
    assert 'strict-transport-security' not in headers  # plain HTTP here; CASEBOOK_HTTPS=true adds it
    me.create_first_account(ADA, ADA_NAME)
    (cookie,) = [cookie for cookie in me.context.cookies() if cookie['name'] == 'session']
    assert cookie['httpOnly'] is True
    assert cookie['sameSite'] == 'Lax'
    me.open_patient('PAT1', ADA_NAME)
    me.send('works under the policy')
    me.assert_clean()  # no CSP violation (or any other error) on the console


class TestIdleLogoff:
    @pytest.fixture
    def server_env(self) -> dict[str, str]:
        return {'CASEBOOK_IDLE_TIMEOUT_MINUTES': '0.2'}  # 12 s: warned 6 s before

    def test_the_page_warns_then_logs_off_and_says_why(self, server, new_visitor):
        me = new_visitor()
        me.create_first_account(ADA, ADA_NAME)
        me.open_patient('PAT1', ADA_NAME)
        warning = me.page.get_by_role('alertdialog')
        expect(warning).to_contain_text('Still there?', timeout=15_000)
        expect(me.page).to_have_url(re.compile(r'/login$'), timeout=15_000)
        expect(me.page.get_by_text('You were logged off after 12 seconds without activity.')).to_be_visible()
        me.assert_clean()

    def test_stay_signed_in_keeps_working(self, server, new_visitor):
        me = new_visitor()
        me.create_first_account(ADA, ADA_NAME)
        me.open_patient('PAT1', ADA_NAME)
        expect(me.page.get_by_role('alertdialog')).to_contain_text('Still there?', timeout=15_000)
        me.page.get_by_role('button', name='Stay signed in').click()
        expect(me.page.get_by_role('alertdialog')).to_be_hidden()
        me.send('still here')
        expect(me.page).to_have_url(re.compile(r'/$'))
        me.assert_clean()


FIND_LOGOUT = """() => {
  const elements = mounted_app.elements;
  for (const [id, element] of Object.entries(elements)) {
    if (element.props && element.props.label === 'Log out') {
      const click = element.events.find((event) => event.type === 'click');
      return {client_id: window.clientId, id: Number(id), listener_id: click.listener_id};
    }
  }
  return null;
}"""


def test_a_forged_event_naming_another_clinicians_page_does_nothing(server, new_visitor, add_clinician):
    """Bob learns Ada's page ids (say, from a log) and sends her 'Log out' click down his own socket."""
    ada = new_visitor()
    ada.create_first_account(ADA, ADA_NAME)
    ada.open_patient('PAT1', ADA_NAME)
    add_clinician(BOB, BOB_NAME)
    bob = new_visitor()
    bob.log_in(BOB, BOB_NAME)
    target = ada.page.evaluate(FIND_LOGOUT)
    assert target is not None
    forge = "(t) => window.socket.emit('event', {id: t.id, client_id: t.client_id, listener_id: t.listener_id})"
    bob.page.evaluate(forge, target)
    bob.page.wait_for_timeout(1000)
    expect(ada.page).not_to_have_url(re.compile(r'/login$'))
    ada.send('still signed in')  # her page still works: the forged click was dropped
    assert 'dropped a socket message naming a page this socket did not join' in server.log()
    ada.assert_clean()
    bob.assert_clean()
