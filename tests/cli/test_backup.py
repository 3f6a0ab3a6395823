"""`casebook backup` and `casebook restore` as an operator types them, on real databases of both engines.

The round trips compare what a clinician and an auditor see: the same row counts, the same `casebook export`
of every conversation, and `casebook audit verify` passing. Damaged and foreign files are refused whole, with one
line on stderr, and the target is left as it was.
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import json
import os
import re
import stat
import subprocess
import threading
import time
import uuid
import zlib
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyotp
import pytest
from alembic import command
from sqlalchemy import create_engine, select, text
from sqlalchemy.engine import make_url

from casebook import cli
from casebook.db import Database, alembic_config, run_on_own_loop
from casebook.models import Clinician, Conversation
from casebook.services import accounts, audit, backup, conversations, passkeys, templates, two_step
from support import CASEBOOK, clean_env
from tests.conftest import FINISHED_BAR, PASSWORD, Terminal, add_clinician

TABLES = [table.name for table in backup.TABLES]
TEXTS = [
    'Mild fever for 3 days',
    '<img src=x onerror=alert(1)> and "quotes", \\backslashes\\ and\nnew lines',
    'مرحبا — right to left, emoji 🩺, zero\u200bwidth',
    'x' * 10_000,
]
# each clinician's note templates: spaces at line ends, blank lines between lines, hostile text; the same name twice
TEMPLATES = {
    'ada': {'SOAP': 'S: \nO: \nA: \nP: ', 'Fièvre <script>': 'T°: \n\n\tمرحبا 🩺 "x"\\ ', 'SBAR': 'S:\nB:\nA:\nR:'},
    'bob': {'soap': 'Nurse: \n  obs: '},
}


# ----- helpers --------------------------------------------------------------------------------------------------


def sync_url(url: str) -> str:
    parsed = make_url(url)
    driver = 'sqlite+pysqlite' if parsed.get_backend_name() == 'sqlite' else 'postgresql+psycopg'
    return parsed.set(drivername=driver).render_as_string(hide_password=False)


def counts(url: str) -> dict[str, int]:
    """Rows per backed-up table, read with a plain engine of the test's own."""
    engine = create_engine(sync_url(url))
    try:
        with engine.connect() as connection:
            return {name: connection.scalar(text(f'SELECT count(*) FROM {name}')) for name in TABLES}  # noqa: S608
    finally:
        engine.dispose()


def templates_of(url: str) -> dict[str, list[templates.TemplateInfo]]:
    """Each clinician's templates as the app lists them (ids included)."""

    async def work() -> dict[str, list[templates.TemplateInfo]]:
        db = Database(url)
        try:
            async with db.session() as session:
                clinicians = (await session.execute(select(Clinician.username, Clinician.id))).all()
            return {
                username: await db.run(lambda s, c=clinician_id: templates.list_sync(s, clinician_id=c))
                for username, clinician_id in clinicians
            }
        finally:
            await db.dispose()

    return run_on_own_loop(work)


def conversations_of(url: str) -> list[tuple[str, str]]:
    engine = create_engine(sync_url(url))
    try:
        with engine.connect() as connection:
            query = select(Clinician.username, Conversation.patient_id).join(
                Conversation, Conversation.clinician_id == Clinician.id
            )
            return sorted(tuple(row) for row in connection.execute(query))
    finally:
        engine.dispose()


def seed(url: str) -> None:
    """Two clinicians writing through the app's own send path: plain messages, hostile text, a correction, a mark."""

    async def work() -> None:
        db = Database(url)
        try:
            await db.migrate()
            ada = await add_clinician(db, 'ada', display_name='Dr. Ada')
            bob = await add_clinician(db, 'bob', display_name='Nurse Bob', role='nurse')
            for clinician, patient in [(ada, 'PAT1'), (ada, 'PAT2'), (bob, 'PAT1')]:
                await send_all(db, clinician, patient, TEXTS)
            conversation = await db.run(
                lambda s: conversations.open_conversation_sync(s, clinician=ada, patient_id='PAT1')
            )
            first = await send(db, ada, conversation.id, 'Temp 39.4')
            await send(db, ada, conversation.id, 'Temp 38.4', amends_id=first.id)
            async with db.session() as session:
                await conversations.mark_entered_in_error(
                    session, clinician=ada, conversation_id=conversation.id, message_id=first.id
                )
            for clinician in (ada, bob):
                for name, template in TEMPLATES[clinician.username].items():
                    await db.run(
                        lambda s, c=clinician, n=name, t=template: templates.save_sync(
                            s, clinician_id=c.id, name=n, text=t
                        )
                    )
        finally:
            await db.dispose()

    run_on_own_loop(work)


async def send(db: Database, clinician, conversation_id: int, message: str, amends_id: int | None = None):
    info, _new = await db.run(
        lambda s: conversations.post_message_sync(
            s,
            clinician=clinician,
            conversation_id=conversation_id,
            client_id=str(uuid.uuid4()),
            text=message,
            amends_id=amends_id,
        )
    )
    return info


