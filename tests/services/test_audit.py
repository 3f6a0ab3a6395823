"""The audit trail: what is recorded, that the database refuses changes, and that verify finds tampering.

Tampering is done as an attacker with the database would: on SQLite with the sqlite3 module on the file, on
PostgreSQL as its superuser; the append-only triggers dropped first.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import sqlite3
import subprocess
import sys
from datetime import UTC
from pathlib import Path

import pytest
from sqlalchemy import select, text
from sqlalchemy.exc import DatabaseError

from casebook.db import Database
from casebook.models import AuditEvent
from casebook.services import audit, conversations, sessions
from tests.conftest import add_clinician

CASEBOOK = Path(sys.executable).parent / 'casebook'
SECRET_TEXT = 'Patient reports chest pain radiating to left arm'


async def rows(database: Database) -> list[AuditEvent]:
    async with database.session() as session:
        return list(await session.scalars(select(AuditEvent).order_by(AuditEvent.seq)))


async def verify(database: Database) -> audit.Verdict:
    async with database.session() as session:
        return await audit.verify(session)


async def busy_day(database: Database) -> None:
    """Sign in, open a patient, write, correct, mark, log off: the rows a normal day leaves."""
    ada = await add_clinician(database, 'ada')
    async with database.session() as session:
        token = await sessions.start(session, clinician_id=ada.id, address='10.0.0.7', username='ada')
        conversation = await conversations.open_conversation(session, clinician=ada, patient_id='PAT1')
        await conversations.mark_opened(session, clinician=ada, conversation_id=conversation.id, address='10.0.0.7')
        first, _ = await conversations.post_message(
            session,
            clinician=ada,
            conversation_id=conversation.id,
            client_id='0b7c1a52-2a8e-4c39-9d6b-0f2a7e1c9b11',
            text=SECRET_TEXT,
            patient_id='PAT1',
            address='10.0.0.7',
        )
        await conversations.post_message(
            session,
            clinician=ada,
            conversation_id=conversation.id,
            client_id='0b7c1a52-2a8e-4c39-9d6b-0f2a7e1c9b12',
            text=SECRET_TEXT + ' (corrected)',
            amends_id=first.id,
            patient_id='PAT1',
        )
        await conversations.mark_entered_in_error(
            session, clinician=ada, conversation_id=conversation.id, message_id=first.id
        )
        await sessions.end(session, token, reason='manual', address='10.0.0.7')


async def tamper(database: Database, *statements: str) -> None:
    if database.engine.dialect.name == 'sqlite':
        await database.dispose()
        await asyncio.to_thread(tamper_file, Path(database.engine.url.database or ''), *statements)
        return
    async with database.engine.begin() as connection:
        await connection.exec_driver_sql('DROP TRIGGER audit_events_append_only ON audit_events')
        for statement in statements:
            await connection.exec_driver_sql(statement)


def tamper_file(path: Path, *statements: str) -> None:
    with sqlite3.connect(path) as connection:
        connection.execute('DROP TRIGGER IF EXISTS audit_events_no_update')
        connection.execute('DROP TRIGGER IF EXISTS audit_events_no_delete')
        for statement in statements:
            connection.execute(statement)


async def test_a_day_is_recorded_in_order_without_any_text(database: Database) -> None:
    await busy_day(database)
    recorded = await rows(database)
    assert [row.action for row in recorded] == [
        audit.SIGN_IN,
        audit.PATIENT_OPENED,
        audit.MESSAGE_WRITTEN,
        audit.CORRECTION,
        audit.ENTERED_IN_ERROR,
        audit.LOGOFF,
    ]
    assert [row.seq for row in recorded] == [1, 2, 3, 4, 5, 6]
    assert {row.actor for row in recorded} == {'ada'}
    assert recorded[1].patient_id == 'PAT1' and recorded[1].address == '10.0.0.7'
    assert recorded[-1].detail == 'manual'
    for row in recorded:  # never message text (nor any part of it)
        assert 'chest' not in repr([row.action, row.actor, row.patient_id, row.address, row.detail])
    assert (await verify(database)).ok


async def test_the_database_refuses_to_change_or_delete_a_row(database: Database) -> None:
    await busy_day(database)
    statements = ["UPDATE audit_events SET actor = 'eve' WHERE seq = 2", 'DELETE FROM audit_events WHERE seq = 6']
    statements.append(
        'DELETE FROM audit_events' if database.engine.dialect.name == 'sqlite' else 'TRUNCATE audit_events'
    )
    for statement in statements:
        async with database.session() as session:
            with pytest.raises(DatabaseError, match='append-only'):
                await session.execute(text(statement))
    assert (await verify(database)).ok


@pytest.mark.parametrize(
    ('statements', 'problem'),
    [
        (["UPDATE audit_events SET actor = 'eve' WHERE seq = 3"], 'audit row 3: its content was changed'),
        (["UPDATE audit_events SET patient_id = 'PAT2' WHERE seq = 2"], 'audit row 2: its content was changed'),
        (['DELETE FROM audit_events WHERE seq = 4'], 'audit row 4 is missing'),
        (['DELETE FROM audit_events WHERE seq = 6'], 'audit rows after row 5 were removed'),
        (
            # a row's stored hash altered (its first digit always changes)
            [
                "UPDATE audit_events SET hash = CASE WHEN hash LIKE 'f%' THEN '0' ELSE 'f' END || substr(hash, 2) "
                'WHERE seq = 3'
            ],
            'audit row 3: its content was changed',
        ),
        (
            # two rows swapped: sequence numbers follow, but the chain does not
            [
                'UPDATE audit_events SET seq = 100 WHERE seq = 2',
                'UPDATE audit_events SET seq = 2 WHERE seq = 3',
                'UPDATE audit_events SET seq = 3 WHERE seq = 100',
            ],
            'audit row 2: its link to row 1 is broken',
        ),
    ],
)
async def test_verify_names_the_first_broken_row(database: Database, statements: list[str], problem: str) -> None:
    await busy_day(database)
    await tamper(database, *statements)
    verdict = await verify(database)
    assert not verdict.ok
    assert verdict.problem.startswith(problem)


async def test_a_forged_row_with_a_recomputed_hash_is_found(database: Database) -> None:
    """An attacker who knows the scheme rewrites row 3 and its hash: row 4's link gives it away."""
    await busy_day(database)
    recorded = await rows(database)
    third = recorded[2]
    forged = audit.Entry(third.action, third.actor_id, 'eve', third.patient_id, third.address, third.detail)
    new_hash = audit.row_hash(third.seq, third.at, forged, third.prev_hash)
    await tamper(
        database,
        f"UPDATE audit_events SET actor = 'eve', hash = '{new_hash}' WHERE seq = 3",  # noqa: S608 (a hex digest)
    )
    verdict = await verify(database)
    assert verdict.problem.startswith('audit row 4: its link to row 3 is broken')


