"""SIGTERM under load: `casebook serve` exits 0 within 10 s and loses nothing (casebook/web/lifecycle.py).

Simulated tabs (bench/load.py's client, speaking NiceGUI's socket.io protocol over real websockets) send while the
process gets SIGTERM; some have typed a draft they did not send. Afterwards:
- the process exited with status 0 within 10 s, and its output holds no traceback and no message text;
- the sends in flight at the signal (held up by SQLite's write lock, taken by another connection just before it and
  released just after) were waited for and acknowledged;
- every message a tab saw acknowledged is in the database exactly once;
- every text typed well before the signal is either stored or back in its tab's composer after a restart (the
  draft, with its send id); sent again from there it is stored once;
- every draft typed before the signal is in the stored notebook: the restarted server shows it in the tab.
Run with NiceGUI's storage in files and in Redis (NiceGUI's shutdown closes Redis before pending writes end).

Behind nginx (deploy/cluster, 2 instances, PostgreSQL and Redis): one instance gets SIGTERM under load; it exits 0,
its tabs reconnect to the other and carry on writing, and every acknowledged message is stored once. In a real
browser: the tab reloads from the other instance with its messages and the draft it had typed just before.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import re
import secrets
import signal
import sqlite3
import subprocess
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest
import redis
import redis.asyncio as aioredis
from playwright.sync_api import expect
from sqlalchemy import text as sql
from sqlalchemy.ext.asyncio import create_async_engine

from bench.common import casebook_server
from bench.load import Client, Refused, Stats, _prepare, tab_session
from casebook.db import run_on_own_loop
from tests.cluster.conftest import REDIS_URL, signed_in_tabs
from tests.cluster.test_failover import _serving_instance, _trails
from tests.cluster.test_failover import _tab as _tab_behind_nginx

CLIENTS = 40
DRAFT_EVERY = 4  # every 4th tab stops sending shortly before the signal and types a draft it does not send
SEND_EVERY = 0.5  # seconds between one tab's sends
BEFORE_STOP = 4.0  # seconds of sending before SIGTERM
DRAFTS_FROM = 0.9  # drafts are typed this many seconds before the signal or later: inside the workspace's 1 s delay
REACHED_SERVER = 0.1  # a text typed this long before the signal has reached the server
EXIT_WITHIN = 10.0
ACK_WITHIN = 10.0
RAMP = 8  # tabs opening at once
LOCK_BEFORE, LOCK_AFTER = 0.3, 0.7  # seconds the write lock is held before and after the signal


@dataclass
class Run:
    """What the tabs did, by the clock of this process."""

    acked: dict[str, float] = field(default_factory=dict)  # text → when its acknowledgement arrived
    typed: dict[int, list[tuple[str, float]]] = field(default_factory=dict)  # tab → (text, when), oldest first
    drafts: dict[int, str] = field(default_factory=dict)
    stopped_at: float = float('inf')


@pytest.mark.parametrize('storage', ['files', 'redis'])
def test_sigterm_under_load_loses_nothing_and_exits_0(storage: str, tmp_path: Path):
    # on a loop of its own: Playwright's sync API may hold this thread's loop (the browser tests of this package)
    run_on_own_loop(lambda: _stop_under_load(storage, tmp_path))


async def _stop_under_load(storage: str, tmp_path: Path) -> None:
    data_dir, secret = tmp_path / 'data', secrets.token_urlsafe(32)
    env = {'CASEBOOK_STORAGE_SECRET': secret}
    prefix = f'casebook-test-{uuid.uuid4().hex[:12]}:'
    if storage == 'redis':
        env |= {'CASEBOOK_REDIS_URL': REDIS_URL, 'CASEBOOK_REDIS_KEY_PREFIX': prefix}
    server = casebook_server(data_dir, tmp_path / 'server.log', **env)
    try:
        accounts = await _accounts(data_dir, secret, storage, prefix)
        await asyncio.to_thread(server.start)
        run, seconds, status = await _send_and_stop(server, accounts, data_dir / 'casebook.sqlite3')
        output = server.log_path.read_text(encoding='utf-8', errors='replace')
        await asyncio.to_thread(server.start)  # the same data dir (and Redis prefix) on the same port
        composers = await _reopen_and_resend(server, accounts)
    finally:
        await asyncio.to_thread(server.stop)
        if storage == 'redis':
            _delete_keys(prefix)
    stored = _stored_counts(data_dir)
    stop_line = next((line for line in output.splitlines() if 'stopped in' in line), '(no end line)')
    after = sum(at > run.stopped_at for at in run.acked.values())
    print(
        f'\n{storage}: SIGTERM → exit {status} in {seconds:.2f} s; {len(run.acked)} acknowledged ({after} after the '
        f'signal); the server: {stop_line}'
    )

    assert status == 0, f'exit status {status} after SIGTERM:\n{output[-4000:]}'
    assert seconds < EXIT_WITHIN, f'took {seconds:.1f} s to exit'
    assert 'Traceback' not in output, output[-6000:]
    assert 'stopping on SIGTERM' in output and 'stopped in' in output, output[-3000:]
    assert not any(text in output for texts in run.typed.values() for text, _ in texts), 'message text in the log'
    assert len(run.acked) > CLIENTS * 2, f'too few acknowledged sends for the test to mean much: {len(run.acked)}'
    assert [t for t, at in run.acked.items() if at > run.stopped_at], 'no send in flight was acknowledged after SIGTERM'
    assert not [t for t in run.acked if stored.get(t) != 1], {t: stored.get(t) for t in run.acked if stored.get(t) != 1}
    assert not {t: n for t, n in stored.items() if n > 1}, 'stored twice'
    lost_drafts = {i: (d, composers.get(i)) for i, d in run.drafts.items() if composers.get(i) != d}
    assert not lost_drafts, f'drafts typed before SIGTERM not shown after the restart (typed, shown): {lost_drafts}'
    for index, texts in run.typed.items():
        for text, when in texts:
            if when < run.stopped_at - REACHED_SERVER and text not in run.drafts.values():
                assert stored.get(text) == 1, f'tab {index}: {text!r} neither stored once nor kept as the draft'


async def _accounts(data_dir: Path, secret: str, storage: str, prefix: str):
    """Clinicians with live sessions; each browser's notebook in a storage file, or in Redis."""
    if storage == 'files':
        return await _prepare(data_dir, CLIENTS, secret, True)
    store = aioredis.from_url(REDIS_URL)

    async def write_storage(storage_id: str, notebook: dict) -> None:
        await store.set(f'{prefix}nicegui:user-{storage_id}', json.dumps(notebook))

    try:
        return await _prepare(data_dir, CLIENTS, secret, True, write_storage=write_storage)
    finally:
        await store.aclose()


