"""The audit trail: what is recorded, that the database refuses changes, and that verify finds tampering.

Tampering is done as an attacker with the database would: on SQLite with the sqlite3 module on the file, on
PostgreSQL as its superuser; the append-only triggers dropped first.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import sqlite3
import subprocess
import sys
import zlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from alembic import command
from sqlalchemy import create_engine, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DatabaseError

from casebook.db import Database, alembic_config
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


async def two_clinicians(database: Database) -> None:
    """ada (chain 2) and bob (chain 3) take turns: rows 1, 3, 5 are ada's, 2, 4, 6 bob's."""
    ada = await add_clinician(database, 'ada')
    bob = await add_clinician(database, 'bob')
    assert (audit.chain_of(audit.Entry(audit.SIGN_IN, ada.id)), audit.chain_of(audit.Entry(audit.SIGN_IN, bob.id))) == (
        2,
        3,
    )
    async with database.session() as session:
        for n in range(3):
            for who in (ada, bob):
                entry = audit.Entry(audit.PATIENT_OPENED, who.id, who.username, f'PAT{n}', '10.0.0.7')
                await audit.record_now(session, entry)


async def test_rows_go_to_their_clinicians_chains_in_order(database: Database) -> None:
    await two_clinicians(database)
    async with database.session() as session:  # nobody named: chain 1; a name without an id: by the name
        await audit.record_now(session, audit.Entry(audit.SIGN_IN_FAILED, None, '', None, '10.0.0.9'))
        await audit.record_now(session, audit.Entry(audit.SIGN_IN_FAILED, None, 'trudy', None, '10.0.0.9'))
    recorded = await rows(database)
    assert [(row.seq, row.chain) for row in recorded] == [
        (1, 2),
        (2, 3),
        (3, 2),
        (4, 3),
        (5, 2),
        (6, 3),
        (7, 1),
        (8, 1 + zlib.crc32(b'trudy') % 16),
    ]
    ada_rows = [row for row in recorded if row.chain == 2]
    assert ada_rows[0].prev_hash == audit.GENESIS
    assert [row.prev_hash for row in ada_rows[1:]] == [row.hash for row in ada_rows[:-1]]  # linked within the chain
    async with database.session() as session:
        heads = dict((await session.execute(text('SELECT id, seq FROM audit_head'))).all())
    assert heads == dict.fromkeys(range(1, 17), 0) | {1: 1, 2: 3, 3: 3, 6: 1}  # trudy's is chain 6
    verdict = await verify(database)
    assert verdict.ok and verdict.rows == 8


@pytest.mark.parametrize(
    ('statements', 'problem'),
    [
        (["UPDATE audit_events SET actor = 'eve' WHERE seq = 3"], 'audit row 3 (chain 2): its content was changed'),
        (
            ["UPDATE audit_events SET patient_id = 'PAT9' WHERE seq = 4"],
            'audit row 4 (chain 3): its content was changed',
        ),
        (['DELETE FROM audit_events WHERE seq = 4'], 'audit row 6 (chain 3): its link to row 2 is broken'),
        (['DELETE FROM audit_events WHERE seq = 1'], "audit row 3 (chain 2): its link to the chain's start is broken"),
        (['DELETE FROM audit_events WHERE seq = 6'], 'audit rows of chain 3 after row 4 were removed'),
        (
            # a row's stored hash altered (its first digit always changes)
            [
                "UPDATE audit_events SET hash = CASE WHEN hash LIKE 'f%' THEN '0' ELSE 'f' END || substr(hash, 2) "
                'WHERE seq = 3'
            ],
            'audit row 3 (chain 2): its content was changed',
        ),
        (
            # two rows of one chain swapped: sequence numbers follow, but the chain does not
            [
                'UPDATE audit_events SET seq = 100 WHERE seq = 3',
                'UPDATE audit_events SET seq = 3 WHERE seq = 5',
                'UPDATE audit_events SET seq = 5 WHERE seq = 100',
            ],
            'audit row 3 (chain 2): its link to row 1 is broken',
        ),
        (
            # a row moved from its chain to another
            ['UPDATE audit_events SET chain = 3 WHERE seq = 3'],
            'audit row 5 (chain 2): its link to row 1 is broken',
        ),
        (['UPDATE audit_events SET chain = 40 WHERE seq = 6'], 'audit row 6 is in chain 40, which does not exist'),
        (['DELETE FROM audit_head WHERE id = 16'], 'the head of audit chain 16 is missing'),
    ],
)
async def test_verify_names_the_first_broken_row(database: Database, statements: list[str], problem: str) -> None:
    await two_clinicians(database)
    assert (await verify(database)).ok
    await tamper(database, *statements)
    verdict = await verify(database)
    assert not verdict.ok
    assert verdict.problem.startswith(problem), verdict.problem


async def test_a_forged_row_with_a_recomputed_hash_is_found(database: Database) -> None:
    """An attacker who knows the scheme rewrites bob's row 4 and its hash: his next row's link gives it away."""
    await two_clinicians(database)
    fourth = (await rows(database))[3]
    forged = audit.Entry(fourth.action, fourth.actor_id, 'eve', fourth.patient_id, fourth.address, fourth.detail)
    new_hash = audit.row_hash(fourth.chain, fourth.seq, fourth.at, forged, fourth.prev_hash)
    await tamper(
        database,
        f"UPDATE audit_events SET actor = 'eve', hash = '{new_hash}' WHERE seq = 4",  # noqa: S608 (a hex digest)
    )
    verdict = await verify(database)
    assert verdict.problem.startswith('audit row 6 (chain 3): its link to row 4 is broken'), verdict.problem


async def test_a_forged_row_added_at_a_chains_end_is_found(database: Database) -> None:
    """A row appended by hand, correctly linked and hashed, but behind its chain head's back."""
    await two_clinicians(database)
    last = (await rows(database))[-1]
    entry = audit.Entry(audit.EXPORT, last.actor_id, last.actor, 'PAT1')
    digest = audit.row_hash(last.chain, 50, last.at, entry, last.hash)
    stored_at = (
        last.at.isoformat() if database.engine.dialect.name == 'postgresql' else f'{last.at:%Y-%m-%d %H:%M:%S.%f}'
    )
    await tamper(
        database,
        'INSERT INTO audit_events (seq, at, action, actor_id, actor, patient_id, address, detail, prev_hash, hash, '  # noqa: S608
        f"chain) VALUES (50, '{stored_at}', '{audit.EXPORT}', {last.actor_id}, '{last.actor}', 'PAT1', '', '', "
        f"'{last.hash}', '{digest}', {last.chain})",
    )
    verdict = await verify(database)
    assert verdict.problem.startswith('audit chain 3 has rows its head does not count (found 4, its head says 3)'), (
        verdict.problem
    )


