"""Clinician accounts: the first admin, adding clinicians, passwords (argon2id), sign-in checks."""

from __future__ import annotations

import asyncio
import functools
import itertools
import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from casebook.models import Clinician, Installation
from casebook.services.errors import AlreadyExists, InvalidInput

ROLES = ('doctor', 'nurse', 'admin')
USERNAME_PATTERN = re.compile(r'[a-z0-9][a-z0-9._-]{1,63}')
PASSWORD_MIN, PASSWORD_MAX = 12, 128
DISPLAY_NAME_MAX = 100
COMMON_PASSWORDS_FILE = Path(__file__).resolve().parent.parent / 'data' / 'common-passwords.txt'

_hasher = PasswordHasher()  # argon2id with the library's current recommended parameters


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


async def hash_password(password: str) -> str:
    return await asyncio.to_thread(_hasher.hash, password)  # argon2 releases the GIL; keep the event loop free


async def _verify(password_hash: str, password: str) -> bool:
    def verify() -> bool:
        try:
            return _hasher.verify(password_hash, password)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False

    return await asyncio.to_thread(verify)


async def needs_first_account(session: AsyncSession) -> bool:
    """True on a fresh install, before anyone has an account."""
    return await session.scalar(select(func.count()).select_from(Installation)) == 0


async def create_first_account(
    session: AsyncSession, *, username: str, display_name: str, password: str
) -> ClinicianInfo:
    """Create the first account, an admin; refused once any account exists."""
    clinician = await _new_clinician(username=username, display_name=display_name, password=password, role='admin')
    session.add(Installation(id=1))  # two first visitors at once: the second insert of id 1 fails
    session.add(clinician)
    try:
        await session.commit()
    except IntegrityError as error:
        await session.rollback()
        raise AlreadyExists('Casebook is already set up: please log in.') from error
    return to_info(clinician)


async def add_clinician(
    session: AsyncSession, *, username: str, display_name: str, password: str, role: str = 'doctor'
) -> ClinicianInfo:
    """Add a clinician (admins, the CLI); the first account ever also marks the install as set up."""
    clinician = await _new_clinician(username=username, display_name=display_name, password=password, role=role)
    if await needs_first_account(session):
        session.add(Installation(id=1))
    session.add(clinician)
    try:
        await session.commit()
    except IntegrityError as error:
        await session.rollback()
        raise AlreadyExists(f'Username "{clinician.username}" is taken.') from error
    return to_info(clinician)


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


async def authenticate(session: AsyncSession, *, username: str, password: str) -> ClinicianInfo | None:
    """The clinician these credentials belong to, or None; takes as long whether or not the account exists."""
    try:
        name = normalize_username(username)
    except InvalidInput:
        name = ''
    clinician = await session.scalar(select(Clinician).where(Clinician.username == name)) if name else None
    if clinician is None or len(password or '') > PASSWORD_MAX:
        await _verify(_dummy_hash(), password[:PASSWORD_MAX] if password else '')
        return None
    if not await _verify(clinician.password_hash, password) or clinician.disabled:
        return None
    return to_info(clinician)


async def get_clinician(session: AsyncSession, clinician_id: int) -> ClinicianInfo | None:
    clinician = await session.get(Clinician, clinician_id)
    return to_info(clinician) if clinician is not None and not clinician.disabled else None


async def find_by_username(session: AsyncSession, username: str) -> ClinicianInfo | None:
    clinician = await session.scalar(select(Clinician).where(Clinician.username == normalize_username(username)))
    return to_info(clinician) if clinician is not None else None


async def change_display_name(session: AsyncSession, *, clinician_id: int, display_name: str) -> ClinicianInfo:
    clinician = await session.get_one(Clinician, clinician_id)
    clinician.display_name = normalize_display_name(display_name)
    await session.commit()
    return to_info(clinician)


@dataclass(frozen=True)
class ClinicianRow:
    """A clinician as the admin page lists them."""

    id: int
    username: str
    display_name: str
    role: str
    disabled: bool


async def change_password(session: AsyncSession, *, clinician_id: int, current: str, new: str) -> None:
    """The clinician's own change: the current password first, then the same rules as for a new account."""
    clinician = await session.get_one(Clinician, clinician_id)
    if not await _verify(clinician.password_hash, current or ''):
        raise InvalidInput('Current password: that is not it.')
    check_password(new, username=clinician.username)
    clinician.password_hash = await hash_password(new)
    await session.commit()


async def list_clinicians(session: AsyncSession) -> list[ClinicianRow]:
    # sorted here, not by the database: PostgreSQL's order follows its locale (punctuation may count for nothing),
    # SQLite's the code points; a hospital's clinicians fit in memory
    rows = await session.scalars(select(Clinician))
    return sorted((_row(clinician) for clinician in rows), key=lambda row: row.username)


def _row(clinician: Clinician) -> ClinicianRow:
    return ClinicianRow(clinician.id, clinician.username, clinician.display_name, clinician.role, clinician.disabled)


async def _existing(session: AsyncSession, clinician_id: int) -> Clinician:
    clinician = await session.get(Clinician, clinician_id)
    if clinician is None:
        raise InvalidInput('No such clinician.')
    return clinician


async def _other_admins(session: AsyncSession, clinician_id: int) -> int:
    return await session.scalar(
        select(func.count())
        .select_from(Clinician)
        .where(Clinician.role == 'admin', Clinician.disabled.is_(False), Clinician.id != clinician_id)
    )


async def set_disabled(
    session: AsyncSession, *, admin: ClinicianInfo, clinician_id: int, disabled: bool
) -> ClinicianRow:
    """Disable (or enable again) an account; the caller ends its sessions. Not one's own, not the last admin."""
    clinician = await _existing(session, clinician_id)
    if disabled and clinician.id == admin.id:
        raise InvalidInput('You cannot disable your own account.')
    if disabled and clinician.role == 'admin' and not await _other_admins(session, clinician.id):
        raise InvalidInput('This is the last active admin; make someone else an admin first.')
    clinician.disabled = disabled
    return _row(clinician)


async def reset_password(session: AsyncSession, *, clinician_id: int, new: str) -> ClinicianRow:
    clinician = await _existing(session, clinician_id)
    check_password(new, username=clinician.username)
    clinician.password_hash = await hash_password(new)
    return _row(clinician)


async def change_role(session: AsyncSession, *, admin: ClinicianInfo, clinician_id: int, role: str) -> ClinicianRow:
    clinician = await _existing(session, clinician_id)
    check_role(role)
    if clinician.role == 'admin' and role != 'admin':
        if clinician.id == admin.id:
            raise InvalidInput('You cannot take away your own admin role.')
        if not await _other_admins(session, clinician.id):
            raise InvalidInput('This is the last active admin; make someone else an admin first.')
    clinician.role = role
    return _row(clinician)
