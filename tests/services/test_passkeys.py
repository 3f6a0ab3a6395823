"""Passkeys' data side on both engines, with a software authenticator made here (an EC P-256 key, `none`
attestation): registering, signing in, and every way a sign-in is refused.

The authenticator is real cryptography, not a mock: py_webauthn verifies what it signs exactly as it verifies a
browser's answer. Only the browser is left out (tests/browser/test_passkeys.py drives Chromium's own).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field

import cbor2
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from sqlalchemy import select, update
from webauthn.helpers import bytes_to_base64url

from casebook.config import Settings
from casebook.models import AuditEvent, Clinician
from casebook.services import audit, passkeys
from casebook.services.errors import InvalidInput, NotFound
from tests.conftest import add_clinician

RP = passkeys.RelyingParty(id='localhost', origin='http://localhost:8080')
UP, UV, AT = 0x01, 0x04, 0x40


def b64(data: bytes) -> str:
    return bytes_to_base64url(data)


@dataclass
class Authenticator:
    """One passkey on a software authenticator: what a phone or a laptop's secure chip does, in a few lines."""

    key: ec.EllipticCurvePrivateKey = field(default_factory=lambda: ec.generate_private_key(ec.SECP256R1()))
    credential_id: bytes = field(default_factory=lambda: os.urandom(16))
    count: int = 0
    user_handle: bytes = b''

    def _cose_key(self) -> bytes:
        numbers = self.key.public_key().public_numbers()
        return cbor2.dumps({1: 2, 3: -7, -1: 1, -2: numbers.x.to_bytes(32, 'big'), -3: numbers.y.to_bytes(32, 'big')})

    def _auth_data(self, rp_id: str, flags: int, attested: bool) -> bytes:
        data = hashlib.sha256(rp_id.encode()).digest() + bytes([flags]) + self.count.to_bytes(4, 'big')
        if attested:
            data += bytes(16) + len(self.credential_id).to_bytes(2, 'big') + self.credential_id + self._cose_key()
        return data

    def create(
        self, options_json: str, *, origin: str = RP.origin, rp_id: str | None = None, flags: int = UP | UV | AT
    ) -> str:
        options = json.loads(options_json)
        self.user_handle = _unb64(options['user']['id'])
        client_data = json.dumps(
            {'type': 'webauthn.create', 'challenge': options['challenge'], 'origin': origin, 'crossOrigin': False}
        ).encode()
        auth_data = self._auth_data(rp_id or options['rp']['id'], flags, attested=True)
        attestation = cbor2.dumps({'fmt': 'none', 'attStmt': {}, 'authData': auth_data})
        return self._answer(
            clientDataJSON=b64(client_data), attestationObject=b64(attestation), transports=['internal', 'hybrid']
        )

    def get(
        self,
        options_json: str,
        *,
        origin: str = RP.origin,
        rp_id: str | None = None,
        flags: int = UP | UV,
        step: int = 1,
        challenge: str | None = None,
    ) -> str:
        options = json.loads(options_json)
        allowed = [item['id'] for item in options.get('allowCredentials', [])]
        assert not allowed or b64(self.credential_id) in allowed, 'the browser would not offer this passkey'
        self.count += step
        client_data = json.dumps(
            {'type': 'webauthn.get', 'challenge': challenge or options['challenge'], 'origin': origin}
        ).encode()
        auth_data = self._auth_data(rp_id or options['rpId'], flags, attested=False)
        signature = self.key.sign(auth_data + hashlib.sha256(client_data).digest(), ec.ECDSA(hashes.SHA256()))
        return self._answer(
            clientDataJSON=b64(client_data),
            authenticatorData=b64(auth_data),
            signature=b64(signature),
            userHandle=b64(self.user_handle),
        )

    def _answer(self, **response: object) -> str:
        """The PublicKeyCredential as casebookPasskey (passkeys.js) sends it: base64url fields."""
        credential_id = b64(self.credential_id)
        answer = {'id': credential_id, 'rawId': credential_id, 'type': 'public-key', 'response': response}
        return json.dumps(answer | {'clientExtensionResults': {}})


def _unb64(text: str) -> bytes:
    from webauthn.helpers import base64url_to_bytes

    return base64url_to_bytes(text)


async def register(
    database, clinician_id: int, device: Authenticator, name: str = '', **create
) -> passkeys.PasskeyInfo:
    options, challenge = await database.run(lambda s: passkeys.registration_options(s, clinician_id, RP))
    answer = device.create(options, **create)
    return await database.run(
        lambda s: passkeys.finish_registration(s, clinician_id, answer, challenge=challenge, rp=RP, name=name)
    )