async def send_all(db: Database, clinician, patient: str, texts: list[str]) -> None:
    conversation = await db.run(
        lambda s: conversations.open_conversation_sync(s, clinician=clinician, patient_id=patient)
    )
    for message in texts:
        await send(db, clinician, conversation.id, message)


@pytest.fixture
def casebook(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> Callable[..., tuple[int, str, str]]:
    """`casebook ARGS` in this process against the database at `url`: (exit status, stdout, stderr)."""

    # `casebook backup` lowers its process's priority: in pytest's process that would slow every later test
    monkeypatch.setattr(os, 'nice', lambda _increment: 0)

    def run(url: str, *args: str) -> tuple[int, str, str]:
        monkeypatch.setenv('CASEBOOK_DATABASE_URL', url)
        capsys.readouterr()
        code = cli.main(list(args))
        out, err = capsys.readouterr()
        return code, out, err

    return run


@pytest.fixture
def fresh(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[[str, str], str]]:
    """Makes an empty database on either engine, by name: SQLite not even created yet, PostgreSQL migrated."""
    taken: list[str] = []

    def make(engine: str, name: str) -> str:
        if engine == 'sqlite':
            (tmp_path / name).mkdir()
            return f'sqlite+aiosqlite:///{tmp_path / name / "casebook.sqlite3"}'
        server = request.getfixturevalue('postgres_server')
        taken.append(run_on_own_loop(server.take))
        return server.url(taken[-1])

    yield make
    if taken:
        request.getfixturevalue('postgres_server').drop_soon(*taken)


def assert_same_as_seen(casebook, source: str, target: str) -> None:
    """What people see is the same: every conversation's export, and the audit chain verifies."""
    pairs = conversations_of(source)
    assert pairs == conversations_of(target) and len(pairs) == 3
    for username, patient in pairs:
        exports = [
            casebook(url, 'export', '--user', username, '--patient', patient, '--format', 'json')
            for url in (source, target)
        ]
        assert exports[0][0] == 0 and exports[0] == exports[1]
        assert json.loads(exports[1][1])['messages'][-1]['text']
    code, out, _err = casebook(target, 'audit', 'verify')
    assert code == 0 and out.startswith('audit trail intact')


def backup_to(casebook, url: str, path: Path) -> str:
    code, out, err = casebook(url, 'backup', '-o', str(path))
    assert code == 0, err
    return out


# ----- round trips -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ('source_engine', 'target_engine'),
    [('sqlite', 'sqlite'), ('postgresql', 'postgresql'), ('sqlite', 'postgresql'), ('postgresql', 'sqlite')],
)
def test_round_trip_keeps_everything_seen(fresh, casebook, tmp_path, source_engine, target_engine):
    source, target = fresh(source_engine, 'source'), fresh(target_engine, 'target')
    seed(source)
    before = counts(source)
    file = tmp_path / 'clinic.cbk'
    out = backup_to(casebook, source, file)
    assert out.startswith(f'wrote {file} (')
    assert f'messages {before["messages"]}, entered in error 1, audit events {before["audit_events"]}' in out
    assert stat.S_IMODE(file.stat().st_mode) == 0o600  # password hashes and patient data
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith('.')] == []  # no temporary file left

    code, out, err = casebook(target, 'restore', str(file))
    assert (code, err) == (0, ''), err
    assert 'the counts match' in out and f'audit trail intact: {before["audit_events"]} rows' in out
    assert 'everyone signs in again' in out
    assert counts(target) == before
    assert_same_as_seen(casebook, source, target)
    kept = templates_of(target)
    assert kept == templates_of(source)
    assert {name: {t.name: t.text for t in held} for name, held in kept.items()} == TEMPLATES
    check_new_rows_get_new_ids(target)


def check_new_rows_get_new_ids(url: str) -> None:
    """After a restore the app writes on: the old password works, and new accounts, conversations and messages
    get ids past the restored ones (PostgreSQL's sequences were moved) and extend the chain."""

    async def work() -> None:
        db = Database(url)
        try:
            async with db.session() as session:
                ada = await accounts.authenticate(session, username='ada', password=PASSWORD)
            assert ada is not None and ada.display_name == 'Dr. Ada'
            carol = await add_clinician(db, 'carol')
            assert carol.id == 3
            await send_all(db, carol, 'PAT9', ['after the restore'])
            template = await db.run(lambda s: templates.save_sync(s, clinician_id=ada.id, name='new', text='x'))
            assert template.id == len(TEMPLATES['ada']) + len(TEMPLATES['bob']) + 1
        finally:
            await db.dispose()

    run_on_own_loop(work)


