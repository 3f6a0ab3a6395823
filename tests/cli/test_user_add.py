"""`casebook user add` as an admin types it, against a real database of the test's own (SQLite in a fresh data dir,
or PostgreSQL; the command finds it through CASEBOOK_DATABASE_URL)."""

from __future__ import annotations

import asyncio
import io
import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pyotp
import pytest

from casebook import cli
from casebook.db import Database
from casebook.services import accounts
from tests.conftest import PASSWORD

HOUR = timedelta(hours=1)

CASEBOOK = Path(sys.executable).parent / 'casebook'


def run(monkeypatch: pytest.MonkeyPatch, *args: str, stdin: str = '') -> int:
    monkeypatch.setattr('sys.stdin', io.StringIO(stdin))
    return cli.main(list(args))


def clinician(database: Database, username: str) -> accounts.ClinicianInfo | None:
    async def find() -> accounts.ClinicianInfo | None:
        db = Database(database.url)  # an engine of this loop's own
        try:
            async with db.session() as session:
                return await accounts.find_by_username(session, username)
        finally:
            await db.dispose()

    return asyncio.run(find())


def test_add_a_clinician_with_the_password_on_stdin(monkeypatch, database, capsys):
    assert (
        run(monkeypatch, 'user', 'add', 'Bob', '--display-name', 'Dr. Bob', '--password-stdin', stdin=PASSWORD + '\n')
        == 0
    )
    assert 'added doctor bob (Dr. Bob)' in capsys.readouterr().out
    added = clinician(database, 'bob')
    assert added is not None and added.role == 'doctor'


def test_roles(monkeypatch, database):
    for name, role in [('nina', 'nurse'), ('root', 'admin')]:
        assert (
            run(
                monkeypatch,
                'user',
                'add',
                name,
                '--display-name',
                name,
                '--role',
                role,
                '--password-stdin',
                stdin=PASSWORD,
            )
            == 0
        )
        assert clinician(database, name).role == role


@pytest.mark.parametrize(
    ('args', 'stdin', 'message'),
    [
        (['bob', '--display-name', 'Bob', '--password-stdin'], 'short\n', 'at least 12'),
        (['bob', '--display-name', 'Bob', '--password-stdin'], '', 'no password on stdin'),
        (['b c', '--display-name', 'Bob', '--password-stdin'], PASSWORD, 'Username'),
        (['bob', '--display-name', '  ', '--password-stdin'], PASSWORD, 'Display name'),
        (['bob', '--display-name', 'Bob'], '', 'no terminal'),
        (['bob', '--display-name', 'Bob', '--sso', '--password-stdin'], PASSWORD, '--sso accounts have no password'),
    ],
)
def test_bad_input_is_one_line_on_stderr_and_non_zero(monkeypatch, capsys, args, stdin, message):
    assert run(monkeypatch, 'user', 'add', *args, stdin=stdin) == 2
    err = capsys.readouterr().err
    assert message in err
    assert err.count('\n') == 1 and err.startswith('casebook: ')


def test_an_account_for_single_sign_on_has_no_password_that_works(monkeypatch, database, capsys):
    assert run(monkeypatch, 'user', 'add', 'Carol', '--display-name', 'Dr. Carol', '--role', 'nurse', '--sso') == 0
    assert 'added nurse carol (Dr. Carol, single sign-on only)' in capsys.readouterr().out
    assert clinician(database, 'carol').role == 'nurse'

    async def sign_in(password: str) -> accounts.ClinicianInfo | None:
        db = Database(database.url)
        try:
            async with db.session() as session:
                return await accounts.authenticate(session, username='carol', password=password)
        finally:
            await db.dispose()

    for attempt in (PASSWORD, '', '!sso'):
        assert asyncio.run(sign_in(attempt)) is None


def test_a_taken_username_is_refused(monkeypatch, database, capsys):
    assert run(monkeypatch, 'user', 'add', 'bob', '--display-name', 'Bob', '--password-stdin', stdin=PASSWORD) == 0
    assert run(monkeypatch, 'user', 'add', 'BOB', '--display-name', 'Bob', '--password-stdin', stdin=PASSWORD) == 2
    assert 'taken' in capsys.readouterr().err


def test_the_installed_command(data_dir):
    """The entry point `make install` leaves at .venv/bin/casebook, as a separate process, on a fresh data dir."""
    env = {**os.environ, 'CASEBOOK_DATA_DIR': str(data_dir)}
    done = subprocess.run(
        [CASEBOOK, 'user', 'add', 'ada', '--display-name', 'Dr. Ada', '--role', 'admin', '--password-stdin'],
        input=PASSWORD,
        text=True,
        capture_output=True,
        env=env,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert (data_dir / 'storage-secret').exists() is False  # the CLI never needs the web secret
    bad = subprocess.run(
        [CASEBOOK, 'user', 'add', 'ada', '--display-name', 'X', '--role', 'king'],
        text=True,
        capture_output=True,
        env=env,
        check=False,
    )
    assert bad.returncode != 0 and 'invalid choice' in bad.stderr


def test_reset_two_step_ends_the_clinicians_sessions(monkeypatch, database, capsys):
    from casebook.services import sessions, two_step

    key = two_step.derive_key('cli test key')

    async def prepare() -> str:
        db = Database(database.url)
        try:
            async with db.session() as session:
                bob = await accounts.add_clinician(
                    session, username='bob', display_name='Dr. Bob', password=PASSWORD, role='doctor'
                )
            setup = await db.run(lambda s: two_step.begin_setup(s, bob.id, key=key))
            totp = pyotp.TOTP(setup.secret)
            await db.run(lambda s: two_step.confirm_setup(s, bob.id, totp.now(), key=key))
            return await db.run(lambda s: sessions.start_sync(s, clinician_id=bob.id, username='bob'))
        finally:
            await db.dispose()

    token = asyncio.run(prepare())
    monkeypatch.delenv('CASEBOOK_REDIS_URL', raising=False)
    assert run(monkeypatch, 'user', 'reset-two-step', 'BOB') == 0
    out = capsys.readouterr().out
    assert 'two-step sign-in of bob reset: authenticator app off, 0 passkeys removed, 1 session ended' in out
    assert 'their open tabs go to the login page at their next action' in out

    async def after() -> tuple[bool, object]:
        db = Database(database.url)
        try:
            async with db.session() as session:
                bob = await accounts.find_by_username(session, 'bob')
            on = await db.run(lambda s: two_step.is_on(s, bob.id))
            alive = await db.run(lambda s: sessions.resolve_sync(s, token, max_age=HOUR, idle=HOUR))
            return on, alive
        finally:
            await db.dispose()

    on, alive = asyncio.run(after())
    assert not on and alive is None
    assert run(monkeypatch, 'user', 'reset-two-step', 'nobody') != 0
    assert 'no such user: nobody' in capsys.readouterr().err
