"""How long the admin page's activity chart takes to count with a long audit trail behind it.

The chart (issue 6) shows messages written, sign-ins and failed sign-ins per day for the last 30 days; every
admin page load counts them with `audit.daily_counts` (grouped per hour by the database, over the index on
`at`). This fills the audit table of a fresh database with N rows spread evenly over the last 60 days (so half
fall in the chart's window; 70 % messages written, 8 % sign-ins, 2 % failed sign-ins, the rest other actions)
and times `daily_counts` and `count_signed_in` as the page calls them, on SQLite and on the local PostgreSQL.

The rows are written straight into the table in one statement, not appended through the hash chain (the
chain is not what is measured, and `audit verify` would call this trail broken). Fresh databases, dropped
afterwards.

    .venv/bin/python bench/admin_activity.py --rows 100000 1000000 3000000
    .venv/bin/python bench/admin_activity.py --rows 10000 --repeat 2          # smoke
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
import uuid
from datetime import timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

if __package__ in (None, ''):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sqlalchemy import text

from bench.common import load_average, log, machine, postgres_admin, summary, write_result
from casebook.db import Database
from casebook.services import audit, sessions

LIMITS = sessions.Limits(max_age=timedelta(hours=12), idle=timedelta(minutes=15))  # the settings' defaults

SPAN_DAYS = 60
ZONE = ZoneInfo('Europe/London')

# n % 100 → action: 0–69 message written, 70–77 sign-in, 78–79 failed sign-in, the rest patient opened
FILL = {
    'postgresql': (
        'INSERT INTO audit_events (seq, at, action, actor_id, actor, patient_id, address, detail, prev_hash, hash) '
        "SELECT n, now() - (n * (:days * interval '1 day') / :rows), "
        "CASE WHEN n % 100 < 70 THEN 'message-written' WHEN n % 100 < 78 THEN 'sign-in' "
        "WHEN n % 100 < 80 THEN 'sign-in-failed' ELSE 'patient-opened' END, n % 500 + 1, 'bench', "
        "'PAT' || (n % 5000), '127.0.0.1', '', repeat('0', 64), repeat('0', 64) FROM generate_series(1, :rows) AS n"
    ),
    'sqlite': (
        'WITH RECURSIVE s(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM s WHERE n < :rows) '
        'INSERT INTO audit_events (seq, at, action, actor_id, actor, patient_id, address, detail, prev_hash, hash) '
        "SELECT n, datetime('now', '-' || (n * :days * 86400 / :rows) || ' seconds'), "
        "CASE WHEN n % 100 < 70 THEN 'message-written' WHEN n % 100 < 78 THEN 'sign-in' "
        "WHEN n % 100 < 80 THEN 'sign-in-failed' ELSE 'patient-opened' END, n % 500 + 1, 'bench', "
        "'PAT' || (n % 5000), '127.0.0.1', '', printf('%064d', 0), printf('%064d', 0) FROM s"
    ),
}


async def _measure(url: str, rows: int, repeat: int) -> dict:
    database = Database(url)
    try:
        await database.migrate()
        dialect = database.engine.dialect.name
        started = time.perf_counter()
        async with database.session() as session:
            await session.execute(text(FILL[dialect]), {'rows': rows, 'days': SPAN_DAYS})
            await session.commit()
        fill_seconds = time.perf_counter() - started
        if dialect == 'postgresql':
            async with database.session() as session:
                await session.execute(text('ANALYZE audit_events'))
                await session.commit()
        chart, signed_in, counted = [], [], 0
        for _ in range(repeat):
            async with database.session() as session:
                started = time.perf_counter()
                days = await audit.daily_counts(session, days=30, zone=ZONE)
                chart.append((time.perf_counter() - started) * 1000)
                started = time.perf_counter()
                await sessions.count_signed_in(session, limits=LIMITS)
                signed_in.append((time.perf_counter() - started) * 1000)
            counted = sum(sum(counts.values()) for _, counts in days)
        return {
            'engine': dialect,
            'rows': rows,
            'counted_in_chart': counted,
            'fill_seconds': round(fill_seconds, 1),
            'daily_counts_ms': summary(chart),
            'count_signed_in_ms': summary(signed_in),
        }
    finally:
        await database.dispose()


async def _on_postgres(rows: int, repeat: int) -> dict:
    name = f'casebook_bench_activity_{uuid.uuid4().hex[:8]}'
    await postgres_admin(f'CREATE DATABASE {name}')
    try:
        return await _measure(f'postgresql+asyncpg://postgres@127.0.0.1:5432/{name}', rows, repeat)
    finally:
        await postgres_admin(f'DROP DATABASE IF EXISTS {name} WITH (FORCE)')


async def _on_sqlite(rows: int, repeat: int) -> dict:
    with tempfile.TemporaryDirectory(prefix='casebook-bench-activity-') as directory:
        return await _measure(f'sqlite+aiosqlite:///{directory}/casebook.db', rows, repeat)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--rows', type=int, nargs='+', default=[100_000, 1_000_000])
    parser.add_argument('--repeat', type=int, default=7, help='timed calls per size and engine')
    parser.add_argument('--engines', nargs='+', choices=['sqlite', 'postgresql'], default=['sqlite', 'postgresql'])
    parser.add_argument('--name', default='admin-activity')
    args = parser.parse_args()
    results = []
    for rows in args.rows:
        for engine in args.engines:
            log(f'{engine}: {rows:,} audit rows')
            run = _on_sqlite if engine == 'sqlite' else _on_postgres
            result = asyncio.run(run(rows, args.repeat))
            log(
                f'  filled in {result["fill_seconds"]} s; chart counted {result["counted_in_chart"]:,} rows: '
                f'median {result["daily_counts_ms"]["median"]:.1f} ms, max {result["daily_counts_ms"]["max"]:.1f} ms; '
                f'signed in now: median {result["count_signed_in_ms"]["median"]:.2f} ms'
            )
            results.append(result)
    path = write_result(args.name, {'machine': machine(), 'load_average': load_average(), 'results': results})
    log(f'written to {path}')


if __name__ == '__main__':
    main()
