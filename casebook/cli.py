"""Command line: thin wrappers over the services, the same ones the pages call."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import os
import re
import socket
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, BinaryIO, TypeVar

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
    add.add_argument(
        '--sso', action='store_true', help='signs in only through the identity provider (single sign-on): no password'
    )
    add.set_defaults(handler=_user_add)
    reset = user.add_parser(
        'reset-two-step', help="remove a clinician's authenticator app, recovery codes and passkeys; end their sessions"
    )
    reset.add_argument('username')
    reset.set_defaults(handler=_user_reset_two_step)

    load = commands.add_parser('import', help='import a conversation from a native JSON file')
    load.add_argument('file', type=Path)
    load.add_argument('--user', required=True, help='the clinician whose conversation it becomes')
    load.set_defaults(handler=_import)

    save = commands.add_parser('export', help="export one of a clinician's conversations")
    save.add_argument('--user', required=True)
    save.add_argument('--patient', required=True, help='the patient ID')
    save.add_argument('--format', choices=['json', 'fhir', 'markdown'], default='json')
    save.add_argument('-o', '--output', type=Path, help='the file to write (default: standard output)')
    save.set_defaults(handler=_export)

    find = commands.add_parser(
        'search',
        help="search a clinician's own notes: one tab-separated line per hit, newest first",
        description=(
            "Search a clinician's own notes. Prints one line per hit, newest first, tab-separated: patient ID, "
            'time (ISO 8601, UTC), sender, message id and the text on one line (line breaks, tabs and other '
            'control characters as spaces); nothing when nothing matches. Every word must occur and matches the '
            'start of words; "quoted words" match as a phrase; case and accents are ignored. Each search is '
            'recorded in the audit trail (scope and number of hits, never the words).'
        ),
    )
    find.add_argument('--user', required=True, metavar='USERNAME', help='the clinician whose notes are searched')
    find.add_argument('--patient', metavar='ID', help="only this patient's notes (default: all of the user's)")
    find.add_argument(
        '--limit',
        type=_search_limit,
        default=SEARCH_LIMIT,
        metavar='N',
        help=f'at most this many hits, {SEARCH_LIMIT_MAX} at most (default: {SEARCH_LIMIT})',
    )
    find.add_argument('query', nargs='+', metavar='QUERY', help='the words to find (put -- before a leading -)')
    find.set_defaults(handler=_search)

    audit = commands.add_parser('audit', help='the audit trail').add_subparsers(dest='action', required=True)
    verify = audit.add_parser('verify', help='check the hash chain; exit 1 and name the first broken row if any')
    verify.set_defaults(handler=_audit_verify)

    dump = commands.add_parser('backup', help='write a consistent backup of the whole database, while it is in use')
    dump.add_argument('-o', '--output', type=Path, help='the file to write (default: casebook-backup-<UTC time>.cbk)')
    dump.add_argument(
        '--fast', action='store_true', help='read without resting between batches (nobody is using Casebook now)'
    )
    dump.set_defaults(handler=_backup)

    back = commands.add_parser('restore', help='restore a backup into an empty database (checked whole first)')
    back.add_argument('file', type=Path)
    back.add_argument('--check', action='store_true', help='only check the file and show what it holds')
    back.set_defaults(handler=_restore)
    return parser


CLI_ACTOR = '(command line)'
SEARCH_LIMIT, SEARCH_LIMIT_MAX = 50, 1000  # hits `casebook search` prints by default, and at most
# A backup rests 2 s per second of work (sends beside it are not slowed, docs/performance.md), as long as it still
# ends within 45 s at its pace (SPEC: a million messages within 60 s); a larger one rests less.
BACKUP_REST, BACKUP_WITHIN = 2.0, 45.0


def _audit_verify(settings: Settings, _args: argparse.Namespace) -> int:
    from casebook.services import audit

    verdict = _run_with_db(settings, audit.verify)
    if not verdict.ok:
        print(f'casebook: audit trail broken: {verdict.problem}', file=sys.stderr)
        return 1
    print(f'audit trail intact: {verdict.rows} rows')
    return 0


def _backup(settings: Settings, args: argparse.Namespace) -> int:
    from casebook.services import backup

    target = args.output or Path(backup.default_name())
    # A background job beside a serving Casebook: on a small machine the sends get the CPU first (SPEC §4's
    # send -> visible during a backup, bench/backup_send.py); on an idle one this costs the backup nothing.
    os.nice(10)
    with _progress_bar() as bar:
        try:
            with _replaced_on_success(target) as output:  # mode 0600: password hashes and patient data
                pace = backup.Pacer() if args.fast else backup.Pacer(rest=BACKUP_REST, within=BACKUP_WITHIN)
                summary = backup.backup(settings.effective_database_url, output, progress=bar, pace=pace)
        except OSError as error:
            raise CommandError(f'cannot write {target}: {error.strerror or error}') from error
    size = target.stat().st_size
    print(f'wrote {target.resolve()} ({_size(size)})')
    print(f'rows: {_rows(summary.rows)}')
    return 0


def _restore(settings: Settings, args: argparse.Namespace) -> int:
    from casebook.services import backup, two_step

    if args.check:
        with _progress_bar() as bar:
            summary = backup.check(args.file, progress=bar)
        print(_described(args.file, summary))
        if not summary.audit.ok:
            print(f'casebook: the audit trail in it is broken: {summary.audit.problem}', file=sys.stderr)
            return 1
        print(f'audit trail intact: {summary.audit.rows} rows')
        return 0
    with _progress_bar() as bar:  # the data dir is made only once the file is known to be good
        restored = backup.restore(
            settings.effective_database_url, args.file, progress=bar, key=lambda: two_step.key_of(settings)
        )
    print(_described(args.file, restored.summary).replace('is whole', 'was whole'))
    print(f'restored into {_where(settings)}; the counts match')
    if not restored.audit.ok:  # it was so in the backup already (else the restore would have been refused)
        print(
            f'casebook: restored, but the audit trail was broken in the backup: {restored.audit.problem}',
            file=sys.stderr,
        )
        return 1
    print(f'audit trail intact: {restored.audit.rows} rows')
    print('sessions are not part of a backup: everyone signs in again')
    _tell_who_must_set_up_two_step(restored.must_set_up_two_step)
    return 0


def _tell_who_must_set_up_two_step(usernames: tuple[str, ...]) -> None:
    """The clinicians whose two-step sign-in secret this Casebook's key cannot read (the backup was made under
    another CASEBOOK_SECRET_KEY or storage secret): said plainly, as they cannot sign in with their app."""
    if not usernames:
        return
    print(
        f'two-step sign-in must be set up again by {len(usernames)} clinician(s), whose secrets were encrypted '
        f'under another key: {", ".join(usernames)} (they can sign in with a recovery code, or an administrator '
        'can reset two-step sign-in for them)'
    )


@contextmanager
def _progress_bar(unit: str = ' rows') -> Iterator[Callable[[str, int, int], None] | None]:
    """A progress bar's update on a terminal (closed on the way out), else None: nothing is drawn into a file."""
    bar = _ProgressBar(sys.stderr, unit) if sys.stderr.isatty() else None
    try:
        yield bar.update if bar else None
    finally:
        if bar is not None:
            bar.close()


