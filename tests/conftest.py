"""Every test gets its own data dir, hence its own SQLite database and generated secret."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from casebook.db import Database
from casebook.services import accounts

PASSWORD = 'a long enough passphrase'


@pytest.fixture(autouse=True)
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh CASEBOOK_DATA_DIR; autouse, so the app under NiceGUI's `user` fixture uses it too."""
    directory = tmp_path / 'data'
    monkeypatch.setenv('CASEBOOK_DATA_DIR', str(directory))
    for name in (
        'CASEBOOK_DATABASE_URL',
        'CASEBOOK_REDIS_URL',
        'CASEBOOK_STORAGE_SECRET',
        'CASEBOOK_OPEN_REGISTRATION',
    ):
        monkeypatch.delenv(name, raising=False)
    return directory


@pytest.fixture
async def database(data_dir: Path) -> AsyncIterator[Database]:
    """A migrated SQLite database in the test's own data dir."""
    data_dir.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240 (test set-up)
    db = Database(f'sqlite+aiosqlite:///{data_dir / "casebook.sqlite3"}')
    await db.migrate()
    yield db
    await db.dispose()


async def add_clinician(
    db: Database, username: str, *, display_name: str | None = None, role: str = 'doctor'
) -> accounts.ClinicianInfo:
    async with db.session() as session:
        return await accounts.add_clinician(
            session, username=username, role=role, password=PASSWORD, display_name=display_name or username.capitalize()
        )


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
