"""What the admin's chart and 'signed in now' count: per-day activity from the audit trail, live sessions."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import func, select, update

from casebook.db import Database
from casebook.models import ActivityHour, utcnow
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


async def record_at(database: Database, monkeypatch: pytest.MonkeyPatch, moments: list[datetime], action: str) -> None:
    """Audit rows written at past moments (the trail takes its time from the clock: here, a set one)."""
    with monkeypatch.context() as clock:
        for moment in moments:
            clock.setattr(audit, 'utcnow', lambda moment=moment: moment)
            await record(database, action, 1, None)


def expected(moments: list[datetime], zone: ZoneInfo, days: int, now: datetime) -> int:
    first = now.astimezone(zone).date() - timedelta(days=days - 1)
    return sum(1 for moment in moments if moment.astimezone(zone).date() >= first)


async def chart_total(database: Database, zone: ZoneInfo, days: int = 30) -> tuple[int, list]:
    async with database.session() as session:
        counted = await audit.daily_counts(session, days=days, zone=zone)
    return sum(counts[audit.MESSAGE_WRITTEN] for _, counts in counted), counted


@pytest.mark.parametrize('zone', ['UTC', 'Pacific/Kiritimati', 'Pacific/Pago_Pago'])
async def test_finished_hours_are_counted_once_kept_and_read_back(
    database: Database, monkeypatch: pytest.MonkeyPatch, zone: str
) -> None:
    tz = ZoneInfo(zone)
    now = utcnow()
    past = [now - timedelta(hours=h) for h in (3, 3, 26, 24 * 10, 24 * 29 + 5, 24 * 35, 24 * 45)]
    await record_at(database, monkeypatch, past, audit.MESSAGE_WRITTEN)
    await record(database, audit.MESSAGE_WRITTEN, 2, None)  # now: counted from the trail itself
    total, _ = await chart_total(database, tz)
    assert total == expected(past, tz, 30, now) + 2
    async with database.session() as session:
        stored = await session.scalar(select(func.sum(ActivityHour.count)))
    assert stored >= expected(past[:4], tz, 30, now), 'the finished hours were not kept'

    await record(database, audit.MESSAGE_WRITTEN, 3, None)
    total, _ = await chart_total(database, tz)
    assert total == expected(past, tz, 30, now) + 5

    # the chart reads the kept counts (it does not count those hours again): a changed one shows
    ten_days_ago = (now - timedelta(days=10)).replace(minute=0, second=0, microsecond=0)
    async with database.session() as session:
        await session.execute(
            update(ActivityHour).where(ActivityHour.hour == ten_days_ago).values(count=ActivityHour.count + 100)
        )
        await session.commit()
    total, _ = await chart_total(database, tz)
    assert total == expected(past, tz, 30, now) + 105

    # a longer window counts the older hours too
    total, counted = await chart_total(database, tz, days=40)
    assert len(counted) == 40
    assert total == expected(past, tz, 40, now) + 105


async def test_two_admin_pages_at_once_count_the_same(database: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    now = utcnow()
    past = [now - timedelta(hours=h) for h in range(2, 24 * 20, 7)]
    await record_at(database, monkeypatch, past, audit.SIGN_IN_FAILED)
    zone = ZoneInfo('Europe/Berlin')

    async def one() -> list:
        async with database.session() as session:
            return await audit.daily_counts(session, days=30, zone=zone)

    first, second = await asyncio.gather(one(), one())
    assert first == second
    assert sum(counts[audit.SIGN_IN_FAILED] for _, counts in first) == expected(past, zone, 30, now)
