"""Server-side sign-in sessions. Browsers keep an opaque token; the database keeps only its hash."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select, update
from sqlalchemy.exc import OperationalError
from sqlalchemy.ext.asyncio import AsyncSession

from casebook.models import AuthSession, Clinician, utcnow
from casebook.services.accounts import ClinicianInfo, to_info

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
    if not isinstance(token, str) or not 20 <= len(token) <= 100:
        return None
    row = (
        await session.execute(
            select(AuthSession, Clinician)
            .join(Clinician, Clinician.id == AuthSession.clinician_id)
            .where(AuthSession.id == _digest(token))
        )
    ).first()
    if row is None:
        return None
    auth, clinician = row
    now = utcnow()
    if auth.ended_at is not None or clinician.disabled:
        return None
    if now - auth.created_at > max_age:
        await _end(session, auth.id, 'expired')
        return None
    if now - auth.last_seen_at > TOUCH_INTERVAL:
        auth.last_seen_at = now
        try:
            await session.commit()
        except OperationalError:  # the database is busy writing: last-seen can wait for the next request
            await session.rollback()
    return SignedIn(auth.id, to_info(clinician), auth.created_at)


async def end(session: AsyncSession, token: object, *, reason: str = 'logout') -> None:
    """End the session this token belongs to, at once, for every tab that uses it."""
    if isinstance(token, str):
        await _end(session, _digest(token), reason)


async def _end(session: AsyncSession, session_id: str, reason: str) -> None:
    await session.execute(
        update(AuthSession)
        .where(AuthSession.id == session_id, AuthSession.ended_at.is_(None))
        .values(ended_at=utcnow(), end_reason=reason)
    )
    await session.commit()
