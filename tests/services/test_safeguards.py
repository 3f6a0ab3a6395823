"""Session idling and listing, login throttling, and the password rules (NIST SP 800-63B)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select

from casebook.db import Database
from casebook.models import AuditEvent, AuthSession, Clinician
from casebook.services import accounts, sessions, throttle
from casebook.services.errors import InvalidInput
from casebook.services.sessions import Limits
from tests.conftest import PASSWORD, add_clinician

DAY = timedelta(days=1)


async def age(database: Database, token_digest_of: str, **ago: float) -> None:
    """Move a session's last activity into the past."""
    async with database.session() as session:
        signed = await sessions.resolve(session, token_digest_of, max_age=DAY, touch=False)
        assert signed is not None
        row = await session.get(AuthSession, signed.session_id)
        row.last_seen_at -= timedelta(**ago)
        await session.commit()


async def test_a_session_idles_out_and_says_why(database: Database) -> None:
    bob = await add_clinician(database, 'bob')
    async with database.session() as session:
        token = await sessions.start(session, clinician_id=bob.id)
    await age(database, token, minutes=14)
    async with database.session() as session:
        assert await sessions.resolve(session, token, max_age=DAY, idle=timedelta(minutes=15)) is not None
    await age(database, token, minutes=16)  # the touch above moved it to now; 16 minutes before now is too long
    async with database.session() as session:
        assert await sessions.resolve(session, token, max_age=DAY, idle=timedelta(minutes=15)) is None
        assert await sessions.end_reason(session, token) == 'idle'
        details = list(await session.scalars(select(AuditEvent.detail).where(AuditEvent.action == 'logoff')))
    assert details == ['idle']


async def test_checking_without_touching_lets_the_session_idle(database: Database) -> None:
    bob = await add_clinician(database, 'bob')
    async with database.session() as session:
        token = await sessions.start(session, clinician_id=bob.id)
    await age(database, token, minutes=10)
    async with database.session() as session:
        watched = await sessions.resolve(session, token, max_age=DAY, idle=timedelta(minutes=15), touch=False)
        assert watched is not None and watched.last_seen_at < sessions.utcnow() - timedelta(minutes=9)
        active = await sessions.resolve(session, token, max_age=DAY, idle=timedelta(minutes=15))
        assert active.last_seen_at > sessions.utcnow() - timedelta(seconds=5)


async def test_sessions_list_and_end_only_ones_own(database: Database) -> None:
    bob = await add_clinician(database, 'bob')
    eve = await add_clinician(database, 'eve')
    limits = Limits(DAY, timedelta(minutes=15))
    async with database.session() as session:
        mine = [await sessions.start(session, clinician_id=bob.id, user_agent=f'agent {n}') for n in range(3)]
        theirs = await sessions.start(session, clinician_id=eve.id)
        listed = await sessions.list_active(session, clinician_id=bob.id, limits=limits)
        assert sorted(item.user_agent for item in listed) == ['agent 0', 'agent 1', 'agent 2']
        eve_id = (await sessions.resolve(session, theirs, max_age=DAY)).session_id
        kept = (await sessions.resolve(session, mine[0], max_age=DAY)).session_id
        ended = await sessions.end_own(
            session, clinician_id=bob.id, session_ids=[eve_id, listed[0].id], reason='ended-elsewhere'
        )
        assert ended == {listed[0].id}  # eve's id was ignored
        assert await sessions.resolve(session, theirs, max_age=DAY) is not None
        rest = await sessions.end_all(session, clinician_id=bob.id, reason='password-changed', keep=kept)
        assert kept not in rest
        assert [item.id for item in await sessions.list_active(session, clinician_id=bob.id, limits=limits)] == [kept]


