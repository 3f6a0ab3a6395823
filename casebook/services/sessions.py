"""Server-side sign-in sessions. Browsers keep an opaque token; the database keeps only its hash."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import bindparam, func, select, update
from sqlalchemy.exc import OperationalError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

from casebook.models import AuthSession, Clinician, storable, utcnow
from casebook.services import audit
from casebook.services.accounts import ClinicianInfo

TOUCH_INTERVAL = timedelta(seconds=20)  # last-seen is written at most this often per session


@dataclass(frozen=True)
class SignedIn:
    """A live session and whose it is."""

    session_id: str
    clinician: ClinicianInfo
    created_at: datetime
    last_seen_at: datetime | None = None


@dataclass(frozen=True)
class SessionInfo:
    """One of a clinician's live sessions, as the Sessions view lists it."""

    id: str
    created_at: datetime
    last_seen_at: datetime
    user_agent: str
    address: str


@dataclass(frozen=True)
class Limits:
    """How long a session lives: `max_age` after sign-in at most, `idle` after the last activity."""

    max_age: timedelta
    idle: timedelta | None = None


def token_shaped(token: object) -> bool:
    """Could this be a token `start` handed out? (Anything else is never looked up.)"""
    return isinstance(token, str) and 20 <= len(token) <= 100


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def start_sync(
    session: Session,
    *,
    clinician_id: int,
    user_agent: str = '',
    address: str = '',
    username: str = '',
    rehash: tuple[str, str] | None = None,
    method: str = 'password',
) -> str:
    """One unit of work: a new session for a clinician who has just proven who they are, its audit row (its detail
    says how: `password`, `password+code`, `password+recovery-code`, `passkey`), and (when
    sign-in rehashed the password with today's parameters: `rehash` = (the hash verified, the new one)) the new
    hash, unless the password changed meanwhile; returns the browser's token."""
    token = secrets.token_urlsafe(32)
    user_agent, address = storable(user_agent[:256]), storable(address[:64])
    session.add(AuthSession(id=_digest(token), clinician_id=clinician_id, user_agent=user_agent, address=address))
    if rehash is not None:
        verified, new = rehash
        session.execute(
            update(Clinician)
            .where(Clinician.id == clinician_id, Clinician.password_hash == verified)
            .values(password_hash=new)
        )
    audit.record_sync(session, audit.Entry(audit.SIGN_IN, clinician_id, username, None, address, method))
    session.commit()
    return token


async def start(
    session: AsyncSession, *, clinician_id: int, user_agent: str = '', address: str = '', username: str = ''
) -> str:
    """`start_sync` on an AsyncSession."""
    return await session.run_sync(
        lambda s: start_sync(s, clinician_id=clinician_id, user_agent=user_agent, address=address, username=username)
    )


async def resolve(
    session: AsyncSession, token: object, *, max_age: timedelta, idle: timedelta | None = None, touch: bool = True
) -> SignedIn | None:
    """Who a token signs in, or None when it is unknown, ended, too old, idle too long, or its clinician
    disabled. `touch`: this is the clinician's activity (it keeps the session from idling out)."""
    return await session.run_sync(lambda sync: resolve_sync(sync, token, max_age=max_age, idle=idle, touch=touch))


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


def resolve_sync(
    session: Session, token: object, *, max_age: timedelta, idle: timedelta | None = None, touch: bool = True
) -> SignedIn | None:
    """`resolve` for a plain Session (a unit of work run by `Database.run`)."""
    if not token_shaped(token):
        return None
    connection = session.connection()
    row = connection.execute(_RESOLVE, {'session_id': _digest(token)}).first()
    if row is None or row.ended_at is not None or row.disabled:
        return None
    now = utcnow()
    if now - row.created_at > max_age:
        _end_dead_sync(session, row.id, 'expired')
        return None
    if idle is not None and now - row.last_seen_at > idle:
        _end_dead_sync(session, row.id, 'idle')
        return None
    last_seen = row.last_seen_at
    interval = TOUCH_INTERVAL if idle is None else min(TOUCH_INTERVAL, idle / 4)
    if touch and now - row.last_seen_at > interval:
        try:
            connection.execute(_TOUCH, {'session': row.id, 'now': now})
            session.commit()
            last_seen = now
        except OperationalError:  # the database is busy writing: last-seen can wait for the next request
            session.rollback()
    clinician = ClinicianInfo(row.clinician_id, row.username, row.display_name, row.role)
    return SignedIn(row.id, clinician, row.created_at, last_seen)


def end_sync(session: Session, token: object, *, reason: str = 'manual', address: str = '') -> str | None:
    """End the session this token belongs to, at once, for every tab that uses it; its id, when it was live."""
    if not isinstance(token, str):
        return None
    ended = _end_sync(session, _digest(token), reason, address)
    session.commit()
    return ended


async def end(session: AsyncSession, token: object, *, reason: str = 'manual', address: str = '') -> str | None:
    return await session.run_sync(lambda s: end_sync(s, token, reason=reason, address=address))


