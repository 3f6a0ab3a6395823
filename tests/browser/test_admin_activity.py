"""The admin's picture: clinicians signed in now, and 30 days of messages, sign-ins and failed sign-ins."""

from __future__ import annotations

import re

from tests.browser_support import expect


def test_failed_sign_ins_show_on_the_admins_chart(new_visitor, add_clinician) -> None:
    admin = new_visitor()
    admin.create_first_account('ada', 'Dr. Ada Lovelace')  # the first account is an admin
    admin.open_patient('PAT123', 'Dr. Ada Lovelace')
    admin.send('Note one')
    admin.send('Note two')
    add_clinician('bob', 'Dr. Bob Jones')
    intruder = new_visitor()
    for attempt in range(3):
        intruder.goto('/login')
        intruder.page.get_by_label('Username').fill('bob')
        intruder.page.get_by_label('Password', exact=True).fill(f'wrong password {attempt}')
        intruder.page.get_by_role('button', name='Log in').click()
        expect(intruder.page.get_by_role('alert')).to_have_text('Username or password is incorrect.')
    bob = new_visitor()
    bob.log_in('bob', 'Dr. Bob Jones')
    admin.goto('/admin')
    expect(admin.page.get_by_text(re.compile(r'^Signed in now: 2 clinicians$'))).to_be_visible()
    summary = admin.page.get_by_text(re.compile(r'^Last 30 days: '))
    expect(summary).to_have_text(
        re.compile(r'^Last 30 days: 2 messages written, 2 sign-ins, 3 failed sign-ins \(most on \d+ \w+: 3\)\.$')
    )
    chart = admin.page.get_by_role('img', name=re.compile(r'^Last 30 days: 2 messages written'))
    expect(chart).to_be_visible()
    expect(chart.locator('canvas').first).to_be_visible()
    box = chart.bounding_box()
    assert box is not None and box['height'] >= 200 and box['width'] >= 300
    admin.assert_clean()
