"""Every test gets its own data dir, hence its own SQLite database and generated secret.

Tests that take `database` run twice, ids `[sqlite]` and `[postgresql]`: on SQLite in the data dir, and on a
PostgreSQL database of their own, copied from a template migrated once per run (tests/postgres.py). The server is
CASEBOOK_TEST_POSTGRES_URL (default: the local one, user postgres). When it cannot be reached the PostgreSQL
variants fail; CASEBOOK_TEST_POSTGRES=0 skips them instead, and says so in the header and the summary.
"""

from __future__ import annotations

import io
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import pytest

from casebook.db import Database, run_on_own_loop
from casebook.services import accounts
from support import PASSWORD  # one password for every test account (tests.conftest.PASSWORD)
from tests import postgres

BACKENDS = ('sqlite', 'postgresql')


BROWSER_DIRS = ('browser', 'cluster')  # every test under these drives a real Chromium


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark the tests by directory, so `make test-fast` (`-m 'not browser'`) starts no browser whatever a module
    remembers to declare."""
    root = Path(__file__).parent
    for item in items:
        parts = item.path.relative_to(root).parts if item.path.is_relative_to(root) else ()
        if parts and parts[0] in BROWSER_DIRS:
            item.add_marker(pytest.mark.browser)


def pytest_report_header(config: pytest.Config) -> str:
    if postgres.opted_out():
        return f'casebook: the PostgreSQL variants are SKIPPED ({postgres.OPT_OUT}=0)'
    return f'casebook: the PostgreSQL variants run on {postgres.server_url().render_as_string()}'


@pytest.fixture(autouse=True)
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh CASEBOOK_DATA_DIR; autouse, so the app under NiceGUI's `user` fixture uses it too."""
    directory = tmp_path / 'data'
    monkeypatch.setenv('CASEBOOK_DATA_DIR', str(directory))
    for name in (
        'CASEBOOK_DATABASE_URL',
        'CASEBOOK_REDIS_URL',
        'CASEBOOK_STORAGE_SECRET',
        'CASEBOOK_SECRET_KEY',
        'CASEBOOK_OPEN_REGISTRATION',
        'CASEBOOK_METRICS_TOKEN',
        'CASEBOOK_LOG_FORMAT',
        'CASEBOOK_PUBLIC_URL',
        'CASEBOOK_OIDC_ISSUER',
        'CASEBOOK_OIDC_ONLY',
        'CASEBOOK_OIDC_CREATE_ACCOUNTS',
        'CASEBOOK_BREAK_GLASS_USER',
    ):
        monkeypatch.delenv(name, raising=False)
    return directory


@pytest.fixture(scope='session')
def postgres_server() -> Iterator[postgres.PostgresServer]:
    """This run's PostgreSQL databases: the template is migrated once; all are dropped at the end, whatever happened."""
    if postgres.opted_out():
        pytest.skip(f'PostgreSQL variants skipped because {postgres.OPT_OUT}=0')
    server = postgres.PostgresServer(postgres.server_url())
    try:
        run_on_own_loop(server.check_reachable)
    except Exception as error:  # refused, timed out, authentication: all mean the same here
        pytest.fail(
            f'PostgreSQL is not reachable at {server.server.render_as_string()} ({type(error).__name__}: {error}). '
            f'Start it, point {postgres.SERVER_URL} at a server, or set {postgres.OPT_OUT}=0 to skip these tests.',
            pytrace=False,
        )
    try:
        run_on_own_loop(server.create_template)
        yield server
    finally:
        server.close()
        run_on_own_loop(server.drop_all)


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> postgres.PostgresServer | None:
    """Which database engine the test runs on: None for SQLite, else the run's PostgreSQL server."""
    return request.getfixturevalue('postgres_server') if request.param == 'postgresql' else None


@pytest.fixture
async def new_database(
    backend: postgres.PostgresServer | None, data_dir: Path
) -> AsyncIterator[Callable[[str], Awaitable[Database]]]:
    """Makes fresh, migrated databases on the test's engine, by name; disposed (on PostgreSQL dropped) after it."""
    made: list[Database] = []
    on_server: list[str] = []

    async def make(name: str = 'casebook') -> Database:
        if backend is None:
            data_dir.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240 (test set-up)
            url = f'sqlite+aiosqlite:///{data_dir / f"{name}.sqlite3"}'
        else:
            on_server.append(await backend.take())
            url = backend.url(on_server[-1])
        db = Database(url)
        made.append(db)
        await db.migrate()  # on PostgreSQL a copy of the migrated template: this finds nothing to do
        return db

    yield make
    for db in made:
        await db.dispose()
    if on_server:
        backend.drop_soon(*on_server)


@pytest.fixture
async def database(new_database: Callable[[str], Awaitable[Database]], monkeypatch: pytest.MonkeyPatch) -> Database:
    """A migrated database of the test's own (SQLite in its data dir, or PostgreSQL); the command line, in this
    process or another, finds it through CASEBOOK_DATABASE_URL."""
    db = await new_database('casebook')
    monkeypatch.setenv('CASEBOOK_DATABASE_URL', db.url)
    return db


async def add_clinician(
    db: Database, username: str, *, display_name: str | None = None, role: str = 'doctor'
) -> accounts.ClinicianInfo:
    async with db.session() as session:
        return await accounts.add_clinician(
            session, username=username, role=role, password=PASSWORD, display_name=display_name or username.capitalize()
        )


class Terminal(io.StringIO):
    """sys.stderr as a terminal: the commands draw their progress bars only there."""

    def isatty(self) -> bool:
        return True


# tqdm's bar as the commands draw it: `phase: 100%|##########| 7/7 [00:00<00:00, 1234.56 rows/s]` (elapsed<remaining)
FINISHED_BAR = r'\r{phase}: 100%\|#+\| [\d.]+\w?/[\d.]+\w? \[\d\d:\d\d<\d\d:\d\d, [\d.]+ ?\w*{unit}/s\]\n'


def _like_a_browser(user):
    """Answer the page's one JavaScript question (the time zone) and wait as long as a person would.

    NiceGUI's `should_see` gives up after 0.3 s; signing in hashes a password with argon2 and every step
    writes to SQLite with fsync, which on a busy 2-core machine can take longer than that.
    """
    user.javascript_rules[re.compile(r'.*resolvedOptions\(\)\.timeZone.*')] = lambda _: 'Europe/Berlin'
    user.javascript_rules[re.compile(r'.*casebookScroll\.record\(\).*')] = lambda _: True
    should_see = user.should_see

    async def patient_should_see(*args, retries: int = 50, **kwargs):
        return await should_see(*args, retries=retries, **kwargs)

    user.should_see = patient_should_see
    return user


@pytest.fixture
def user(user):
    """NiceGUI's simulated `user`, see `_like_a_browser`."""
    return _like_a_browser(user)


@pytest.fixture
def create_user(create_user):
    """NiceGUI's `create_user`, each new user like `_like_a_browser`."""
    return lambda: _like_a_browser(create_user())
