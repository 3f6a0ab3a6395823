"""Online backup of a Casebook database into one engine-neutral file, and a checked restore from it.

The file (`.cbk`) is gzip'd UTF-8 text, one JSON value per line:

    {"format": "casebook.backup.v1", "schema_revision": "0006", "created_at": "…", "source_engine": "sqlite",
     "rows": {"installation": 1, "clinicians": 3, …}}            header: the manifest of row counts per table
    {"table": "installation", "columns": ["id", "created_at"]}  a section per table, in TABLES order, then
    [1, "2026-12-03T09:00:00.000000+00:00"]                     its rows, one JSON array each, by primary key
    …
    {"end": {"rows": {…}, "sha256": "<hex>"}}                   trailer: the counts again and the digest

A file made before migration 0011 (one audit chain) has no `chain` column in audit_events nor `legacy` in
audit_head, and one head row: it is read as chain 1's rows in the old hash form (ADDED_COLUMNS).

The SHA-256 covers every byte of the uncompressed text before the trailer line (header included). Values are
JSON numbers, strings, true/false and null; times are UTC in ISO 8601 with microseconds (`…+00:00`), so a file
made from SQLite restores into PostgreSQL and back. Sessions, NiceGUI storage and the derived activity tables
are not in it.

A file holds the tables its schema revision had: one made before a table was added (ADDED_BY_REVISION, e.g.
`templates` at 0008, `two_step` and `recovery_codes` at 0009, `passkeys` at 0010) has no section and no count for
it, and restores with that table empty. The format stays v1. Two-step sign-in secrets are in it as stored:
encrypted. Passkeys are in it too: public keys, nothing secret, so they keep working after a restore.

Backup reads everything in ONE transaction (SQLite: one read transaction in WAL mode, which never takes the
write lock; PostgreSQL: REPEATABLE READ READ ONLY), so counts, rows and the audit chain's head are those of one
moment while clinicians keep writing. Rows are streamed in batches: memory stays constant.

Restore reads the whole file once to check it (gzip integrity, format, digest, counts, every row's shape)
before it touches the target, then refuses a target that holds data, then, in one transaction: inserts
everything while reading the file a second time (its digest checked again before the commit), checks the
foreign keys once at the end (not row by row), sets PostgreSQL's id sequences past the restored ids, sets the
audit chains' heads to the backup's, and verifies the counts and the audit chain (audit.verify_sync) before committing.
A chain that was already broken in the backup is restored as it was and reported: the notes are not held
hostage by an altered trail, and the break stays visible.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import json
import re
import time
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from sqlalchemy import Boolean, Integer, Table, bindparam, event, func, inspect, select, text
from sqlalchemy.engine import Connection, Engine, create_engine, make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session
from sqlalchemy.pool import NullPool  # one connection, closed when done: the command exits right after

from casebook.db import _sqlite_pragmas, alembic_config, head_revision, migrate_blocking
from casebook.models import (
    AuditEvent,
    AuditHead,
    Clinician,
    Conversation,
    EnteredInError,
    Installation,
    Message,
    Passkey,
    RecoveryCode,
    Template,
    TwoStep,
    UTCDateTime,
)
from casebook.services import audit, search, two_step
from casebook.services.errors import CasebookError

FORMAT = 'casebook.backup.v1'
FORMAT_VERSION = 1
SUFFIX = '.cbk'
# What a backup holds, in the order it is written and restored (foreign keys point only to tables before).
TABLES: tuple[Table, ...] = tuple(
    model.__table__  # type: ignore[misc]
    for model in (
        Installation,
        Clinician,
        Template,
        TwoStep,
        RecoveryCode,
        Passkey,
        Conversation,
        Message,
        EnteredInError,
        AuditEvent,
        AuditHead,
    )
)
# Tables made by a later migration than the first backups': a file of an older schema revision has no section
# for them (and no count in its header), and restores with them empty.
ADDED_BY_REVISION = {'templates': '0008', 'two_step': '0009', 'recovery_codes': '0009', 'passkeys': '0010'}
# Columns added to a table by a later migration, at its end: a file of an older revision has the others, and its
# rows get the value the migration gave the rows there were (audit rows were chain 1's, in the old hash form).
ADDED_COLUMNS = {'audit_events': ('chain', '0011'), 'audit_head': ('legacy', '0011')}
# Left out on purpose: sign-ins end with a restore (everyone signs in again), and the chart's hourly counts are
# derived from the audit trail and rebuilt on first need. A new table must be named in one of the two. The search
# index (search.TABLE, made by its migration's own SQL, not a model) is rebuilt from the messages by a restore.
NOT_BACKED_UP = frozenset({'auth_sessions', 'activity_hours', 'activity_rollup'})
BATCH = 5000  # rows per read, per write and per insert: memory stays flat, round trips stay few
COMPRESSLEVEL = 1  # gzip level: 1 is about 3x faster than 6 and the file only ~20% larger
# tables whose rows say the target is in use; audit_head always has its chains' rows after migrating
IN_USE = ('installation', 'clinicians', 'templates', 'conversations', 'messages', 'entered_in_error', 'audit_events')
_FORMAT_NAME = re.compile(r'casebook\.backup\.v(\d+)')
_TIME = re.compile(r'\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}\+00:00')
_ENCODE = json.JSONEncoder(ensure_ascii=False, separators=(',', ':')).encode

Progress = Callable[[str, int, int], None]
"""Told (phase, rows done, rows in all) as a backup, check or restore goes."""


class BackupError(CasebookError):
    """A backup that cannot be made, or a file or target that cannot be restored; nothing was written."""


@dataclass(frozen=True)
class Summary:
    """What a backup file holds (or what was just written)."""

    schema_revision: str
    created_at: str
    source_engine: str
    rows: dict[str, int]
    audit: audit.Verdict  # the audit chain as the file holds it


@dataclass(frozen=True)
class Restored:
    summary: Summary
    audit: audit.Verdict  # the chain as verified in the restored database
    # who must set up two-step sign-in again: their secrets were encrypted under another key than the one given
    must_set_up_two_step: tuple[str, ...] = ()


def default_name(now: datetime | None = None) -> str:
    """`casebook-backup-20261203T141500Z.cbk`: sorts by time, no characters a shell or Windows minds."""
    return f'casebook-backup-{(now or datetime.now(UTC)).strftime("%Y%m%dT%H%M%SZ")}{SUFFIX}'


def known_revisions() -> set[str]:
    return set(_revisions())


@functools.cache
def _revisions() -> tuple[str, ...]:
    """The migrations' revisions, oldest first."""
    from alembic.script import ScriptDirectory

    walked = ScriptDirectory.from_config(alembic_config()).walk_revisions()  # newest first
    return tuple(reversed([script.revision for script in walked]))


