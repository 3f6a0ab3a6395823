"""Messages at a glance: an empty conversation says so, and messages are grouped under the day they were
written (the clinician's own days), with sender, author and local time on each."""

from __future__ import annotations

import re
import sqlite3
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from support import PASSWORD
from tests.browser_support import expect

ZONE = 'Europe/Berlin'  # what the test browser reports, below


def import_history(server, username: str, patient: str, moments: list[datetime], tmp_path) -> None:
    messages = [
        {'sender': 'doctor', 'text': f'note {n}', 'sent_at': moment.isoformat().replace('+00:00', 'Z')}
        for n, moment in enumerate(moments)
    ]
    server.import_conversation(username, patient, messages, tmp_path)


def test_an_empty_conversation_says_so_and_days_are_marked(browser, server, add_clinician, tmp_path) -> None:
    context = browser.new_context(viewport={'width': 1280, 'height': 800}, timezone_id=ZONE)
    try:
        page = context.new_page()
        add_clinician('ada', 'Dr. Ada Lovelace')
        zone = ZoneInfo(ZONE)
        today = datetime.now(zone).replace(hour=12, minute=0, second=0, microsecond=0)
        three_days_ago = today - timedelta(days=3)
        # two on one day (one just after local midnight, which is still the evening before in UTC), one yesterday
        moments = [
            three_days_ago.replace(hour=0, minute=30).astimezone(UTC),
            three_days_ago.replace(hour=18).astimezone(UTC),
            (today - timedelta(days=1)).astimezone(UTC),
        ]
        import_history(server, 'ada', 'PAT123', moments, tmp_path)
        page.goto(server.base_url + '/login')
        page.get_by_label('Username').fill('ada')
        page.get_by_label('Password', exact=True).fill(PASSWORD)
        page.get_by_role('button', name='Log in').click()
        page.get_by_label('Patient ID').fill('PAT777')
        page.get_by_role('button', name='Open patient').click()
        expect(page.get_by_text('No messages for PAT777 yet.')).to_be_visible()
        page.get_by_label('Patient ID').fill('PAT123')
        page.get_by_role('button', name='Open patient').click()
        expect(page.get_by_role('article')).to_have_count(3)
        days = page.get_by_role('heading', level=3)
        expect(days).to_have_text(
            [f'{three_days_ago:%A}, {three_days_ago:%-d %B %Y}', f'Yesterday, {today - timedelta(days=1):%-d %B %Y}']
        )
        expect(page.get_by_role('article').first).to_contain_text(f'{three_days_ago:%Y-%m-%d} 00:30')
        page.get_by_label('Type message here').fill('written today')
        page.get_by_role('button', name='Send').click()
        expect(page.get_by_role('article')).to_have_count(4)
        expect(days).to_have_count(3)
        expect(days.last).to_have_text(f'Today, {today:%-d %B %Y}')
        expect(page.get_by_role('article').last).to_contain_text('Doctor')
        expect(page.get_by_role('article').last).to_contain_text('Dr. Ada Lovelace')
    finally:
        context.close()


def test_a_slow_send_shows_it_is_on_its_way_and_a_failed_one_offers_retry(new_visitor, server) -> None:
    ada = new_visitor()
    ada.create_first_account('ada', 'Dr. Ada Lovelace')
    ada.open_patient('PAT123', 'Dr. Ada Lovelace')
    ada.send('saved before')
    status = ada.page.get_by_role('status').filter(has_text=re.compile(r'Sending|Not saved'))
    retry = ada.page.get_by_role('button', name='Retry')
    expect(retry).to_be_hidden()
    blocker = sqlite3.connect(server.data_dir / 'casebook.sqlite3', timeout=0)
    blocker.execute('BEGIN EXCLUSIVE')  # another process holds the write lock past the 5 s busy timeout
    try:
        ada.composer.fill('written while the database is busy')
        ada.page.get_by_role('button', name='Send').click()
        expect(status).to_have_text('Sending…', timeout=3000)
        expect(status).to_have_text(
            'Not saved: the database could not be reached. Your message is still in the box.', timeout=20000
        )
        expect(retry).to_be_visible()
        expect(ada.composer).to_have_value('written while the database is busy')
        expect(ada.messages).to_have_count(1)
    finally:
        blocker.rollback()
        blocker.close()
    retry.click()
    expect(ada.message('written while the database is busy')).to_have_count(1)
    expect(retry).to_be_hidden()
    expect(status).to_have_count(0)
    expect(ada.composer).to_have_value('')
    ada.page.reload()
    expect(ada.messages).to_have_count(2)  # stored once
    ada.forget_console_errors()
    assert not ada.page_errors