async def test_concurrent_writers_never_fork_the_chain(database: Database) -> None:
    ada = await add_clinician(database, 'ada')

    async def one(n: int) -> None:
        async with database.session() as session:
            await audit.record_now(session, audit.Entry(audit.PATIENT_OPENED, ada.id, 'ada', f'P{n}'))

    await asyncio.gather(*(one(n) for n in range(30)))
    verdict = await verify(database)
    assert verdict.ok and verdict.rows == 30


def run_cli(data_dir: Path, database: Database, *args: str) -> subprocess.CompletedProcess:
    env = {'CASEBOOK_DATA_DIR': str(data_dir), 'CASEBOOK_DATABASE_URL': database.url, 'PATH': '/usr/bin:/bin'}
    return subprocess.run([str(CASEBOOK), *args], env=env, capture_output=True, text=True, timeout=120, check=False)


async def test_cli_audit_verify_exits_non_zero_and_names_the_row(database: Database, data_dir: Path) -> None:
    await busy_day(database)
    await database.dispose()
    intact = await asyncio.to_thread(run_cli, data_dir, database, 'audit', 'verify')
    assert intact.returncode == 0, intact.stderr
    assert intact.stdout.strip() == 'audit trail intact: 6 rows'
    await tamper(database, "UPDATE audit_events SET address = '1.2.3.4' WHERE seq = 5")
    broken = await asyncio.to_thread(run_cli, data_dir, database, 'audit', 'verify')
    assert broken.returncode == 1
    assert broken.stderr.strip() == 'casebook: audit trail broken: audit row 5: its content was changed'
    assert broken.stdout == ''


