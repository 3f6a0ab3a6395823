"""Accounts that sign in through the identity provider (single sign-on, casebook/web/oidc.py)."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from casebook.models import Clinician
from casebook.services import accounts, audit, sessions
from casebook.services.errors import InvalidInput


async def add_clinician(
    target, *, username: str, display_name: str, role: str = 'doctor', audited: accounts.Audited = None
) -> accounts.ClinicianInfo:
    """An account that signs in only through the identity provider (`casebook user add --sso`): no password."""
    clinician = Clinician(
        username=accounts.normalize_username(username),
        display_name=accounts.normalize_display_name(display_name),
        role=accounts.check_role(role),
        password_hash=accounts.NO_PASSWORD,
        disabled=False,
    )
    return await accounts.on(target)(lambda session: accounts.store_sync(session, clinician, audited=audited))


def sign_in_sync(
    session: Session, *, username: str, name: str, create: bool, address: str = '', user_agent: str = ''
) -> tuple[str, int] | str:
    """One unit of work for a clinician the provider vouched for: their account found by `username` (created as a
    doctor when `create`), its display name following `name`, and a new session (audited `sign-in`, detail `oidc`).
    Returns (the session's token, the clinician's id), or why not: 'username', 'unknown-account', 'disabled'."""
    try:
        username = accounts.normalize_username(username)
    except InvalidInput:
        return 'username'
    try:
        display_name = accounts.normalize_display_name(name)
    except InvalidInput:
        display_name = ''
    clinician = session.scalar(select(Clinician).where(Clinician.username == username))
    if clinician is None:
        if not create:
            return 'unknown-account'
        clinician = Clinician(
            username=username,
            display_name=display_name or username,
            role='doctor',
            password_hash=accounts.NO_PASSWORD,
            disabled=False,
        )
        session.add(clinician)
        session.flush()
        audit.record_sync(
            session,
            audit.Entry(audit.ACCOUNT_CREATED, clinician.id, username, None, address, 'doctor (single sign-on)'),
        )
    elif clinician.disabled:
        return 'disabled'
    elif display_name and clinician.display_name != display_name:
        clinician.display_name = display_name
    clinician_id = clinician.id
    token = sessions.start_sync(
        session, clinician_id=clinician_id, address=address, user_agent=user_agent, username=username, method='oidc'
    )
    return token, clinician_id
