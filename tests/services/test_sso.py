"""Accounts for single sign-on on both engines: matched by username, created only when allowed, refused when
disabled, the display name following the provider's, and a session begun as a password sign-in's is (audited)."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import select

from casebook.models import AuditEvent
from casebook.services import accounts, sessions, sso
from tests.conftest import add_clinician

HOUR = timedelta(hours=1)


async def test_matched_created_only_when_allowed_and_refused_when_disabled(database):
    ada = await add_clinician(database, 'ada', display_name='Ada')
    root = await add_clinician(database, 'root', role='admin')

    def sign_in(username: str, name: str, create: bool = False):
        return database.run(lambda s: sso.sign_in_sync(s, username=username, name=name, create=create, address='::1'))

    token, clinician_id = await sign_in('ADA', 'Dr. Ada Lovelace')
    assert clinician_id == ada.id
    signed = await database.run(lambda s: sessions.resolve_sync(s, token, max_age=HOUR, idle=HOUR))
    assert signed.clinician.display_name == 'Dr. Ada Lovelace'  # the provider's name from now on
    assert await sign_in('nobody', 'No Body') == 'unknown-account'
    assert await sign_in('no body', 'No Body', create=True) == 'username'
    _, new_id = await sign_in('newcomer', 'Dr. New', create=True)
    async with database.session() as session:
        new = await accounts.get_clinician(session, new_id)
    assert (new.username, new.display_name, new.role) == ('newcomer', 'Dr. New', 'doctor')
    await database.run(
        lambda s: (accounts.set_disabled_sync(s, admin=root, clinician_id=ada.id, disabled=True), s.commit())
    )
    assert await sign_in('ada', 'Dr. Ada Lovelace') == 'disabled'
    async with database.session() as session:
        rows = (await session.execute(select(AuditEvent.action, AuditEvent.actor, AuditEvent.detail))).all()
    assert ('sign-in', 'ada', 'oidc') in rows and ('sign-in', 'newcomer', 'oidc') in rows
    assert ('account-created', 'newcomer', 'doctor (single sign-on)') in rows