def test_check_shows_what_a_file_holds_and_writes_nothing(fresh, casebook, tmp_path):
    source = fresh('sqlite', 'source')
    seed(source)
    file = tmp_path / 'clinic.cbk'
    backup_to(casebook, source, file)
    target = fresh('sqlite', 'target')
    code, out, err = casebook(target, 'restore', '--check', str(file))
    assert (code, err) == (0, '')
    held = (
        'installation 1, clinicians 2, templates 4, two step 0, recovery codes 0, passkeys 0, conversations 3, '
        'messages 14, entered in error 1, audit events 15'
    )
    assert out.startswith(f'{file} is whole: {held}')
    assert 'audit trail intact: 15 rows' in out
    assert not make_url(target).database or not Path(make_url(target).database).exists()


def test_backup_and_restore_draw_a_bar_on_a_terminal_only(fresh, casebook, tmp_path, monkeypatch):
    source = fresh('sqlite', 'source')
    seed(source)
    file = tmp_path / 'clinic.cbk'
    assert casebook(source, 'backup', '-o', str(file))[2] == ''  # not a terminal: nothing drawn
    terminal = Terminal()
    monkeypatch.setattr('sys.stderr', terminal)
    backup_to(casebook, source, tmp_path / 'again.cbk')
    assert casebook(fresh('sqlite', 'checked'), 'restore', '--check', str(file))[0] == 0
    assert casebook(fresh('sqlite', 'target'), 'restore', str(file))[0] == 0
    drawn = terminal.getvalue()  # a bar per phase, left on its own line with its rate, elapsed and remaining time
    phases = ['backing up', 'checking', 'checking', 'restoring']
    assert [line.split(':')[0] for line in drawn.split('\n')[:-1]] == [f'\r{phase}' for phase in phases], drawn
    finished = re.findall(FINISHED_BAR.format(phase='([^\\r:]*)', unit=' rows'), drawn)
    assert finished == phases and drawn.endswith('\n'), drawn


def test_backup_of_a_missing_database_is_refused(casebook, tmp_path):
    url = f'sqlite+aiosqlite:///{tmp_path / "nowhere" / "casebook.sqlite3"}'
    code, _out, err = casebook(url, 'backup', '-o', str(tmp_path / 'x.cbk'))
    assert code == 2 and err.startswith('casebook: there is no database at') and err.count('\n') == 1
    assert not (tmp_path / 'x.cbk').exists()


# ----- damaged, foreign and newer files ----------------------------------------------------------------------------


def lines_of(path: Path) -> list[bytes]:
    with gzip.open(path, 'rb') as source:
        return source.readlines()


def rewritten(path: Path, lines: list[bytes], *, fix_digest: bool = True) -> None:
    """Write `lines` as a backup file, its trailer's digest made to fit (so only the change itself is wrong)."""
    if fix_digest:
        trailer = json.loads(lines[-1])
        trailer['end']['sha256'] = hashlib.sha256(b''.join(lines[:-1])).hexdigest()
        lines = [*lines[:-1], (json.dumps(trailer) + '\n').encode()]
    path.write_bytes(gzip.compress(b''.join(lines)))


