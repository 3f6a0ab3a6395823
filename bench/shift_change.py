"""Shift change: N clinicians sign in through the login form at R per second on one `casebook serve` (SQLite).

Each clinician is bench/load.py's websocket client: it loads /login, types its username and password (the
inputs' value events), clicks `Log in`, follows the server's navigation to /login/finish and on to the workspace.
Every sign-in ends one of three ways:
- signed in: the workspace page (with `Type message here`) arrived; the time from the click to that page is kept;
- told: the login page said why not (the database was busy, too many attempts, …), the clinician can retry;
- failed: anything else: an HTTP 5xx, a page that never came (`--timeout`), a closed socket.
The budget (SPEC §4): every one signed in or told, no 5xx, no unhandled exception in the server's log.

    .venv/bin/python bench/shift_change.py --clinicians 500 --rate 20

The run stops by itself: the burst, then at most `--timeout` seconds for the last sign-in, then the server.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

if __package__ in (None, ''):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aiohttp

from bench.common import (
    RESULTS,
    casebook_server,
    load_average,
    log,
    machine,
    proc_cpu_seconds,
    profile_summary,
    start_profile,
    summary,
    work_dir,
    write_result,
)
from bench.load import PASSWORD, Account, Client, Refused, Stats, _prepare, tab_session

# what the login page says when a sign-in did not happen (casebook/web/pages/accounts.py)
TOLD = ('Could not sign you in', 'Too many attempts', 'Username or password is incorrect')
TIMEOUT = 30.0


@dataclass
class Outcome:
    username: str
    result: str  # 'signed-in', 'told', 'failed'
    seconds: float | None = None  # click on Log in → workspace page, when signed in
    detail: str = ''


@dataclass
class Burst:
    outcomes: list[Outcome] = field(default_factory=list)

    def count(self, result: str) -> int:
        return sum(outcome.result == result for outcome in self.outcomes)

    def figures(self) -> dict:
        seconds = [o.seconds * 1000 for o in self.outcomes if o.seconds is not None]
        return {
            'clinicians': len(self.outcomes),
            'signed_in': self.count('signed-in'),
            'told': self.count('told'),
            'failed': self.count('failed'),
            'log_in_to_workspace_ms': summary(seconds) if seconds else {},
            'told_examples': sorted({o.detail for o in self.outcomes if o.result == 'told'})[:5],
            'failed_examples': [f'{o.username}: {o.detail}' for o in self.outcomes if o.result == 'failed'][:20],
        }


async def sign_in(http: aiohttp.ClientSession, base_url: str, account: Account, patience: float = TIMEOUT) -> Outcome:
    """One clinician through the login form; how it ended."""
    client = Client(http, base_url, account, Stats())
    try:
        await client.load('/login')
        await client.connect()
        told = {text: client.expect(text) for text in TOLD}
        await client.set_value('Username', account.username)
        await client.set_value('Password', PASSWORD)
        clicked = time.perf_counter()
        await client.click('Log in')
        navigation = asyncio.ensure_future(client.navigations.get())
        done, _ = await asyncio.wait([navigation, *told.values()], timeout=patience, return_when='FIRST_COMPLETED')
        if not done:
            navigation.cancel()
            return Outcome(account.username, 'failed', detail=f'nothing within {patience:.0f} s of Log in')
        if navigation not in done:
            navigation.cancel()
            text = next(text for text, future in told.items() if future in done)
            return Outcome(account.username, 'told', detail=text)
        path = navigation.result()
        page = await asyncio.wait_for(client.follow(path), patience)
        if not any(e.get('props', {}).get('label') == 'Type message here' for e in page.elements.values()):
            return Outcome(account.username, 'failed', detail=f'{path} led to a page without the workspace')
        return Outcome(account.username, 'signed-in', seconds=time.perf_counter() - clicked)
    except (Refused, OSError, aiohttp.ClientError, TimeoutError) as error:
        return Outcome(account.username, 'failed', detail=f'{type(error).__name__}: {error}'[:200])
    finally:
        await client.close()


async def burst(base_url: str, accounts: list[Account], *, rate: float, patience: float = TIMEOUT) -> Burst:
    """Every account signs in once, one starting every 1/rate seconds; waits (bounded) for all of them."""
    async with tab_session(patience) as http:
        started = time.monotonic()
        tasks = []
        for index, account in enumerate(accounts):
            await asyncio.sleep(max(0.0, started + index / rate - time.monotonic()))
            tasks.append(asyncio.create_task(sign_in(http, base_url, account, patience)))
        outcomes = await asyncio.gather(*tasks)
    return Burst(list(outcomes))


async def run_once(count: int, rate: float, patience: float, profile: bool = False) -> dict:
    secret = secrets.token_urlsafe(32)
    data_dir = work_dir(f'shift-{count}') / 'data'
    log(f'shift change: preparing {count} accounts')
    accounts = await _prepare(data_dir, count, secret, preset=False)
    server = casebook_server(data_dir, RESULTS / 'logs' / f'shift-{count}.log', CASEBOOK_STORAGE_SECRET=secret)
    with server:
        load_before = load_average()
        cpu_before, started = proc_cpu_seconds(server.pid), time.perf_counter()
        trace = RESULTS / f'profile-shift-{count}.txt'
        spy = start_profile(server.pid, count / rate, trace) if profile else None
        result = await burst(server.base_url, accounts, rate=rate, patience=patience)
        elapsed = time.perf_counter() - started
        cpu = proc_cpu_seconds(server.pid) - cpu_before
        if spy is not None:
            spy.wait(timeout=60)
        errors = server.errors_in_log()
    shutil.rmtree(data_dir.parent, ignore_errors=True)
    figures = result.figures()
    figures.update(
        rate_per_second=rate,
        burst_seconds=round(elapsed, 1),
        server_cpu_seconds=round(cpu, 1),
        server_cpu_ms_per_sign_in=round(cpu * 1000 / max(1, count), 1),
        load_average={'before': load_before, 'after': load_average()},
        server_log_errors=errors[:20],
        server_log_error_count=len(errors),
    )
    if profile:
        figures['profile'] = profile_summary(trace, count)
    latency = figures['log_in_to_workspace_ms']
    log(
        f'shift change {count} at {rate}/s: {figures["signed_in"]} signed in, {figures["told"]} told, '
        f'{figures["failed"]} failed; Log in → workspace p50 {latency.get("median")} ms, p99 {latency.get("p99")} ms; '
        f'{len(errors)} error lines in the server log; server CPU {figures["server_cpu_ms_per_sign_in"]} ms a sign-in'
    )
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--clinicians', type=int, default=500)
    parser.add_argument('--rate', type=float, default=20, help='sign-ins started per second (default 20)')
    parser.add_argument('--timeout', type=float, default=TIMEOUT, help='seconds a sign-in may take (default 30)')
    parser.add_argument('--profile', action='store_true', help='record the server with py-spy during the burst')
    parser.add_argument('--name', default='shift_change', help='results file bench/results/NAME.json')
    args = parser.parse_args()
    results = {'machine': machine(), 'started': time.strftime('%Y-%m-%dT%H:%M:%S%z')}
    results['run'] = asyncio.run(run_once(args.clinicians, args.rate, args.timeout, args.profile))
    results['finished'] = time.strftime('%Y-%m-%dT%H:%M:%S%z')
    path = write_result(args.name, results)
    print(f'results: {path}')


if __name__ == '__main__':
    main()