async def test_concurrent_writers_never_fork_the_chains(database: Database) -> None:
    ada = await add_clinician(database, 'ada')
    bob = await add_clinician(database, 'bob')

    async def one(n: int) -> None:
        who = (ada, bob)[n % 2]
        async with database.session() as session:
            await audit.record_now(session, audit.Entry(audit.PATIENT_OPENED, who.id, who.username, f'P{n}'))

    await asyncio.gather(*(one(n) for n in range(40)))
    verdict = await verify(database)
    assert verdict.ok and verdict.rows == 40
    recorded = await rows(database)
    assert len({row.seq for row in recorded}) == 40 and {row.chain for row in recorded} == {2, 3}


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
    assert broken.stderr.strip() == 'casebook: audit trail broken: audit row 5 (chain 2): its content was changed'
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
        assert row.hash == audit.row_hash(row.chain, row.seq, row.at, entry, row.prev_hash)
        assert row.hash == documented_hash(row)  # and as the documented form says, not only as the code does
    assert (await verify(database)).ok


def documented_hash(row, *, legacy: bool = False) -> str:
    """A row's hash computed here from the canonical form audit.py's docstring gives, not by audit.row_hash: the
    SHA-256 of the UTF-8 of the compact JSON array of the row's fields, non-ASCII characters as they are; rows
    appended since migration 0011 start with their chain number, those before it (`legacy`) do not."""
    fields = [] if legacy else [row.chain]
    fields += [row.seq, row.at.astimezone(UTC).isoformat(timespec='microseconds'), row.action, row.actor_id]
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


