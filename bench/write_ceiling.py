"""How many sends per second one PostgreSQL database takes, with every send's audit row chained to the last.

Every send is one unit of work, as the app's composer runs it (`Composer._post` through
`Workspace._for_this_session`): re-check the tab's session (`sessions.resolve_sync`: look it up with its
clinician, and touch its last-seen time when that is older than the touch interval), then touch the
conversation, insert the message, append the audit row (which locks its chain's head row until the
commit). Before migration 0011 that was the one head row of the one chain, which all instances of a cluster
queued on: the ceiling of a whole cluster's write rate on one database, whatever the number of instances.
Since then each writer's clinician has a chain of their own (16 chains: writers 1..16 take 16 different ones).

Each writer is a process of its own (no interpreter shared between writers), with its own clinician, signed-in
session and conversation, sending as fast as it can through the same service functions the app uses. Only
sends that finished within the measured seconds are counted (a send under way at the stop is left out, and
its count reported as `sends_finished_after_stop`). For each writer count: sends per second, latency of one
send, and how often a writer found the chain's lock taken. Against a fresh database that is dropped afterwards.

Before 4 December 2026 the sends left out the session check and counted the sends finished after the stop
(docs/scaling.md says which figures were measured that way).

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

from bench.common import default_limits, load_average, log, machine, postgres_admin, summary, write_result
from casebook.db import Database
from casebook.services import accounts, conversations, sessions

STARTUP_TIMEOUT = 120.0  # seconds for every writer process to start and connect (a busy 2-core machine)


async def _prepare(url: str, writers: int) -> list[tuple[str, int, int]]:
    """A clinician, a signed-in session and a conversation per writer: (session token, clinician id, conversation)."""
    database = Database(url)
    try:
        await database.migrate()
        prepared = []
        async with database.session() as session:
            for n in range(writers):
                clinician = await accounts.add_clinician(
                    session, username=f'writer{n}', display_name=f'Writer {n}', password=secrets.token_urlsafe(12)
                )
                token = await sessions.start(
                    session, clinician_id=clinician.id, address='127.0.0.1', username=clinician.username
                )
                conversation = await conversations.open_conversation(
                    session, clinician=clinician, patient_id=f'PAT{n:05d}'
                )
                prepared.append((token, clinician.id, conversation.id))
        return prepared
    finally:
        await database.dispose()


def _send(session: Session, token: str, clinician_id: int, conversation_id: int, text: str, limits) -> None:
    """One send as the app's composer makes it: the tab's session re-checked, then the message, in one unit."""
    signed = sessions.resolve_sync(session, token, max_age=limits.max_age, idle=limits.idle)
    if signed is None or signed.clinician.id != clinician_id:
        raise RuntimeError("the writer's session was refused: the send would have gone to the login page")
    conversations.post_message_sync(
        session,
        clinician=signed.clinician,
        conversation_id=conversation_id,
        client_id=str(uuid.uuid4()),
        text=text,
        patient_id='PAT',
        address='127.0.0.1',
    )


def _writer(url: str, token: str, clinician_id: int, conversation_id: int, ready, go, window, results):
    """Connects, says it is `ready`, waits for `go`, then sends within `window` (start, stop: time.time()); puts
    (latencies of the sends finished by the stop, sends finished after it) or an error."""
    engine = create_engine(make_url(url).set(drivername='postgresql+psycopg'), pool_size=1, max_overflow=0)
    limits = default_limits()
    latencies, late, sequence = [], 0, 0
    outcome: tuple[list[float], int] | str
    try:
        with engine.connect():  # connected before the clock runs (the pool keeps the connection)
            pass
        ready.put(clinician_id)
        go.wait()
        start_at, stop_at = window[0], window[1]
        while time.time() < start_at:
            time.sleep(0.001)
        while time.time() < stop_at:
            started = time.perf_counter()
            with Session(engine, expire_on_commit=False) as session:
                _send(
                    session, token, clinician_id, conversation_id, f'note {sequence} from writer {clinician_id}', limits
                )
            if time.time() > stop_at:  # under way at the stop: not within the measured seconds
                late += 1
            else:
                latencies.append((time.perf_counter() - started) * 1000)
            sequence += 1
        outcome = (latencies, late)
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
        results, ready, go = context.Queue(), context.Queue(), context.Event()
        window = context.Array('d', 2)  # start and stop (time.time()), set once every writer is connected
        processes = [
            context.Process(target=_writer, args=(url, *writer, ready, go, window, results)) for writer in prepared
        ]
        for process in processes:
            process.start()
        for _ in processes:  # the clock runs only once every process is started and connected
            ready.get(timeout=STARTUP_TIMEOUT)
        start_at = time.time() + 0.05
        stop_at = start_at + duration
        window[0], window[1] = start_at, stop_at
        go.set()
        load_before = load_average()
        while time.time() < start_at:
            time.sleep(0.001)
        samples, waiting = _lock_waits(url, stop_at)
        outcomes = [results.get(timeout=duration + 60) for _ in processes]
        for process in processes:
            process.join(timeout=30)
        failures = [outcome for outcome in outcomes if isinstance(outcome, str)]
        if failures:
            raise RuntimeError(f'{len(failures)} writers failed, the first: {failures[0]}')
        latencies = [value for outcome in outcomes for value in outcome[0]]
        if not latencies:
            raise RuntimeError(f'{writers} writers finished no send within the {duration:g} s measured')
        result = {
            'writers': writers,
            'duration_s': duration,
            'method': 'session re-check and message in one transaction; only sends finished before the stop',
            'sends': len(latencies),
            'sends_finished_after_stop': sum(outcome[1] for outcome in outcomes),
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
