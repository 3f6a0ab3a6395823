"""Clinician accounts: the first admin, adding clinicians, passwords (argon2id), sign-in checks."""

from __future__ import annotations

import asyncio
import functools
import itertools
import os
import re
import unicodedata
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

from casebook.models import Clinician, Installation
from casebook.services import audit
from casebook.services.errors import AlreadyExists, InvalidInput

ROLES = ('doctor', 'nurse', 'admin')
USERNAME_PATTERN = re.compile(r'[a-z0-9][a-z0-9._-]{1,63}')
PASSWORD_MIN, PASSWORD_MAX = 12, 128
DISPLAY_NAME_MAX = 100
# The password hash of an account that signs in only through the identity provider (`casebook user add --sso`,
# casebook/services/sso.py): not an argon2 hash, so no password verifies against it.
NO_PASSWORD = '!sso'  # noqa: S105 (a marker that is never a hash)
COMMON_PASSWORDS_FILE = Path(__file__).resolve().parent.parent / 'data' / 'common-passwords.txt'

T = TypeVar('T')
# Runs a unit of work written against a plain Session: `Database.run`, or `AsyncSession.run_sync`.
Runner = Callable[[Callable[[Session], T]], Awaitable[T]]

# argon2id at OWASP's baseline (19 MiB, 2 passes, 1 lane): ~21 ms of one core per hash here. The library's default
# (64 MiB, 3 passes, 4 lanes) costs ~180 ms of CPU, so a shift change of 20 sign-ins a second would need 3.6 cores
# for hashing alone (bench/shift_change.py). Hashes keep their own parameters: older ones still verify, and are
# replaced by one with these at the next sign-in.
_hasher = PasswordHasher(memory_cost=19_456, time_cost=2, parallelism=1)
# Hashing takes at most all cores but one, however many people sign in at once: the event loop keeps a core.
_hashing = ThreadPoolExecutor(max(1, (os.cpu_count() or 2) - 1), thread_name_prefix='casebook-argon2')


@functools.cache
def _dummy_hash() -> str:
    """Verified against when the username is unknown, so a miss costs as long as a wrong password."""
    return _hasher.hash('casebook-timing-equaliser')


@dataclass(frozen=True)
class ClinicianInfo:
    id: int
    username: str
    display_name: str
    role: str

    @property
    def is_admin(self) -> bool:
        return self.role == 'admin'

    @property
    def sender_role(self) -> str:
        """How this clinician's messages are labelled: nurses as nurse, everyone else as doctor."""
        return 'nurse' if self.role == 'nurse' else 'doctor'


def to_info(clinician: Clinician) -> ClinicianInfo:
    return ClinicianInfo(clinician.id, clinician.username, clinician.display_name, clinician.role)


def normalize_username(raw: str) -> str:
    """Trimmed and lower-cased; 2–64 characters of letters, digits, `.`, `_`, `-`."""
    username = (raw or '').strip().lower()
    if not USERNAME_PATTERN.fullmatch(username):
        raise InvalidInput(
            'Username: 2–64 characters, letters, digits, ".", "_" or "-", starting with a letter or digit.'
        )
    return username


def normalize_display_name(raw: str) -> str:
    name = ' '.join((raw or '').split())
    if not name:
        raise InvalidInput('Display name: please enter the name colleagues know you by.')
    if len(name) > DISPLAY_NAME_MAX:
        raise InvalidInput(f'Display name: at most {DISPLAY_NAME_MAX} characters.')
    if any(unicodedata.category(ch) in {'Cc', 'Cf'} for ch in name):
        raise InvalidInput('Display name: control and invisible formatting characters are not allowed.')
    return name