OLD_APPEND = text('SELECT audit_append(:at, :middle, :action, :actor_id, :actor, :patient_id, :address, :detail)')


def append_the_old_way(connection, entries: list[audit.Entry]) -> None:
    """Rows as Casebook appended them before migration 0011: one chain, hashed without a chain number (on
    PostgreSQL by its audit_append of migration 0005; on SQLite by hand, in the form the docstring documents)."""
    for entry in entries:
        at = datetime.now(UTC)
        values = {'at': at, **dataclasses.asdict(entry)}
        if connection.dialect.name == 'postgresql':
            connection.execute(OLD_APPEND, {**values, 'middle': audit._middle(at, entry)})
            continue
        seq, prev = connection.execute(text('SELECT seq + 1, hash FROM audit_head WHERE id = 1')).one()
        fields = [seq, at.isoformat(timespec='microseconds'), *dataclasses.astuple(entry), prev]
        digest = hashlib.sha256(json.dumps(fields, ensure_ascii=False, separators=(',', ':')).encode()).hexdigest()
        connection.execute(
            text(
                'INSERT INTO audit_events (seq, at, action, actor_id, actor, patient_id, address, detail, prev_hash, '
                'hash) VALUES (:seq, :at, :action, :actor_id, :actor, :patient_id, :address, :detail, :prev, :hash)'
            ),
            {**values, 'at': f'{at:%Y-%m-%d %H:%M:%S.%f}', 'seq': seq, 'prev': prev, 'hash': digest},
        )
        connection.execute(
            text('UPDATE audit_head SET seq = :seq, hash = :hash WHERE id = 1'), {'seq': seq, 'hash': digest}
        )


@pytest.fixture
async def old_trail(backend, data_dir: Path) -> AsyncIterator[Database]:
    """A database migrated to 0010 (the one chain) holding three rows appended the old way, then upgraded."""
    if backend is None:
        data_dir.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240 (test set-up)
        url = f'sqlite+aiosqlite:///{data_dir / "old.sqlite3"}'
    else:
        name = await backend.create(from_template=False)
        url = backend.url(name)
    sync_url = make_url(url).set(drivername='postgresql+psycopg' if backend else 'sqlite+pysqlite')
    old = [
        audit.Entry(audit.SIGN_IN, 1, 'ada', None, '10.0.0.7'),
        audit.Entry(audit.PATIENT_OPENED, 1, 'ada', 'PAT1', '10.0.0.7'),
        audit.Entry(audit.SIGN_IN_FAILED, None, 'Größe "x"', None, '10.0.0.9', 'unknown'),
    ]

    def build() -> None:
        engine = create_engine(sync_url)
        try:
            with engine.begin() as connection:
                command.upgrade(alembic_config(connection), '0010')
                append_the_old_way(connection, old)
        finally:
            engine.dispose()

    await asyncio.to_thread(build)
    database = Database(url)
    await database.migrate()
    yield database
    await database.dispose()
    if backend is not None:
        backend.drop_soon(name)


