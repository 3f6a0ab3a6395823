"""An instance is killed (SIGKILL) while clinicians work on it: nothing acknowledged is lost, and they carry on.

- In a real browser: the tab reconnects through nginx to the other instance, still signed in, with its
  patient and messages, and the next message is sent and shown.
- Under a bounded load of simulated tabs (bench/load.py's client, speaking NiceGUI's socket.io protocol through
  nginx): every message whose acknowledgement reached its tab is in PostgreSQL afterwards; the tabs of the
  killed instance reconnect and keep writing.
"""

from __future__ import annotations

import asyncio
import json
import re
import secrets
import time
from collections import Counter
from pathlib import Path

import aiohttp
import pytest
from playwright.sync_api import expect
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from bench.load import Client, Refused, Stats, tab_session
from casebook.db import run_on_own_loop
from tests.cluster.conftest import signed_in_tabs

UPSTREAM = re.compile(r'"GET / HTTP[^"]*" 200 .* upstream=([^ ]+)')


def _serving_instance(running) -> int:
    """Which instance (1-based) served the last page load through nginx, from nginx's access log."""
    lines = (running.state_dir / 'nginx-access.log').read_text(encoding='utf-8').splitlines()
    # after a failed try nginx lists every instance it tried ("upstream=127.0.0.1:8101, 127.0.0.1:8102"):
    # the last one answered
    ports = [int(re.findall(r':(\d+)', line)[-1]) for line in lines if UPSTREAM.search(line)]
    assert ports, 'nginx logged no page load'
    return ports[-1] - running.first_instance_port + 1


@pytest.mark.browser
def test_a_tab_on_a_killed_instance_carries_on_on_the_other(cluster, new_visitor):
    running = cluster(instances=2)
    running.add_clinician('ada', 'Dr Ada')
    visitor = new_visitor(running.url)
    visitor.log_in('ada', 'Dr Ada')
    visitor.open_patient('PAT-9', 'Dr Ada')
    saved = [f'Before the crash {n}' for n in range(3)]
    for note in saved:
        visitor.send(note)
    victim = _serving_instance(running)
    visitor.page.evaluate('window.casebookBeforeTheCrash = true')  # gone once the page has reloaded

    running.kill(victim)
    visitor.forget_connection_errors()  # the socket's connection errors while it finds the other instance
    # The socket reconnects through nginx, lands on the survivor, which does not know the page: it reloads.
    visitor.page.wait_for_function('window.casebookBeforeTheCrash === undefined', timeout=20_000)
    expect(visitor.header).to_have_text('User: Dr Ada | Patient: PAT-9', timeout=20_000)
    visitor.page.wait_for_function('window.did_handshake === true && window.socket.connected', timeout=20_000)
    for note in saved:
        expect(visitor.message(note)).to_have_count(1)
    visitor.send('After the crash: still here')
    assert _serving_instance(running) != victim
    visitor.forget_connection_errors()
    visitor.assert_clean()


# ----- under load ------------------------------------------------------------------------------------------------

CLIENTS = 16
SEND_EVERY = 0.4  # seconds, per tab
BEFORE_KILL = 4.0  # seconds of sending before the kill
AFTER_KILL = 10.0  # and after it
RECONNECT_WITHIN = 30.0


async def _tab(
    client: Client,
    stop_at: float,
    acked: list[str],
    after_kill: Counter,
    killed_at: list[float],
    moved: Counter,
    trail: list[str],
    first_write: dict[int, float],
) -> None:
    """One tab: send, and on a broken socket load the page again through nginx and go on (as nicegui.js does).
    Sends until `stop_at`; a tab that has not written since the kill goes on trying for up to RECONNECT_WITHIN
    after it (a slow reconnect is measured, not cut off by the end of the run)."""
    index = client.account.index
    sequence = 0

    def keep_going() -> bool:
        now = time.monotonic()
        return now < stop_at or bool(killed_at and not after_kill[index] and now < killed_at[0] + RECONNECT_WITHIN)

    while keep_going():
        note = f'load {index} {sequence} {secrets.token_hex(4)}'
        sequence += 1
        try:
            own = client.expect(note)
            await client.set_value('Type message here', note)
            await client.click('Send')
            await client.wait(note, own, 10.0)
            acked.append(note)  # the tab was shown its message: the clinician was told it is saved
            if killed_at and time.monotonic() > killed_at[0]:
                after_kill[index] += 1
                first_write.setdefault(index, time.monotonic() - killed_at[0])
        except (Refused, TimeoutError, aiohttp.ClientError, ConnectionError, RuntimeError) as error:
            moved[index] += 1
            trail.append(f'{_since(killed_at)} {type(error).__name__} {error}'[:200])
            back = await _reconnect(client, time.monotonic() + RECONNECT_WITHIN, trail, killed_at)
            trail.append(f'{_since(killed_at)} ' + ('reconnected' if back else 'gave up reconnecting'))
        await asyncio.sleep(SEND_EVERY)