async def end_reason(session: AsyncSession, token: object) -> str | None:
    """Why the session behind this token ended (idle, expired, manual, …), or None when it lives or is unknown."""
    if not token_shaped(token):
        return None
    return await session.scalar(select(AuthSession.end_reason).where(AuthSession.id == _digest(token)))


async def list_active(session: AsyncSession, *, clinician_id: int, limits: Limits) -> list[SessionInfo]:
    """The clinician's sessions that still live, the most recently used first."""
    now = utcnow()
    query = (
        select(AuthSession)
        .where(
            AuthSession.clinician_id == clinician_id,
            AuthSession.ended_at.is_(None),
            AuthSession.created_at > now - limits.max_age,
        )
        .order_by(AuthSession.last_seen_at.desc())
    )
    rows = await session.scalars(query)
    return [
        SessionInfo(row.id, row.created_at, row.last_seen_at, row.user_agent, row.address)
        for row in rows
        if limits.idle is None or now - row.last_seen_at <= limits.idle
    ]


async def count_signed_in(session: AsyncSession, *, limits: Limits) -> int:
    """How many clinicians have at least one live session now (signed in, not ended, expired or idle too long)."""
    now = utcnow()
    query = (
        select(func.count(func.distinct(AuthSession.clinician_id)))
        .join(Clinician, Clinician.id == AuthSession.clinician_id)
        .where(AuthSession.ended_at.is_(None), AuthSession.created_at > now - limits.max_age, ~Clinician.disabled)
    )
    if limits.idle is not None:
        query = query.where(AuthSession.last_seen_at >= now - limits.idle)
    return await session.scalar(query) or 0


def count_live_sync(session: Session, *, limits: Limits) -> int:
    """How many sign-in sessions live now (not ended, within their maximum age and idle time), of all clinicians."""
    now = utcnow()
    query = select(func.count()).where(AuthSession.ended_at.is_(None), AuthSession.created_at > now - limits.max_age)
    if limits.idle is not None:
        query = query.where(AuthSession.last_seen_at >= now - limits.idle)
    return session.scalar(query.select_from(AuthSession)) or 0


def end_own_sync(
    session: Session, *, clinician_id: int, session_ids: list[str], reason: str, address: str = ''
) -> frozenset[str]:
    """End some of this clinician's own sessions (ids of anyone else's are ignored); the ids ended. The caller
    commits (with whatever else the unit of work does)."""
    owned = session.scalars(
        select(AuthSession.id).where(AuthSession.clinician_id == clinician_id, AuthSession.id.in_(session_ids))
    ).all()
    return frozenset(session_id for session_id in owned if _end_sync(session, session_id, reason, address))


def end_all_sync(
    session: Session, *, clinician_id: int, reason: str, address: str = '', keep: str | None = None
) -> frozenset[str]:
    """End every live session of a clinician (but `keep`); the ids ended. The caller commits."""
    live = session.scalars(
        select(AuthSession.id).where(AuthSession.clinician_id == clinician_id, AuthSession.ended_at.is_(None))
    ).all()
    ids = [session_id for session_id in live if session_id != keep]
    return end_own_sync(session, clinician_id=clinician_id, session_ids=ids, reason=reason, address=address)


async def end_own(
    session: AsyncSession, *, clinician_id: int, session_ids: list[str], reason: str, address: str = ''
) -> frozenset[str]:
    ended = await session.run_sync(
        lambda s: end_own_sync(s, clinician_id=clinician_id, session_ids=session_ids, reason=reason, address=address)
    )
    await session.commit()
    return ended


async def end_all(
    session: AsyncSession, *, clinician_id: int, reason: str, address: str = '', keep: str | None = None
) -> frozenset[str]:
    ended = await session.run_sync(
        lambda s: end_all_sync(s, clinician_id=clinician_id, reason=reason, address=address, keep=keep)
    )
    await session.commit()
    return ended


def _end_dead_sync(session: Session, session_id: str, reason: str) -> None:
    """Note that a session found too old or idle ended. It signs nobody in either way: when the database is busy
    writing, the note waits for a later check (a page load must not fail on it)."""
    try:
        _end_sync(session, session_id, reason)
        session.commit()
    except OperationalError:
        session.rollback()


def _end_sync(session: Session, session_id: str, reason: str, address: str = '') -> str | None:
    """End one live session, noting it in the audit trail (the caller commits); an ended session stays as it is."""
    ended = session.execute(
        update(AuthSession)
        .where(AuthSession.id == session_id, AuthSession.ended_at.is_(None))
        .values(ended_at=utcnow(), end_reason=reason)
        .returning(AuthSession.clinician_id)
    ).first()
    if ended is not None:
        username = session.scalar(select(Clinician.username).where(Clinician.id == ended.clinician_id)) or ''
        entry = audit.Entry(audit.LOGOFF, ended.clinician_id, username, None, address, reason)
        audit.record_sync(session, entry)
    return session_id if ended is not None else None