async def _send_and_stop(server, accounts, database: Path) -> tuple[Run, float, int | None]:
    """Tabs send (some type a draft); SIGTERM mid-load, with sends held up in flight. What the tabs did, seconds to
    exit, the exit status."""
    run = Run()
    async with tab_session() as http:
        clients = [Client(http, server.base_url, account, Stats()) for account in accounts]
        ramp = asyncio.Semaphore(RAMP)
        await asyncio.gather(*(_opened(client, ramp) for client in clients))
        signal_at = time.monotonic() + BEFORE_STOP
        tabs = [asyncio.create_task(_tab(client, run, signal_at)) for client in clients]
        await asyncio.sleep(max(0.0, signal_at - LOCK_BEFORE - time.monotonic()))
        locked = threading.Event()
        threading.Thread(target=_hold_write_lock, args=(database, locked), daemon=True).start()
        assert locked.wait(5), 'the write lock was not taken'
        await asyncio.sleep(max(0.0, signal_at - time.monotonic()))
        run.stopped_at = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        try:
            status = await asyncio.to_thread(server.process.wait, EXIT_WITHIN + 5)
        except subprocess.TimeoutExpired:
            status = None
        seconds = time.monotonic() - run.stopped_at
        await asyncio.wait_for(asyncio.gather(*tabs), ACK_WITHIN + 5)
        await asyncio.gather(*(client.close() for client in clients), return_exceptions=True)
    return run, seconds, status


def _hold_write_lock(database: Path, locked: threading.Event) -> None:
    connection = sqlite3.connect(database, timeout=10)
    try:
        connection.execute('BEGIN IMMEDIATE')
        locked.set()
        time.sleep(LOCK_BEFORE + LOCK_AFTER)
        connection.rollback()
    finally:
        connection.close()


async def _opened(client: Client, ramp: asyncio.Semaphore) -> None:
    async with ramp:
        await client.start(False)  # signed in, its patient open


