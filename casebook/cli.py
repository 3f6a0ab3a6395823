"""Command line: thin wrappers over the services, the same ones the pages call."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import os
import sys
from collections.abc import Awaitable, Callable
from typing import TypeVar

from casebook.config import Settings, load_settings
from casebook.services.errors import CasebookError

T = TypeVar('T')


class CommandError(Exception):
    """Bad input on the command line: one line on stderr, exit status 2."""


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        settings = load_settings()
        return args.handler(settings, args)
    except (CommandError, CasebookError, ValueError) as error:
        print(f'casebook: {error}', file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog='casebook', description=__doc__)
    commands = parser.add_subparsers(dest='command', required=True)

    serve = commands.add_parser('serve', help='apply migrations and serve the web app')
    serve.add_argument('--host', default='127.0.0.1')
    serve.add_argument('--port', type=int, default=8080)
    serve.set_defaults(handler=_serve)

    migrate = commands.add_parser('migrate', help='bring the database schema up to date')
    migrate.set_defaults(handler=_migrate)

    user = commands.add_parser('user', help='manage clinician accounts').add_subparsers(dest='action', required=True)
    add = user.add_parser('add', help='add a clinician')
    add.add_argument('username')
    add.add_argument('--display-name', required=True)
    add.add_argument('--role', choices=['doctor', 'nurse', 'admin'], default='doctor')
    add.add_argument('--password-stdin', action='store_true', help='read the password from the first line of stdin')
    add.set_defaults(handler=_user_add)
    return parser


def _serve(settings: Settings, args: argparse.Namespace) -> int:
    settings.prepare_data_dir()
    # NiceGUI reads its storage path when it is imported, so it is set before the web app is.
    os.environ['NICEGUI_STORAGE_PATH'] = str(settings.storage_path)
    from casebook.web.server import serve

    serve(settings, host=args.host, port=args.port)
    return 0


def _run_with_db(settings: Settings, work: Callable[..., Awaitable[T]]) -> T:
    from casebook.db import Database

    async def run() -> T:
        settings.prepare_data_dir()
        database = Database(settings.effective_database_url)
        try:
            await database.migrate()
            async with database.session() as session:
                return await work(session)
        finally:
            await database.dispose()

    return asyncio.run(run())


def _migrate(settings: Settings, _args: argparse.Namespace) -> int:
    async def nothing(_session: object) -> None:
        return None

    _run_with_db(settings, nothing)
    print('database is up to date')
    return 0


def _read_password(from_stdin: bool) -> str:
    if from_stdin:
        password = sys.stdin.readline().rstrip('\r\n')
        if not password:
            raise CommandError('no password on stdin')
        return password
    if not sys.stdin.isatty():
        raise CommandError('no terminal to ask for a password on; use --password-stdin')
    password = getpass.getpass('Password: ')
    if password != getpass.getpass('Repeat password: '):
        raise CommandError('the passwords differ')
    return password


def _user_add(settings: Settings, args: argparse.Namespace) -> int:
    from casebook.services import accounts

    password = _read_password(args.password_stdin)

    async def add(session):
        return await accounts.add_clinician(
            session, username=args.username, display_name=args.display_name, password=password, role=args.role
        )

    clinician = _run_with_db(settings, add)
    print(f'added {clinician.role} {clinician.username} ({clinician.display_name})')
    return 0