async def test_nul_in_free_text_is_kept_alike_on_every_engine(database: Database) -> None:
    """PostgreSQL's text refuses NUL: in what the trail records from outside (a URL's filters, an address) it
    becomes U+FFFD, on SQLite too, the chain covers it as stored, and filtering by the same text finds it."""
    async with database.session() as session:
        entry = audit.Entry(audit.ADMIN_AUDIT_EXPORT, None, 'ada', 'PAT\x001', '10.0.0.1\x00', 'actor=a\x00b')
        await audit.record_now(session, entry)
    async with database.session() as session:
        (row,) = await audit.list_events(session, patient_id='PAT\x001', actor='ada')
        assert await audit.list_events(session, actor='a\x00b') == []
    assert (row.patient_id, row.address, row.detail) == ('PAT\ufffd1', '10.0.0.1\ufffd', 'actor=a\ufffdb')
    assert (await verify(database)).ok


async def test_the_chain_hashes_any_text_as_python_does(database: Database) -> None:
    """On PostgreSQL the database computes each row's hash (migration 0005) from JSON that Python spells: quotes,
    backslashes, control characters, non-ASCII, line separators and long text must hash the same on both sides,
    or verify (in Python) would call an untouched trail broken."""
    hostile = [
        '"quoted" \\ back\\slash',
        'line\nbreak\ttab\r\x01\x1f\x7f',
        'Größe 血压 🩺 \u2028\u2029',
        "O'Brien; --",
        'x' * 300,
    ]
    async with database.session() as session:
        for n, value in enumerate(hostile):
            await audit.record_now(
                session, audit.Entry(audit.ADMIN_AUDIT_EXPORT, n or None, value, value, value, f'detail {value}')
            )
    stored = await rows(database)
    assert [row.actor for row in stored] == [value[:64] for value in hostile]
    for row in stored:
        entry = audit.Entry(row.action, row.actor_id, row.actor, row.patient_id, row.address, row.detail)
        assert row.hash == audit.row_hash(row.seq, row.at, entry, row.prev_hash)
        assert row.hash == documented_hash(row)  # and as the documented form says, not only as the code does
    assert (await verify(database)).ok


def documented_hash(row) -> str:
    """A row's hash computed here from the canonical form audit.py's docstring gives, not by audit.row_hash: the
    SHA-256 of the UTF-8 of the compact JSON array of the row's fields, non-ASCII characters as they are."""
    fields = [row.seq, row.at.astimezone(UTC).isoformat(timespec='microseconds'), row.action, row.actor_id]
    fields += [row.actor, row.patient_id, row.address, row.detail, row.prev_hash]
    return hashlib.sha256(json.dumps(fields, ensure_ascii=False, separators=(',', ':')).encode('utf-8')).hexdigest()


async def test_csv_export_defuses_formulas(database: Database) -> None:
    ada = await add_clinician(database, 'ada')
    async with database.session() as session:
        await audit.record_now(session, audit.Entry(audit.SIGN_IN_FAILED, None, '=cmd|calc', None, '10.0.0.1'))
        await audit.record_now(session, audit.Entry(audit.SIGN_IN, ada.id, 'ada', None, '10.0.0.1'))
    async with database.session() as session:
        lines = ''.join([chunk async for chunk in audit.export_csv(session)]).splitlines()
    assert lines[0] == ','.join(audit.CSV_COLUMNS)
    assert ",'=cmd|calc," in lines[1]
    assert len(lines) == 3
