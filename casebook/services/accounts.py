"""Clinician accounts: the first admin, adding clinicians, passwords (argon2id), sign-in checks."""

from __future__ import annotations

import asyncio
import functools
import re
import unicodedata
from dataclasses import dataclass

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


def check_password(password: str) -> None:
    """Length only, no composition rules (NIST SP 800-63B)."""
    if len(password or '') < PASSWORD_MIN:
        raise InvalidInput(f'Password: at least {PASSWORD_MIN} characters.')
    if len(password) > PASSWORD_MAX:
        raise InvalidInput(f'Password: at most {PASSWORD_MAX} characters.')


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
    check_password(password)
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