def tables_of(revision: str) -> tuple[Table, ...]:
    """The tables a backup of a database at this (known) schema revision holds, in TABLES order."""
    order = _revisions()
    return tuple(
        table
        for table in TABLES
        if table.name not in ADDED_BY_REVISION or order.index(ADDED_BY_REVISION[table.name]) <= order.index(revision)
    )


def columns_of(name: str, revision: str) -> tuple[_Column, ...]:
    """The columns a table's section holds in a file of this (known) schema revision."""
    columns = COLUMNS[name]
    if name in ADDED_COLUMNS:
        column, added = ADDED_COLUMNS[name]
        order = _revisions()
        if order.index(revision) < order.index(added):
            return tuple(c for c in columns if c.name != column)
    return columns


def _as_now(name: str, revision: str, rows: list[list[Any]]) -> list[list[Any]]:
    """Rows of an older file's section in this Casebook's columns (ADDED_COLUMNS)."""
    if len(columns_of(name, revision)) == len(COLUMNS[name]):
        return rows
    if name == 'audit_events':  # before the chains: chain 1, all of it
        return [[*row, 1] for row in rows]
    return [[*row, row[1]] for row in rows]  # audit_head: all the one chain's rows are in the old form


# ------------------------------------------------------------------------------------------------- tables


@dataclass(frozen=True)
class _Column:
    name: str
    kind: str  # int, str, bool or time
    nullable: bool
    length: int | None  # a string's limit, where the column has one


def _columns(table: Table) -> tuple[_Column, ...]:
    def kind(column) -> str:
        if isinstance(column.type, UTCDateTime):
            return 'time'
        if isinstance(column.type, Boolean):
            return 'bool'
        return 'int' if isinstance(column.type, Integer) else 'str'

    return tuple(
        _Column(c.name, kind(c), bool(c.nullable), getattr(c.type, 'length', None) if kind(c) == 'str' else None)
        for c in table.columns
    )


COLUMNS: dict[str, tuple[_Column, ...]] = {table.name: _columns(table) for table in TABLES}


# ------------------------------------------------------------------------------------------------- engines


def _sync_engine(url: str, *, begin: str = 'BEGIN', foreign_keys: bool = True) -> Engine:
    """A plain (not async) engine on the same database: sqlite3 or psycopg. On SQLite the transaction is begun by
    us (`begin`), as Python's sqlite3 would otherwise begin one only before the first write."""
    parsed = make_url(url)
    if parsed.get_backend_name() == 'sqlite':
        engine = create_engine(parsed.set(drivername='sqlite+pysqlite'), poolclass=NullPool)

        @event.listens_for(engine, 'connect')
        def _connect(dbapi_connection: Any, record: Any) -> None:
            _sqlite_pragmas(dbapi_connection, record)
            dbapi_connection.isolation_level = None  # we say when transactions begin
            if not foreign_keys:  # a restore checks them all at its end (cannot be switched inside a transaction)
                dbapi_connection.execute('PRAGMA foreign_keys=OFF')

        @event.listens_for(engine, 'begin')
        def _begin(connection: Connection) -> None:
            connection.exec_driver_sql(begin)

        return engine
    if parsed.get_backend_name() == 'postgresql':
        return create_engine(parsed.set(drivername='postgresql+psycopg'), poolclass=NullPool)
    return create_engine(parsed)