async def sign_in(database, device: Authenticator, *, clinician_id: int | None = None, **get) -> int | None:
    ids = None
    if clinician_id is not None:
        ids = await database.run(lambda s: passkeys.credential_ids(s, clinician_id))
    options, challenge = passkeys.authentication_options(RP, credential_ids=ids)
    answer = device.get(options, **get)
    return await database.run(
        lambda s: passkeys.finish_authentication(s, answer, challenge=challenge, rp=RP, clinician_id=clinician_id)
    )


async def audit_rows(database) -> list[tuple[str, str, str]]:
    rows = await database.run(lambda s: s.execute(select(AuditEvent.action, AuditEvent.actor, AuditEvent.detail)).all())
    return [tuple(row) for row in rows if row.action != audit.ACCOUNT_CREATED]


# ------------------------------------------------------------------------------------------------- relying party


def test_the_relying_party_is_the_public_url_or_localhost_at_the_page_port():
    assert passkeys.relying_party('https://casebook.example.org', '10.0.0.5:8080') == passkeys.RelyingParty(
        'casebook.example.org', 'https://casebook.example.org'
    )
    assert passkeys.relying_party('http://notes.example:8443', 'x') == passkeys.RelyingParty(
        'notes.example', 'http://notes.example:8443'
    )
    assert passkeys.relying_party(None, 'localhost:8080') == passkeys.RelyingParty('localhost', 'http://localhost:8080')
    assert passkeys.relying_party(None, 'LOCALHOST').origin == 'http://localhost'
    for host in ('127.0.0.1:8080', '[::1]:8080', 'casebook.lan:8080', ''):
        with pytest.raises(
            InvalidInput, match=r'Passkeys work only at http://localhost:8080 here, or set CASEBOOK_PUBLIC_URL'
        ):
            passkeys.relying_party(None, host or 'x:8080')


def test_the_public_url_is_an_origin_only():
    assert Settings(public_url='https://Casebook.example.org/').public_url == 'https://casebook.example.org'
    assert Settings(public_url='').public_url is None
    for bad in ('https://casebook.example.org/notes', 'ftp://casebook.example.org', 'casebook.example.org', 'https://'):
        with pytest.raises(ValueError, match=r'http\(s\)://host\[:port\]'):
            Settings(public_url=bad)


# ------------------------------------------------------------------------------------------------- registering


async def test_register_then_sign_in_without_a_username(database):
    ada = await add_clinician(database, 'ada')
    options, challenge = await database.run(lambda s: passkeys.registration_options(s, ada.id, RP))
    parsed = json.loads(options)
    assert parsed['rp'] == {'id': 'localhost', 'name': 'Casebook'}
    assert parsed['authenticatorSelection']['residentKey'] == 'required'
    assert parsed['authenticatorSelection']['userVerification'] == 'required'
    assert parsed['user']['name'] == 'ada' and b'ada' not in _unb64(parsed['user']['id'])
    assert parsed['excludeCredentials'] == [] and len(challenge) >= 16

    phone = Authenticator()
    answer = phone.create(options)
    info = await database.run(
        lambda s: passkeys.finish_registration(s, ada.id, answer, challenge=challenge, rp=RP, name='  My   phone ')
    )
    assert (info.name, info.last_used_at) == ('My phone', None)
    assert await database.run(lambda s: passkeys.has_any(s, ada.id))
    assert await audit_rows(database) == [(audit.PASSKEY_ADDED, 'ada', 'My phone')]

    options, _ = await database.run(lambda s: passkeys.registration_options(s, ada.id, RP))
    excluded = json.loads(options)['excludeCredentials']
    assert [item['id'] for item in excluded] == [b64(phone.credential_id)]
    assert excluded[0]['transports'] == ['hybrid', 'internal']

    discoverable, _ = passkeys.authentication_options(RP)
    assert 'allowCredentials' not in json.loads(discoverable) or json.loads(discoverable)['allowCredentials'] == []
    assert json.loads(discoverable)['userVerification'] == 'required'
    assert await sign_in(database, phone) == ada.id
    [listed] = await database.run(lambda s: passkeys.list_for(s, ada.id))
    assert listed.last_used_at is not None and listed.created_at <= listed.last_used_at
    row = await database.run(lambda s: s.scalar(select(passkeys.Passkey.sign_count)))
    assert row == 1
    assert await sign_in(database, phone, step=5) == ada.id
    assert await database.run(lambda s: s.scalar(select(passkeys.Passkey.sign_count))) == 6


