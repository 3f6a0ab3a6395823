"""A backup taken while simulated clinicians keep sending to a served Casebook (SQLite), then the data dir lost
and restored into an empty one: every message a tab saw acknowledged before the backup started is in the
restored database exactly once, the audit chain verifies, and a clinician signs in again with their old password
and finds their conversation. (The same in a real browser, on a smaller scale: tests/browser/test_backup_restore.)
"""

from __future__ import annotations

import asyncio
import secrets
import shutil
import sqlite3
import time
from pathlib import Path

from bench.common import casebook_cli, casebook_server
from bench.load import Client, Refused, Stats, _prepare, tab_session
from casebook.db import run_on_own_loop

TABS = 12
SEND_EVERY = 0.25  # seconds between one tab's sends
BEFORE_BACKUP, AFTER_BACKUP = 2.0, 1.0  # seconds of sending before the backup starts and after it ended
ACK_WITHIN = 10.0


async def keep_sending(client: Client, acked: dict[str, float], stop: asyncio.Event) -> None:
    index, sequence = client.account.index, 0
    while not stop.is_set():
        note = f'note {index} {sequence} {secrets.token_hex(4)}'
        sequence += 1
        shown = client.expect(note)
        await client.set_value('Type message here', note)
        await client.click('Send')
        await client.wait(note, shown, ACK_WITHIN)
        acked[note] = time.monotonic()  # the tab showed it: the clinician was told it is saved
        await asyncio.sleep(SEND_EVERY)


async def send_through_a_backup(base_url: str, accounts, data_dir: Path, backup: Path) -> tuple[dict, float]:
    """Tabs send; a backup runs in its own process meanwhile. What was acknowledged when, and when the backup began."""
    acked: dict[str, float] = {}
    stop = asyncio.Event()
    async with tab_session() as http:
        clients = [Client(http, base_url, account, Stats()) for account in accounts]
        await asyncio.gather(*(client.start(False) for client in clients))  # signed in, each its patient open
        tabs = [asyncio.create_task(keep_sending(client, acked, stop)) for client in clients]
        await asyncio.sleep(BEFORE_BACKUP)
        backup_started = time.monotonic()
        await asyncio.to_thread(casebook_cli, data_dir, 'backup', '-o', str(backup))  # raises on failure
        await asyncio.sleep(AFTER_BACKUP)
        stop.set()
        await asyncio.gather(*tabs)  # a send that fails here fails the test
        await asyncio.gather(*(client.close() for client in clients))
    return acked, backup_started


async def sign_in_again(base_url: str, account, newest: str) -> None:
    """The login form with the old password, then the clinician's patient: the newest note is on the page."""
    async with tab_session() as http:
        client = Client(http, base_url, account, Stats())
        try:
            await client.log_in_with_form()
            await client.connect()
            shown = client.expect(newest)
            await client.set_value('Patient ID', client.patient_id)
            await client.click('Open patient')
            await client.wait(newest, shown, ACK_WITHIN)
        except Refused as error:
            raise AssertionError(f'{account.username} could not sign in again: {error}') from error
        finally:
            await client.close()


def test_a_backup_under_load_restored_into_an_empty_data_dir_keeps_every_acknowledged_message(tmp_path: Path):
    secret = secrets.token_urlsafe(32)
    data_dir, backup = tmp_path / 'data', tmp_path / 'clinic.cbk'
    accounts = run_on_own_loop(lambda: _prepare(data_dir, TABS, secret, preset=True))
    with casebook_server(data_dir, tmp_path / 'before.log', CASEBOOK_STORAGE_SECRET=secret) as server:
        acked, backup_started = run_on_own_loop(
            lambda: send_through_a_backup(server.base_url, accounts, data_dir, backup)
        )
    before = [text for text, at in acked.items() if at < backup_started]
    assert len(before) >= TABS * 2 and len(acked) > len(before), (len(before), len(acked))

    shutil.rmtree(data_dir)  # the disk is lost; the backup is all there is
    casebook_cli(data_dir, 'restore', str(backup))  # raises on a non-zero exit, with its stderr
    with sqlite3.connect(data_dir / 'casebook.sqlite3') as connection:
        stored = [text for (text,) in connection.execute("SELECT text FROM messages WHERE text LIKE 'note %'")]
    missing = [text for text in before if text not in stored]
    assert not missing, f'{len(missing)} acknowledged before the backup are not in it: {missing[:5]}'
    assert len(stored) == len(set(stored)), 'a message was restored twice'
    assert casebook_cli(data_dir, 'audit', 'verify').startswith('audit trail intact')

    newest_before = {}  # each clinician's newest note acknowledged before the backup
    for text in before:
        newest_before[int(text.split()[1])] = text
    account = accounts[0]
    with casebook_server(data_dir, tmp_path / 'after.log') as server:  # a new secret: every browser signs in again
        run_on_own_loop(lambda: sign_in_again(server.base_url, account, newest_before[account.index]))
        assert server.errors_in_log() == []
