"""How long `casebook serve` takes to stop on SIGTERM while N tabs send, and what it did meanwhile.

bench/load.py's websocket clients (preset sign-in, SQLite in a fresh data dir) open their patients, send every
`--send-every` seconds, and after `--before` seconds the server gets SIGTERM. Measured from outside: seconds from
the signal to the process's exit and its exit status; read from its log: the stop's start and end lines (tabs told
to reconnect, sends waited for, abandoned, refused). `--hold-write-lock S`: another process takes SQLite's write
lock half a second before the signal and holds it S seconds (a busy database: the sends in flight wait for it).

    .venv/bin/python bench/stop.py --clients 100 300
    .venv/bin/python bench/stop.py --clients 100 --hold-write-lock 8
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import secrets
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

if __package__ in (None, ''):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


from bench.common import RESULTS, casebook_server, log, machine, work_dir, write_result
from bench.load import RAMP_CONCURRENCY, Client, Stats, _prepare, tab_session

EXIT_TIMEOUT = 30.0  # a bound for this script, not the target (10 s)
ACK_TIMEOUT = 10.0


async def _tab(client: Client, send_every: float, until: float, acked: list[float]) -> None:
    """Send until the socket goes (or `until`): each acknowledged send's latency in ms goes to `acked`."""
    await asyncio.sleep(random.uniform(0, send_every))
    sequence = 0
    while time.monotonic() < until:
        note = f'stop {client.account.index} {sequence} {secrets.token_hex(4)}'
        sequence += 1
        try:
            own = client.expect(note)
            await client.set_value('Type message here', note)
            started = time.perf_counter()
            await client.click('Send')
            acked.append((await client.wait(note, own, ACK_TIMEOUT) - started) * 1000)
        except Exception:  # the server stopped: this tab is done
            return
        await asyncio.sleep(send_every)


def _hold_write_lock(database: Path, seconds: float, taken: threading.Event) -> None:
    connection = sqlite3.connect(database, timeout=30)
    try:
        connection.execute('BEGIN IMMEDIATE')
        taken.set()
        time.sleep(seconds)
        connection.rollback()
    finally:
        connection.close()


async def run_once(count: int, *, send_every: float, before: float, hold_write_lock: float) -> dict:
    secret = secrets.token_urlsafe(32)
    data_dir = work_dir(f'stop-{count}') / 'data'
    log(f'stop: preparing {count} accounts')
    accounts = await _prepare(data_dir, count, secret, preset=True)
    server = casebook_server(data_dir, RESULTS / 'logs' / f'stop-{count}.log', CASEBOOK_STORAGE_SECRET=secret)
    await asyncio.to_thread(server.start)
    acked: list[float] = []
    result: dict = {'clients': count, 'send_every_s': send_every, 'hold_write_lock_s': hold_write_lock}
    try:
        async with tab_session() as http:
            clients = [Client(http, server.base_url, account, Stats()) for account in accounts]
            ramp = asyncio.Semaphore(RAMP_CONCURRENCY)

            async def open_tab(client: Client) -> bool:
                async with ramp:
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(client.start(False), 60)
                        return True
                return False

            opened = await asyncio.gather(*(open_tab(client) for client in clients))
            result['connected'] = sum(opened)
            log(f'stop: {sum(opened)}/{count} tabs open; sending every {send_every} s for {before} s, then SIGTERM')
            until = time.monotonic() + before + EXIT_TIMEOUT
            tabs = [
                asyncio.create_task(_tab(client, send_every, until, acked))
                for client, ok in zip(clients, opened, strict=True)
                if ok
            ]
            await asyncio.sleep(before - (0.5 if hold_write_lock else 0))
            if hold_write_lock:
                taken = threading.Event()
                threading.Thread(
                    target=_hold_write_lock, args=(data_dir / 'casebook.sqlite3', hold_write_lock, taken), daemon=True
                ).start()
                taken.wait(5)
                await asyncio.sleep(0.5)
            acked_before = len(acked)
            signalled = time.monotonic()
            server.process.send_signal(signal.SIGTERM)
            try:
                status = await asyncio.to_thread(server.process.wait, EXIT_TIMEOUT)
            except subprocess.TimeoutExpired:
                status = None
            result['signal_to_exit_s'] = round(time.monotonic() - signalled, 2)
            result['exit_status'] = status
            result['acked'] = len(acked)
            result['acked_after_signal'] = len(acked) - acked_before
            for task in tabs:
                task.cancel()
            await asyncio.gather(*tabs, return_exceptions=True)
            await asyncio.gather(*(client.close() for client in clients), return_exceptions=True)
    finally:
        await asyncio.to_thread(server.stop)
    lines = server.log_path.read_text(errors='replace').splitlines()
    said = ('stopping on', 'stopped in', 'exit forced')
    result['server_said'] = [line for line in lines if any(words in line for words in said)]
    result['tracebacks'] = sum('Traceback' in line for line in lines)
    log(f'stop {count}: exit {status} after {result["signal_to_exit_s"]} s; {result["server_said"]}')
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--clients', type=int, nargs='+', default=[100])
    parser.add_argument('--send-every', type=float, default=1.0, help='seconds between one tab’s sends (default 1)')
    parser.add_argument('--before', type=float, default=5.0, help='seconds of sending before SIGTERM (default 5)')
    parser.add_argument('--hold-write-lock', type=float, default=0.0, metavar='S', help='busy database: see above')
    parser.add_argument('--name', default='stop', help='results file bench/results/NAME.json')
    args = parser.parse_args()
    runs = [
        asyncio.run(
            run_once(count, send_every=args.send_every, before=args.before, hold_write_lock=args.hold_write_lock)
        )
        for count in args.clients
    ]
    path = write_result(args.name, {'machine': machine(), 'runs': runs})
    print('| tabs open | sending every | busy database | signal → exit | status | server said |')
    print('|---:|---:|---|---:|---:|---|')
    for run in runs:
        busy = f'write lock held {run["hold_write_lock_s"]} s' if run['hold_write_lock_s'] else 'no'
        said = ' / '.join(run['server_said'])
        print(
            f'| {run["connected"]} | {run["send_every_s"]} s | {busy} | {run["signal_to_exit_s"]} s '
            f'| {run["exit_status"]} | {said} |'
        )
    print(f'\nresults: {path}')


if __name__ == '__main__':
    main()