def _described(path: Path, summary) -> str:
    return (
        f'{path} is whole: {_rows(summary.rows)} '
        f'(schema {summary.schema_revision}, from {summary.source_engine}, made {summary.created_at})'
    )


def _rows(rows: dict[str, int]) -> str:
    """`clinicians 2, messages 1,000,000, …`: table names, which read right whatever the count."""
    return ', '.join(f'{name.replace("_", " ")} {count:,}' for name, count in rows.items())


def _size(size: int) -> str:
    for unit in ('bytes', 'KB', 'MB', 'GB'):
        if size < 1000 or unit == 'GB':
            return f'{size:,} {unit}' if unit == 'bytes' else f'{size:.1f} {unit}'
        size /= 1000
    return ''


def _where(settings: Settings) -> str:
    from sqlalchemy.engine import make_url

    return make_url(settings.effective_database_url).render_as_string(hide_password=True)


def _serve(settings: Settings, args: argparse.Namespace) -> int:
    from casebook import logs

    # first, so that what NiceGUI and uvicorn log while starting is in the chosen format too
    logs.configure(settings.log_format, instance=f'{socket.gethostname()}:{args.port}')
    settings.prepare_data_dir()
    # NiceGUI reads where its storage lives when it is imported, so that is set before the web app is.
    os.environ['NICEGUI_STORAGE_PATH'] = str(settings.storage_path)
    if settings.redis_url:
        os.environ['NICEGUI_REDIS_URL'] = settings.redis_url
        os.environ['NICEGUI_REDIS_KEY_PREFIX'] = f'{settings.redis_key_prefix}nicegui:'
    from casebook.web.server import serve

    serve(settings, host=args.host, port=args.port)
    return 0


