"""The database layer: pools sized by the settings; on PostgreSQL, instances starting at once migrate in turn."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading

import pytest
from alembic.script import ScriptDirectory
from sqlalchemy import text

from casebook import db
from casebook.config import load_settings
from casebook.db import DATABASE_ERRORS, Database, alembic_config, run_on_own_loop
from tests import postgres


def test_a_server_pool_is_sized_by_the_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv('CASEBOOK_DATABASE_URL', 'postgresql+asyncpg://casebook@db.invalid/casebook')  # never connected
    monkeypatch.setenv('CASEBOOK_DB_POOL_SIZE', '3')
    monkeypatch.setenv('CASEBOOK_DB_MAX_OVERFLOW', '2')
    database = Database.from_settings(load_settings())
    pool = database.engine.pool
    assert (pool.size(), pool._max_overflow) == (3, 2)


def test_sqlite_keeps_its_own_pooling_and_threads(data_dir) -> None:
    database = Database.from_settings(load_settings())
    assert database.engine.dialect.name == 'sqlite'
    assert database._threaded is not None  # the threaded fast path of a send


# An instance of its own: imports everything, says so, and migrates when told to go. (Alembic's `op` is global to
# a process, so instances in one process would not run at once.)
INSTANCE = """
import sys
from casebook.db import migrate_blocking
print('ready', flush=True)
sys.stdin.readline()
migrate_blocking(sys.argv[1])
"""


def test_instances_starting_at_once_migrate_one_after_another(postgres_server: postgres.PostgresServer) -> None:
    """Four instances migrate one fresh, empty database at the same moment: the advisory lock lets one create the
    schema while the others wait, then find it done; without it they collide on CREATE TABLE."""
    name = run_on_own_loop(lambda: postgres_server.create(from_template=False))
    url = postgres_server.url(name)
    try:
        instances = [
            subprocess.Popen(
                [sys.executable, '-c', INSTANCE, url], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
            )
            for _ in range(4)
        ]
        for instance in instances:
            assert instance.stdout.readline().strip() == 'ready'
        for instance in instances:
            instance.stdin.write('go\n')
            instance.stdin.flush()
        for instance in instances:
            instance.communicate(timeout=60)
        assert [instance.returncode for instance in instances] == [0, 0, 0, 0]
        head = ScriptDirectory.from_config(alembic_config()).get_current_head()
        assert run_on_own_loop(lambda: schema(url)) == (head, 1, 1)
    finally:
        run_on_own_loop(lambda: postgres_server.drop(name))


async def schema(url: str) -> tuple[str, int, int]:
    """The Alembic revision, and how many audit_events tables and append-only triggers there are."""
    database = Database(url)
    try:
        async with database.engine.connect() as connection:
            return (
                await connection.scalar(text('SELECT version_num FROM alembic_version')),
                await connection.scalar(text("SELECT count(*) FROM pg_tables WHERE tablename = 'audit_events'")),
                await connection.scalar(
                    text("SELECT count(*) FROM pg_trigger WHERE tgname = 'audit_events_append_only'")
                ),
            )
    finally:
        await database.dispose()


async def test_a_dead_pooled_connection_is_replaced_or_reported_never_pinged_when_just_used(
    postgres_server: postgres.PostgresServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No ping before a unit of work on a connection used a moment ago; one idle a while is pinged first."""
    name = await postgres_server.take()
    database = Database(postgres_server.url(name))

    def backend_pid(session) -> int:
        return session.execute(text('SELECT pg_backend_pid()')).scalar_one()

    async def end_backend(pid: int) -> None:
        async with database.session() as session:
            assert (await session.execute(text('SELECT pg_terminate_backend(:pid, 5000)'), {'pid': pid})).scalar_one()

    try:
        first = await database.run(backend_pid)
        await end_backend(first)
        monkeypatch.setattr(db, 'PING_IDLE_AFTER', 0.0)  # every connection counts as idle a while: pinged
        second = await database.run(backend_pid)  # found dead by the ping, replaced before the unit ran
        assert second != first

        monkeypatch.setattr(db, 'PING_IDLE_AFTER', 3600.0)  # just used: handed out unchecked
        await end_backend(second)
        with pytest.raises(DATABASE_ERRORS):  # what the callers report as "the database could not be reached"
            await database.run(backend_pid)
        third = await database.run(backend_pid)  # the pool dropped the dead connection: the next unit reconnects
        assert third not in (first, second)
    finally:
        await database.dispose()
        postgres_server.drop_soon(name)


async def test_sqlite_units_take_turns_to_write_on_a_lock_of_ours_and_always_give_it_back(data_dir) -> None:
    """A unit of work takes the writer lock at its first write and gives it back with its connection; reads go
    on beside a writer; a second writer waits on the lock (not in SQLite's busy handler); a unit that fails
    after writing gives the lock back too."""
    data_dir.mkdir(parents=True)
    database = Database(f'sqlite+aiosqlite:///{data_dir / "turns.sqlite3"}')
    wrote, finish = threading.Event(), threading.Event()

    def slow_writer(session) -> None:
        session.execute(text("INSERT INTO probe (key, value) VALUES ('probe', 'one')"))
        wrote.set()
        finish.wait(10)
        session.commit()

    def second_writer(session) -> None:
        session.execute(text("UPDATE probe SET value = 'two' WHERE key = 'probe'"))
        session.commit()

    def reader(session) -> int:
        return session.execute(text('SELECT count(*) FROM probe')).scalar_one()

    def failing_writer(session) -> None:
        session.execute(text("INSERT INTO probe (key, value) VALUES ('doomed', 'x')"))
        raise RuntimeError('after its write')

    def create(session) -> None:
        session.execute(text('CREATE TABLE probe (key TEXT PRIMARY KEY, value TEXT)'))
        session.commit()

    try:
        assert database.writer is not None
        await database.run(create)
        assert not database.writer.locked()
        first = asyncio.ensure_future(database.run(slow_writer))
        await asyncio.get_running_loop().run_in_executor(None, wrote.wait, 10)
        assert database.writer.locked()
        await database.run(reader)  # a read is not held up by the writer
        second = asyncio.ensure_future(database.run(second_writer))
        await asyncio.sleep(0.2)
        assert not second.done()  # waiting its turn
        finish.set()
        await first
        await second
        assert not database.writer.locked()
        with pytest.raises(RuntimeError):
            await database.run(failing_writer)
        assert not database.writer.locked()  # given back with the connection, the write rolled back
        assert await database.run(reader) == 1  # the failed unit's row is not there
        await database.run(second_writer)  # and the next writer gets it
        assert not database.writer.locked()
    finally:
        finish.set()
        await database.dispose()