def _database_error(error: Exception) -> BackupError:
    reason = str(getattr(error, 'orig', None) or error).strip().splitlines()[0]
    return BackupError(f'the database failed: {reason}')


# ------------------------------------------------------------------------------------------------- backup


def backup(
    url: str,
    output: IO[bytes],
    *,
    progress: Progress | None = None,
    level: int = COMPRESSLEVEL,
    pace: Pacer | None = None,
) -> Summary:
    """Write a backup of the database at `url` to `output` (binary, open for writing); reads only, resting between
    batches as `pace` says (none: no rests)."""
    parsed = make_url(url)
    if parsed.get_backend_name() == 'sqlite' and not (parsed.database and Path(parsed.database).exists()):
        raise BackupError(f'there is no database at {parsed.database}')  # and sqlite3 would create an empty one
    engine = _sync_engine(url)
    try:
        with _snapshot(engine) as connection:
            return _write(connection, output, progress, level, pace or Pacer())
    except SQLAlchemyError as error:
        raise _database_error(error) from error
    finally:
        engine.dispose()


@contextmanager
def _snapshot(engine: Engine) -> Iterator[Connection]:
    """A connection inside one read-only transaction: every read sees the same moment."""
    with engine.connect() as connection:
        if connection.dialect.name == 'postgresql':
            connection = connection.execution_options(isolation_level='REPEATABLE READ', postgresql_readonly=True)
        with connection.begin() as transaction:
            yield connection
            transaction.rollback()  # nothing was written; ending a read-only transaction either way is the same


class Pacer:
    """Work in short slices with rests between them: `rest` seconds per second of work, as long as the whole job,
    at the pace so far, still ends within `within` seconds (less rest, or none, when it would not).

    A backup beside a serving Casebook on a small machine: a send that arrives while the backup computes shares
    the cores with it; with rests, most sends meet a resting backup (bench/backup_send.py, docs/performance.md).
    """

    def __init__(self, rest: float = 0.0, within: float = 0.0) -> None:
        self.rest, self.within = max(0.0, rest), within
        self.started = self.mark = time.perf_counter()
        self.worked = 0.0

    def __call__(self, done: int, total: int) -> None:
        now = time.perf_counter()
        slice_ = now - self.mark
        self.worked += slice_
        if self.rest and 0 < done < total:
            work_left = self.worked / done * (total - done)
            spare = self.within - (now - self.started) - work_left  # rest the job can still afford
            batches_left = max(1.0, (total - done) / BATCH)
            time.sleep(max(0.0, min(slice_ * self.rest, spare / batches_left)))
        self.mark = time.perf_counter()


def _write(connection: Connection, output: IO[bytes], progress: Progress | None, level: int, pace: Pacer) -> Summary:
    revision = _revision(connection)  # the first read: on SQLite this is where the snapshot is taken
    if revision != head_revision():
        raise BackupError(
            f'the database is at schema revision {revision}, this Casebook at {head_revision()}: '
            'run `casebook migrate` (or the matching Casebook version) first'
        )
    rows = {table.name: connection.scalar(select(func.count()).select_from(table)) or 0 for table in TABLES}
    created = datetime.now(UTC).isoformat(timespec='seconds')
    header = {
        'format': FORMAT,
        'schema_revision': revision,
        'created_at': created,
        'source_engine': connection.dialect.name,
        'rows': rows,
    }
    total, done = sum(rows.values()), 0
    written: dict[str, int] = {}
    digest = hashlib.sha256()
    with gzip.GzipFile(fileobj=output, mode='wb', compresslevel=level, mtime=0) as compressed:

        def put(data: bytes) -> None:
            digest.update(data)
            compressed.write(data)

        put(_line(header))
        for table in TABLES:
            put(_line({'table': table.name, 'columns': [c.name for c in COLUMNS[table.name]]}))
            written[table.name] = 0
            for lines, count in _table_lines(connection, table):
                put(lines)
                written[table.name] += count
                done += count
                if progress:
                    progress('backing up', done, total)
                pace(done, total)
        if written != rows:  # cannot happen inside one transaction; a backup that disagrees with itself is refused
            raise BackupError('the database changed while it was being read; no backup was written')
        compressed.write(_line({'end': {'rows': written, 'sha256': digest.hexdigest()}}))
    if progress:
        progress('backing up', total, total)
    return Summary(revision, created, connection.dialect.name, rows, audit.Verdict(True, rows['audit_events']))


def _revision(connection: Connection) -> str:
    try:
        return str(connection.scalar(text('SELECT version_num FROM alembic_version')))
    except SQLAlchemyError as error:
        raise BackupError('this database holds no Casebook schema (no alembic_version table)') from error


def _line(value: Any) -> bytes:
    return (_ENCODE(value) + '\n').encode()


