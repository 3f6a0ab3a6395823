"""Server-side sign-in sessions. Browsers keep an opaque token; the database keeps only its hash."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import bindparam, select, update
from sqlalchemy.exc import OperationalError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

from casebook.models import AuthSession, Clinician, utcnow
from casebook.services.accounts import ClinicianInfo

TOUCH_INTERVAL = timedelta(seconds=60)  # last-seen is written at most this often per session


@dataclass(frozen=True)
class SignedIn:
    """A live session and whose it is."""

    session_id: str
    clinician: ClinicianInfo
    created_at: datetime


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


async def start(session: AsyncSession, *, clinician_id: int, user_agent: str = '', address: str = '') -> str:
    """Open a new session for a clinician who has just proven who they are; returns the browser's token."""
    token = secrets.token_urlsafe(32)
    session.add(
        AuthSession(id=_digest(token), clinician_id=clinician_id, user_agent=user_agent[:256], address=address[:64])
    )
    await session.commit()
    return token


async def resolve(session: AsyncSession, token: object, *, max_age: timedelta) -> SignedIn | None:
    """Who a token signs in, or None when it is unknown, ended, too old, or its clinician disabled."""
    return await session.run_sync(resolve_sync, token, max_age=max_age)


_SESSIONS, _CLINICIANS = AuthSession.__table__, Clinician.__table__
# Built once: the session check runs on every event, and building a statement costs more than running it.
_RESOLVE = (
    select(
        _SESSIONS.c.id,
        _SESSIONS.c.created_at,
        _SESSIONS.c.last_seen_at,
        _SESSIONS.c.ended_at,
        _CLINICIANS.c.id.label('clinician_id'),
        _CLINICIANS.c.username,
        _CLINICIANS.c.display_name,
        _CLINICIANS.c.role,
        _CLINICIANS.c.disabled,
    )
    .join(_CLINICIANS, _CLINICIANS.c.id == _SESSIONS.c.clinician_id)
    .where(_SESSIONS.c.id == bindparam('session_id'))
)
_TOUCH = update(_SESSIONS).where(_SESSIONS.c.id == bindparam('session')).values(last_seen_at=bindparam('now'))


def resolve_sync(session: Session, token: object, *, max_age: timedelta) -> SignedIn | None:
    """`resolve` for a plain Session (a unit of work run by `Database.run`)."""
    if not isinstance(token, str) or not 20 <= len(token) <= 100:
        return None
    connection = session.connection()
    row = connection.execute(_RESOLVE, {'session_id': _digest(token)}).first()
    if row is None or row.ended_at is not None or row.disabled:
        return None
    now = utcnow()
    if now - row.created_at > max_age:
        _end_sync(session, row.id, 'expired')
        return None
    if now - row.last_seen_at > TOUCH_INTERVAL:
        try:
            connection.execute(_TOUCH, {'session': row.id, 'now': now})
            session.commit()
        except OperationalError:  # the database is busy writing: last-seen can wait for the next request
            session.rollback()
    clinician = ClinicianInfo(row.clinician_id, row.username, row.display_name, row.role)
    return SignedIn(row.id, clinician, row.created_at)


async def end(session: AsyncSession, token: object, *, reason: str = 'logout') -> None:
    """End the session this token belongs to, at once, for every tab that uses it."""
    if isinstance(token, str):
        await _end(session, _digest(token), reason)


async def _end(session: AsyncSession, session_id: str, reason: str) -> None:
    await session.run_sync(_end_sync, session_id, reason)


def _end_sync(session: Session, session_id: str, reason: str) -> None:
    session.execute(
        update(AuthSession)
        .where(AuthSession.id == session_id, AuthSession.ended_at.is_(None))
        .values(ended_at=utcnow(), end_reason=reason)
    )
    session.commit()