def _run_with_db(settings: Settings, work: Callable[..., Awaitable[T]]) -> T:
    from casebook.db import Database

    async def run() -> T:
        settings.prepare_data_dir()
        database = Database.from_settings(settings)
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
    from casebook.services import accounts, audit, sso

    if args.sso and args.password_stdin:
        raise CommandError('--sso accounts have no password: leave out --password-stdin')
    password = None if args.sso else _read_password(args.password_stdin)

    async def add(session):
        if password is None:
            return await sso.add_clinician(
                session,
                username=args.username,
                display_name=args.display_name,
                role=args.role,
                audited=lambda new: audit.Entry(
                    audit.ADMIN_ADD, actor=CLI_ACTOR, detail=f'{new.username} as {new.role} (single sign-on)'
                ),
            )
        return await accounts.add_clinician(
            session,
            username=args.username,
            display_name=args.display_name,
            password=password,
            role=args.role,
            audited=lambda new: audit.Entry(audit.ADMIN_ADD, actor=CLI_ACTOR, detail=f'{new.username} as {new.role}'),
        )

    clinician = _run_with_db(settings, add)
    how = ', single sign-on only' if args.sso else ''
    print(f'added {clinician.role} {clinician.username} ({clinician.display_name}{how})')
    return 0


def _user_reset_two_step(settings: Settings, args: argparse.Namespace) -> int:
    from casebook.services import two_step

    async def reset(session):
        clinician = await _clinician(session, args.username)
        return await session.run_sync(lambda s: two_step.reset(s, clinician.id, by=(None, CLI_ACTOR)))

    done = _run_with_db(settings, reset)
    print(f'two-step sign-in of {done.username} reset: {done.summary()}')
    if done.ended:
        _tell_open_tabs(settings, done.clinician_id)
    return 0


def _tell_open_tabs(settings: Settings, clinician_id: int) -> None:
    """With Redis, the running instances hear at once that the clinician's sessions ended (their tabs go to the
    login page); without it, each open tab finds out at its next action or idle check."""
    if settings.redis_url is None:
        print('their open tabs go to the login page at their next action')
        return
    from casebook.live import SessionsEnded, channel, encode

    async def publish() -> None:
        import redis.asyncio as redis

        client = redis.from_url(settings.redis_url, socket_connect_timeout=2, socket_timeout=5)
        try:
            event = SessionsEnded(clinician_id, None, 'two-step-reset')
            await client.publish(channel(settings.redis_key_prefix, event.topic), encode(event, CLI_ACTOR, time.time()))
        finally:
            await client.aclose()

    try:
        asyncio.run(publish())
        print('their open tabs were told to go to the login page')
    except Exception as error:  # the sessions have ended all the same
        print(f'their open tabs go to the login page at their next action (Redis: {type(error).__name__})')


async def _clinician(session, username: str):
    from casebook.services import accounts

    clinician = await accounts.find_by_username(session, username)
    if clinician is None:
        raise CommandError(f'no such user: {username}')
    return clinician


def _import(settings: Settings, args: argparse.Namespace) -> int:
    from casebook.services import audit, exchange

    try:
        source = args.file.open('rb')
    except OSError as error:
        raise CommandError(f'cannot read {args.file}: {error.strerror}') from error

    async def load(session):
        clinician = await _clinician(session, args.user)
        try:
            result = await exchange.import_conversation(session, clinician=clinician, source=source, progress=progress)
        except CasebookError as error:  # the file's fault: say which file
            raise CommandError(f'{args.file}: {error}') from error
        detail = f'{result.imported} messages for {clinician.username}'
        entry = audit.Entry(audit.IMPORT, actor=CLI_ACTOR, patient_id=result.patient_id, detail=detail)
        await audit.record_now(session, entry)
        return result

    with source, _progress_bar('B') as progress:  # the import counts the file's bytes
        result = _run_with_db(settings, load)
    print(f'imported {result.imported} messages (patient {result.patient_id})')
    return 0


def _search_limit(raw: str) -> int:
    try:
        limit = int(raw)
    except ValueError:
        limit = 0
    if not 1 <= limit <= SEARCH_LIMIT_MAX:
        raise argparse.ArgumentTypeError(f'a whole number from 1 to {SEARCH_LIMIT_MAX}: {raw!r}')
    return limit


