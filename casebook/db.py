"""Async engine and sessions; SQLite pragmas; Alembic migrations applied on start."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

from alembic import command
from alembic.config import Config
from sqlalchemy import create_engine, event
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.orm import Session, sessionmaker

T = TypeVar('T')
DB_THREADS = 4  # SQLite has one writer at a time; a few threads let reads go on beside it

MIGRATIONS_DIR = Path(__file__).parent / 'migrations'


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute('PRAGMA journal_mode=WAL')  # readers never wait for the writer
    cursor.execute('PRAGMA synchronous=FULL')  # an acknowledged message survives power loss
    cursor.execute('PRAGMA foreign_keys=ON')
    cursor.execute('PRAGMA busy_timeout=5000')  # writers queue instead of failing at once
    cursor.close()


class Database:
    """Owns the engine; hands out sessions that do not expire objects on commit."""

    def __init__(self, url: str, *, echo: bool = False) -> None:
        self.url = url
        sqlite = url.startswith('sqlite')
        self.engine: AsyncEngine = create_async_engine(
            url,
            echo=echo,
            pool_pre_ping=not sqlite,
            # Sessions always end their transactions themselves (commit, or rollback on close), so SQLite's
            # extra rollback when a connection goes back to the pool only costs a trip to aiosqlite's thread.
            pool_reset_on_return=None if sqlite else 'rollback',
        )
        self._threaded: sessionmaker[Session] | None = None
        self._threaded_engine = None
        self._executor: ThreadPoolExecutor | None = None
        if self.engine.dialect.name == 'sqlite':
            event.listen(self.engine.sync_engine, 'connect', _sqlite_pragmas)
            # The hot path (a send) runs as one unit of work in a thread of ours, on the plain sqlite3 driver:
            # one hand-off instead of a trip to aiosqlite's thread for every cursor, statement and fetch.
            self._threaded_engine = threaded = create_engine(
                make_url(url).set(drivername='sqlite+pysqlite'),
                pool_size=DB_THREADS,
                pool_reset_on_return=None,
                connect_args={'check_same_thread': False},  # a pooled connection serves one thread at a time
            )
            event.listen(threaded, 'connect', _sqlite_pragmas)
            self._threaded = sessionmaker(threaded, expire_on_commit=False)
            self._executor = ThreadPoolExecutor(DB_THREADS, thread_name_prefix='casebook-db')
        self._sessions = async_sessionmaker(self.engine, expire_on_commit=False)

    @asynccontextmanager
    async def session(self) -> AsyncIterator[AsyncSession]:
        async with self._sessions() as session:
            yield session

    async def run(self, work: Callable[[Session], T]) -> T:
        """Run `work(session)`, written against a plain Session, as one unit: in a database thread on SQLite,
        through the async driver elsewhere. The session is closed (and an open transaction rolled back) after."""
        if self._threaded is None or self._executor is None:
            async with self.session() as session:
                return await session.run_sync(work)
        threaded = self._threaded

        def call() -> T:
            with threaded() as session:
                return work(session)

        return await asyncio.get_running_loop().run_in_executor(self._executor, call)

    async def migrate(self) -> None:
        """Bring the schema to the newest Alembic revision."""
        async with self.engine.begin() as connection:
            await connection.run_sync(_upgrade)

    async def dispose(self) -> None:
        await self.engine.dispose()
        if self._threaded_engine is not None:
            self._threaded_engine.dispose()


def migrate_blocking(url: str) -> None:
    """Apply migrations before serving, on a loop of its own (callers may already be inside one)."""
    failure: list[BaseException] = []

    async def run() -> None:
        database = Database(url)
        try:
            await database.migrate()
        finally:
            await database.dispose()

    def work() -> None:
        try:
            asyncio.run(run())
        except BaseException as error:  # handed to the caller's thread
            failure.append(error)

    thread = threading.Thread(target=work, name='casebook-migrate')
    thread.start()
    thread.join()
    if failure:
        raise failure[0]


def alembic_config(connection: Connection | None = None) -> Config:
    config = Config()
    config.set_main_option('script_location', str(MIGRATIONS_DIR))
    config.attributes['connection'] = connection
    return config


def _upgrade(connection: Connection) -> None:
    command.upgrade(alembic_config(connection), 'head')