def _table_lines(connection: Connection, table: Table) -> Iterator[tuple[bytes, int]]:
    """The table's rows by primary key, as JSON lines, a batch at a time (a server-side cursor on PostgreSQL).

    Straight from the driver, times formatted by the database: a row goes from cursor to JSON without a Python
    datetime or SQLAlchemy's row processing on the way (half the CPU time of a million-message backup).
    """
    columns = COLUMNS[table.name]
    postgres = connection.dialect.name == 'postgresql'
    expressions = ', '.join(_select_expression(column, postgres=postgres) for column in columns)
    order = ', '.join(column.name for column in table.primary_key.columns)
    raw = connection.connection.dbapi_connection  # inside the snapshot's transaction
    cursor = raw.cursor(name=f'casebook_backup_{table.name}') if postgres else raw.cursor()  # type: ignore[union-attr]
    try:
        cursor.execute(f'SELECT {expressions} FROM {table.name} ORDER BY {order}')  # noqa: S608 (our own names)
        while batch := cursor.fetchmany(BATCH):
            batch = _canonical(table.name, columns, batch, postgres=postgres)
            yield ('\n'.join(map(_ENCODE, batch)) + '\n').encode(), len(batch)
    finally:
        cursor.close()


def _select_expression(column: _Column, *, postgres: bool) -> str:
    """A column as the file spells it: times as `2026-12-03T09:00:00.123456+00:00`."""
    name = column.name
    if column.kind != 'time':
        return name
    if postgres:
        return f'to_char({name} AT TIME ZONE \'UTC\', \'YYYY-MM-DD"T"HH24:MI:SS.US"+00:00"\')'
    # SQLAlchemy stores `2026-12-03 09:00:00.123456` on SQLite (UTCDateTime: always UTC, always microseconds)
    canonical = f"substr({name}, 1, 10) || 'T' || substr({name}, 12) || '+00:00'"
    return f'CASE WHEN length({name}) = 26 THEN {canonical} ELSE {name} END'


def _canonical(name: str, columns: tuple[_Column, ...], batch: list[Any], *, postgres: bool) -> list[Any]:
    """The batch as it is, when every value is already spelled as the file wants it (the usual case); else with
    SQLite's 0/1 booleans made true/false and times stored in another spelling made canonical."""
    odd_times = [
        index
        for index, column in enumerate(columns)
        if column.kind == 'time'
        and not all(map(_TIME.fullmatch, [row[index] for row in batch if row[index] is not None]))
    ]
    bools = [] if postgres else [index for index, column in enumerate(columns) if column.kind == 'bool']
    if not odd_times and not bools:
        return batch
    fixed = []
    for row in batch:
        values = list(row)
        for index in bools:
            values[index] = bool(values[index]) if values[index] is not None else None
        for index in odd_times:
            values[index] = _canonical_time(name, columns[index], values[index])
        fixed.append(values)
    return fixed


def _canonical_time(name: str, column: _Column, value: Any) -> str | None:
    if value is None:
        return None
    try:
        moment = datetime.fromisoformat(str(value))
    except ValueError:
        raise BackupError(f'{name}.{column.name} holds {str(value)[:40]!r}, which is not a time') from None
    moment = moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)  # naive: UTC as stored
    return moment.isoformat(timespec='microseconds')


# ------------------------------------------------------------------------------------------------- reading


def check(path: Path, *, progress: Progress | None = None, chain: bool = True) -> Summary:
    """Read the whole file and check everything in it; writes nothing. Raises BackupError naming the first fault.
    With `chain`, the audit chain it holds is verified too (its verdict is in the summary, not raised)."""
    header: dict[str, Any] = {}
    audit_chain = _Chain() if chain else None
    for item in _read(path, progress, 'checking'):
        if isinstance(item, dict):
            header = item
        elif audit_chain is not None:
            audit_chain.add(*item)
    verdict = audit_chain.verdict() if audit_chain else audit.Verdict(True, header['rows']['audit_events'])
    rows = {table.name: header['rows'].get(table.name, 0) for table in TABLES}  # a table newer than the file: none
    return Summary(header['schema_revision'], header['created_at'], header['source_engine'], rows, verdict)


def _read(path: Path, progress: Progress | None, phase: str) -> Iterator[dict[str, Any] | tuple[str, list[list[Any]]]]:
    """The header, then (table, batch of checked rows) in file order; raises BackupError on any fault, the last
    of them (digest, counts, trailer) only after the last batch."""
    try:
        with open(path, 'rb') as raw, gzip.GzipFile(fileobj=raw, mode='rb') as source:
            yield from _Parser(source, progress, phase, validate=phase == 'checking').run()
    except _Faulty as fault:
        raise BackupError(f'{path}: {fault}') from None
    except FileNotFoundError as error:
        raise BackupError(f'{path}: no such file') from error
    except (gzip.BadGzipFile, EOFError, zlib.error) as error:
        raise BackupError(f'{path}: damaged or truncated (not a whole gzip file: {error})') from error
    except OSError as error:
        raise BackupError(f'cannot read {path}: {error.strerror or error}') from error


class _Faulty(Exception):
    """What is wrong with the file's content (reported with the file's name)."""


