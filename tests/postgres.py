"""This test run's databases on a PostgreSQL server: a migrated template, and a copy of it for each test.

Every database the run creates is named `casebook_test_<pid>_<random>_…`, so nothing another run left behind
(or is using right now) is ever touched, and everything of this run can be found and dropped at its end.
A copy (`CREATE DATABASE … TEMPLATE …`) costs 30–200 ms (more on a busy machine), less than migrating anew, and
the next test's copy is made in the background while a test runs. Emptying one database between tests is no
option: the audit trail refuses DELETE and TRUNCATE by trigger.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import secrets
from concurrent.futures import Future, ThreadPoolExecutor

import asyncpg
from sqlalchemy.engine import URL, make_url

from casebook.db import Database

OPT_OUT = 'CASEBOOK_TEST_POSTGRES'  # '0': skip the PostgreSQL variants (loudly)
SERVER_URL = 'CASEBOOK_TEST_POSTGRES_URL'  # any database on the server; the run's own are created beside it
DEFAULT_SERVER_URL = 'postgresql+asyncpg://postgres@127.0.0.1:5432/postgres'
CONNECT_TIMEOUT = 5  # seconds
TERMINATE = 'SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()'


def opted_out() -> bool:
    return os.environ.get(OPT_OUT, '').strip() == '0'


def server_url() -> URL:
    return make_url(os.environ.get(SERVER_URL) or DEFAULT_SERVER_URL).set(drivername='postgresql+asyncpg')


def _quoted(name: str) -> str:
    assert name.replace('_', '').isalnum(), name  # our own names only; identifiers cannot be bind parameters
    return f'"{name}"'


class PostgresServer:
    """The run's databases on one server, created and dropped through asyncpg (no psql needed)."""

    def __init__(self, url: URL) -> None:
        self.server = url
        self.prefix = f'casebook_test_{os.getpid()}_{secrets.token_hex(4)}'
        self.template = f'{self.prefix}_template'
        self._numbers = itertools.count(1)
        # in the background, one at a time each: the next test's copy, and dropping the last test's
        self._maker = ThreadPoolExecutor(1, thread_name_prefix='casebook-test-postgres-create')
        self._dropper = ThreadPoolExecutor(1, thread_name_prefix='casebook-test-postgres-drop')
        self._spare: Future[str] | None = None

    def url(self, database: str) -> str:
        """The SQLAlchemy URL of one of the run's databases."""
        return self.server.set(database=database).render_as_string(hide_password=False)

    async def _connect(self) -> asyncpg.Connection:
        # CREATE and DROP DATABASE cannot run inside a transaction: asyncpg runs each statement on its own
        dsn = self.server.set(drivername='postgresql').render_as_string(hide_password=False)
        return await asyncpg.connect(dsn, timeout=CONNECT_TIMEOUT)

    async def check_reachable(self) -> None:
        connection = await self._connect()
        await connection.close()

    async def create(self, *, from_template: bool = True) -> str:
        """A new database of the run's, a copy of the migrated template (or empty); its name."""
        name = f'{self.prefix}_{next(self._numbers)}'
        template = f' TEMPLATE {_quoted(self.template)}' if from_template else ''
        connection = await self._connect()
        try:
            await connection.execute(f'CREATE DATABASE {_quoted(name)}{template}')
        finally:
            await connection.close()
        return name

    async def take(self) -> str:
        """A fresh copy of the template for a test, made while the test before it ran; the next one is begun."""
        spare = self._spare or self._maker.submit(lambda: asyncio.run(self.create()))
        self._spare = self._maker.submit(lambda: asyncio.run(self.create()))
        return await asyncio.wrap_future(spare)

    def drop_soon(self, *names: str) -> None:
        """Drop these databases in the background (their engines disposed); `close` waits for it."""
        self._dropper.submit(lambda: asyncio.run(self.drop(*names)))

    def close(self) -> None:
        """Wait for the background work: a copy still being made (drop_all drops it with the rest), drops."""
        self._maker.shutdown(wait=True)
        self._dropper.shutdown(wait=True)

    async def create_template(self) -> None:
        """The template every test's database copies: created empty and migrated by the app's own code."""
        connection = await self._connect()
        try:
            await connection.execute(f'CREATE DATABASE {_quoted(self.template)}')
        finally:
            await connection.close()
        database = Database(self.url(self.template))
        try:
            await database.migrate()
        finally:
            await database.dispose()  # a template must have no connections while it is copied

    async def drop(self, *names: str) -> None:
        """Drop these databases, ending whatever connections are left on them first."""
        connection = await self._connect()
        try:
            for name in names:
                await connection.execute(TERMINATE, name)
                await connection.execute(f'DROP DATABASE IF EXISTS {_quoted(name)}')
        finally:
            await connection.close()

    async def drop_all(self) -> None:
        """Drop every database of this run, the template too (after failures, whatever a test left)."""
        connection = await self._connect()
        try:
            rows = await connection.fetch(
                'SELECT datname FROM pg_database WHERE starts_with(datname, $1)', self.prefix + '_'
            )
        finally:
            await connection.close()
        await self.drop(*[row['datname'] for row in rows])
