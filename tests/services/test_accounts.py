"""Accounts and sessions, on a fresh database per test."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest
from argon2 import PasswordHasher
from sqlalchemy import select

from casebook.models import AuthSession, Clinician
from casebook.services import accounts, sessions
from casebook.services.errors import AlreadyExists, InvalidInput
from tests.conftest import PASSWORD, add_clinician

DAY = timedelta(hours=12)


async def test_first_account_is_an_admin_and_only_once(database):
    async with database.session() as session:
        assert await accounts.needs_first_account(session)
        first = await accounts.create_first_account(
            session, username='Ada', display_name=' Dr.  Ada ', password=PASSWORD
        )
        assert (first.username, first.display_name, first.role) == ('ada', 'Dr. Ada', 'admin')
        assert not await accounts.needs_first_account(session)
        with pytest.raises(AlreadyExists):
            await accounts.create_first_account(session, username='eve', display_name='Eve', password=PASSWORD)


async def test_two_first_visitors_at_once_make_one_admin(database):
    async def attempt(name: str) -> bool:
        async with database.session() as session:
            try:
                await accounts.create_first_account(session, username=name, display_name=name, password=PASSWORD)
                return True
            except AlreadyExists:
                return False

    results = await asyncio.gather(attempt('first'), attempt('second'))
    assert sorted(results) == [False, True]
    async with database.session() as session:
        assert len((await session.scalars(select(Clinician))).all()) == 1


async def test_password_is_stored_as_argon2id(database):
    await add_clinician(database, 'bob')
    async with database.session() as session:
        stored = await session.scalar(select(Clinician.password_hash))
    assert stored.startswith('$argon2id$')
    assert PASSWORD not in stored


@pytest.mark.parametrize(
    ('field', 'value', 'message'),
    [
        ('username', 'a', 'Username'),
        ('username', 'bob smith', 'Username'),
        ('username', '../etc', 'Username'),
        ('username', 'x' * 65, 'Username'),
        ('display_name', '   ', 'Display name'),
        ('display_name', 'x' * 101, 'Display name'),
        ('display_name', 'Bob\u202eevil', 'Display name'),
        ('password', 'short', 'at least 12'),
        ('password', 'x' * 129, 'at most 128'),
        ('role', 'surgeon', 'Role'),
    ],
)
async def test_bad_account_input_is_refused_with_a_reason(database, field, value, message):
    values = {'username': 'bob', 'display_name': 'Bob', 'password': PASSWORD, 'role': 'doctor', field: value}
    async with database.session() as session:
        with pytest.raises(InvalidInput, match=message):
            await accounts.add_clinician(session, **values)


async def test_usernames_are_unique_ignoring_case(database):
    await add_clinician(database, 'bob')
    with pytest.raises(AlreadyExists):
        await add_clinician(database, 'BOB')


async def test_authenticate(database):
    bob = await add_clinician(database, 'bob')
    async with database.session() as session:
        assert await accounts.authenticate(session, username=' BOB ', password=PASSWORD) == bob
        assert await accounts.authenticate(session, username='bob', password=PASSWORD + 'x') is None
        assert await accounts.authenticate(session, username='nobody', password=PASSWORD) is None
        assert await accounts.authenticate(session, username='', password='') is None
        assert await accounts.authenticate(session, username='bob', password='x' * 10_000) is None


async def test_a_password_hashed_with_older_parameters_is_hashed_anew_at_sign_in(database):
    bob = await add_clinician(database, 'bob')
    older = PasswordHasher().hash(PASSWORD)  # argon2-cffi's default: 64 MiB, 3 passes, 4 lanes
    async with database.session() as session:
        (await session.get(Clinician, bob.id)).password_hash = older
        await session.commit()
    verified = await accounts.verify_credentials(database.run, username='bob', password=PASSWORD)
    assert verified is not None and verified.clinician == bob
    assert verified.rehash is not None
    old, new = verified.rehash
    assert old == older and '$m=19456,t=2,p=1$' in new
    token = await database.run(
        lambda s: sessions.start_sync(s, clinician_id=bob.id, username='bob', rehash=verified.rehash)
    )
    async with database.session() as session:
        assert await session.scalar(select(Clinician.password_hash).where(Clinician.id == bob.id)) == new
        assert (await sessions.resolve(session, token, max_age=DAY)).clinician == bob
    again = await accounts.verify_credentials(database.run, username='bob', password=PASSWORD)
    assert again == accounts.Verified(bob)  # nothing more to replace
    # a password changed between checking it and signing in is not put back by the rehash
    async with database.session() as session:
        (await session.get(Clinician, bob.id)).password_hash = older
        await session.commit()
    stale = await accounts.verify_credentials(database.run, username='bob', password=PASSWORD)
    changed = await accounts.hash_password('a password set meanwhile by an admin')
    async with database.session() as session:
        (await session.get(Clinician, bob.id)).password_hash = changed
        await session.commit()
    await database.run(lambda s: sessions.start_sync(s, clinician_id=bob.id, username='bob', rehash=stale.rehash))
    async with database.session() as session:
        assert await session.scalar(select(Clinician.password_hash).where(Clinician.id == bob.id)) == changed


async def test_disabled_clinician_cannot_sign_in_and_loses_sessions(database):
    bob = await add_clinician(database, 'bob')
    async with database.session() as session:
        token = await sessions.start(session, clinician_id=bob.id)
        assert (await sessions.resolve(session, token, max_age=DAY)).clinician == bob
        (await session.get(Clinician, bob.id)).disabled = True
        await session.commit()
        assert await sessions.resolve(session, token, max_age=DAY) is None
        assert await accounts.authenticate(session, username='bob', password=PASSWORD) is None


async def test_sessions_end_and_expire(database):
    bob = await add_clinician(database, 'bob')
    async with database.session() as session:
        first = await sessions.start(session, clinician_id=bob.id, user_agent='test', address='127.0.0.1')
        second = await sessions.start(session, clinician_id=bob.id)
        assert first != second  # a new identifier at every sign-in
        stored = (await session.scalars(select(AuthSession.id))).all()
        assert first not in stored and second not in stored  # only digests are kept
        await sessions.end(session, first)
        assert await sessions.resolve(session, first, max_age=DAY) is None
        assert await sessions.resolve(session, second, max_age=DAY) is not None
        assert await sessions.resolve(session, second, max_age=timedelta(0)) is None  # too old: ended
        assert await sessions.resolve(session, second, max_age=DAY) is None


@pytest.mark.parametrize('token', [None, '', 42, ['x'], 'short', 'x' * 500, 'y' * 43])
async def test_unknown_or_malformed_tokens_sign_in_nobody(database, token):
    async with database.session() as session:
        assert await sessions.resolve(session, token, max_age=DAY) is None