async def test_what_a_browser_sends_is_kept_alike_on_every_engine(database: Database) -> None:
    """PostgreSQL's text refuses NUL: a user agent or address carrying one keeps U+FFFD in its place, on SQLite
    too, and an over-long one is cut to its column."""
    bob = await add_clinician(database, 'bob')
    async with database.session() as session:
        await sessions.start(
            session, clinician_id=bob.id, user_agent='Agent\x00' + 'x' * 300, address='10.0.0.1\x00', username='bob'
        )
        (listed,) = await sessions.list_active(session, clinician_id=bob.id, limits=Limits(DAY))
        recorded = await session.scalar(select(AuditEvent.address).where(AuditEvent.action == 'sign-in'))
    assert listed.user_agent == 'Agent\ufffd' + 'x' * 250
    assert listed.address == recorded == '10.0.0.1\ufffd'


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_throttle_delays_grow_per_account_whether_or_not_it_exists() -> None:
    clock = Clock()
    guard = throttle.LoginThrottle(clock=clock)
    waits = []
    for _ in range(7):
        waits.append(guard.wait_seconds('nobody', '10.0.0.1'))
        guard.failed('nobody', '10.0.0.1')
        clock.now += 0.1
    assert waits[:4] == [0, 0, 0, 0]
    assert guard.wait_seconds('nobody', '10.0.0.9') == pytest.approx(throttle.FIRST_DELAY * 8 - 0.1, abs=0.01)
    assert guard.wait_seconds('somebody', '10.0.0.9') == 0  # another account from another address: not held up
    clock.now += throttle.MAX_DELAY + throttle.WINDOW + 1
    assert guard.wait_seconds('nobody', '10.0.0.1') == 0  # forgotten after a quiet window


def test_throttle_per_address_and_success_resets_only_the_account() -> None:
    clock = Clock()
    guard = throttle.LoginThrottle(clock=clock)
    for n in range(throttle.FREE_PER_ADDRESS + 1):
        guard.failed(f'user{n}', '10.0.0.1')  # a different username each time: the address still adds up
    assert guard.wait_seconds('fresh', '10.0.0.1') == throttle.FIRST_DELAY
    assert guard.wait_seconds('fresh', '10.0.0.2') == 0
    for _ in range(throttle.FREE_PER_ACCOUNT):
        guard.failed('bob', '10.0.0.3')
    guard.succeeded('bob')
    guard.failed('bob', '10.0.0.3')
    assert guard.wait_seconds('bob', '10.0.0.3') == 0


@pytest.mark.parametrize(
    'password',
    [
        'password1234',
        'Password1234!',
        'qwertyuiop123',
        '1234567890123',
        'iloveyou2024!!',
        'aaaaaaaaaaaaaaa',
        'abababababab',
    ],
)
def test_common_or_trivial_passwords_are_refused(password: str) -> None:
    with pytest.raises(InvalidInput, match=r'^Password: '):
        accounts.check_password(password)


def test_the_shipped_list_is_long_enough_and_lengths_are_kept() -> None:
    assert len(accounts._common_passwords()) >= 10_000
    accounts.check_password('correct horse battery staple')  # no composition rules
    accounts.check_password('x7#kL' * 25 + 'abc')  # 128 characters
    with pytest.raises(InvalidInput, match='at most 128'):
        accounts.check_password('x7#kL' * 26)
    with pytest.raises(InvalidInput, match='at least 12'):
        accounts.check_password('short words')
    with pytest.raises(InvalidInput, match='username'):
        accounts.check_password('drbobsmith is here', username='drbobsmith')


async def test_changing_the_password_needs_the_current_one(database: Database) -> None:
    bob = await add_clinician(database, 'bob')
    async with database.session() as session:
        with pytest.raises(InvalidInput, match='Current password'):
            await accounts.change_password(session, clinician_id=bob.id, current='wrong one entirely', new='x' * 20)
        with pytest.raises(InvalidInput, match='commonly used'):
            await accounts.change_password(session, clinician_id=bob.id, current=PASSWORD, new='password12345')
        await accounts.change_password(session, clinician_id=bob.id, current=PASSWORD, new='a brand new phrase')
        assert await accounts.authenticate(session, username='bob', password='a brand new phrase') == bob
        assert await accounts.authenticate(session, username='bob', password=PASSWORD) is None


async def test_admins_cannot_lock_everyone_out(database: Database) -> None:
    ada = await add_clinician(database, 'ada', role='admin')
    bob = await add_clinician(database, 'bob')
    async with database.session() as session:
        with pytest.raises(InvalidInput, match='own account'):
            await accounts.set_disabled(session, admin=ada, clinician_id=ada.id, disabled=True)
        with pytest.raises(InvalidInput, match='own admin role'):
            await accounts.change_role(session, admin=ada, clinician_id=ada.id, role='doctor')
        await accounts.change_role(session, admin=ada, clinician_id=bob.id, role='admin')
        await session.commit()
        await accounts.change_role(session, admin=bob, clinician_id=ada.id, role='nurse')
        await session.commit()
        with pytest.raises(InvalidInput, match='last active admin'):
            await accounts.set_disabled(session, admin=ada, clinician_id=bob.id, disabled=True)
    async with database.session() as session:  # the refusal changed nothing: Bob is still an active admin
        still = await session.get(Clinician, bob.id)
        assert (still.role, still.disabled) == ('admin', False)