async def test_a_trail_of_the_one_chain_verifies_after_migrating_and_goes_on(old_trail: Database) -> None:
    verdict = await verify(old_trail)
    assert verdict.ok and verdict.rows == 3, verdict
    async with old_trail.session() as session:
        await audit.record_now(session, audit.Entry(audit.SIGN_IN, 1, 'ada', None, '10.0.0.7'))  # chain 2
        await audit.record_now(
            session, audit.Entry(audit.LOGOFF, None, '', None, '', 'system')
        )  # chain 1, after the old rows
    recorded = await rows(old_trail)
    assert [(row.seq, row.chain) for row in recorded] == [(1, 1), (2, 1), (3, 1), (4, 2), (5, 1)]
    assert recorded[4].prev_hash == recorded[2].hash  # chain 1 goes on from the old chain's last row
    for row in recorded:
        assert row.hash == documented_hash(row, legacy=row.seq <= 3)
    verdict = await verify(old_trail)
    assert verdict.ok and verdict.rows == 5, verdict


@pytest.mark.parametrize(
    ('statement', 'problem'),
    [
        ("UPDATE audit_events SET actor = 'eve' WHERE seq = 2", 'audit row 2 (chain 1): its content was changed'),
        ('DELETE FROM audit_events WHERE seq = 2', 'audit row 2 is missing (found row 3 next)'),
        ('DELETE FROM audit_events WHERE seq = 3', 'audit rows of chain 1 after row 2 were removed'),
        ('UPDATE audit_head SET legacy = 0 WHERE id = 1', 'audit row 1 (chain 1): its content was changed'),
    ],
)
async def test_tampering_with_the_old_rows_is_found_after_migrating(
    old_trail: Database, statement: str, problem: str
) -> None:
    await tamper(old_trail, statement)
    verdict = await verify(old_trail)
    assert not verdict.ok and verdict.problem.startswith(problem), verdict


async def test_the_one_chain_comes_back_on_downgrade_only_while_no_row_is_in_the_chains_form(
    old_trail: Database,
) -> None:
    url = make_url(old_trail.url)
    sync_url = url.set(drivername='postgresql+psycopg' if url.get_backend_name() == 'postgresql' else 'sqlite+pysqlite')
    await old_trail.dispose()

    def migrate(revision: str, *, down: bool) -> None:
        engine = create_engine(sync_url)
        try:
            with engine.begin() as connection:
                (command.downgrade if down else command.upgrade)(alembic_config(connection), revision)
                if down:
                    append_the_old_way(connection, [audit.Entry(audit.SIGN_IN, 2, 'bob')])  # the old code goes on
        finally:
            engine.dispose()

    await asyncio.to_thread(migrate, '0010', down=True)
    await asyncio.to_thread(migrate, 'head', down=False)
    verdict = await verify(old_trail)
    assert verdict.ok and verdict.rows == 4, verdict
    async with old_trail.session() as session:
        await audit.record_now(session, audit.Entry(audit.SIGN_IN, 1, 'ada'))
    await old_trail.dispose()
    with pytest.raises(RuntimeError, match='cannot be made one chain'):
        await asyncio.to_thread(migrate, '0010', down=True)
    assert (await verify(old_trail)).ok  # the refused downgrade changed nothing


async def test_the_chains_are_listed_and_exported_as_one_trail_by_time(database: Database) -> None:
    """The admin's pages (keyset on time, then seq) and the CSV merge the chains: every row once, newest first."""
    await two_clinicians(database)
    async with database.session() as session:
        await audit.record_now(session, audit.Entry(audit.SIGN_IN_FAILED, None, 'trudy', None, '10.0.0.9'))
    stored = await rows(database)
    assert len({row.chain for row in stored}) == 3
    newest_first = sorted(stored, key=lambda row: (row.at, row.seq), reverse=True)
    pages, before = [], None
    async with database.session() as session:
        while page := await audit.list_events(session, before=before, limit=3):
            pages.append([row.seq for row in page])
            before = (page[-1].at, page[-1].seq)
        lines = ''.join([chunk async for chunk in audit.export_csv(session)]).splitlines()
    assert pages == [[row.seq for row in newest_first[n : n + 3]] for n in range(0, 7, 3)]
    assert [int(line.split(',')[0]) for line in lines[1:]] == [row.seq for row in reversed(newest_first)]
    assert [int(line.split(',')[-1]) for line in lines[1:]] == [row.chain for row in reversed(newest_first)]