async def test_names_are_trimmed_limited_unique_and_given_when_blank(database):
    ada = await add_clinician(database, 'ada')
    assert (await register(database, ada.id, Authenticator())).name == 'Passkey 1'
    assert (await register(database, ada.id, Authenticator(), 'Laptop')).name == 'Laptop'
    assert (await register(database, ada.id, Authenticator(), ' ')).name == 'Passkey 3'
    with pytest.raises(InvalidInput, match='already have a passkey called "laptop"'):
        await register(database, ada.id, Authenticator(), 'laptop')
    with pytest.raises(InvalidInput, match='at most 80 characters'):
        await register(database, ada.id, Authenticator(), 'x' * 81)
    assert [p.name for p in await database.run(lambda s: passkeys.list_for(s, ada.id))] == [
        'Passkey 1',
        'Laptop',
        'Passkey 3',
    ]


async def test_a_registration_is_refused_for_another_address_challenge_or_without_verification(database):
    ada = await add_clinician(database, 'ada')
    with pytest.raises(InvalidInput, match=r'made for another address \(this page is at http://127.0.0.1:8080\)'):
        await register(database, ada.id, Authenticator(), origin='http://127.0.0.1:8080')
    with pytest.raises(InvalidInput, match=r'made for another address\. Passkeys here work at http://localhost:8080'):
        await register(database, ada.id, Authenticator(), rp_id='example.org')
    with pytest.raises(InvalidInput, match='did not check who you are'):
        await register(database, ada.id, Authenticator(), flags=UP | AT)

    options, _challenge = await database.run(lambda s: passkeys.registration_options(s, ada.id, RP))
    answer = Authenticator().create(options)
    with pytest.raises(InvalidInput, match='out of date'):
        await database.run(
            lambda s: passkeys.finish_registration(s, ada.id, answer, challenge=b'another' * 4, rp=RP, name='')
        )
    for nonsense in ('', 'not json', '[]', '{"response": 1}'):
        with pytest.raises(InvalidInput, match='not accepted'):
            await database.run(
                lambda s, n=nonsense: passkeys.finish_registration(s, ada.id, n, challenge=b'x' * 32, rp=RP, name='')
            )
    assert await database.run(lambda s: passkeys.list_for(s, ada.id)) == []
    assert await audit_rows(database) == []


async def test_the_same_credential_cannot_be_registered_twice(database):
    ada = await add_clinician(database, 'ada')
    bob = await add_clinician(database, 'bob')
    phone = Authenticator()
    await register(database, ada.id, phone)
    for whom in (ada.id, bob.id):
        with pytest.raises(InvalidInput, match='already registered'):
            await register(database, whom, Authenticator(key=phone.key, credential_id=phone.credential_id))
    assert await database.run(lambda s: passkeys.list_for(s, bob.id)) == []


# ------------------------------------------------------------------------------------------------- signing in


async def test_a_sign_in_is_refused_from_another_address_with_a_clear_message(database):
    ada = await add_clinician(database, 'ada')
    phone = Authenticator()
    await register(database, ada.id, phone)
    with pytest.raises(InvalidInput, match=r'made for another address .*Passkeys here work at http://localhost:8080'):
        await sign_in(database, phone, origin='http://127.0.0.1:8080')
    with pytest.raises(InvalidInput, match='made for another address'):
        await sign_in(database, phone, rp_id='example.org')


async def test_a_sign_in_is_refused_for_another_challenge_missing_verification_or_a_bad_signature(database):
    ada = await add_clinician(database, 'ada')
    phone = Authenticator()
    await register(database, ada.id, phone)
    assert await sign_in(database, phone, challenge=b64(b'an old challenge, replayed')) is None
    assert await sign_in(database, phone, flags=UP) is None  # present, not verified: one factor only
    impostor = Authenticator(credential_id=phone.credential_id, user_handle=phone.user_handle)
    assert await sign_in(database, impostor) is None  # the right id, another key
    for nonsense in ('', '{}', '{"id": "AAAA", "response": {}}', 'null'):
        assert (
            await database.run(lambda s, n=nonsense: passkeys.finish_authentication(s, n, challenge=b'x' * 32, rp=RP))
            is None
        )
    [listed] = await database.run(lambda s: passkeys.list_for(s, ada.id))
    assert listed.last_used_at is None
    assert await sign_in(database, phone) == ada.id  # and the real one still works


