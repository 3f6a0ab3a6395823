"""How many sends per second one PostgreSQL database takes, with every send's audit row chained to the last.

Every send is one transaction: touch the conversation, insert the message, append the audit row (which locks
the chain's one head row until the commit). That head row is the one thing all instances of a cluster queue
on, so this is the ceiling of a whole cluster's write rate on one database, whatever the number of instances.

Each writer is a process of its own (no interpreter shared between writers), with its own clinician and
conversation, sending as fast as it can through the same service function the app uses
(`conversations.post_message_sync`). For each writer count: sends per second, latency of one send, and how
often a writer found the chain's lock taken. Against a fresh database that is dropped afterwards.

    .venv/bin/python bench/write_ceiling.py --writers 1 2 4 8 16 --duration 15
    .venv/bin/python bench/write_ceiling.py --writers 2 --duration 3        # smoke
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import secrets
import sys
import time
import uuid
from pathlib import Path

if __package__ in (None, ''):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

from bench.common import load_average, log, machine, postgres_admin, summary, write_result
from casebook.db import Database
from casebook.services import accounts, conversations


async def _prepare(url: str, writers: int) -> list[tuple[accounts.ClinicianInfo, int]]:
    database = Database(url)
    try:
        await database.migrate()
        prepared = []
        async with database.session() as session:
            for n in range(writers):
                clinician = await accounts.add_clinician(
                    session, username=f'writer{n}', display_name=f'Writer {n}', password=secrets.token_urlsafe(12)
                )
                conversation = await conversations.open_conversation(
                    session, clinician=clinician, patient_id=f'PAT{n:05d}'
                )
                prepared.append((clinician, conversation.id))
        return prepared
    finally:
        await database.dispose()


def _writer(url: str, clinician, conversation_id: int, start_at: float, stop_at: float, results) -> None:
    engine = create_engine(make_url(url).set(drivername='postgresql+psycopg'), pool_size=1, max_overflow=0)
    latencies, sequence = [], 0
    outcome: list[float] | str = latencies
    try:
        while time.time() < start_at:
            time.sleep(0.01)
        while time.time() < stop_at:
            started = time.perf_counter()
            with Session(engine, expire_on_commit=False) as session:
                conversations.post_message_sync(
                    session,
                    clinician=clinician,
                    conversation_id=conversation_id,
                    client_id=str(uuid.uuid4()),
                    text=f'note {sequence} from {clinician.username}',
                    patient_id='PAT',
                    address='127.0.0.1',
                )
            latencies.append((time.perf_counter() - started) * 1000)
            sequence += 1
    except Exception as error:  # reported to the parent, which stops the run with it
        outcome = f'{type(error).__name__}: {error}'
    finally:
        engine.dispose()
        results.put(outcome)


def _lock_waits(url: str, stop_at: float) -> tuple[int, int]:
    """(samples, writers waiting on a lock summed over samples), every 50 ms, from pg_stat_activity."""
    engine = create_engine(make_url(url).set(drivername='postgresql+psycopg'), isolation_level='AUTOCOMMIT')
    database = make_url(url).database
    samples = waiting = 0
    query = text("SELECT count(*) FROM pg_stat_activity WHERE datname = :db AND wait_event_type = 'Lock'")
    try:
        with engine.connect() as connection:
            while time.time() < stop_at:
                waiting += connection.execute(query, {'db': database}).scalar_one()
                samples += 1
                time.sleep(0.05)
    finally:
        engine.dispose()
    return samples, waiting


def run_once(writers: int, duration: float) -> dict:
    tag = secrets.token_hex(4)
    name = f'casebook_bench_{tag}'
    url = f'postgresql+asyncpg://postgres@127.0.0.1:5432/{name}'
    asyncio.run(postgres_admin(f'CREATE DATABASE "{name}"'))
    try:
        prepared = asyncio.run(_prepare(url, writers))
        context = multiprocessing.get_context('spawn')
        results = context.Queue()
        start_at = time.time() + 3  # every process started and connected before the clock runs
        stop_at = start_at + duration
        processes = [
            context.Process(target=_writer, args=(url, clinician, conversation_id, start_at, stop_at, results))
            for clinician, conversation_id in prepared
        ]
        for process in processes:
            process.start()
        load_before = load_average()
        while time.time() < start_at:
            time.sleep(0.01)
        samples, waiting = _lock_waits(url, stop_at)
        outcomes = [results.get(timeout=duration + 60) for _ in processes]
        for process in processes:
            process.join(timeout=30)
        failures = [outcome for outcome in outcomes if isinstance(outcome, str)]
        if failures:
            raise RuntimeError(f'{len(failures)} writers failed, the first: {failures[0]}')
        latencies = [value for outcome in outcomes for value in outcome]
        result = {
            'writers': writers,
            'duration_s': duration,
            'sends': len(latencies),
            'sends_per_second': round(len(latencies) / duration, 1),
            'send_ms': summary(latencies),
            'writers_waiting_on_a_lock_mean': round(waiting / max(samples, 1), 2),
            'load_average': {'before': load_before, 'after': load_average()},
        }
        log(
            f'{writers} writers: {result["sends_per_second"]} sends/s, p50 {result["send_ms"]["median"]} '
            f'p99 {result["send_ms"]["p99"]} ms, {result["writers_waiting_on_a_lock_mean"]} waiting on a lock'
        )
        return result
    finally:
        asyncio.run(postgres_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--writers', type=int, nargs='+', default=[1, 2, 4, 8, 16])
    parser.add_argument('--duration', type=float, default=15)
    parser.add_argument('--name', default='write-ceiling')
    args = parser.parse_args()
    results = {'machine': machine(), 'started': time.strftime('%Y-%m-%dT%H:%M:%S%z'), 'runs': []}
    for writers in args.writers:
        results['runs'].append(run_once(writers, args.duration))
    results['finished'] = time.strftime('%Y-%m-%dT%H:%M:%S%z')
    log(f'written {write_result(args.name, results)}')


if __name__ == '__main__':
    main()