def _count(value: Any) -> bool:
    return type(value) is int and value >= 0


class _Lines:
    """The uncompressed text as lines, read a megabyte at a time; runs of row lines are handed out together, so
    that they are parsed and checked a batch at a time instead of one Python call per line."""

    CHUNK = 1 << 20

    def __init__(self, source: IO[bytes]) -> None:
        self.source = source
        self.buffer: list[bytes] = []
        self.at = 0
        self.rest = b''
        self.number = 0  # of the last line handed out

    def _fill(self) -> bool:
        while self.at >= len(self.buffer):
            chunk = self.source.read(self.CHUNK)
            if not chunk:
                if self.rest:
                    raise _Faulty(f'line {self.number + 1} is cut short (truncated)')
                return False
            self.buffer = (self.rest + chunk).split(b'\n')
            self.rest = self.buffer.pop()  # an unfinished line waits for the next chunk
            self.at = 0
        return True

    def next(self) -> bytes | None:
        if not self._fill():
            return None
        line = self.buffer[self.at]
        self.at += 1
        self.number += 1
        return line

    def rows(self, limit: int) -> list[bytes]:
        """Up to `limit` row lines (those starting with '[') from here on; none when the next line is not one."""
        if not self._fill():
            return []
        buffer, start = self.buffer, self.at
        end = min(len(buffer), start + limit)
        at = start
        while at < end and buffer[at][:1] == b'[':
            at += 1
        self.at = at
        self.number += at - start
        return buffer[start:at]


class _Parser:
    """One pass over the uncompressed lines: each is checked, and all but the trailer go into the digest. The
    restore's second pass skips the per-value checks: the digest, checked again, says it is the same text."""

    def __init__(self, source: IO[bytes], progress: Progress | None, phase: str, *, validate: bool) -> None:
        self.lines = _Lines(source)
        self.digest = hashlib.sha256()
        self.counted: dict[str, int] = {}
        self.progress = progress
        self.phase = phase
        self.validate = validate
        self.revision = ''  # the file's schema revision, from its header
        self.done = 0
        self.total = 0

    def run(self) -> Iterator[dict[str, Any] | tuple[str, list[list[Any]]]]:
        line = self._take('it is empty')
        header = _header(self._value(line))
        self.digest.update(line + b'\n')
        self.total = sum(header['rows'].values())
        yield header
        self.revision = header['schema_revision']
        line = self._take('it has no tables (truncated)')
        for table in tables_of(self.revision):
            line = yield from self._section(table.name, line)
        self._trailer(self._value(line), header)

    def _take(self, missing: str) -> bytes:
        line = self.lines.next()
        if line is None:
            raise _Faulty(missing)
        return line

    def _value(self, line: bytes) -> Any:
        try:
            return json.loads(line)
        except ValueError:  # UnicodeDecodeError included
            raise _Faulty(f'line {self.lines.number} is not well-formed JSON') from None

    def _section(self, name: str, line: bytes):
        """Check one table's section, yielding its rows in batches; returns the line after it."""
        section = self._value(line)
        if not isinstance(section, dict) or section.get('table') != name:
            raise _Faulty(f'line {self.lines.number}: the {name} section was expected here')
        if section.get('columns') != [c.name for c in columns_of(name, self.revision)]:
            raise _Faulty(f'the {name} section has other columns than this Casebook stores')
        self.digest.update(line + b'\n')
        count = 0
        while run := self.lines.rows(BATCH):
            self.digest.update(b'\n'.join(run) + b'\n')
            rows = _as_now(name, self.revision, self._rows(name, run, self.lines.number - len(run) + 1))
            count += len(rows)
            yield name, rows
            self.done += len(rows)
            if self.progress:
                self.progress(self.phase, self.done, self.total)
        self.counted[name] = count
        return self._take('it ends before its trailer (truncated)')

    def _rows(self, name: str, run: list[bytes], first: int) -> list[list[Any]]:
        """The rows of consecutive lines, parsed as one JSON array; checked unless told not to."""
        try:
            rows = json.loads(b'[' + b','.join(run) + b']')
        except ValueError:
            rows = None
        if rows is None or len(rows) != len(run):  # find the line at fault
            for number, line in enumerate(run, first):
                if not isinstance(_json_or_none(line), list):
                    raise _Faulty(f'line {number} is not well-formed JSON')
            raise _Faulty(f'line {first}: a row line holds more than one row')
        columns = columns_of(name, self.revision)
        if self.validate and not _rows_valid(columns, rows):
            for number, row in enumerate(rows, first):
                _check_row(name, columns, row, number)
        return rows

    def _trailer(self, trailer: Any, header: dict[str, Any]) -> None:
        end = trailer.get('end') if isinstance(trailer, dict) else None
        if not isinstance(end, dict) or not isinstance(end.get('sha256'), str):
            raise _Faulty(f'line {self.lines.number}: the trailer was expected here')
        if self.lines.next() is not None:
            raise _Faulty(f'it goes on after its trailer (line {self.lines.number})')
        if end['sha256'] != self.digest.hexdigest():
            raise _Faulty('its content does not match its SHA-256 (the file was changed or damaged)')
        if end.get('rows') != self.counted or header['rows'] != self.counted:
            raise _Faulty(f'its row counts do not match the rows it holds ({_counts(self.counted)})')
        heads = 1 if len(columns_of('audit_head', self.revision)) < len(COLUMNS['audit_head']) else audit.CHAINS
        if self.counted['audit_head'] != heads or self.counted['installation'] > 1:
            raise _Faulty(f'it has not {heads} audit chain head rows (or more than one installation row)')


