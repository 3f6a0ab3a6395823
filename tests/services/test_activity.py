"""What the admin's chart and 'signed in now' count: per-day activity from the audit trail, live sessions."""

from __future__ import annotations

from datetime import timedelta
from zoneinfo import ZoneInfo

import pytest

from casebook.db import Database
from casebook.models import utcnow
from casebook.services import audit, sessions
from casebook.services.sessions import Limits
from tests.conftest import add_clinician


async def record(database: Database, action: str, times: int, actor_id: int) -> None:
    async with database.session() as session:
        for _ in range(times):
            await audit.record_now(session, audit.Entry(action, actor_id, 'ada', 'PAT1'))


@pytest.mark.parametrize('zone', ['UTC', 'Europe/Berlin', 'Pacific/Kiritimati', 'Pacific/Pago_Pago'])
async def test_thirty_days_of_activity_counted_in_the_admins_days(database: Database, zone: str) -> None:
    ada = await add_clinician(database, 'ada')
    await record(database, audit.MESSAGE_WRITTEN, 3, ada.id)
    await record(database, audit.SIGN_IN, 2, ada.id)
    await record(database, audit.SIGN_IN_FAILED, 4, ada.id)
    await record(database, audit.PATIENT_OPENED, 5, ada.id)  # not one of the chart's series
    now = utcnow()
    async with database.session() as session:
        days = await audit.daily_counts(session, days=30, zone=ZoneInfo(zone), now=now)
    assert len(days) == 30
    assert [day for day, _ in days] == sorted(day for day, _ in days)
    today = now.astimezone(ZoneInfo(zone)).date()
    assert days[-1][0] == today and days[0][0] == today - timedelta(days=29)
    # everything just recorded falls on today, or (a few ms before a local midnight) on yesterday
    totals = {action: sum(counts[action] for _, counts in days) for action in audit.ACTIVITY}
    assert totals == {audit.MESSAGE_WRITTEN: 3, audit.SIGN_IN: 2, audit.SIGN_IN_FAILED: 4}
    assert all(sum(counts.values()) == 0 for _, counts in days[:-2])


async def test_activity_older_than_the_window_is_left_out(database: Database) -> None:
    ada = await add_clinician(database, 'ada')
    await record(database, audit.MESSAGE_WRITTEN, 2, ada.id)
    later = utcnow() + timedelta(days=31)  # seen from a month ahead, today's rows are too old
    async with database.session() as session:
        days = await audit.daily_counts(session, days=30, zone=ZoneInfo('UTC'), now=later)
    assert sum(sum(counts.values()) for _, counts in days) == 0


async def test_signed_in_now_counts_clinicians_with_a_live_session(database: Database) -> None:
    limits = Limits(max_age=timedelta(hours=12), idle=timedelta(minutes=15))
    ada, bob, eve = [await add_clinician(database, name) for name in ('ada', 'bob', 'eve')]
    async with database.session() as session:
        assert await sessions.count_signed_in(session, limits=limits) == 0
        await sessions.start(session, clinician_id=ada.id)
        await sessions.start(session, clinician_id=ada.id)  # a second browser: still one clinician
        bob_token = await sessions.start(session, clinician_id=bob.id)
        await sessions.start(session, clinician_id=eve.id)
        assert await sessions.count_signed_in(session, limits=limits) == 3
        await sessions.end(session, bob_token)
        assert await sessions.count_signed_in(session, limits=limits) == 2
        no_idle = Limits(max_age=timedelta(hours=12), idle=timedelta(0))
        assert await sessions.count_signed_in(session, limits=no_idle) == 0  # everyone idle past a zero limit