async def _tab(client: Client, run: Run, signal_at: float) -> None:
    """Send every SEND_EVERY s until the socket goes; a draft tab types its draft instead, shortly before the signal."""
    index = client.account.index
    drafting_at = signal_at - random.uniform(REACHED_SERVER * 2, DRAFTS_FROM) if index % DRAFT_EVERY == 0 else None
    await asyncio.sleep(random.uniform(0, SEND_EVERY))
    sequence = 0
    while drafting_at is None or time.monotonic() < drafting_at - SEND_EVERY:
        note = f'note {index} {sequence} {secrets.token_hex(4)}'
        sequence += 1
        try:
            own = client.expect(note)
            run.typed.setdefault(index, []).append((note, time.monotonic()))
            await client.set_value('Type message here', note)
            await client.click('Send')
            await client.wait(note, own, ACK_WITHIN)
            run.acked[note] = time.monotonic()  # the tab was shown its message: the clinician was told it is saved
        except (Refused, TimeoutError, aiohttp.ClientError, ConnectionError, RuntimeError):
            return  # the server went away: this tab reconnects after the restart
        await asyncio.sleep(SEND_EVERY)
    await asyncio.sleep(max(0.0, drafting_at - time.monotonic()))
    draft = f'draft {index} {secrets.token_hex(4)}'
    run.drafts[index] = draft
    run.typed.setdefault(index, []).append((draft, time.monotonic()))
    await client.set_value('Type message here', draft)


async def _reopen_and_resend(server, accounts) -> dict[int, str]:
    """Each tab loads the page from the restarted server; what its composer holds is sent again, except drafts.
    Returns what each composer held."""
    composers: dict[int, str] = {}
    async with tab_session() as http:
        clients = [Client(http, server.base_url, account, Stats()) for account in accounts]
        ramp = asyncio.Semaphore(RAMP)

        async def reopen(client: Client) -> None:
            async with ramp:
                page = await client.load('/')
                assert f'Patient: {client.patient_id}' in json.dumps(page.elements), 'the patient is not open'
                composers[client.account.index] = _composer_value(page.elements)
                text = composers[client.account.index]
                if text and not text.startswith('draft '):
                    await client.connect()
                    # the composer is emptied once the text is stored (now, or already by a send that was not
                    # acknowledged: then the page shows it already, and nothing else changes)
                    emptied = f'"{page.input("Type message here")[0]}":{{'
                    own = client.expect(emptied)
                    await client.click('Send')  # the draft's text with the draft's send id
                    await client.wait(emptied, own, ACK_WITHIN)

        await asyncio.gather(*(reopen(client) for client in clients))
        await asyncio.gather(*(client.close() for client in clients), return_exceptions=True)
    return composers


def _composer_value(elements: dict[str, dict]) -> str:
    for element in elements.values():
        if element.get('props', {}).get('label') == 'Type message here':
            return element['props'].get('value') or ''
    raise AssertionError('no composer on the page')


def _stored_counts(data_dir: Path) -> dict[str, int]:
    with sqlite3.connect(data_dir / 'casebook.sqlite3') as connection:
        rows = connection.execute('SELECT text, COUNT(*) FROM messages GROUP BY text').fetchall()
    return {text: count for text, count in rows if re.match(r'(note|draft) ', text)}


def _delete_keys(prefix: str) -> None:
    client = redis.Redis.from_url(REDIS_URL)
    try:
        keys = list(client.scan_iter(match=f'{prefix}*'))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


# ----- behind nginx -----------------------------------------------------------------------------------------------


@pytest.mark.browser
def test_a_tab_of_a_stopped_instance_reloads_on_the_other_with_its_draft(cluster, new_visitor):
    running = cluster(instances=2)
    running.add_clinician('ada', 'Dr Ada')
    visitor = new_visitor(running.url)
    visitor.log_in('ada', 'Dr Ada')
    visitor.open_patient('PAT-7', 'Dr Ada')
    visitor.send('Before the stop')
    victim = _serving_instance(running)
    visitor.page.evaluate('window.casebookBeforeTheStop = true')  # gone once the page has reloaded
    draft = 'Typed, not sent, just before the stop'
    visitor.composer.fill(draft)
    time.sleep(0.3)  # the value event is on the server; its draft would be written only a second after typing stops

    exit_line = _sigterm_instance(running, victim)
    assert 'exited with status 0' in exit_line, f'{exit_line}\n{running.report()[-6000:]}'
    visitor.forget_connection_errors()  # the socket's connection errors while it finds the other instance
    visitor.page.wait_for_function('window.casebookBeforeTheStop === undefined', timeout=20_000)
    expect(visitor.header).to_have_text('User: Dr Ada | Patient: PAT-7', timeout=20_000)
    expect(visitor.composer).to_have_value(draft)
    expect(visitor.message('Before the stop')).to_have_count(1)
    visitor.page.wait_for_function('window.did_handshake === true && window.socket.connected', timeout=20_000)
    visitor.send('After the stop')
    assert _serving_instance(running) != victim
    visitor.forget_connection_errors()
    visitor.assert_clean()


