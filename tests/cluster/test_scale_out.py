"""Two instances, one notebook: live updates and sessions cross instances (PostgreSQL, Redis, real browser)."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

from tests.browser_support import Visitor

pytestmark = pytest.mark.browser

WITHIN_MS = 1000  # the promise: a message on instance A is in a tab on instance B within one second


def test_a_message_sent_on_one_instance_is_in_a_tab_on_the_other_within_a_second(cluster, new_visitor):
    running = cluster(instances=2)
    running.add_clinician('ada', 'Dr Ada')
    on_a = new_visitor(running.instance_urls[0])  # the ward's desktop
    on_b = new_visitor(running.instance_urls[1])  # her tablet, served by the other instance
    for visitor in (on_a, on_b):
        visitor.log_in('ada', 'Dr Ada')
        visitor.open_patient('PAT-7', 'Dr Ada')

    delays = []
    for number in range(5):
        text = f'Cross-instance note {number}: K+ 4.1'
        on_a.composer.fill(text)
        clicked_at = on_a.page.evaluate('Date.now()')  # both pages run in one browser: one clock
        on_a.page.get_by_role('button', name='Send').click()
        seen_at = on_b.page.wait_for_function(
            'text => document.body.innerText.includes(text) && Date.now()', arg=text, polling='raf', timeout=5000
        ).json_value()
        delays.append(seen_at - clicked_at)
        expect(on_a.message(text)).to_have_count(1)
        expect(on_b.message(text)).to_have_count(1)  # once, not twice (local delivery and Redis)
    print(f'send on A -> visible on B, ms: {delays}')
    assert max(delays) < WITHIN_MS, f'slower than {WITHIN_MS} ms: {delays}'
    on_a.assert_clean()
    on_b.assert_clean()
    running.assert_logs_clean()


def test_signed_in_through_one_instance_and_logout_there_ends_the_tab_on_the_other(cluster, new_visitor):
    running = cluster(instances=2)
    running.add_clinician('ada', 'Dr Ada')
    on_a = new_visitor(running.instance_urls[0])
    on_a.log_in('ada', 'Dr Ada')
    on_a.open_patient('PAT-7', 'Dr Ada')
    on_a.send('Written through A')

    # The same browser (same cookies), a tab reloaded through the other instance: still signed in, same notebook.
    on_b = Visitor(on_a.context, running.instance_urls[1])
    on_b.goto('/')
    expect(on_b.header).to_have_text('User: Dr Ada | Patient: PAT-7')
    expect(on_b.message('Written through A')).to_have_count(1)

    on_a.page.get_by_role('button', name='Log out').click()
    expect(on_a.page).to_have_url(re.compile(r'/login$'))
    expect(on_b.page).to_have_url(re.compile(r'/login$'), timeout=3000)  # the logoff crossed instances at once
    on_b.goto('/')
    expect(on_b.page).to_have_url(re.compile(r'/login$'))  # and the session is over there too, not only the tab
    expect(on_b.page.get_by_role('button', name='Log in')).to_be_visible()
    running.assert_logs_clean()