async def test_a_sign_count_that_does_not_go_up_is_refused(database):
    ada = await add_clinician(database, 'ada')
    phone = Authenticator()
    await register(database, ada.id, phone)
    assert await sign_in(database, phone, step=3) == ada.id
    clone = Authenticator(key=phone.key, credential_id=phone.credential_id, count=1, user_handle=phone.user_handle)
    assert await sign_in(database, clone) is None  # 2 after 3: a copy of the key somewhere
    assert await sign_in(database, phone) == ada.id


async def test_another_clinicians_removed_or_disabled_passkeys_are_refused(database):
    ada = await add_clinician(database, 'ada')
    bob = await add_clinician(database, 'bob')
    ada_phone, bob_phone = Authenticator(), Authenticator()
    await register(database, ada.id, ada_phone)
    bob_key = await register(database, bob.id, bob_phone)
    assert await sign_in(database, ada_phone, clinician_id=ada.id) == ada.id
    options, challenge = passkeys.authentication_options(RP, credential_ids=[b64(bob_phone.credential_id)])
    answer = bob_phone.get(options)  # bob's passkey, answering where ada's password was given
    refused = await database.run(
        lambda s: passkeys.finish_authentication(s, answer, challenge=challenge, rp=RP, clinician_id=ada.id)
    )
    assert refused is None
    assert await sign_in(database, bob_phone) == bob.id

    await database.run(
        lambda s: (s.execute(update(Clinician).where(Clinician.id == bob.id).values(disabled=True)), s.commit())
    )
    assert await sign_in(database, bob_phone) is None
    await database.run(
        lambda s: (s.execute(update(Clinician).where(Clinician.id == bob.id).values(disabled=False)), s.commit())
    )

    await database.run(lambda s: passkeys.remove(s, bob.id, bob_key.id, address='10.0.0.9'))
    assert await sign_in(database, bob_phone) is None
    assert await sign_in(database, ada_phone) == ada.id


async def test_a_user_handle_of_someone_else_is_refused(database):
    ada = await add_clinician(database, 'ada')
    phone = Authenticator()
    await register(database, ada.id, phone)
    phone.user_handle = passkeys.user_handle(ada.id + 1)
    assert await sign_in(database, phone) is None


# ------------------------------------------------------------------------------------------------- removing


async def test_list_and_remove_only_ones_own(database):
    ada = await add_clinician(database, 'ada')
    bob = await add_clinician(database, 'bob')
    mine = await register(database, ada.id, Authenticator(), 'Phone')
    theirs = await register(database, bob.id, Authenticator(), 'Key')
    assert [p.name for p in await database.run(lambda s: passkeys.list_for(s, ada.id))] == ['Phone']
    with pytest.raises(NotFound):
        await database.run(lambda s: passkeys.remove(s, ada.id, theirs.id))
    assert [p.name for p in await database.run(lambda s: passkeys.list_for(s, bob.id))] == ['Key']
    await database.run(lambda s: passkeys.remove(s, ada.id, mine.id, address='10.0.0.9'))
    with pytest.raises(NotFound):
        await database.run(lambda s: passkeys.remove(s, ada.id, mine.id))
    assert not await database.run(lambda s: passkeys.has_any(s, ada.id))
    assert await database.run(lambda s: passkeys.credential_ids(s, ada.id)) == []
    assert (audit.PASSKEY_REMOVED, 'ada', 'Phone') in await audit_rows(database)


async def test_remove_all_leaves_committing_and_auditing_to_the_caller(database):
    """What an administrator's reset of two-step sign-in uses: every passkey of one clinician, in the caller's
    unit of work (a rollback keeps them), no audit row of its own."""
    ada = await add_clinician(database, 'ada')
    bob = await add_clinician(database, 'bob')
    phone = Authenticator()
    await register(database, ada.id, phone)
    await register(database, ada.id, Authenticator())
    await register(database, bob.id, Authenticator())
    rows_before = await audit_rows(database)

    def rolled_back(session) -> int:
        removed = passkeys.remove_all(session, ada.id)
        session.rollback()
        return removed

    assert await database.run(rolled_back) == 2
    assert len(await database.run(lambda s: passkeys.list_for(s, ada.id))) == 2

    def committed(session) -> int:
        removed = passkeys.remove_all(session, ada.id)
        session.commit()
        return removed

    assert await database.run(committed) == 2
    assert await database.run(lambda s: passkeys.list_for(s, ada.id)) == []
    assert len(await database.run(lambda s: passkeys.list_for(s, bob.id))) == 1
    assert await sign_in(database, phone) is None
    assert await audit_rows(database) == rows_before
