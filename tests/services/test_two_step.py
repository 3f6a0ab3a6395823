"""Two-step sign-in's data side on both engines: set-up, codes accepted once, recovery codes, keys, turning off.

Every call is given its time (`at`), so a code of any step is computed here by pyotp and nothing sleeps.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pyotp
import pytest
from sqlalchemy import select, text

from casebook.models import AuditEvent
from casebook.services import audit, sessions, two_step
from casebook.services.errors import InvalidInput
from tests.conftest import add_clinician
from tests.services.test_passkeys import Authenticator, register

KEY = two_step.derive_key('the storage secret of these tests')
OTHER_KEY = two_step.derive_key('another installation')
T0 = datetime(2026, 12, 5, 9, 0, 10, tzinfo=UTC)  # 10 s into a time step
STEP = timedelta(seconds=two_step.STEP_SECONDS)
HOUR = timedelta(hours=1)


def code(secret: str, at: datetime) -> str:
    return pyotp.TOTP(secret).at(int(at.timestamp()))


async def set_up(database, clinician_id: int, *, at: datetime = T0) -> tuple[str, list[str]]:
    """Two-step sign-in turned on for the clinician: (the secret, the recovery codes)."""
    setup = await database.run(lambda s: two_step.begin_setup(s, clinician_id, key=KEY))
    codes = await database.run(
        lambda s: two_step.confirm_setup(s, clinician_id, code(setup.secret, at), key=KEY, at=at)
    )
    return setup.secret, codes


async def verify(database, clinician_id: int, typed: str, *, at: datetime = T0, key: bytes = KEY):
    return await database.run(lambda s: two_step.verify(s, clinician_id, typed, key=key, at=at))


async def actions(database) -> list[tuple[str, str]]:
    rows = await database.run(lambda s: s.execute(select(AuditEvent.action, AuditEvent.detail)).all())
    return [(action, detail) for action, detail in rows if action not in (audit.ACCOUNT_CREATED,)]


async def test_set_up_shows_a_secret_and_turns_on_only_with_a_current_code(database):
    ada = await add_clinician(database, 'ada')
    setup = await database.run(lambda s: two_step.begin_setup(s, ada.id, key=KEY))
    assert setup.uri.startswith('otpauth://totp/Casebook:ada?') and f'secret={setup.secret}' in setup.uri
    assert 'issuer=Casebook' in setup.uri
    assert setup.qr_svg().startswith('<svg')
    assert not await database.run(lambda s: two_step.is_on(s, ada.id))

    wrong = f'{(int(code(setup.secret, T0)) + 1) % 1_000_000:06d}'
    for typed, says in ((wrong, 'not the current code'), ('12345', 'the 6 digits'), ('abcdef', 'the 6 digits')):
        with pytest.raises(InvalidInput, match=says):
            await database.run(lambda s, typed=typed: two_step.confirm_setup(s, ada.id, typed, key=KEY, at=T0))
    assert not await database.run(lambda s: two_step.is_on(s, ada.id))
    assert await database.run(lambda s: two_step.recovery_codes_left(s, ada.id)) == 0

    codes = await database.run(
        lambda s: two_step.confirm_setup(s, ada.id, code(setup.secret, T0), key=KEY, at=T0, address='10.0.0.1')
    )
    assert await database.run(lambda s: two_step.is_on(s, ada.id))
    assert len(codes) == two_step.RECOVERY_CODES == len(set(codes))
    assert all(len(c) == 11 and c[5] == '-' and two_step.normalize_recovery_code(c) for c in codes)
    assert await database.run(lambda s: two_step.recovery_codes_left(s, ada.id)) == 10
    assert await actions(database) == [(audit.TWO_STEP_ON, 'authenticator app')]
    # the confirming code has been used: it does not sign in afterwards
    assert not (await verify(database, ada.id, code(setup.secret, T0))).accepted


async def test_confirm_needs_a_set_up_under_way_and_set_up_is_refused_while_on(database):
    ada = await add_clinician(database, 'ada')
    with pytest.raises(InvalidInput, match='no set-up is under way'):
        await database.run(lambda s: two_step.confirm_setup(s, ada.id, '123456', key=KEY, at=T0))
    await set_up(database, ada.id)
    with pytest.raises(InvalidInput, match='already on'):
        await database.run(lambda s: two_step.begin_setup(s, ada.id, key=KEY))


async def test_starting_again_replaces_the_pending_secret(database):
    ada = await add_clinician(database, 'ada')
    first = await database.run(lambda s: two_step.begin_setup(s, ada.id, key=KEY))
    second = await database.run(lambda s: two_step.begin_setup(s, ada.id, key=KEY))
    assert first.secret != second.secret
    with pytest.raises(InvalidInput, match='not the current code'):
        await database.run(lambda s: two_step.confirm_setup(s, ada.id, code(first.secret, T0), key=KEY, at=T0))
    await database.run(lambda s: two_step.confirm_setup(s, ada.id, code(second.secret, T0), key=KEY, at=T0))


async def test_one_step_either_side_is_accepted_two_are_not(database):
    ada = await add_clinician(database, 'ada')
    secret, _ = await set_up(database, ada.id, at=T0 - 10 * STEP)
    now = T0
    for offset in (-2, 2):
        assert not (await verify(database, ada.id, code(secret, now + offset * STEP), at=now)).accepted
    assert (await verify(database, ada.id, code(secret, now - STEP), at=now)).kind == 'code'
    assert (await verify(database, ada.id, code(secret, now + STEP), at=now)).kind == 'code'


async def test_a_code_is_accepted_once_and_never_an_earlier_one_after_it(database):
    ada = await add_clinician(database, 'ada')
    secret, _ = await set_up(database, ada.id, at=T0 - 10 * STEP)
    current = code(secret, T0)
    assert (await verify(database, ada.id, current)).accepted
    again = await verify(database, ada.id, current, at=T0 + STEP)  # still within its window
    assert not again.accepted and again.message == two_step.REFUSED
    assert not (await verify(database, ada.id, code(secret, T0 - STEP))).accepted  # an older step
    assert (await verify(database, ada.id, f'{code(secret, T0 + STEP)[:3]} {code(secret, T0 + STEP)[3:]}')).accepted


async def test_every_refusal_reads_the_same(database):
    ada = await add_clinician(database, 'ada')
    bea = await add_clinician(database, 'bea')  # two-step sign-in off
    secret, codes = await set_up(database, ada.id, at=T0 - 10 * STEP)
    refusals = [
        await verify(database, ada.id, ''),
        await verify(database, ada.id, 'nonsense'),
        await verify(database, ada.id, '000000' if code(secret, T0) != '000000' else '111111'),
        await verify(database, ada.id, 'abcde-fghjk'),
        await verify(database, ada.id, code(secret, T0), key=OTHER_KEY),
        await verify(database, bea.id, code(secret, T0)),
        await verify(database, bea.id, codes[0]),
    ]
    assert {(r.kind, r.message) for r in refusals} == {(None, two_step.REFUSED)}


async def test_a_recovery_code_works_once_whatever_its_case_spaces_or_dashes(database):
    ada = await add_clinician(database, 'ada')
    _, codes = await set_up(database, ada.id)
    typed = f'  {codes[0].replace("-", " ").upper()} '
    used = await verify(database, ada.id, typed, at=T0 + STEP, key=OTHER_KEY)  # hashes need no key
    assert used.kind == 'recovery-code' and used.recovery_codes_left == 9
    assert not (await verify(database, ada.id, codes[0])).accepted
    assert (await verify(database, ada.id, codes[1].replace('-', ''))).kind == 'recovery-code'
    assert await database.run(lambda s: two_step.recovery_codes_left(s, ada.id)) == 8
    assert (await actions(database))[-2:] == [
        (audit.RECOVERY_CODE_USED, '9 left'),
        (audit.RECOVERY_CODE_USED, '8 left'),
    ]


async def test_a_new_set_of_recovery_codes_replaces_the_old(database):
    ada = await add_clinician(database, 'ada')
    _, old = await set_up(database, ada.id)
    assert (await verify(database, ada.id, old[0])).accepted
    new = await database.run(lambda s: two_step.new_recovery_codes(s, ada.id))
    assert not set(new) & set(old)
    assert await database.run(lambda s: two_step.recovery_codes_left(s, ada.id)) == 10
    assert not (await verify(database, ada.id, old[1])).accepted
    assert (await verify(database, ada.id, new[0])).accepted
    assert (audit.RECOVERY_CODES_NEW, '10 codes') in await actions(database)

    bea = await add_clinician(database, 'bea')
    with pytest.raises(InvalidInput, match='turn two-step sign-in on first'):
        await database.run(lambda s: two_step.new_recovery_codes(s, bea.id))


async def test_one_clinicians_codes_never_sign_in_another(database):
    ada = await add_clinician(database, 'ada')
    bea = await add_clinician(database, 'bea')
    ada_secret, ada_codes = await set_up(database, ada.id, at=T0 - 10 * STEP)
    bea_secret, _ = await set_up(database, bea.id, at=T0 - 10 * STEP)
    assert ada_secret != bea_secret
    if code(ada_secret, T0) != code(bea_secret, T0):  # one in a million they agree
        assert not (await verify(database, bea.id, code(ada_secret, T0))).accepted
    assert not (await verify(database, bea.id, ada_codes[0])).accepted
    assert (await verify(database, ada.id, code(ada_secret, T0))).accepted
    assert (await verify(database, bea.id, code(bea_secret, T0))).accepted  # ada's use did not spend bea's step
    assert await database.run(lambda s: two_step.recovery_codes_left(s, bea.id)) == 10


async def test_secrets_and_codes_are_not_stored_in_clear(database):
    ada = await add_clinician(database, 'ada')
    pending = await database.run(lambda s: two_step.begin_setup(s, ada.id, key=KEY))
    stored = await database.run(lambda s: s.execute(text('SELECT * FROM two_step')).all())
    assert pending.secret not in repr(stored)
    await database.run(lambda s: two_step.turn_off(s, ada.id))

    secret, codes = await set_up(database, ada.id)
    tables = ('two_step', 'recovery_codes', 'audit_events')
    raw = repr(await database.run(lambda s: [s.execute(text(f'SELECT * FROM {t}')).all() for t in tables]))  # noqa: S608
    assert secret not in raw and secret.lower() not in raw
    assert not any(c in raw or c.replace('-', '') in raw for c in codes)


async def test_another_key_cannot_read_the_secret_and_names_the_clinician(database):
    ada = await add_clinician(database, 'ada')
    bea = await add_clinician(database, 'bea')
    await add_clinician(database, 'cy')  # never set up
    await set_up(database, ada.id)
    await set_up(database, bea.id)
    assert await database.run(lambda s: two_step.undecryptable(s, KEY)) == []
    assert await database.run(lambda s: two_step.undecryptable(s, OTHER_KEY)) == ['ada', 'bea']


def test_the_key_comes_from_the_secret_key_else_the_storage_secret(monkeypatch):
    from casebook.config import Settings

    monkeypatch.setenv('CASEBOOK_STORAGE_SECRET', 'storage secret')
    from_storage = two_step.key_of(Settings())
    assert from_storage == two_step.derive_key('storage secret')
    monkeypatch.setenv('CASEBOOK_SECRET_KEY', 'a separate key')
    assert two_step.key_of(Settings()) == two_step.derive_key('a separate key') != from_storage
    assert 'a separate key' not in repr(Settings())


async def test_turning_off_clears_everything(database):
    ada = await add_clinician(database, 'ada')
    admin = await add_clinician(database, 'root', role='admin')
    secret, codes = await set_up(database, ada.id, at=T0 - 10 * STEP)
    assert await database.run(lambda s: two_step.turn_off(s, ada.id, address='10.0.0.1'))
    assert not await database.run(lambda s: two_step.is_on(s, ada.id))
    assert await database.run(lambda s: two_step.recovery_codes_left(s, ada.id)) == 0
    assert not (await verify(database, ada.id, code(secret, T0))).accepted
    assert not (await verify(database, ada.id, codes[0])).accepted
    assert await database.run(lambda s: s.scalar(text('SELECT count(*) FROM two_step'))) == 0
    assert await database.run(lambda s: s.scalar(text('SELECT count(*) FROM recovery_codes'))) == 0
    assert not await database.run(lambda s: two_step.turn_off(s, ada.id))  # off already: nothing to record

    await set_up(database, ada.id)
    assert await database.run(lambda s: two_step.turn_off(s, ada.id, by=(admin.id, admin.username)))
    offs = [detail for action, detail in await actions(database) if action == audit.TWO_STEP_OFF]
    assert offs == ['own', 'reset for ada']


async def test_a_reset_takes_everything_away_and_ends_every_session(database):
    ada = await add_clinician(database, 'ada')
    root = await add_clinician(database, 'root', role='admin')
    assert await database.run(lambda s: two_step.factors(s, ada.id)) == two_step.Factors(app=False, passkeys=0)
    secret, codes = await set_up(database, ada.id, at=T0 - 10 * STEP)
    await register(database, ada.id, Authenticator(), 'Phone')
    factors = await database.run(lambda s: two_step.factors(s, ada.id))
    assert factors == two_step.Factors(app=True, passkeys=1)
    tokens = [
        await database.run(lambda s: sessions.start_sync(s, clinician_id=ada.id, username='ada')) for _ in range(2)
    ]
    kept = await database.run(lambda s: sessions.start_sync(s, clinician_id=root.id, username='root'))
    done = await database.run(lambda s: two_step.reset(s, ada.id, by=(root.id, 'root'), address='10.0.0.9'))
    assert (done.clinician_id, done.username, done.app, done.passkeys, len(done.ended)) == (ada.id, 'ada', True, 1, 2)
    assert done.summary() == 'authenticator app off, 1 passkey removed, 2 sessions ended'
    assert not (await database.run(lambda s: two_step.factors(s, ada.id))).any
    assert not (await verify(database, ada.id, code(secret, T0))).accepted
    assert not (await verify(database, ada.id, codes[0])).accepted
    for token in tokens:
        assert await database.run(lambda s, t=token: sessions.resolve_sync(s, t, max_age=HOUR, idle=HOUR)) is None
    assert await database.run(lambda s: sessions.resolve_sync(s, kept, max_age=HOUR, idle=HOUR)) is not None
    trail = [(action, detail) for action, detail in await actions(database) if action != audit.SIGN_IN]
    assert trail[-3:] == [
        (audit.RESET_TWO_STEP, 'ada'),
        (audit.LOGOFF, 'two-step-reset'),
        (audit.LOGOFF, 'two-step-reset'),
    ]
    again = await database.run(lambda s: two_step.reset(s, ada.id, by=(None, '(command line)')))
    assert again.summary() == 'no authenticator app, 0 passkeys removed, 0 sessions ended'
