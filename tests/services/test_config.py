"""Settings from the environment; the storage secret is generated once and kept private."""

from __future__ import annotations

import stat

import pytest
from pydantic import ValidationError

from casebook.config import load_settings


def test_defaults_put_everything_in_the_data_dir(data_dir):
    settings = load_settings()
    assert settings.data_dir == data_dir.resolve()
    assert settings.effective_database_url == f'sqlite+aiosqlite:///{data_dir.resolve() / "casebook.sqlite3"}'
    assert (settings.idle_timeout_minutes, settings.session_max_hours, settings.open_registration) == (15, 12, False)


def test_secret_is_generated_once_with_mode_0600(data_dir):
    first = load_settings().secret
    second = load_settings().secret
    assert first == second and len(first) >= 43
    mode = stat.S_IMODE((data_dir / 'storage-secret').stat().st_mode)
    assert mode == 0o600


def test_a_given_secret_is_used_and_nothing_is_written(data_dir, monkeypatch):
    monkeypatch.setenv('CASEBOOK_STORAGE_SECRET', 'given-secret-value')
    assert load_settings().secret == 'given-secret-value'
    assert not (data_dir / 'storage-secret').exists()


def test_environment_overrides(monkeypatch, tmp_path):
    monkeypatch.setenv('CASEBOOK_OPEN_REGISTRATION', 'true')
    monkeypatch.setenv('CASEBOOK_IDLE_TIMEOUT_MINUTES', '5')
    monkeypatch.setenv('CASEBOOK_DATABASE_URL', 'postgresql+asyncpg://db/casebook')
    settings = load_settings()
    assert settings.open_registration and settings.idle_timeout_minutes == 5
    assert settings.effective_database_url == 'postgresql+asyncpg://db/casebook'


def test_the_pool_size_of_a_database_server(monkeypatch):
    assert (load_settings().db_pool_size, load_settings().db_max_overflow) == (10, 10)
    monkeypatch.setenv('CASEBOOK_DB_POOL_SIZE', '25')
    monkeypatch.setenv('CASEBOOK_DB_MAX_OVERFLOW', '0')
    assert (load_settings().db_pool_size, load_settings().db_max_overflow) == (25, 0)
    for name, value in [
        ('CASEBOOK_DB_POOL_SIZE', '0'),
        ('CASEBOOK_DB_MAX_OVERFLOW', '-1'),
        ('CASEBOOK_DB_POOL_SIZE', 'x'),
    ]:
        monkeypatch.setenv(name, value)
        with pytest.raises(ValidationError, match=name.removeprefix('CASEBOOK_').lower()):
            load_settings()
        monkeypatch.delenv(name)