def _json_or_none(line: bytes) -> Any:
    try:
        return json.loads(line)
    except ValueError:
        return None


def _header(header: Any) -> dict[str, Any]:
    """The first line, checked: a Casebook backup of a format and schema this Casebook reads."""
    if not isinstance(header, dict) or not isinstance(header.get('format'), str):
        raise _Faulty('not a Casebook backup (its first line names no format)')
    version = _FORMAT_NAME.fullmatch(header['format'])
    if version is None:
        raise _Faulty(f'not a Casebook backup (its format is {header["format"][:60]!r})')
    if int(version.group(1)) > FORMAT_VERSION:
        raise _Faulty(f'made by a newer Casebook (format {header["format"]}); this one reads {FORMAT}: upgrade first')
    if header['format'] != FORMAT:
        raise _Faulty(f'format {header["format"]} is not one this Casebook reads ({FORMAT})')
    revision = header.get('schema_revision')
    if revision not in known_revisions():
        raise _Faulty(f'made by a newer Casebook (schema revision {str(revision)[:20]!r}): upgrade first')
    rows = header.get('rows')
    expected = sorted(table.name for table in tables_of(revision))
    if not isinstance(rows, dict) or sorted(rows) != expected or not all(_count(v) for v in rows.values()):
        raise _Faulty('its header has no valid row counts')
    if not isinstance(header.get('created_at'), str) or not isinstance(header.get('source_engine'), str):
        raise _Faulty('its header is incomplete')
    return header


def _rows_valid(columns: tuple[_Column, ...], rows: list[Any]) -> bool:
    """Every row a list of the right length, every value of its column's kind: checked a column at a time, with
    built-ins doing the looping (a million rows in about a second)."""
    if set(map(type, rows)) != {list} or set(map(len, rows)) != {len(columns)}:
        return False
    for index, column in enumerate(columns):
        values = [row[index] for row in rows]
        if column.nullable:
            values = [value for value in values if value is not None]
        if values and not _COLUMN_VALID[column.kind](values, column):
            return False
    return True


def _times_valid(values: list[Any]) -> bool:
    if set(map(type, values)) != {str} or not all(map(_TIME.fullmatch, values)):
        return False
    try:
        list(map(datetime.fromisoformat, values))  # a real date and time, not month 13
    except ValueError:
        return False
    return True


_COLUMN_VALID: dict[str, Callable[[list[Any], _Column], bool]] = {
    'int': lambda values, _column: set(map(type, values)) == {int} and -(2**63) <= min(values) <= max(values) < 2**63,
    'bool': lambda values, _column: set(map(type, values)) == {bool},
    'str': lambda values, column: (
        set(map(type, values)) == {str} and (column.length is None or max(map(len, values)) <= column.length)
    ),
    'time': lambda values, _column: _times_valid(values),
}


def _check_row(name: str, columns: tuple[_Column, ...], row: Any, number: int) -> None:
    """One row checked value by value, to name what is wrong in it."""
    if type(row) is not list or len(row) != len(columns):
        raise _Faulty(f'line {number}: not a row of {name}')
    for column, value in zip(columns, row, strict=True):
        if value is None and column.nullable:
            continue
        if value is None or not _COLUMN_VALID[column.kind]([value], column):
            raise _Faulty(f'line {number}: {name}.{column.name} holds a value Casebook does not store there')


def _counts(rows: dict[str, int]) -> str:
    return ', '.join(f'{name.replace("_", " ")} {count:,}' for name, count in rows.items())