def check_password(password: str, *, username: str = '') -> None:
    """Length and a list of common passwords, no composition rules (NIST SP 800-63B 5.1.1.2)."""
    if len(password or '') < PASSWORD_MIN:
        raise InvalidInput(f'Password: at least {PASSWORD_MIN} characters.')
    if len(password) > PASSWORD_MAX:
        raise InvalidInput(f'Password: at most {PASSWORD_MAX} characters.')
    if is_common_password(password):
        raise InvalidInput('Password: this one is on a list of commonly used passwords; please choose another.')
    folded = password.casefold()
    if username and len(username) >= 3 and username.casefold() in folded:
        raise InvalidInput('Password: please do not include your username.')
    if len(set(folded)) < 4 or _mostly_sequential(folded):
        raise InvalidInput('Password: repeated or sequential characters (like "abcd1234") are easy to guess.')


def _mostly_sequential(text: str) -> bool:
    """`1234567890123`, `abcdefghijkl`, `zyxwvutsrqpo`: nearly every character follows from the one before."""
    pairs = list(itertools.pairwise(text))
    following = sum(1 for a, b in pairs if abs(ord(b) - ord(a)) <= 1 or {a, b} == {'9', '0'})
    return following >= 0.8 * len(pairs)


def is_common_password(password: str) -> bool:
    """On the shipped list, as it is or with only digits and punctuation added around a listed one."""
    folded = password.strip().casefold()
    words = _common_passwords()
    if folded in words:
        return True
    core = folded.strip(_PADDING)
    return len(core) >= 4 and core in words


_PADDING = '0123456789!@#$%^&*()-_=+.,;:?~ '


@functools.cache
def _common_passwords() -> frozenset[str]:
    lines = COMMON_PASSWORDS_FILE.read_text(encoding='utf-8').splitlines()
    return frozenset(line for line in lines if line and not line.startswith('#'))


def check_role(role: str) -> str:
    if role not in ROLES:
        raise InvalidInput(f'Role: one of {", ".join(ROLES)}.')
    return role


async def _hashing_thread(work: Callable[..., T], *args: Any) -> T:
    return await asyncio.get_running_loop().run_in_executor(_hashing, work, *args)  # argon2 releases the GIL


async def hash_password(password: str) -> str:
    return await _hashing_thread(_hasher.hash, password)


