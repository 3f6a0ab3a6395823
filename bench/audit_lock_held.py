"""Whether audited writes of different clinicians wait for each other on PostgreSQL, whatever the CPU.

Each writer (a thread with a connection and a clinician of its own) appends an audit row and keeps its transaction
open `--hold` ms more before committing, as a slow network or disk keeps a real one open. While a transaction is
open its chain's head row stays locked. With one chain (before migration 0011) every writer waits for that one
row, so the rate stays near 1000 / hold whatever the number of writers; with a chain per clinician it grows with
the writers. Sleeping is no CPU work, so this holds on a busy machine too, where bench/write_ceiling.py's
figures are bounded by the CPU. Against a fresh database that is dropped afterwards.

    .venv/bin/python bench/audit_lock_held.py --writers 1 4 16
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import sys
import threading
import time
from pathlib import Path

if __package__ in (None, ''):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sqlalchemy import create_engine
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

from bench.common import log, postgres_admin
from casebook.db import Database
from casebook.services import audit


async def _migrate(url: str) -> None:
    database = Database(url)
    try:
        await database.migrate()
    finally:
        await database.dispose()


def run_once(writers: int, duration: float, hold: float) -> float:
    """Audited writes per second, each transaction held open `hold` seconds after its audit row."""
    name = f'casebook_bench_{secrets.token_hex(4)}'
    url = f'postgresql+asyncpg://postgres@127.0.0.1:5432/{name}'
    asyncio.run(postgres_admin(f'CREATE DATABASE "{name}"'))
    try:
        asyncio.run(_migrate(url))
        engine = create_engine(make_url(url).set(drivername='postgresql+psycopg'), pool_size=writers, max_overflow=0)
        counts = [0] * writers
        stop_at = time.time() + duration

        def write(n: int) -> None:
            while time.time() < stop_at:
                with Session(engine) as session:
                    audit.record_sync(session, audit.Entry(audit.PATIENT_OPENED, n + 1, f'writer{n}', 'PAT1'))
                    time.sleep(hold)
                    session.commit()
                counts[n] += 1

        threads = [threading.Thread(target=write, args=(n,)) for n in range(writers)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        engine.dispose()
        return sum(counts) / duration
    finally:
        asyncio.run(postgres_admin(f'DROP DATABASE "{name}"'))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--writers', type=int, nargs='+', default=[1, 4, 16])
    parser.add_argument('--duration', type=float, default=5)
    parser.add_argument('--hold', type=float, default=20, help='ms each transaction stays open after its audit row')
    args = parser.parse_args()
    for writers in args.writers:
        rate = run_once(writers, args.duration, args.hold / 1000)
        log(f'{writers} writers, transactions held {args.hold:g} ms: {rate:.0f} audited writes/s')


if __name__ == '__main__':
    main()