CLUSTER_TABS = 16
CLUSTER_BEFORE, CLUSTER_AFTER = 4.0, 8.0  # seconds of sending before the SIGTERM, and after it


def test_a_stopped_instance_hands_its_tabs_to_the_other(cluster, tmp_path: Path):
    running = cluster(instances=2)
    run_on_own_loop(lambda: _stop_one_instance(running, tmp_path))


async def _stop_one_instance(running, tmp_path: Path) -> None:
    accounts = await signed_in_tabs(running, tmp_path / 'prepare', CLUSTER_TABS)
    acked: list[str] = []
    after: Counter[int] = Counter()  # acknowledged sends per tab after the SIGTERM
    stopped_at: list[float] = []
    moved: Counter[int] = Counter()  # tabs that lost their socket and loaded the page again
    trails: dict[int, list[str]] = {account.index: [] for account in accounts}
    async with tab_session() as http:
        clients = [Client(http, running.url, account, Stats()) for account in accounts]
        await asyncio.gather(*(client.start(False) for client in clients))
        stop_at = time.monotonic() + CLUSTER_BEFORE + CLUSTER_AFTER
        tabs = [
            asyncio.create_task(
                _tab_behind_nginx(c, stop_at, acked, after, stopped_at, moved, trails[c.account.index], {})
            )
            for c in clients
        ]
        await asyncio.sleep(CLUSTER_BEFORE)
        stopped_at.append(time.monotonic())
        exit_line = await asyncio.to_thread(_sigterm_instance, running, 1)
        await asyncio.wait_for(asyncio.gather(*tabs), CLUSTER_AFTER + 90)  # a bound, not a target
        await asyncio.gather(*(client.close() for client in clients), return_exceptions=True)
    stored = await _stored_in_postgres(running.database_url)
    log = running.log(1)
    print(
        f'\n{exit_line}; {len(acked)} acknowledged, {len(moved)} tabs moved; instance 1 said: '
        f'{[line for line in log.splitlines() if line.startswith(("stopping", "stopped"))]}'
    )
    assert 'exited with status 0' in exit_line, f'{exit_line}\n{running.report()[-6000:]}'
    assert 'stopping on SIGTERM' in log and 'Traceback' not in log, log[-4000:]
    assert moved, 'no tab was on the stopped instance: nothing was tested'
    assert not [note for note in acked if stored.get(note) != 1], 'acknowledged but not stored exactly once'
    assert all(after[c.account.index] for c in clients), (
        f'tabs that did not write again after the stop: {sorted(set(range(CLUSTER_TABS)) - set(after))}; '
        f'what the moved tabs went through: {_trails(trails, moved)}'
    )


def _sigterm_instance(running, number: int) -> str:
    """SIGTERM to instance `number`; deploy/cluster's line saying how it exited, once there is one."""
    pid = running.instance_pid(number)
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + EXIT_WITHIN
    pattern = re.compile(rf'^instance {number} \(pid {pid}\) exited with [^;]*', flags=re.M)
    while not (found := pattern.search(running.output())):
        if time.monotonic() > deadline:
            return f'instance {number} had not exited {EXIT_WITHIN:.0f} s after SIGTERM'
        time.sleep(0.05)
    return found.group(0)


async def _stored_in_postgres(database_url: str) -> dict[str, int]:
    engine = create_async_engine(database_url)
    try:
        async with engine.connect() as connection:
            rows = (await connection.execute(sql('SELECT text, COUNT(*) FROM messages GROUP BY text'))).all()
    finally:
        await engine.dispose()
    return {text: count for text, count in rows}