def _verify_now(password_hash: str, password: str) -> bool:
    try:
        return _hasher.verify(password_hash, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


async def _verify(password_hash: str, password: str) -> bool:
    return await _hashing_thread(_verify_now, password_hash, password)


async def needs_first_account(session: AsyncSession) -> bool:
    """True on a fresh install, before anyone has an account."""
    return await session.scalar(select(func.count()).select_from(Installation)) == 0


def on(target: AsyncSession | Runner) -> Runner:
    """How to run a unit of work on `target`: an AsyncSession (tests, the command line) or a runner such as
    `Database.run` (the web app: the whole unit in a database thread, so no lock is held across awaits)."""
    return target.run_sync if isinstance(target, AsyncSession) else target


Audited = Callable[[ClinicianInfo], audit.Entry] | None  # the audit row to append with a new account


async def create_first_account(
    target: AsyncSession | Runner, *, username: str, display_name: str, password: str, audited: Audited = None
) -> ClinicianInfo:
    """Create the first account, an admin; refused once any account exists."""
    clinician = await _new_clinician(username=username, display_name=display_name, password=password, role='admin')
    return await on(target)(lambda session: store_sync(session, clinician, first=True, audited=audited))


async def add_clinician(
    target: AsyncSession | Runner,
    *,
    username: str,
    display_name: str,
    password: str,
    role: str = 'doctor',
    audited: Audited = None,
) -> ClinicianInfo:
    """Add a clinician (admins, the CLI); the first account ever also marks the install as set up."""
    clinician = await _new_clinician(username=username, display_name=display_name, password=password, role=role)
    return await on(target)(lambda session: store_sync(session, clinician, first=False, audited=audited))


def store_sync(session: Session, clinician: Clinician, *, first: bool = False, audited: Audited) -> ClinicianInfo:
    """One unit of work: the account (and the installation's row when it is the first), its audit row, commit."""
    if first or session.scalar(select(func.count()).select_from(Installation)) == 0:
        session.add(Installation(id=1))  # two first visitors at once: the second insert of id 1 fails
    session.add(clinician)
    try:
        session.flush()
    except IntegrityError as error:
        session.rollback()
        if first:
            raise AlreadyExists('Casebook is already set up: please log in.') from error
        raise AlreadyExists(f'Username "{clinician.username}" is taken.') from error
    info = to_info(clinician)
    if audited is not None:
        audit.record_sync(session, audited(info))
    session.commit()
    return info


async def _new_clinician(*, username: str, display_name: str, password: str, role: str) -> Clinician:
    username = normalize_username(username)
    display_name = normalize_display_name(display_name)
    check_password(password, username=username)
    check_role(role)
    return Clinician(
        username=username,
        display_name=display_name,
        role=role,
        password_hash=await hash_password(password),
        disabled=False,
    )


@dataclass(frozen=True)
class Verified:
    """A clinician whose password was right; `rehash` when the stored hash has older parameters than today's
    (the new one is stored at sign-in, `sessions.start_sync`)."""

    clinician: ClinicianInfo
    rehash: tuple[str, str] | None = None  # (the stored hash that was verified, the same password hashed anew)


def _credentials_sync(session: Session, name: str) -> tuple[ClinicianInfo, str, bool] | None:
    row = session.execute(
        select(
            Clinician.id,
            Clinician.username,
            Clinician.display_name,
            Clinician.role,
            Clinician.password_hash,
            Clinician.disabled,
        ).where(Clinician.username == name)
    ).first()
    if row is None:
        return None
    return ClinicianInfo(row.id, row.username, row.display_name, row.role), row.password_hash, row.disabled


async def verify_credentials(run: Runner, *, username: str, password: str) -> Verified | None:
    """Whom these credentials sign in, or None; takes as long whether or not the account exists. The database is
    read in one unit of work through `run`; the password is checked after it, holding nothing."""
    try:
        name = normalize_username(username)
    except InvalidInput:
        name = ''
    found = await run(lambda session: _credentials_sync(session, name)) if name else None
    if found is None or len(password or '') > PASSWORD_MAX:
        await _verify(_dummy_hash(), password[:PASSWORD_MAX] if password else '')
        return None
    clinician, password_hash, disabled = found
    if password_hash == NO_PASSWORD:  # signs in only through the identity provider; as slow as a wrong password
        await _verify(_dummy_hash(), password[:PASSWORD_MAX] if password else '')
        return None
    if not await _verify(password_hash, password) or disabled:
        return None
    if _hasher.check_needs_rehash(password_hash):
        return Verified(clinician, (password_hash, await hash_password(password)))
    return Verified(clinician)


async def authenticate(session: AsyncSession, *, username: str, password: str) -> ClinicianInfo | None:
    """The clinician these credentials belong to, or None (see `verify_credentials`)."""
    verified = await verify_credentials(session.run_sync, username=username, password=password)
    return verified.clinician if verified is not None else None


async def get_clinician(session: AsyncSession, clinician_id: int) -> ClinicianInfo | None:
    clinician = await session.get(Clinician, clinician_id)
    return to_info(clinician) if clinician is not None and not clinician.disabled else None


async def find_by_username(session: AsyncSession, username: str) -> ClinicianInfo | None:
    clinician = await session.scalar(select(Clinician).where(Clinician.username == normalize_username(username)))
    return to_info(clinician) if clinician is not None else None


async def change_display_name(target: AsyncSession | Runner, *, clinician_id: int, display_name: str) -> ClinicianInfo:
    name = normalize_display_name(display_name)

    def change(session: Session) -> ClinicianInfo:
        clinician = session.get_one(Clinician, clinician_id)
        clinician.display_name = name
        session.commit()
        return to_info(clinician)

    return await on(target)(change)


@dataclass(frozen=True)
class ClinicianRow:
    """A clinician as the admin page lists them."""

    id: int
    username: str
    display_name: str
    role: str
    disabled: bool


async def change_password(
    target: AsyncSession | Runner,
    *,
    clinician_id: int,
    current: str,
    new: str,
    then: Callable[[Session], T] | None = None,
) -> T | None:
    """The clinician's own change: the current password first, then the same rules as for a new account.
    `then(session)` runs in the same unit of work before the commit (ending other sessions); its result returned."""
    run = on(target)
    username, stored = await run(
        lambda session: session.execute(
            select(Clinician.username, Clinician.password_hash).where(Clinician.id == clinician_id)
        ).one()
    )
    if not await _verify(stored, current or ''):
        raise InvalidInput('Current password: that is not it.')
    check_password(new, username=username)
    new_hash = await hash_password(new)

    def store(session: Session) -> T | None:
        session.get_one(Clinician, clinician_id).password_hash = new_hash
        result = then(session) if then is not None else None
        session.commit()
        return result

    return await run(store)


async def list_clinicians(session: AsyncSession) -> list[ClinicianRow]:
    # sorted here, not by the database: PostgreSQL's order follows its locale (punctuation may count for nothing),
    # SQLite's the code points; a hospital's clinicians fit in memory
    rows = await session.scalars(select(Clinician))
    return sorted((_row(clinician) for clinician in rows), key=lambda row: row.username)


def _row(clinician: Clinician) -> ClinicianRow:
    return ClinicianRow(clinician.id, clinician.username, clinician.display_name, clinician.role, clinician.disabled)


def _existing(session: Session, clinician_id: int) -> Clinician:
    clinician = session.get(Clinician, clinician_id)
    if clinician is None:
        raise InvalidInput('No such clinician.')
    return clinician


def _other_admins(session: Session, clinician_id: int) -> int:
    return session.scalar(
        select(func.count())
        .select_from(Clinician)
        .where(Clinician.role == 'admin', Clinician.disabled.is_(False), Clinician.id != clinician_id)
    )


def set_disabled_sync(session: Session, *, admin: ClinicianInfo, clinician_id: int, disabled: bool) -> ClinicianRow:
    """Disable (or enable again) an account; the caller ends its sessions and commits. Not one's own, not the
    last admin."""
    clinician = _existing(session, clinician_id)
    if disabled and clinician.id == admin.id:
        raise InvalidInput('You cannot disable your own account.')
    if disabled and clinician.role == 'admin' and not _other_admins(session, clinician.id):
        raise InvalidInput('This is the last active admin; make someone else an admin first.')
    clinician.disabled = disabled
    return _row(clinician)


def set_password_hash_sync(session: Session, *, clinician_id: int, password_hash: str) -> ClinicianRow:
    """A new password (hashed by `new_password_hash`) for someone else's account; the caller commits."""
    clinician = _existing(session, clinician_id)
    clinician.password_hash = password_hash
    return _row(clinician)


async def new_password_hash(session_or_run: AsyncSession | Runner, *, clinician_id: int, new: str) -> str:
    """`new` checked against the rules for that clinician, then hashed (outside any transaction)."""
    username = await on(session_or_run)(lambda session: _existing(session, clinician_id).username)
    check_password(new, username=username)
    return await hash_password(new)


def change_role_sync(session: Session, *, admin: ClinicianInfo, clinician_id: int, role: str) -> ClinicianRow:
    """The caller commits."""
    clinician = _existing(session, clinician_id)
    check_role(role)
    if clinician.role == 'admin' and role != 'admin':
        if clinician.id == admin.id:
            raise InvalidInput('You cannot take away your own admin role.')
        if not _other_admins(session, clinician.id):
            raise InvalidInput('This is the last active admin; make someone else an admin first.')
    clinician.role = role
    return _row(clinician)


async def set_disabled(
    session: AsyncSession, *, admin: ClinicianInfo, clinician_id: int, disabled: bool
) -> ClinicianRow:
    return await session.run_sync(
        lambda s: set_disabled_sync(s, admin=admin, clinician_id=clinician_id, disabled=disabled)
    )


async def change_role(session: AsyncSession, *, admin: ClinicianInfo, clinician_id: int, role: str) -> ClinicianRow:
    return await session.run_sync(lambda s: change_role_sync(s, admin=admin, clinician_id=clinician_id, role=role))