class _Chain:
    """The audit chains as the file holds them, checked row by row as audit.verify_sync checks the database's (the
    rows come in seq order, the chains interleaved; the heads come after them)."""

    def __init__(self) -> None:
        self.count = 0
        self.walks: dict[int, audit.ChainWalk] = {}
        self.problem = ''

    def add(self, table: str, rows: list[list[Any]]) -> None:
        if table == 'audit_events':
            self.rows(rows)
        elif table == 'audit_head':
            self.heads(rows)

    def rows(self, rows: list[list[Any]]) -> None:
        for row in rows:
            if self.problem:
                return
            seq, prev_hash, digest, chain = row[0], row[8], row[9], row[10]
            walk = self.walks.get(chain)
            if walk is None:
                if not 1 <= chain <= audit.CHAINS:
                    self.problem = f'audit row {seq} is in chain {chain}, which does not exist'
                    return
                walk = self.walks[chain] = audit.ChainWalk(chain, None)

            # audit.row_hash hashes the JSON of [chain, seq, at, action, actor_id, actor, patient_id, address,
            # detail, prev_hash], audit.legacy_row_hash the same without chain (compact, not ASCII-escaped, `at`
            # as in this file): the row's first nine values as they are, after its chain or not
            def hash_as(legacy: bool, row: list[Any] = row) -> str:
                return hashlib.sha256(_ENCODE(row[:9] if legacy else [row[10], *row[:9]]).encode()).hexdigest()

            self.problem = walk.add(seq, prev_hash, digest, hash_as)
            self.count += not self.problem

    def heads(self, rows: list[list[Any]]) -> None:
        heads = {chain: (count, digest, legacy) for chain, count, digest, legacy in rows}
        for chain in range(1, audit.CHAINS + 1):
            if self.problem:
                return
            if chain not in heads:  # a file of the one chain: the other heads are made by migrating
                heads[chain] = (0, audit.GENESIS, 0)
            self.problem = self.walks.get(chain, audit.ChainWalk(chain, None)).end(*heads[chain])

    def verdict(self) -> audit.Verdict:
        return audit.Verdict(not self.problem, self.count, self.problem)


# ------------------------------------------------------------------------------------------------- restore


def restore(
    url: str, path: Path, *, progress: Progress | None = None, key: Callable[[], bytes] | None = None
) -> Restored:
    """Check the whole file, migrate the (empty) target to head, restore everything in one transaction, verify.
    With `key` (giving two_step.key_of: the key this Casebook will read with; asked only once the file is known
    to be good, as it may generate the storage secret in the data dir), the clinicians whose two-step sign-in
    secrets it cannot decrypt are named in the result; the restore goes on either way (their recovery codes,
    being hashes, still work)."""
    summary = check(path, progress=progress, chain=False)  # the database's chain is verified after inserting
    parsed = make_url(url)
    if parsed.get_backend_name() == 'sqlite' and parsed.database:  # only now that the file is known to be good
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        _refuse_a_used_database(url)  # before migrating: a database in use, even at an older schema, is left as it was
        migrate_blocking(url)
        engine = _sync_engine(
            url, begin='BEGIN IMMEDIATE', foreign_keys=False
        )  # SQLite: the one writer from the emptiness check on
        try:
            with engine.connect() as connection, connection.begin():
                _refuse_in_use(connection)
                _insert_all(connection, path, progress)
                verdict = _verify(connection, summary, path)
                search.rebuild(connection, bulk=True)  # derived from the messages: every restored one is findable
                unreadable = _undecryptable(connection, key()) if key is not None else ()
        finally:
            engine.dispose()
    except (SQLAlchemyError, OSError) as error:  # OSError: the async driver's refused connection, when migrating
        raise BackupError(f'{_database_error(error)}; nothing was restored') from error
    return Restored(summary, verdict, unreadable)


def _undecryptable(connection: Connection, key: bytes) -> tuple[str, ...]:
    with Session(bind=connection) as session:
        return tuple(two_step.undecryptable(session, key))


def _refuse_a_used_database(url: str) -> None:
    """Refuse a target holding any of Casebook's rows, whatever its schema (its tables that exist are counted)."""
    engine = _sync_engine(url)
    try:
        with engine.connect() as connection:
            present = set(inspect(connection).get_table_names())
            tables = {table.name: table for table in TABLES if table.name in IN_USE and table.name in present}
            held = {
                name: connection.scalar(select(func.count()).select_from(table)) or 0 for name, table in tables.items()
            }
    finally:
        engine.dispose()
    if any(held.values()):
        found = _counts({name: count for name, count in held.items() if count})
        raise BackupError(f'the target database is not empty ({found}); restore only into an empty one')


def _refuse_in_use(connection: Connection) -> None:
    tables = {table.name: table for table in TABLES}
    if connection.dialect.name == 'postgresql':  # nobody starts writing between this check and the commit
        connection.exec_driver_sql(f'LOCK TABLE {", ".join(IN_USE)} IN SHARE ROW EXCLUSIVE MODE')
    held = {name: connection.scalar(select(func.count()).select_from(tables[name])) or 0 for name in IN_USE}
    if any(held.values()):
        found = _counts({name: count for name, count in held.items() if count})
        raise BackupError(f'the target database is not empty ({found}); restore only into an empty one')


def _insert_all(connection: Connection, path: Path, progress: Progress | None) -> None:
    """The second reading of the file, inserted batch by batch; its digest is checked again at the end (before the
    caller commits), so a file changed since the check is never committed."""
    postgres = connection.dialect.name == 'postgresql'
    if not postgres:  # the unique index on (conversation, client id) is written in random order
        connection.exec_driver_sql('PRAGMA cache_size=-65536')
    with _foreign_keys_checked_at_the_end(connection):
        for item in _read(path, progress, 'restoring'):
            if isinstance(item, dict):
                continue
            name, rows = item
            if name == 'audit_head':
                _set_head(connection, rows)
            elif postgres:
                _copy(connection, name, rows)
            else:
                _sqlite_insert(connection, name, rows)
    if postgres:
        _set_sequences(connection)