def flip_a_byte(path: Path) -> None:
    """One bit flipped, at the middle or the first place after it where the flip damages the file. A few bits of a
    deflate stream change nothing when flipped (the file then holds exactly what it held, and it seemed to pass
    as whole about half the time once the file grew with the passkeys table); such a file is not damaged."""
    data = path.read_bytes()
    for at in range(len(data) // 2, len(data)):
        flipped = bytearray(data)
        flipped[at] ^= 0x01
        try:
            gzip.decompress(bytes(flipped))
        except (OSError, EOFError, zlib.error):
            path.write_bytes(bytes(flipped))
            return
    raise AssertionError(f'no flipped bit after the middle of {path} damages it')


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 2 // 3])


def drop_the_trailer(path: Path) -> None:
    rewritten(path, lines_of(path)[:-1], fix_digest=False)


def change_a_message(path: Path) -> None:
    lines = lines_of(path)
    index = next(i for i, line in enumerate(lines) if b'Mild fever' in line)
    lines[index] = lines[index].replace(b'Mild fever', b'Mild feves')
    rewritten(path, lines, fix_digest=False)


def remove_a_message(path: Path) -> None:
    lines = lines_of(path)
    index = next(i for i, line in enumerate(lines) if b'Mild fever' in line)
    rewritten(path, lines[:index] + lines[index + 1 :])


def malform_a_row(path: Path) -> None:
    lines = lines_of(path)
    index = next(i for i, line in enumerate(lines) if b'Mild fever' in line)
    row = json.loads(lines[index])
    row[0] = str(row[0])  # the id as text
    lines[index] = (json.dumps(row) + '\n').encode()
    rewritten(path, lines)


def newer_format(path: Path) -> None:
    lines = lines_of(path)
    lines[0] = lines[0].replace(b'casebook.backup.v1', b'casebook.backup.v2')
    rewritten(path, lines)


def newer_schema(path: Path) -> None:
    lines = lines_of(path)
    header = json.loads(lines[0])
    header['schema_revision'] = '9999'  # a migration this Casebook does not have
    lines[0] = (json.dumps(header) + '\n').encode()
    rewritten(path, lines)


def foreign_file(path: Path) -> None:
    conversation = {'format': 'casebook.conversation.v1', 'patient_id': 'PAT1', 'messages': []}
    path.write_bytes(gzip.compress(json.dumps(conversation).encode() + b'\n'))


def not_gzip(path: Path) -> None:
    path.write_text('{"format": "casebook.backup.v1"}\n')


DAMAGES = {
    'one byte flipped': (flip_a_byte, 'damaged or truncated'),
    'truncated': (truncate, 'damaged or truncated'),
    'no trailer': (drop_the_trailer, 'ends before its trailer (truncated)'),
    'content changed': (change_a_message, 'does not match its SHA-256'),
    'a row removed': (remove_a_message, 'row counts do not match'),
    'a malformed row': (malform_a_row, 'messages.id holds a value'),
    'a newer format': (newer_format, 'made by a newer Casebook (format casebook.backup.v2)'),
    'a newer schema': (newer_schema, "made by a newer Casebook (schema revision '9999')"),
    'a foreign file': (foreign_file, 'not a Casebook backup'),
    'not gzip': (not_gzip, 'damaged or truncated'),
}


@pytest.fixture(scope='module')
def good_backup(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One backup of a seeded SQLite database, shared by the damage tests (each damages a copy)."""
    folder = tmp_path_factory.mktemp('good')
    url = f'sqlite+aiosqlite:///{folder / "casebook.sqlite3"}'
    seed(url)
    path = folder / 'clinic.cbk'
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv('CASEBOOK_DATABASE_URL', url)
        patch.setattr(os, 'nice', lambda _increment: 0)  # see the `casebook` fixture
        assert cli.main(['backup', '-o', str(path)]) == 0
    return path


@pytest.mark.parametrize('damage', DAMAGES)
def test_a_damaged_or_foreign_file_is_refused_whole(database, casebook, good_backup, tmp_path, damage):
    break_it, message = DAMAGES[damage]
    file = tmp_path / 'damaged.cbk'
    file.write_bytes(good_backup.read_bytes())
    break_it(file)
    before = counts(database.url)
    for args in (['restore', '--check', str(file)], ['restore', str(file)]):
        code, out, err = casebook(database.url, *args)
        assert code == 2 and out == ''
        assert err.startswith(f'casebook: {file}: ') and err.count('\n') == 1, err
        assert message in err
    assert counts(database.url) == before == dict.fromkeys(TABLES, 0) | {'audit_head': 16}


def test_a_target_in_use_is_refused_and_left_as_it_was(database, casebook, good_backup):
    seed(database.url)
    before = counts(database.url)
    code, out, err = casebook(database.url, 'restore', str(good_backup))
    assert code == 2 and out == '' and err.count('\n') == 1
    assert err.startswith('casebook: the target database is not empty (installation 1, clinicians 2, ')
    assert counts(database.url) == before
    assert casebook(database.url, 'audit', 'verify')[0] == 0


def test_every_table_is_backed_up_or_left_out_on_purpose():
    from casebook.models import Base

    assert {table.name for table in backup.TABLES} | backup.NOT_BACKED_UP == set(Base.metadata.tables)


def test_a_target_in_use_at_an_older_schema_is_refused_before_it_is_migrated(casebook, good_backup, tmp_path):
    url = f'sqlite+aiosqlite:///{tmp_path / "older.sqlite3"}'
    engine = create_engine(make_url(url).set(drivername='sqlite+pysqlite'))
    try:
        with engine.begin() as connection:
            command.upgrade(alembic_config(connection), '0005')  # the schema before the activity chart's tables
            connection.execute(
                text(
                    'INSERT INTO clinicians (id, username, display_name, role, password_hash, disabled, created_at) '
                    "VALUES (1, 'ada', 'Ada', 'admin', 'x', 0, '2026-12-01 09:00:00')"
                )
            )
        code, out, err = casebook(url, 'restore', str(good_backup))
        assert (
            code == 2 and out == '' and err.startswith('casebook: the target database is not empty (clinicians 1)')
        ), err
        with engine.connect() as connection:
            assert connection.scalar(text('SELECT version_num FROM alembic_version')) == '0005'  # not migrated
    finally:
        engine.dispose()


def test_the_file_is_checked_again_while_restoring(database, good_backup, tmp_path, monkeypatch):
    """A file changed after the check but before the restore read it again: the restore rolls back whole."""
    file = tmp_path / 'changing.cbk'
    file.write_bytes(good_backup.read_bytes())
    check = backup.check

    def check_then_change(path, **kwargs):
        summary = check(path, **kwargs)
        change_a_message(file)
        return summary

    monkeypatch.setattr(backup, 'check', check_then_change)
    with pytest.raises(backup.BackupError, match='does not match its SHA-256'):
        backup.restore(database.url, file)
    assert counts(database.url) == dict.fromkeys(TABLES, 0) | {'audit_head': 16}


# ----- one transaction's view -----------------------------------------------------------------------------------


def test_backup_is_one_moment_and_lets_sends_through(database, tmp_path):
    """A send committed while the backup is reading (after its first rows) is not waited for, and not in the file:
    counts, rows and the audit chain's head are all of the moment the backup began."""
    seed(database.url)
    ada = run_on_own_loop(lambda: _clinician(database.url, 'ada'))
    sent: list[str] = []

    def send_during_backup(phase: str, done: int, total: int) -> None:
        if not sent:  # inside the backup's transaction: the installation row is read, the messages are not yet
            sent.append('during the backup')

            async def write() -> None:
                db = Database(database.url)
                try:
                    await send_all(db, ada, 'PAT1', sent)
                finally:
                    await db.dispose()

            run_on_own_loop(write)  # would time out (SQLite busy) or block (PostgreSQL) if the backup held a lock

    file = tmp_path / 'moment.cbk'
    with file.open('wb') as output:
        summary = backup.backup(database.url, output, progress=send_during_backup)
    assert sent and counts(database.url)['messages'] == summary.rows['messages'] + 1
    checked = backup.check(file)
    assert checked.rows == summary.rows and checked.audit.ok and checked.audit.rows == summary.rows['audit_events']
    assert b'during the backup' not in gzip.decompress(file.read_bytes())


async def _clinician(url: str, username: str):
    db = Database(url)
    try:
        async with db.session() as session:
            return await accounts.find_by_username(session, username)
    finally:
        await db.dispose()


def test_backup_under_load_holds_every_acknowledged_message(database, tmp_path):
    """`casebook backup` in its own process while a clinician keeps sending through the app's send path: every
    message acknowledged before the command started is in the file, sends go on meanwhile, the chain verifies."""
    seed(database.url)
    ada = run_on_own_loop(lambda: _clinician(database.url, 'ada'))
    acked: list[tuple[float, str]] = []  # (when acknowledged, client id)
    stop = threading.Event()

    async def keep_sending() -> None:
        db = Database(database.url)
        try:
            conversation = await db.run(
                lambda s: conversations.open_conversation_sync(s, clinician=ada, patient_id='LOAD')
            )
            while not stop.is_set():
                info = await send(db, ada, conversation.id, f'load {len(acked)}')
                acked.append((time.monotonic(), info.client_id))
        finally:
            await db.dispose()

    writer = threading.Thread(target=lambda: asyncio.run(keep_sending()))
    writer.start()
    try:
        while len(acked) < 20 and writer.is_alive():
            time.sleep(0.01)
        started = time.monotonic()
        before = {client_id for _when, client_id in acked}
        file = tmp_path / 'under-load.cbk'
        env = {**clean_env(tmp_path / 'data'), 'CASEBOOK_DATABASE_URL': database.url}
        result = subprocess.run(
            [str(CASEBOOK), 'backup', '-o', str(file)], env=env, capture_output=True, text=True, timeout=60, check=False
        )
        ended = time.monotonic()
    finally:
        stop.set()
        writer.join(timeout=30)
    assert result.returncode == 0, result.stderr
    assert sum(started < when < ended for when, _id in acked) > 0  # sends were acknowledged while it ran
    summary = backup.check(file)
    assert summary.audit.ok and summary.audit.rows == summary.rows['audit_events']
    in_file = set(client_ids(file))
    assert before <= in_file and len(in_file) == summary.rows['messages']
    target = f'sqlite+aiosqlite:///{tmp_path / "restored" / "casebook.sqlite3"}'  # the disk is lost: restore
    assert backup.restore(target, file).audit.ok
    engine = create_engine(sync_url(target))
    with engine.connect() as connection:
        assert before <= set(connection.scalars(text('SELECT client_id FROM messages')))
    engine.dispose()


def client_ids(path: Path) -> Iterator[str]:
    """The client ids of the messages a backup holds."""
    columns: list[str] = []
    for line in lines_of(path):
        value = json.loads(line)
        if isinstance(value, dict):
            columns = value.get('columns', []) if value.get('table') == 'messages' else []
        elif columns:
            yield value[columns.index('client_id')]


def test_a_chain_broken_before_the_backup_is_restored_as_it_was_and_reported(database, casebook, good_backup, tmp_path):
    """The clinical notes are not held hostage by a trail altered at the source: restored, reported, exit 1."""
    file = tmp_path / 'altered-trail.cbk'
    lines = lines_of(good_backup)
    section = lines.index(next(line for line in lines if line.startswith(b'{"table":"audit_events"')))
    row = json.loads(lines[section + 2])
    row[7] = 'altered'  # the detail of audit row 2, its hash left as it was
    lines[section + 2] = (json.dumps(row, ensure_ascii=False, separators=(',', ':')) + '\n').encode()
    rewritten(file, lines)
    code, out, err = casebook(database.url, 'restore', '--check', str(file))
    assert code == 1 and 'audit trail in it is broken: audit row 2 (chain 2): its content was changed' in err
    code, out, err = casebook(database.url, 'restore', str(file))
    assert code == 1 and 'the counts match' in out
    broken = 'audit row 2 (chain 2): its content was changed'
    assert err == f'casebook: restored, but the audit trail was broken in the backup: {broken}\n'
    assert counts(database.url)['messages'] == 14


def test_rows_referring_to_missing_rows_are_refused_whole(database, casebook, good_backup, tmp_path):
    """Foreign keys are checked once at the end of a restore (not per row): a dangling reference still undoes it."""
    file = tmp_path / 'dangling.cbk'
    lines = lines_of(good_backup)
    index = next(i for i, line in enumerate(lines) if b'Mild fever' in line)
    row = json.loads(lines[index])
    row[1] = 999  # a conversation the file does not hold
    lines[index] = (json.dumps(row, ensure_ascii=False, separators=(',', ':')) + '\n').encode()
    rewritten(file, lines)
    code, out, err = casebook(database.url, 'restore', str(file))
    assert code == 2 and out == '' and err.count('\n') == 1 and 'nothing was restored' in err
    assert counts(database.url) == dict.fromkeys(TABLES, 0) | {'audit_head': 16}
    assert casebook(database.url, 'restore', str(good_backup))[0] == 0  # and the foreign keys are back in place
    with pytest.raises(Exception, match=r'(?i)foreign key'):
        run_on_own_loop(lambda: _dangling_message(database.url))


async def _dangling_message(url: str) -> None:
    db = Database(url)
    try:
        async with db.session() as session:
            await session.execute(
                text(
                    'INSERT INTO messages (conversation_id, client_id, author_id, sender_role, text, sent_at) '
                    "VALUES (999, 'x', 1, 'doctor', 'x', '2026-01-01 00:00:00')"
                )
            )
            await session.commit()
    finally:
        await db.dispose()


@pytest.mark.parametrize('command', ['backup', 'restore'])
def test_an_unreachable_database_is_one_line(casebook, good_backup, tmp_path, command):
    url = 'postgresql+asyncpg://postgres@127.0.0.1:1/casebook'  # nothing listens on port 1
    args = ['backup', '-o', str(tmp_path / 'x.cbk')] if command == 'backup' else ['restore', str(good_backup)]
    code, out, err = casebook(url, *args)
    assert code == 2 and out == '' and err.startswith('casebook: the database failed: ') and err.count('\n') == 1
    assert list(tmp_path.iterdir()) == []


def test_times_stored_in_another_spelling_are_written_canonical(fresh, casebook, tmp_path):
    """A row written outside the app (`2026-01-01 09:00:00`, no microseconds) still makes a restorable backup."""
    source = fresh('sqlite', 'source')
    seed(source)
    engine = create_engine(sync_url(source))
    with engine.begin() as connection:
        connection.execute(text("UPDATE conversations SET created_at = '2026-01-01 09:00:00' WHERE id = 1"))
    engine.dispose()
    file = tmp_path / 'odd.cbk'
    backup_to(casebook, source, file)
    assert b'"2026-01-01T09:00:00.000000+00:00"' in gzip.decompress(file.read_bytes())
    code, _out, err = casebook(fresh('sqlite', 'target'), 'restore', str(file))
    assert (code, err) == (0, '')


def as_made_at(path: Path, revision: str) -> None:
    """The file as a Casebook at an older schema revision wrote it: no section and no count for a table added
    after that revision (backup.ADDED_BY_REVISION)."""
    lines = lines_of(path)
    header, trailer = json.loads(lines[0]), json.loads(lines[-1])
    assert header['schema_revision'] == '0011'  # the newest: written by this Casebook
    header['schema_revision'] = revision
    if revision < '0011':
        lines = as_one_chain(lines)
        header['rows']['audit_head'] = trailer['end']['rows']['audit_head'] = 1
    for name, added in backup.ADDED_BY_REVISION.items():
        if added <= revision:
            continue
        del header['rows'][name], trailer['end']['rows'][name]
        start = lines.index(next(line for line in lines if line.startswith(f'{{"table":"{name}"'.encode())))
        end = next(i for i in range(start + 1, len(lines)) if not lines[i].startswith(b'['))
        lines = [*lines[:start], *lines[end:]]
    lines = [(json.dumps(header) + '\n').encode(), *lines[1:-1], (json.dumps(trailer) + '\n').encode()]
    rewritten(path, lines)


def as_one_chain(lines: list[bytes]) -> list[bytes]:
    """The audit sections as a Casebook before migration 0011 wrote them: one chain, its rows in seq order (1, 2, …)
    hashed without a chain number, one head row; no chain column, no legacy column."""
    encode = json.JSONEncoder(ensure_ascii=False, separators=(',', ':')).encode
    events = lines.index(next(line for line in lines if line.startswith(b'{"table":"audit_events"')))
    head = lines.index(next(line for line in lines if line.startswith(b'{"table":"audit_head"')))
    out, prev = [], audit.GENESIS
    for number, line in enumerate(lines[events + 1 : head], 1):
        row = json.loads(line)[:8]
        assert row[0] == number  # SQLite's seq has no gaps
        row.append(prev)
        prev = hashlib.sha256(encode(row).encode()).hexdigest()
        out.append((encode([*row, prev]) + '\n').encode())
    section = json.loads(lines[events])
    section['columns'] = section['columns'][:10]
    head_section = json.loads(lines[head])
    head_section['columns'] = head_section['columns'][:3]
    end = head + 1 + audit.CHAINS
    return [
        *lines[:events],
        (encode(section) + '\n').encode(),
        *out,
        (encode(head_section) + '\n').encode(),
        (encode([1, len(out), prev]) + '\n').encode(),
        *lines[end:],
    ]


def test_a_file_of_the_one_chain_restores_into_the_chains(database, casebook, good_backup, tmp_path):
    """A backup made before migration 0011 (one chain, the old hash form) restores as chain 1's first rows:
    it verifies, and new rows go on in the chains."""
    file = tmp_path / 'one-chain.cbk'
    file.write_bytes(good_backup.read_bytes())
    as_made_at(file, '0010')
    assert b'"chain"' not in gzip.decompress(file.read_bytes())
    rows = counts_in(good_backup)['audit_events']
    code, _out, err = casebook(database.url, 'restore', str(file))
    assert (code, err) == (0, ''), err
    assert casebook(database.url, 'audit', 'verify')[1] == f'audit trail intact: {rows} rows\n'

    async def append() -> None:
        db = Database(database.url)
        try:
            async with db.session() as session:
                await audit.record_now(session, audit.Entry(audit.SIGN_IN, 1, 'ada'))
                await audit.record_now(session, audit.Entry(audit.LOGOFF, None, '', None, '', 'system'))  # chain 1
        finally:
            await db.dispose()

    run_on_own_loop(append)
    assert casebook(database.url, 'audit', 'verify')[1] == f'audit trail intact: {rows + 2} rows\n'
    damaged = tmp_path / 'one-chain-altered.cbk'
    lines = lines_of(file)
    section = lines.index(next(line for line in lines if line.startswith(b'{"table":"audit_events"')))
    row = json.loads(lines[section + 3])
    row[7] = 'altered'
    lines[section + 3] = (json.dumps(row, ensure_ascii=False, separators=(',', ':')) + '\n').encode()
    rewritten(damaged, lines)
    code, _out, err = casebook(database.url, 'restore', '--check', str(damaged))
    assert code == 1 and 'audit trail in it is broken: audit row 3 (chain 1): its content was changed' in err, err


def as_made_before_templates(path: Path) -> None:
    """The file as a Casebook at schema revision 0007 wrote it: no templates (nor two-step) section or count."""
    as_made_at(path, '0007')


def test_a_file_made_before_templates_restores_without_them(database, casebook, good_backup, tmp_path):
    file = tmp_path / 'older.cbk'
    file.write_bytes(good_backup.read_bytes())
    as_made_before_templates(file)
    assert b'"templates"' not in gzip.decompress(file.read_bytes())
    code, out, err = casebook(database.url, 'restore', '--check', str(file))
    assert (code, err) == (
        0,
        '',
    ) and 'clinicians 2, templates 0, two step 0, recovery codes 0, passkeys 0, conversations 3' in out
    code, out, err = casebook(database.url, 'restore', str(file))
    assert (code, err) == (0, ''), err
    assert 'the counts match' in out
    assert counts(database.url) == counts_in(good_backup) | {
        'templates': 0,
        'two_step': 0,
        'recovery_codes': 0,
        'passkeys': 0,
    }
    assert templates_of(database.url) == {'ada': [], 'bob': []}


def counts_in(path: Path) -> dict[str, int]:
    return json.loads(lines_of(path)[0])['rows']


@pytest.mark.parametrize(
    ('templates_section', 'revision', 'templates_count', 'message'),
    [
        (False, '0008', None, 'its header has no valid row counts'),
        (False, '0008', 0, 'the templates section was expected here'),
        (True, '0007', 4, 'its header has no valid row counts'),
        (True, '0007', None, 'the conversations section was expected here'),
    ],
)
def test_the_templates_section_is_expected_by_revision(
    good_backup, tmp_path, templates_section, revision, templates_count, message
):
    """A file of revision 0008 or later without its templates section, or of 0007 with one, is refused."""
    file = tmp_path / 'altered.cbk'
    file.write_bytes(good_backup.read_bytes())
    if not templates_section:
        as_made_before_templates(file)
    lines = lines_of(file)
    header = json.loads(lines[0])
    header['schema_revision'] = revision
    for name in ('templates', 'two_step', 'recovery_codes', 'passkeys'):
        header['rows'].pop(name, None)
    if templates_count is not None:
        header['rows']['templates'] = templates_count
    rewritten(file, [(json.dumps(header) + '\n').encode(), *lines[1:]])
    with pytest.raises(backup.BackupError, match=message):
        backup.check(file)


# ----- two-step sign-in ------------------------------------------------------------------------------------------


def with_two_step(url: str) -> tuple[str, list[str]]:
    """Two clinicians, ada with two-step sign-in on under this installation's key: (her secret, recovery codes)."""
    from casebook.config import Settings

    key = two_step.key_of(Settings())

    async def work() -> tuple[str, list[str]]:
        db = Database(url)
        try:
            await db.migrate()
            ada = await add_clinician(db, 'ada')
            await add_clinician(db, 'bob')
            setup = await db.run(lambda s: two_step.begin_setup(s, ada.id, key=key))
            current = pyotp.TOTP(setup.secret).now()
            return setup.secret, await db.run(lambda s: two_step.confirm_setup(s, ada.id, current, key=key))
        finally:
            await db.dispose()

    return run_on_own_loop(work)


def second_step(url: str, typed: str, *, later: int = 1) -> two_step.Verification:
    """`typed` as ada's second step, `later` time steps from now, under this installation's key."""
    from casebook.config import Settings

    key = two_step.key_of(Settings())
    at = datetime.now(UTC) + timedelta(seconds=later * two_step.STEP_SECONDS)

    async def work() -> two_step.Verification:
        db = Database(url)
        try:
            ada = await db.run(lambda s: s.scalar(select(Clinician.id).where(Clinician.username == 'ada')))
            return await db.run(lambda s: two_step.verify(s, ada, typed, key=key, at=at))
        finally:
            await db.dispose()

    return run_on_own_loop(work)


@pytest.mark.parametrize('target_engine', ['sqlite', 'postgresql'])
def test_two_step_sign_in_survives_a_restore_under_the_same_key_only(
    fresh, casebook, tmp_path, monkeypatch, target_engine
):
    source = fresh('sqlite', 'source')
    secret, codes = with_two_step(source)
    file = tmp_path / 'clinic.cbk'
    backup_to(casebook, source, file)
    text_of_file = gzip.decompress(file.read_bytes()).decode()
    assert secret not in text_of_file and not any(c.replace('-', '') in text_of_file for c in codes)
    assert '"two_step":1' in text_of_file and '"recovery_codes":10' in text_of_file

    same = fresh(target_engine, 'same')
    code, out, err = casebook(same, 'restore', str(file))
    assert (code, err) == (0, ''), err
    assert 'two-step sign-in must be set up again' not in out
    in_a_minute = pyotp.TOTP(secret).at(int(time.time()) + two_step.STEP_SECONDS)
    assert second_step(same, in_a_minute).kind == 'code'

    monkeypatch.setenv('CASEBOOK_SECRET_KEY', 'the key of another installation')
    other = fresh(target_engine, 'other')
    code, out, err = casebook(other, 'restore', str(file))
    assert (code, err) == (0, ''), err
    assert (
        'two-step sign-in must be set up again by 1 clinician(s), whose secrets were encrypted under another key: ada'
        in out
    )
    assert not second_step(other, in_a_minute).accepted
    assert second_step(other, codes[0]).kind == 'recovery-code'  # hashes need no key: she can still sign in


def test_a_file_made_before_two_step_restores_without_it(database, casebook, good_backup, tmp_path):
    file = tmp_path / 'older.cbk'
    file.write_bytes(good_backup.read_bytes())
    as_made_at(file, '0008')
    assert b'"two_step"' not in gzip.decompress(file.read_bytes())
    code, _out, err = casebook(database.url, 'restore', str(file))
    assert (code, err) == (0, ''), err
    assert counts(database.url) == counts_in(good_backup)


# ----- passkeys --------------------------------------------------------------------------------------------------


def test_a_passkey_still_signs_in_after_a_restore_into_postgresql(fresh, casebook, tmp_path):
    """Passkeys are public keys: the backup carries them as they are, and the restored one verifies the same
    authenticator's next signature (its sign count carried too)."""
    from tests.services.test_passkeys import RP, Authenticator

    phone = Authenticator()

    async def registered(url: str) -> int:
        db = Database(url)
        try:
            await db.migrate()
            ada = await add_clinician(db, 'ada')
            options, challenge = await db.run(lambda s: passkeys.registration_options(s, ada.id, RP))
            answer = phone.create(options)
            await db.run(
                lambda s: passkeys.finish_registration(s, ada.id, answer, challenge=challenge, rp=RP, name='Phone')
            )
            return ada.id
        finally:
            await db.dispose()

    async def signed_in(url: str) -> int | None:
        db = Database(url)
        try:
            options, challenge = passkeys.authentication_options(RP)
            answer = phone.get(options)
            return await db.run(lambda s: passkeys.finish_authentication(s, answer, challenge=challenge, rp=RP))
        finally:
            await db.dispose()

    source = fresh('sqlite', 'source')
    ada = run_on_own_loop(lambda: registered(source))
    assert run_on_own_loop(lambda: signed_in(source)) == ada
    file = tmp_path / 'clinic.cbk'
    backup_to(casebook, source, file)
    assert '"passkeys":1' in gzip.decompress(file.read_bytes()).decode()
    target = fresh('postgresql', 'target')
    code, _out, err = casebook(target, 'restore', str(file))
    assert (code, err) == (0, ''), err
    assert run_on_own_loop(lambda: signed_in(target)) == ada
