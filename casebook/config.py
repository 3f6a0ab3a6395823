"""The one settings object, read from CASEBOOK_* environment variables."""

from __future__ import annotations

import os
import secrets
from functools import cached_property
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

SECRET_FILE_NAME = 'storage-secret'  # noqa: S105 (a file name, not a secret)


class Settings(BaseSettings):
    """Casebook's configuration; every field is read from `CASEBOOK_<FIELD>`."""

    model_config = SettingsConfigDict(env_prefix='CASEBOOK_', extra='ignore')

    data_dir: Path = Field(Path('./data'), description='Database, NiceGUI storage and the generated secret.')
    database_url: str | None = Field(None, description='SQLAlchemy async URL; default SQLite in the data dir.')
    db_pool_size: int = Field(10, ge=1, le=1000, description='Connections each instance keeps open (not SQLite).')
    db_max_overflow: int = Field(
        10, ge=0, le=1000, description='Extra connections opened beyond the pool under load, then closed (not SQLite).'
    )
    redis_url: str | None = Field(None, description='Redis for shared storage and live updates; unset: one instance.')
    redis_key_prefix: str = Field(
        'casebook:', pattern=r'^[A-Za-z0-9_.:-]{1,64}$', description='Start of every Redis key and channel.'
    )
    storage_secret: SecretStr | None = Field(None, description='Signs the session cookie; unset: generated once.')
    secret_key: SecretStr | None = Field(
        None, description='Encrypts two-step sign-in secrets (through HKDF); unset: derived from the storage secret.'
    )
    require_two_step: bool = Field(
        False, description='Every clinician signing in with a password must have a second step (set up at sign-in).'
    )
    idle_timeout_minutes: float = Field(15, gt=0, le=24 * 60, description='Automatic logoff after inactivity.')
    session_max_hours: int = Field(12, ge=1, le=24 * 30, description='Re-login required after this long.')
    open_registration: bool = Field(False, description='Let anyone create an account after the first one.')
    https: bool = Field(False, description='Served behind a TLS proxy: Secure cookies and HSTS.')
    metrics_token: SecretStr | None = Field(
        None, description='Bearer token for GET /metrics (at least 16 characters); unset: /metrics answers 404.'
    )
    public_url: str | None = Field(
        None,
        description='The address clinicians open (https://casebook.example.org): passkeys belong to its host name; '
        'unset: passkeys work at http://localhost:PORT only.',
    )
    log_format: Literal['text', 'json'] = Field(
        'text', description='`json`: one JSON object per log line (for log shippers); `text`: readable lines.'
    )
    # Single sign-on (OpenID Connect, casebook/web/oidc.py); unset issuer: off
    oidc_issuer: str | None = Field(None, description='The identity provider (discovery at /.well-known/…).')
    oidc_client_id: str | None = Field(None, description="Casebook's client id at the identity provider.")
    oidc_client_secret: SecretStr | None = Field(None, description="Casebook's client secret at the provider.")
    oidc_name: str = Field('single sign-on', max_length=60, description='The button says `Sign in with <name>`.')
    oidc_username_claim: str = Field('preferred_username', description='The ID token claim naming the account.')
    oidc_create_accounts: bool = Field(False, description='A first sign-in creates a doctor account.')
    oidc_only: bool = Field(False, description='Password sign-in off, but for CASEBOOK_BREAK_GLASS_USER.')
    oidc_timeout_seconds: float = Field(10, gt=0, le=120, description='Each request to the identity provider.')
    oidc_leeway_seconds: int = Field(60, ge=0, le=600, description="Clock difference allowed with the provider's.")
    break_glass_user: str | None = Field(None, description='With CASEBOOK_OIDC_ONLY: the one password account left.')

    @field_validator('public_url')
    @classmethod
    def _origin_only(cls, value: str | None) -> str | None:
        """http(s)://host[:port], a trailing '/' allowed and dropped; nothing else (no path, query, user)."""
        if value is None or not value.strip():
            return None
        url = urlsplit(value.strip())
        try:
            port = url.port
        except ValueError:
            port = -1
        if (
            url.scheme not in ('http', 'https')
            or not url.hostname
            or port == -1
            or url.username is not None
            or url.password is not None
            or url.path not in ('', '/')
            or url.query
            or url.fragment
        ):
            raise ValueError('must be http(s)://host[:port] with no path, for example https://casebook.example.org')
        return f'{url.scheme}://{url.netloc.lower()}'

    @field_validator('data_dir')
    @classmethod
    def _absolute(cls, value: Path) -> Path:
        return value.expanduser().resolve()

    @property
    def effective_database_url(self) -> str:
        """The configured database, or SQLite inside the data dir."""
        return self.database_url or f'sqlite+aiosqlite:///{self.data_dir / "casebook.sqlite3"}'

    @property
    def base_url(self) -> str:
        """Where browsers reach Casebook: CASEBOOK_PUBLIC_URL, or http://127.0.0.1:8080."""
        return (self.public_url or 'http://127.0.0.1:8080').rstrip('/')

    @property
    def storage_path(self) -> Path:
        """Where NiceGUI keeps its per-browser storage files."""
        return self.data_dir / 'nicegui'

    @cached_property
    def secret(self) -> str:
        """The storage secret: given, or generated on first use and kept in the data dir with mode 0600."""
        if self.storage_secret is not None:
            return self.storage_secret.get_secret_value()
        return _read_or_create_secret(self.data_dir / SECRET_FILE_NAME)

    def prepare_data_dir(self) -> None:
        """Create the data dir (private to this user) and NiceGUI's storage folder inside it."""
        self.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.storage_path.mkdir(parents=True, exist_ok=True, mode=0o700)


def _read_or_create_secret(path: Path) -> str:
    if path.exists():
        return path.read_text(encoding='ascii').strip()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    temporary = path.with_name(f'.{path.name}.{os.getpid()}.{secrets.token_hex(4)}')
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, 'w', encoding='ascii') as file:
        file.write(secrets.token_urlsafe(48) + '\n')
    try:  # a hard link appears complete or not at all; when two processes start at once, one secret wins
        os.link(temporary, path)
    except FileExistsError:
        pass
    finally:
        temporary.unlink()
    return path.read_text(encoding='ascii').strip()


def load_settings() -> Settings:
    """Read the settings from the environment."""
    return Settings()