_FOREIGN_KEYS = text(
    'SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid) FROM pg_constraint '
    "WHERE contype = 'f' AND conrelid::regclass::text IN :tables ORDER BY conrelid::regclass::text, conname"
).bindparams(bindparam('tables', expanding=True))


@contextmanager
def _foreign_keys_checked_at_the_end(connection: Connection) -> Iterator[None]:
    """Foreign keys checked once for all rows instead of row by row (a third of a PostgreSQL restore's time).

    PostgreSQL: the restored tables' foreign keys are dropped and added back as the catalog defines them, which
    checks every row in one query; in the restore's transaction, so nobody sees the tables without them. SQLite:
    the connection was opened with foreign keys off (see restore) and PRAGMA foreign_key_check runs here.
    """
    if connection.dialect.name != 'postgresql':
        yield
        if connection.exec_driver_sql('PRAGMA foreign_key_check').first() is not None:
            raise BackupError('the backup refers to rows it does not hold; nothing was restored')
        return
    keys = connection.execute(_FOREIGN_KEYS, {'tables': [table.name for table in TABLES]}).all()
    quote = connection.dialect.identifier_preparer.quote
    for table, name, _definition in keys:
        connection.exec_driver_sql(f'ALTER TABLE {quote(table)} DROP CONSTRAINT {quote(name)}')
    yield
    for table, name, definition in keys:
        connection.exec_driver_sql(f'ALTER TABLE {quote(table)} ADD CONSTRAINT {quote(name)} {definition}')


def _sqlite_insert(connection: Connection, name: str, rows: list[list[Any]]) -> None:
    columns = COLUMNS[name]
    times = [index for index, column in enumerate(columns) if column.kind == 'time']
    for row in rows:
        for index in times:  # '2026-12-03T09:00:00.123456+00:00' -> '2026-12-03 09:00:00.123456', as UTCDateTime stores
            if row[index] is not None:
                row[index] = f'{row[index][:10]} {row[index][11:26]}'
    placeholders = ', '.join('?' for _ in columns)
    names = ', '.join(c.name for c in columns)
    statement = f'INSERT INTO {name} ({names}) VALUES ({placeholders})'  # noqa: S608 (our own table and columns)
    connection.exec_driver_sql(statement, [tuple(row) for row in rows])


def _copy(connection: Connection, name: str, rows: list[list[Any]]) -> None:
    """PostgreSQL's COPY: the fastest way in, and still inside the transaction."""
    import psycopg

    cursor = connection.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
    try:
        with cursor.copy(f'COPY {name} ({", ".join(c.name for c in COLUMNS[name])}) FROM STDIN') as copy:
            for row in rows:
                copy.write_row(row)
    except psycopg.Error as error:  # straight from the driver, past SQLAlchemy's wrapping
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise BackupError(f'the database refused a row of {name} ({reason}); nothing was restored') from error


def _set_head(connection: Connection, rows: list[list[Any]]) -> None:
    """The chains' head rows exist after migrating (seq 0): they become the backup's (a file of the one chain has
    chain 1's only). Only audit_events refuses updates."""
    head = AuditHead.__table__
    for chain, seq, digest, legacy in rows:
        connection.execute(head.update().where(head.c.id == chain).values(seq=seq, hash=digest, legacy=legacy))


def _set_sequences(connection: Connection) -> None:
    """New rows get ids after the restored ones (COPY gives explicit ids, so the sequences did not move)."""
    for table in TABLES:
        if table.name in ('audit_events', 'audit_head') or 'id' not in table.c:
            continue  # seq's sequence is set below; the heads are the chains'; two_step is keyed by clinician
        connection.exec_driver_sql(
            f"SELECT setval(pg_get_serial_sequence('{table.name}', 'id'), max(id)) FROM {table.name} "  # noqa: S608 (ours)
            'HAVING max(id) IS NOT NULL'
        )
    connection.exec_driver_sql(  # the trail's order goes on after the restored rows (migration 0011)
        "SELECT setval('audit_events_seq', max(seq)) FROM audit_events HAVING max(seq) IS NOT NULL"
    )


def _verify(connection: Connection, summary: Summary, path: Path) -> audit.Verdict:
    """Counts and audit chain as the target now holds them, inside the restore's transaction."""
    held = {table.name: connection.scalar(select(func.count()).select_from(table)) or 0 for table in TABLES}
    if held != summary.rows | {'audit_head': audit.CHAINS}:  # a file of the one chain has one head
        raise BackupError(f'the restored counts differ from the backup ({_counts(held)}); nothing was restored')
    with Session(bind=connection) as session:
        verdict = audit.verify_sync(session)
    if not verdict.ok and check(path).audit.ok:  # broken in the backup already: restored as it was, and reported
        raise BackupError(f'the restored audit trail does not verify ({verdict.problem}); nothing was restored')
    return verdict
