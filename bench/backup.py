"""`casebook backup` and `casebook restore` of a big clinic: wall time and peak RSS of each command (SPEC §4:
backup of 1M messages ≤ 60 s, restore ≤ 120 s, peak RSS ≤ 300 MB each).

The source is the cached seeded data dir (bench/seed.py: one conversation of N messages, imported through the
CLI), copied, with M audit rows appended to its chain as real sends would have left them (hashed with
audit.row_hash, so the chain verifies and restore checks every one). Then, each command a subprocess as an
operator runs it, its peak RSS read from the kernel (wait4's ru_maxrss):
  1. `casebook backup -o FILE` of the SQLite data dir,
  2. `casebook restore FILE` into an empty data dir (SQLite),
  3. `casebook restore FILE` into a fresh PostgreSQL database (unless --no-postgres),
  4. `casebook backup -o FILE2` of that PostgreSQL database.

    .venv/bin/python bench/backup.py                                    # 1,000,000 messages + 1,000,000 audit rows
    .venv/bin/python bench/backup.py --messages 10000 --audit-rows 10000  # smoke
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import os
import sqlite3
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

if __package__ in (None, ''):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (
    CASEBOOK,
    POSTGRES_ADMIN_URL,
    clean_env,
    fresh_copy,
    log,
    machine,
    postgres_admin,
    work_dir,
    write_result,
)
from bench.seed import seeded
from casebook.services import audit

BUDGETS = {'backup': 60.0, 'restore': 120.0, 'rss_mb': 300.0}


def add_audit_rows(database: Path, rows: int) -> None:
    """Append `rows` audit rows to clinician 1's chain, each hashed as audit.record_sync would (message-written)."""
    entry_of = functools.partial(audit.Entry, audit.MESSAGE_WRITTEN, 1, 'bench', 'BENCH-1000000', '127.0.0.1')
    chain = audit.chain_of(entry_of(''))
    connection = sqlite3.connect(database)
    try:
        count, prev = connection.execute('SELECT seq, hash FROM audit_head WHERE id = ?', (chain,)).fetchone()
        (last,) = connection.execute('SELECT coalesce(max(seq), 0) FROM audit_events').fetchone()
        start = datetime(2024, 1, 1, tzinfo=UTC)
        batch = []
        for n in range(last + 1, last + rows + 1):
            at = start + timedelta(seconds=30 * n)
            entry = entry_of(f'message {n}')
            digest = audit.row_hash(chain, n, at, entry, prev)
            stored_at = at.replace(tzinfo=None).isoformat(' ', 'microseconds')
            batch.append((n, stored_at, *entry.__dict__.values(), prev, digest, chain))
            prev = digest
            if len(batch) >= 10_000:
                _insert(connection, batch)
                batch = []
        if batch:
            _insert(connection, batch)
        connection.execute('UPDATE audit_head SET seq = ?, hash = ? WHERE id = ?', (count + rows, prev, chain))
        connection.commit()
    finally:
        connection.close()


def _insert(connection: sqlite3.Connection, batch: list[tuple]) -> None:
    connection.executemany(
        'INSERT INTO audit_events (seq, at, action, actor_id, actor, patient_id, address, detail, prev_hash, hash, '
        'chain) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)',
        batch,
    )


def run_child(name: str, args: list[str], env: dict[str, str], cwd: Path) -> dict:
    """Run `casebook ARGS`: wall time, and peak RSS of this child alone (reaped by wait4: its own ru_maxrss)."""
    log(f'{name}: casebook {" ".join(args)}')
    out_path, err_path = cwd / f'{name}.out', cwd / f'{name}.err'
    with out_path.open('w') as out, err_path.open('w') as err:
        started = time.perf_counter()
        process = subprocess.Popen([str(CASEBOOK), *args], env=env, cwd=cwd, stdout=out, stderr=err)
        _pid, status, usage = os.wait4(process.pid, 0)
        seconds = time.perf_counter() - started
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise RuntimeError(f'{name} exited with {process.returncode}: {err_path.read_text().strip()}')
    result = {
        'command': f'casebook {" ".join(args)}',
        'seconds': round(seconds, 2),
        'peak_rss_mb': round(usage.ru_maxrss / 1024, 1),
        'cpu_seconds': round(
            usage.ru_utime + usage.ru_stime, 2
        ),  # what contention on a shared machine does not inflate
        'output': out_path.read_text().strip(),
    }
    log(f'{name}: {result["seconds"]} s ({result["cpu_seconds"]} s CPU), peak RSS {result["peak_rss_mb"]} MB')
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--messages', type=int, default=1_000_000)
    parser.add_argument('--audit-rows', type=int, default=1_000_000)
    parser.add_argument('--no-postgres', action='store_true')
    args = parser.parse_args()
    info = {'machine': machine(), 'messages': args.messages, 'audit_rows': args.audit_rows}
    load_at_start = os.getloadavg()
    seed = seeded(args.messages)
    source = fresh_copy(Path(seed.data_dir), 'backup-source')
    log(f'appending {args.audit_rows:,} audit rows')
    add_audit_rows(source / 'casebook.sqlite3', args.audit_rows)
    folder = work_dir('backup-files')
    file = folder / 'clinic.cbk'
    runs = {}
    runs['sqlite_backup'] = run_child(
        'sqlite_backup', ['backup', '-o', str(file)], clean_env(CASEBOOK_DATA_DIR=str(source)), folder
    )
    info['file_mb'] = round(file.stat().st_size / 1e6, 1)
    restored = work_dir('backup-restored') / 'data'
    runs['sqlite_restore'] = run_child(
        'sqlite_restore', ['restore', str(file)], clean_env(CASEBOOK_DATA_DIR=str(restored)), folder
    )
    if not args.no_postgres:
        name = f'casebook_bench_backup_{os.getpid()}'
        asyncio.run(postgres_admin(f'CREATE DATABASE {name}'))
        try:
            env = clean_env(
                CASEBOOK_DATA_DIR=str(restored), CASEBOOK_DATABASE_URL=POSTGRES_ADMIN_URL.rsplit('/', 1)[0] + f'/{name}'
            )
            runs['postgresql_restore'] = run_child('postgresql_restore', ['restore', str(file)], env, folder)
            again = folder / 'from-postgresql.cbk'
            runs['postgresql_backup'] = run_child('postgresql_backup', ['backup', '-o', str(again)], env, folder)
        finally:
            asyncio.run(postgres_admin(f'DROP DATABASE IF EXISTS {name}'))
    info['runs'] = runs
    info['load_average'] = {
        'start': [round(x, 2) for x in load_at_start],
        'end': [round(x, 2) for x in os.getloadavg()],
    }
    info['within_budget'] = all(
        run['seconds'] <= BUDGETS['backup' if 'backup' in key else 'restore']
        and run['peak_rss_mb'] <= BUDGETS['rss_mb']
        for key, run in runs.items()
    )
    path = write_result('backup', info)
    log(f'written {path}')
    for key, run in runs.items():
        print(
            f'{key:20} {run["seconds"]:7.2f} s  CPU {run["cpu_seconds"]:6.2f} s  peak RSS {run["peak_rss_mb"]:6.1f} MB'
        )
    print(f'file {info["file_mb"]} MB; within budget: {info["within_budget"]}')


if __name__ == '__main__':
    main()