def _trails(trails: dict[int, list[str]], moved: Counter) -> str:
    return '; '.join(f'tab {index}: ' + ', '.join(trails[index]) for index in sorted(moved))


def _since(killed_at: list[float]) -> str:
    return f'{time.monotonic() - killed_at[0]:+.2f}s' if killed_at else 'before the kill'


async def _reconnect(client: Client, deadline: float, trail: list[str], killed_at: list[float]) -> bool:
    """Load the page again (nginx picks a living instance) and connect its socket; the notebook still has the
    patient open, so the page comes back with it. False if that did not work by `deadline`."""
    while time.monotonic() < deadline:
        await client.close()
        client.closed, client.ws, client.waiting = False, None, {}
        try:
            page = await asyncio.wait_for(client.load('/'), 10)
            if f'Patient: {client.patient_id}' not in json.dumps(page.elements):
                shown = [e['text'] for e in page.elements.values() if e.get('text')][:6]
                raise Refused(f'the page came back without the patient: {shown}')
            await asyncio.wait_for(client.connect(), 10)
            return True
        except (Refused, TimeoutError, aiohttp.ClientError, ConnectionError, OSError) as error:
            trail.append(f'{_since(killed_at)} reconnecting: {type(error).__name__} {error}'[:200])
            await asyncio.sleep(0.5)
    return False


def test_no_acknowledged_message_is_lost_when_an_instance_is_killed_under_load(cluster, tmp_path: Path):
    running = cluster(instances=2)
    # on a loop of its own: Playwright's sync API may hold this thread's loop (the browser tests of this package)
    run_on_own_loop(lambda: _load_and_kill(running, tmp_path))


async def _load_and_kill(running, tmp_path: Path) -> None:
    accounts = await signed_in_tabs(running, tmp_path / 'prepare', CLIENTS)

    stats = Stats()
    acked: list[str] = []
    after_kill: Counter[int] = Counter()
    killed_at: list[float] = []
    moved: Counter[int] = Counter()  # tabs that lost their socket and loaded the page again
    async with tab_session() as http:
        clients = [Client(http, running.url, account, stats) for account in accounts]
        await asyncio.gather(*(client.start(False) for client in clients))
        stop_at = time.monotonic() + BEFORE_KILL + AFTER_KILL
        trails: dict[int, list[str]] = {client.account.index: [] for client in clients}
        first_write: dict[int, float] = {}  # seconds from the kill to a tab's first acknowledged message after it
        tabs = [
            asyncio.create_task(
                _tab(client, stop_at, acked, after_kill, killed_at, moved, trails[client.account.index], first_write)
            )
            for client in clients
        ]
        await asyncio.sleep(BEFORE_KILL)
        assert not moved, f'tabs lost their socket before the kill: {dict(moved)}; errors {stats.errors}'
        killed_at.append(time.monotonic())
        await asyncio.to_thread(running.kill, 1)
        await asyncio.wait_for(asyncio.gather(*tabs), AFTER_KILL + 2 * RECONNECT_WITHIN + 30)  # a bound, not a target
        await asyncio.gather(*(client.close() for client in clients), return_exceptions=True)

    engine = create_async_engine(running.database_url)
    try:
        async with engine.connect() as connection:
            stored = set((await connection.execute(text('SELECT text FROM messages'))).scalars())
    finally:
        await engine.dispose()
    missing = [note for note in acked if note not in stored]
    print(
        f'\n{CLIENTS} tabs ({len(moved)} were on the killed instance): {len(acked)} acknowledged, '
        f'{len(stored)} stored, {len(missing)} acknowledged but missing; acknowledged after the kill per tab: '
        f'{dict(sorted(after_kill.items()))}; the moved tabs wrote again '
        f'{", ".join(f"{first_write[i]:.1f}" for i in sorted(moved) if i in first_write)} s after the kill\n'
        f'{_trails(trails, moved)}'
    )
    assert len(acked) > CLIENTS * 5, f'too few messages were acknowledged for the test to mean much: {len(acked)}'
    assert not missing, f'acknowledged but not stored: {missing[:10]}'
    assert moved, 'no tab was on the killed instance: nothing was tested'
    assert all(after_kill[client.account.index] > 0 for client in clients), (
        f'some tabs did not write again after the kill: {dict(after_kill)}; errors {stats.errors}; what the tabs '
        f'that moved went through: {_trails(trails, moved)}\n{running.report()[-6000:]}'
    )
