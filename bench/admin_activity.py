"""How long the admin page takes with a long audit trail behind it: the page as the server renders it over
HTTP, and the activity chart's counting on its own.

The page (`/admin`) shows clinicians signed in now, a chart of messages written, sign-ins and failed sign-ins
per day for the last 30 days (issue 6), the clinicians, and the newest 100 audit rows. The chart's counts come
from `audit.daily_counts`: the counts of finished hours are kept in `activity_hours` (migration 0006), so a
load reads at most 720 hours × 3 actions from there and counts only the last hour or so from the trail; the
first load after the trail grew (or after the migration) counts the missing hours once and stores them.

For each size and engine this fills the audit table of a fresh database with N rows spread evenly over the
last 60 days (so half fall in the chart's window; 70 % messages written, 8 % sign-ins, 2 % failed sign-ins,
the rest patients opened), prepares an admin with a live session and the browser storage a login leaves
(bench/load.py's preset sign-in), starts `casebook serve` on that database and times `GET /admin` with the
admin's signed session cookie, from the request until the whole response is read: the first load (which
counts the missing hours) and `--repeat` loads after it, each on a fresh connection. Every load must answer
200 with the admin page and its chart, or the run stops. With the server stopped, it then times
`audit.daily_counts` and `sessions.count_signed_in` on their own as the page calls them (the admin's browser
has told no time zone: UTC), `--repeat` times each.

The rows are written straight into the table in one statement, not appended through the hash chain (the
chain is not what is measured, and `audit verify` would call this trail broken); their sequence numbers start
above 10^9, clear of the rows the chain appends meanwhile. Fresh databases and data dirs, removed afterwards.

    .venv/bin/python bench/admin_activity.py --rows 100000 1000000 3000000
    .venv/bin/python bench/admin_activity.py --rows 10000 --repeat 2          # smoke
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import shutil
import sys
import time
import uuid
from pathlib import Path
from zoneinfo import ZoneInfo

if __package__ in (None, ''):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sqlalchemy import text

from bench.common import (
    RESULTS,
    casebook_server,
    default_limits,
    http_get,
    load_average,
    log,
    machine,
    postgres_admin,
    summary,
    work_dir,
    write_result,
)
from bench.load import _prepare
from casebook.config import Settings
from casebook.db import Database
from casebook.services import audit, sessions

SPAN_DAYS = 60
ZONE = ZoneInfo('UTC')  # the page's, for an admin whose browser has told no time zone
FIRST_SEQ = 10**9
PAGE_TIMEOUT = 600.0
ADMIN_PAGE_SHOWS = ('Casebook admin', 'Messages written')  # the page's heading and its chart's first series

# n % 100 → action: 0–69 message written, 70–77 sign-in, 78–79 failed sign-in, the rest patient opened
FILL = {
    'postgresql': (
        'INSERT INTO audit_events (seq, at, action, actor_id, actor, patient_id, address, detail, prev_hash, hash) '
        "SELECT :first + n, now() - (n * (:days * interval '1 day') / :rows), "
        "CASE WHEN n % 100 < 70 THEN 'message-written' WHEN n % 100 < 78 THEN 'sign-in' "
        "WHEN n % 100 < 80 THEN 'sign-in-failed' ELSE 'patient-opened' END, n % 500 + 1, 'bench', "
        "'PAT' || (n % 5000), '127.0.0.1', '', repeat('0', 64), repeat('0', 64) FROM generate_series(1, :rows) AS n"
    ),
    'sqlite': (
        'WITH RECURSIVE s(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM s WHERE n < :rows) '
        'INSERT INTO audit_events (seq, at, action, actor_id, actor, patient_id, address, detail, prev_hash, hash) '
        "SELECT :first + n, datetime('now', '-' || (n * :days * 86400 / :rows) || ' seconds'), "
        "CASE WHEN n % 100 < 70 THEN 'message-written' WHEN n % 100 < 78 THEN 'sign-in' "
        "WHEN n % 100 < 80 THEN 'sign-in-failed' ELSE 'patient-opened' END, n % 500 + 1, 'bench', "
        "'PAT' || (n % 5000), '127.0.0.1', '', printf('%064d', 0), printf('%064d', 0) FROM s"
    ),
}


async def _fill(url: str, rows: int) -> float:
    """N audit rows written straight into the table (see the module's docstring); the seconds it took."""
    database = Database(url)
    try:
        dialect = database.engine.dialect.name
        started = time.perf_counter()
        async with database.session() as session:
            await session.execute(text(FILL[dialect]), {'rows': rows, 'days': SPAN_DAYS, 'first': FIRST_SEQ})
            await session.commit()
        fill_seconds = time.perf_counter() - started
        if dialect == 'postgresql':
            async with database.session() as session:
                await session.execute(text('ANALYZE audit_events'))
                await session.commit()
        return fill_seconds
    finally:
        await database.dispose()


def _page_loads(port: int, cookie: str, loads: int) -> list[float]:
    """`GET /admin` as the signed-in admin, `loads` times: milliseconds until each whole response was read."""
    times = []
    for _ in range(loads):
        started = time.perf_counter()
        status, body = http_get(port, '/admin', {'Cookie': f'session={cookie}'}, timeout=PAGE_TIMEOUT)
        times.append((time.perf_counter() - started) * 1000)
        if status != 200 or not all(shown in body for shown in ADMIN_PAGE_SHOWS):
            raise RuntimeError(f'GET /admin answered {status} without the admin page and its chart: {body[:300]!r}')
    return times


async def _calls(url: str, repeat: int) -> dict:
    """`daily_counts` and `count_signed_in` on their own, as the page calls them, `repeat` times each."""
    database = Database(url)
    limits = default_limits()
    try:
        chart, signed_in, counted = [], [], 0
        for _ in range(repeat):
            async with database.session() as session:
                started = time.perf_counter()
                days = await audit.daily_counts(session, days=30, zone=ZONE)
                chart.append((time.perf_counter() - started) * 1000)
                started = time.perf_counter()
                await sessions.count_signed_in(session, limits=limits)
                signed_in.append((time.perf_counter() - started) * 1000)
            counted = sum(sum(counts.values()) for _, counts in days)
        return {
            'counted_in_chart': counted,
            'daily_counts_ms': summary(chart),
            'count_signed_in_ms': summary(signed_in),
        }
    finally:
        await database.dispose()


def measure(engine: str, rows: int, repeat: int) -> dict:
    """One engine at one size: a fresh database filled, the page timed through a server, then the calls alone."""
    data_dir = work_dir(f'admin-activity-{engine}') / 'data'
    secret = secrets.token_urlsafe(32)
    name = f'casebook_bench_activity_{uuid.uuid4().hex[:8]}'
    database_url = f'postgresql+asyncpg://postgres@127.0.0.1:5432/{name}' if engine == 'postgresql' else None
    env = {'CASEBOOK_STORAGE_SECRET': secret}
    if database_url is not None:
        asyncio.run(postgres_admin(f'CREATE DATABASE {name}'))
        env['CASEBOOK_DATABASE_URL'] = database_url
    try:
        admin = asyncio.run(_prepare(data_dir, 1, secret, preset=True, database_url=database_url, role='admin'))[0]
        url = Settings(data_dir=data_dir, storage_secret=secret, database_url=database_url).effective_database_url
        fill_seconds = asyncio.run(_fill(url, rows))
        server = casebook_server(data_dir, RESULTS / 'logs' / f'admin-activity-{engine}-{rows}.log', **env)
        with server:
            loads = _page_loads(server.port, admin.cookie or '', repeat + 1)
        return {
            'engine': engine,
            'rows': rows,
            'fill_seconds': round(fill_seconds, 1),
            'admin_page_first_ms': round(loads[0], 1),
            'admin_page_ms': summary(loads[1:]),
            **asyncio.run(_calls(url, repeat)),
            'server_log_errors': server.errors_in_log(),
        }
    finally:
        if database_url is not None:
            asyncio.run(postgres_admin(f'DROP DATABASE IF EXISTS {name} WITH (FORCE)'))
        shutil.rmtree(data_dir.parent, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--rows', type=int, nargs='+', default=[100_000, 1_000_000])
    parser.add_argument('--repeat', type=int, default=7, help='timed page loads and calls per size and engine')
    parser.add_argument('--engines', nargs='+', choices=['sqlite', 'postgresql'], default=['sqlite', 'postgresql'])
    parser.add_argument('--name', default='admin-activity')
    args = parser.parse_args()
    results = []
    for rows in args.rows:
        for engine in args.engines:
            log(f'{engine}: {rows:,} audit rows')
            result = measure(engine, rows, args.repeat)
            page = result['admin_page_ms']
            log(
                f'  filled in {result["fill_seconds"]} s; GET /admin: first {result["admin_page_first_ms"]:.0f} ms, '
                f'then median {page["median"]:.1f} ms, max {page["max"]:.1f} ms; daily_counts alone '
                f'({result["counted_in_chart"]:,} rows in the chart): median {result["daily_counts_ms"]["median"]:.1f}'
                f' ms; signed in now: median {result["count_signed_in_ms"]["median"]:.2f} ms'
            )
            results.append(result)
    path = write_result(args.name, {'machine': machine(), 'load_average': load_average(), 'results': results})
    log(f'written to {path}')
    errors = [f'{r["engine"]} {r["rows"]:,}: {line}' for r in results for line in r['server_log_errors']]
    for line in errors:
        log(f'server log: {line}')
    return 1 if errors else 0


if __name__ == '__main__':
    sys.exit(main())