def _search(settings: Settings, args: argparse.Namespace) -> int:
    from casebook.services import conversations, search

    query = search.parse(' '.join(args.query))  # a bad query is refused before the database is opened

    async def find(session):
        clinician = await _clinician(session, args.user)
        conversation_id, patient_id = None, None
        if args.patient is not None:
            conversation = await conversations.find_conversation(session, clinician=clinician, patient_id=args.patient)
            if conversation is None:
                patient = conversations.normalize_patient_id(args.patient)
                raise CommandError(f'{clinician.username} has no conversation about patient {patient}')
            conversation_id, patient_id = conversation.id, conversation.patient_id
        return await session.run_sync(
            lambda sync: search.search_sync(
                sync,
                clinician=clinician,
                query=query,
                patient_id=patient_id,
                conversation_id=conversation_id,
                limit=args.limit,
                actor=CLI_ACTOR,
            )
        )

    results = _run_with_db(settings, find)
    lines = ''.join(
        f'{hit.patient_id}\t{_second(hit.sent_at)}\t{hit.sender_role}\t{hit.message_id}\t{_one_line(hit.text)}\n'
        for hit in results.hits
    )
    sys.stdout.flush()
    try:
        sys.stdout.buffer.write(lines.encode('utf-8', 'replace'))
        sys.stdout.buffer.flush()
    except BrokenPipeError:  # `casebook search … | head`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0


def _second(moment) -> str:
    """`2026-12-03T09:15:02Z`: UTC, to the second."""
    from datetime import UTC

    return moment.astimezone(UTC).strftime('%Y-%m-%dT%H:%M:%SZ')


# line breaks (CR LF as one), tabs and every other control character: one line, fields that stay apart, and no
# escape sequence reaching the terminal
_BREAKS = re.compile('\r\n|[\x00-\x1f\x7f-\x9f\u2028\u2029]')


def _one_line(text: str) -> str:
    return _BREAKS.sub(' ', text)


class _ProgressBar:
    """tqdm's bar, one line per phase (`checking`, then `importing` or `restoring`) left on the screen when done:
    `restoring:  45%|████▌     | 4512/10027 [00:03<00:04, 1311.02 rows/s]`: share, count, elapsed, remaining, rate."""

    def __init__(self, stream: IO[str], unit: str) -> None:
        self.stream = stream
        self.unit = unit
        self.bar = None
        self.phase: str | None = None

    def update(self, phase: str, done: int, total: int) -> None:
        if phase != self.phase:
            self.close()
            self.phase = phase
            self.bar = _bar(self.stream, phase, total, self.unit)
        self.bar.update(done - self.bar.n)  # tqdm redraws at most ten times a second

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()  # the final figures, and a newline
            self.bar = None


def _bar(stream: IO[str], phase: str, total: int, unit: str):
    from tqdm import tqdm  # only on a terminal: every other run of the command does without it

    class Bar(tqdm):
        monitor_interval = 0  # no monitor thread: the phases report often enough

    return Bar(
        total=total,
        desc=phase,
        file=stream,
        unit=unit,
        unit_scale=unit == 'B',  # 1.91M/2.60MB; rows are counted one by one
        unit_divisor=1024,
        mininterval=0.1,
        nrows=2,  # one bar at a time: a terminal that tells no size (0 rows) would otherwise hide it
    )


def _export(settings: Settings, args: argparse.Namespace) -> int:
    if args.output is None:
        sys.stdout.flush()
        try:
            _write_export(settings, args, sys.stdout.buffer)
        except BrokenPipeError:  # `casebook export … | head`: the reader has what it wanted
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    try:
        with _replaced_on_success(args.output) as output:
            _write_export(settings, args, output)
    except OSError as error:
        raise CommandError(f'cannot write {args.output}: {error.strerror}') from error
    return 0


def _write_export(settings: Settings, args: argparse.Namespace, output: BinaryIO) -> None:
    from casebook.services import audit, exchange

    async def save(session):
        clinician = await _clinician(session, args.user)
        chunks = await exchange.export_conversation(
            session, clinician=clinician, fmt=args.format, patient_id=args.patient
        )
        async for chunk in chunks:
            output.write(chunk.encode())
        detail = f'{args.format} of {clinician.username}'
        await audit.record_now(
            session, audit.Entry(audit.EXPORT, actor=CLI_ACTOR, patient_id=args.patient, detail=detail)
        )

    _run_with_db(settings, save)
    output.flush()


@contextmanager
def _replaced_on_success(path: Path) -> Iterator[BinaryIO]:
    """A temporary file beside `path` that becomes `path` only when complete, so a failure leaves no half file.

    Exports hold patient data, so the file is readable by its owner only (mkstemp's mode 0600).
    """
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f'.{path.name}.', suffix='.part')
    try:
        with os.fdopen(fd, 'wb') as output:
            yield output
            output.flush()
            os.fsync(output.fileno())
        os.replace(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise
