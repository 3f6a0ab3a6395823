"""Async engine and sessions; SQLite pragmas; Alembic migrations applied on start."""

from __future__ import annotations

import asyncio
import functools
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from alembic import command
from alembic.config import Config
from sqlalchemy import create_engine, event, text
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.exc import DisconnectionError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.orm import Session, sessionmaker

from casebook import metrics

if TYPE_CHECKING:
    from casebook.config import Settings

T = TypeVar('T')
DB_THREADS = 4  # SQLite has one writer at a time; a few threads let reads go on beside it
# PostgreSQL advisory lock key held while migrating ('casebook' in ASCII); advisory locks are per database
MIGRATION_LOCK = 0x63617365626F6F6B

MIGRATIONS_DIR = Path(__file__).parent / 'migrations'
DATABASE_ERRORS = (SQLAlchemyError, OSError)  # what the callers treat as "the database could not be reached"


PING_IDLE_AFTER = 10.0  # seconds: a pooled server connection unused this long is pinged before it is handed out


def _ping_when_idle(engine: Any) -> None:
    """Check a database server's pooled connection before use only when it has lain unused a while.

    SQLAlchemy's `pool_pre_ping` sends a ping before every unit of work: under load (a send every few
    milliseconds per connection) one more round trip each time, on connections that were in use a moment ago.
    A connection that died while in use (the server restarted, a backend was ended) fails its unit, which the
    caller reports as the database unreachable (the user is told, Send can be pressed again); SQLAlchemy then
    drops every connection of the pool older than that failure, so the next unit connects afresh. One found
    dead by the ping here is replaced before the unit starts (the pool tries again with a new connection).
    """
    dialect = engine.dialect

    def returned(_dbapi_connection: Any, record: Any) -> None:
        record.info['returned_at'] = time.monotonic()

    def handed_out(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        returned_at = record.info.get('returned_at')
        if returned_at is None or time.monotonic() - returned_at < PING_IDLE_AFTER:
            return  # new, or in use a moment ago
        try:
            alive = dialect.do_ping(dbapi_connection)
        except Exception as error:  # whatever the driver raises for a dead connection
            raise DisconnectionError(f'pooled connection dead: {type(error).__name__}') from error
        if alive is False:
            raise DisconnectionError('pooled connection dead')

    event.listen(engine, 'checkin', returned)
    event.listen(engine, 'checkout', handed_out)


_READS = ('SELECT', 'PRAGMA')  # statements that never write; any other takes the writer lock


def _one_writer_at_a_time(engine: Any) -> threading.Lock:
    """SQLite's writers take turns on a lock of ours, in the order they come, instead of in its busy handler.

    SQLite admits one writer; a second one waits in its busy handler, which sleeps 1, 2, 5, 10, … up to 100 ms
    between tries whatever the holder does. With the database threads all sending, a send waited tens of
    milliseconds for a lock held a fraction of one. Here a unit of work takes this process's writer lock at its
    first write and gives it back when its connection returns to the pool (its transaction ended by then);
    units that only read never take it. Other processes (the command line) still meet the busy handler.
    """
    writer = threading.Lock()

    def before(connection: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        info = connection.connection.info  # the pooled connection's: survives across this unit's statements
        if not info.get('writer') and not statement.lstrip()[:6].upper().startswith(_READS):
            writer.acquire()
            info['writer'] = True

    def returned(_dbapi_connection: Any, record: Any) -> None:
        if record.info.pop('writer', False):
            writer.release()

    event.listen(engine, 'before_cursor_execute', before)
    event.listen(engine, 'checkin', returned)
    return writer


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute('PRAGMA journal_mode=WAL')  # readers never wait for the writer
    cursor.execute('PRAGMA synchronous=FULL')  # an acknowledged message survives power loss
    cursor.execute('PRAGMA foreign_keys=ON')
    cursor.execute('PRAGMA busy_timeout=5000')  # writers queue instead of failing at once
    cursor.close()


class Database:
    """Owns the engine; hands out sessions that do not expire objects on commit."""

    def __init__(
        self, url: str, *, echo: bool = False, pool_size: int | None = None, max_overflow: int | None = None
    ) -> None:
        """`pool_size` and `max_overflow` size the connection pool of a database server (SQLAlchemy's defaults
        when None); SQLite keeps its own pooling whatever they say."""
        self.url = url
        sqlite = url.startswith('sqlite')
        sizing = {} if sqlite else {'pool_size': pool_size, 'max_overflow': max_overflow}
        self.engine: AsyncEngine = create_async_engine(
            url,
            echo=echo,
            hide_parameters=True,  # a failed statement's error (and so the log) never holds message text or names
            # Sessions always end their transactions themselves (commit, or rollback on close), so SQLite's
            # extra rollback when a connection goes back to the pool only costs a trip to aiosqlite's thread.
            pool_reset_on_return=None if sqlite else 'rollback',
            **{name: value for name, value in sizing.items() if value is not None},
        )
        self._threaded: sessionmaker[Session] | None = None
        self.writer: threading.Lock | None = None  # SQLite: the units of work's turn to write
        self._threaded_engine = None
        self._executor: ThreadPoolExecutor | None = None
        if not sqlite:
            _ping_when_idle(self.engine.sync_engine)
        if self.engine.dialect.name == 'sqlite':
            event.listen(self.engine.sync_engine, 'connect', _sqlite_pragmas)
            # The hot path (a send) runs as one unit of work in a thread of ours, on the plain sqlite3 driver:
            # one hand-off instead of a trip to aiosqlite's thread for every cursor, statement and fetch.
            self._threaded_engine = threaded = create_engine(
                make_url(url).set(drivername='sqlite+pysqlite'),
                hide_parameters=True,
                pool_size=DB_THREADS,
                pool_reset_on_return=None,
                connect_args={'check_same_thread': False},  # a pooled connection serves one thread at a time
            )
            event.listen(threaded, 'connect', _sqlite_pragmas)
            self.writer = _one_writer_at_a_time(threaded)
            self._threaded = sessionmaker(threaded, expire_on_commit=False)
            self._executor = ThreadPoolExecutor(DB_THREADS, thread_name_prefix='casebook-db')
        elif self.engine.dialect.name == 'postgresql':
            # The same on PostgreSQL, with psycopg: through the async driver every statement of a send waited for
            # a turn of the event loop, so under load the audit chain's row lock (audit_head, held until the
            # commit) was held across busy loop turns and every other writer queued behind it (bench/
            # cluster_load.py, 500 tabs: p99 3.5 s on one instance). In a thread the statements follow each other
            # directly, and the chain is appended in one statement (migration 0005); see docs/scaling.md.
            threads = pool_size or DB_THREADS
            self._threaded_engine = threaded = create_engine(
                make_url(url).set(drivername='postgresql+psycopg'),
                hide_parameters=True,
                pool_size=threads,
                max_overflow=0,  # one connection per database thread
            )
            _ping_when_idle(threaded)
            self._threaded = sessionmaker(threaded, expire_on_commit=False)
            self._executor = ThreadPoolExecutor(threads, thread_name_prefix='casebook-db')
        self._sessions = async_sessionmaker(self.engine, expire_on_commit=False)

    @classmethod
    def from_settings(cls, settings: Settings) -> Database:
        """The configured database, its pool sized by the settings."""
        return cls(
            settings.effective_database_url, pool_size=settings.db_pool_size, max_overflow=settings.db_max_overflow
        )

    @asynccontextmanager
    async def session(self) -> AsyncIterator[AsyncSession]:
        try:
            async with self._sessions() as session:
                yield session
        except DATABASE_ERRORS:
            metrics.db_error()
            raise

    async def run(self, work: Callable[[Session], T]) -> T:
        """Run `work(session)`, written against a plain Session, as one unit in a database thread (plain sqlite3
        on SQLite, psycopg on PostgreSQL; through the async driver on anything else). The session is closed
        (and an open transaction rolled back) after: on every path only what `work` commits itself is kept."""
        if self._threaded is None or self._executor is None:
            async with self.session() as session:  # counts its own errors
                return await session.run_sync(work)
        threaded = self._threaded

        def call() -> T:
            with threaded() as session:
                return work(session)

        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, call)
        except DATABASE_ERRORS:
            metrics.db_error()
            raise

    async def migrate(self) -> None:
        """Bring the schema to the newest Alembic revision, in one transaction.

        On PostgreSQL several instances may start at once against one database: each takes an advisory lock
        first, so one migrates while the others wait, then find nothing left to do. The lock is transaction-level
        (Alembic runs inside the transaction begun here, DDL included) and ends with the commit or rollback.
        Within one process, migrate one database at a time: Alembic's `op` is global to the process.
        """
        async with self.engine.begin() as connection:
            if connection.dialect.name == 'postgresql':
                await connection.execute(text('SELECT pg_advisory_xact_lock(:key)'), {'key': MIGRATION_LOCK})
            await connection.run_sync(_upgrade)

    def cancel_queued(self) -> None:
        """Units of work waiting for a database thread never start (their callers get CancelledError); those under
        way go on in their threads. For a stopping server that gave up on them; later units get fresh threads."""
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = ThreadPoolExecutor(self._executor._max_workers, thread_name_prefix='casebook-db')

    async def dispose(self) -> None:
        self.cancel_queued()
        await self.engine.dispose()
        if self._threaded_engine is not None:
            self._threaded_engine.dispose()


def run_on_own_loop(work: Callable[[], Awaitable[T]]) -> T:
    """Run the coroutine `work()` on an event loop of its own in another thread, and return its result (or raise
    its exception) here: for callers that may already be inside a running loop."""
    result: list[T] = []
    failure: list[BaseException] = []

    def target() -> None:
        try:
            result.append(asyncio.run(work()))
        except BaseException as error:  # handed to the caller's thread
            failure.append(error)

    thread = threading.Thread(target=target, name='casebook-own-loop')
    thread.start()
    thread.join()
    if failure:
        raise failure[0]
    return result[0]


def migrate_blocking(url: str) -> None:
    """Apply migrations before serving (callers may already be inside a loop)."""

    async def run() -> None:
        database = Database(url)
        try:
            await database.migrate()
        finally:
            await database.dispose()

    run_on_own_loop(run)


def alembic_config(connection: Connection | None = None) -> Config:
    config = Config()
    config.set_main_option('script_location', str(MIGRATIONS_DIR))
    config.attributes['connection'] = connection
    return config


@functools.cache
def head_revision() -> str:
    """The newest migration this code ships (read once per process)."""
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    if head is None:
        raise RuntimeError('no migrations found')
    return head


def _upgrade(connection: Connection) -> None:
    command.upgrade(alembic_config(connection), 'head')
