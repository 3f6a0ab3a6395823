"""Passkeys, the data side: WebAuthn credentials a clinician registers on the Profile and signs in with.

A passkey is a discoverable credential made with user verification (a fingerprint, a face, the device's PIN), so
it is two factors at once: something held (the device) and something known or been. Signing in with one needs
neither username nor password. Only the public key is stored (base64url, like the credential id); the private key
never leaves the authenticator. The checks are py_webauthn's (`webauthn`): challenge, origin, relying party id,
user presence and verification, signature, and the sign count.

The relying party. WebAuthn ties a passkey to a host name (the relying party id) and accepts it only from a page
of that host. With CASEBOOK_PUBLIC_URL set, that is its host name, and its scheme://host[:port] is the origin the
browser must report. Unset, passkeys work at http://localhost:PORT only: an IP address such as 127.0.0.1 cannot be
a relying party id, and a host name other than `localhost` needs HTTPS (and CASEBOOK_PUBLIC_URL saying which one).
`relying_party` says so, as an InvalidInput message for the page, when the page was opened under another name.

The challenge of a ceremony is made here and kept by the caller on the server (a local of the page's handler);
it is never sent back by the browser and trusted. Each ceremony gets a new one.

Every function takes a plain Session and commits what it changes together with its audit row, like
casebook.services.two_step (`remove_all`, used inside an administrator's reset, is the exception: see there).
"""

from __future__ import annotations

import binascii
import hashlib
import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

import webauthn
from sqlalchemy import delete, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from webauthn.helpers import base64url_to_bytes, bytes_to_base64url, parse_attestation_object
from webauthn.helpers.exceptions import InvalidAuthenticationResponse, InvalidRegistrationResponse, WebAuthnException
from webauthn.helpers.structs import (
    AuthenticatorSelectionCriteria,
    AuthenticatorTransport,
    PublicKeyCredentialDescriptor,
    ResidentKeyRequirement,
    UserVerificationRequirement,
)

from casebook.models import Clinician, Passkey, utcnow
from casebook.services import audit
from casebook.services.errors import InvalidInput, NotFound

RP_NAME = 'Casebook'
NAME_MAX = 80  # characters of a passkey's name (models.Passkey.name)
TIMEOUT_MS = 120_000  # how long the browser's prompt stays open; the page waits as long
TRANSPORTS = frozenset(t.value for t in AuthenticatorTransport)
NOT_ACCEPTED = 'That passkey was not accepted.'
OUT_OF_DATE = 'That passkey request is out of date or was not for this page. Please try again.'


@dataclass(frozen=True)
class RelyingParty:
    """Whom passkeys are made for: `id` the host name (no scheme, no port), `origin` what the page must be opened at."""

    id: str
    origin: str
    name: str = RP_NAME


@dataclass(frozen=True)
class PasskeyInfo:
    id: int
    name: str
    created_at: datetime
    last_used_at: datetime | None


def relying_party(public_url: str | None, request_host: str) -> RelyingParty:
    """The relying party for a page requested with this Host header (`localhost:8080`).

    With `public_url` (CASEBOOK_PUBLIC_URL, already checked to be http(s)://host[:port]): its host name and origin,
    whatever the Host header says (behind a proxy it may be the proxy's). Unset: `localhost` and
    http://localhost:PORT, PORT from `request_host` (80 when it has none). Opened under another name (an IP
    address included, which can never be a relying party id), InvalidInput says where passkeys work."""
    if public_url:
        url = urlsplit(public_url)
        return RelyingParty(id=(url.hostname or '').lower(), origin=f'{url.scheme}://{url.netloc.lower()}')
    host = urlsplit(f'//{request_host or ""}')
    try:
        port = host.port or 80
    except ValueError:
        port = 80
    origin = f'http://localhost:{port}' if port != 80 else 'http://localhost'
    if (host.hostname or '').lower() != 'localhost':
        raise InvalidInput(
            f'Passkeys work only at {origin} here, or set CASEBOOK_PUBLIC_URL to the address clinicians open '
            '(a name, not an IP address, for example https://casebook.example.org).'
        )
    return RelyingParty(id='localhost', origin=origin)


def user_handle(clinician_id: int) -> bytes:
    """The WebAuthn user id of a clinician: stable (an authenticator keeps one passkey per user and site) and
    opaque (not the username: it is not shown, and it never changes when the username could)."""
    return b'casebook-clinician:' + str(clinician_id).encode('ascii')


# ------------------------------------------------------------------------------------------------- reading


def list_for(session: Session, clinician_id: int) -> list[PasskeyInfo]:
    """The clinician's passkeys, oldest first; reads only."""
    rows = session.execute(
        select(Passkey.id, Passkey.name, Passkey.created_at, Passkey.last_used_at)
        .where(Passkey.clinician_id == clinician_id)
        .order_by(Passkey.created_at, Passkey.id)
    ).all()
    return [PasskeyInfo(*row) for row in rows]


def credential_ids(session: Session, clinician_id: int) -> list[str]:
    """The credential ids (base64url) of the clinician's passkeys; reads only."""
    query = select(Passkey.credential_id).where(Passkey.clinician_id == clinician_id).order_by(Passkey.id)
    return list(session.scalars(query))


def has_any(session: Session, clinician_id: int) -> bool:
    """Whether the clinician has a passkey; reads only."""
    return session.scalar(select(func.count()).where(Passkey.clinician_id == clinician_id)) != 0


# ------------------------------------------------------------------------------------------------- registration


def registration_options(session: Session, clinician_id: int, rp: RelyingParty) -> tuple[str, bytes]:
    """The options for `navigator.credentials.create` (JSON) and their challenge, which the caller keeps on the
    server for `finish_registration`: a discoverable credential, user verification required, none of the
    clinician's existing passkeys again (an authenticator that holds one says so instead of making another)."""
    clinician = session.execute(
        select(Clinician.username, Clinician.display_name).where(Clinician.id == clinician_id)
    ).first()
    if clinician is None:
        raise InvalidInput('No such clinician.')
    rows = session.execute(
        select(Passkey.credential_id, Passkey.transports).where(Passkey.clinician_id == clinician_id)
    ).all()
    options = webauthn.generate_registration_options(
        rp_id=rp.id,
        rp_name=rp.name,
        user_id=user_handle(clinician_id),
        user_name=clinician.username,
        user_display_name=clinician.display_name,
        timeout=TIMEOUT_MS,
        authenticator_selection=AuthenticatorSelectionCriteria(
            resident_key=ResidentKeyRequirement.REQUIRED,
            require_resident_key=True,
            user_verification=UserVerificationRequirement.REQUIRED,
        ),
        exclude_credentials=[_descriptor(credential_id, transports) for credential_id, transports in rows],
    )
    session.rollback()
    return webauthn.options_to_json(options), options.challenge


def finish_registration(
    session: Session,
    clinician_id: int,
    credential_json: str,
    *,
    challenge: bytes,
    rp: RelyingParty,
    name: str,
    address: str = '',
) -> PasskeyInfo:
    """Keep the passkey the browser made from `registration_options`' options, once verified (challenge, origin,
    relying party id, user verification); commits, with a PASSKEY_ADDED audit row. `name` is trimmed, at most
    NAME_MAX characters, not one the clinician already uses; blank gives `Passkey N`. InvalidInput, nothing
    stored, otherwise."""
    chosen = name_for(session, clinician_id, name)
    credential = _parsed(credential_json)
    if credential is None:
        session.rollback()
        raise InvalidInput(NOT_ACCEPTED)
    _check_address(credential, rp, registering=True)
    try:
        verified = webauthn.verify_registration_response(credential=credential, **_expected(challenge, rp))
    except (InvalidRegistrationResponse, WebAuthnException, ValueError, KeyError, TypeError) as error:
        session.rollback()
        raise InvalidInput(_registration_refusal(str(error))) from None
    credential_id = bytes_to_base64url(verified.credential_id)
    taken = session.scalar(select(func.count()).where(Passkey.credential_id == credential_id))
    if taken:
        session.rollback()
        raise InvalidInput('That passkey is already registered.')
    row = Passkey(
        clinician_id=clinician_id,
        credential_id=credential_id,
        public_key=bytes_to_base64url(verified.credential_public_key),
        sign_count=verified.sign_count,
        name=chosen,
        transports=_transports(credential),
        created_at=utcnow(),
    )
    session.add(row)
    try:
        session.flush()
    except IntegrityError:  # the same credential, or the same name, stored by another tab a moment ago
        session.rollback()
        raise InvalidInput('That passkey, or a passkey of that name, is already registered.') from None
    _audited(session, audit.PASSKEY_ADDED, clinician_id, address, chosen)
    info = PasskeyInfo(row.id, row.name, row.created_at, None)
    session.commit()
    return info


def name_for(session: Session, clinician_id: int, raw: str) -> str:
    """The name a new passkey of the clinician's would get from `raw` (trimmed; blank: `Passkey N`), or
    InvalidInput saying why it cannot; reads only. Asked before the browser's prompt too, so that a name refused
    never leaves a passkey on the device that Casebook did not keep."""
    existing = {n.casefold() for n in session.scalars(select(Passkey.name).where(Passkey.clinician_id == clinician_id))}
    name = ' '.join((raw or '').split())
    if not name:
        number = len(existing) + 1
        while f'passkey {number}' in existing:
            number += 1
        return f'Passkey {number}'
    if len(name) > NAME_MAX:
        raise InvalidInput(f'Passkey name: at most {NAME_MAX} characters.')
    if name.casefold() in existing:
        raise InvalidInput(f'Passkey name: you already have a passkey called "{name}". Choose another name.')
    return name


def _registration_refusal(detail: str) -> str:
    if 'challenge' in detail:
        return OUT_OF_DATE
    if 'user verification' in detail.lower():
        return 'That passkey did not check who you are (a fingerprint, face or PIN). Please use one that does.'
    return 'That passkey could not be registered. Please try again.'


# ------------------------------------------------------------------------------------------------- sign-in


def authentication_options(rp: RelyingParty, *, credential_ids: list[str] | None = None) -> tuple[str, bytes]:
    """The options for `navigator.credentials.get` (JSON) and their challenge, which the caller keeps on the
    server for `finish_authentication`. Without `credential_ids` any passkey for this site may answer (the
    browser offers the ones it holds: sign-in without a username); with them, only those (the second step of a
    password sign-in). User verification required."""
    options = webauthn.generate_authentication_options(
        rp_id=rp.id,
        timeout=TIMEOUT_MS,
        allow_credentials=[_descriptor(c, '') for c in credential_ids] if credential_ids is not None else None,
        user_verification=UserVerificationRequirement.REQUIRED,
    )
    return webauthn.options_to_json(options), options.challenge


def finish_authentication(
    session: Session,
    credential_json: str,
    *,
    challenge: bytes,
    rp: RelyingParty,
    clinician_id: int | None = None,
) -> int | None:
    """The id of the clinician whose passkey answered `authentication_options`' challenge, or None when refused:
    an unknown (or removed) passkey, a bad signature, user verification missing, another challenge, a sign count
    that did not go up (a cloned authenticator), another clinician than `clinician_id` when given, or a disabled
    account. Accepted: its last use and sign count are kept; commits. Raises InvalidInput only when the answer
    came from a page at another address than `rp`'s (the page says where passkeys work)."""
    credential = _parsed(credential_json)
    if credential is None:
        return None
    _check_address(credential, rp, registering=False)
    found = session.execute(
        select(Passkey.id, Passkey.clinician_id, Passkey.public_key, Passkey.sign_count, Clinician.disabled)
        .join(Clinician, Clinician.id == Passkey.clinician_id)
        .where(Passkey.credential_id == _canonical_id(credential.get('id')))
    ).first()
    if found is None or found.disabled or (clinician_id is not None and found.clinician_id != clinician_id):
        session.rollback()
        return None
    handle = (credential.get('response') or {}).get('userHandle')
    if handle and _decoded(handle) != user_handle(found.clinician_id):
        session.rollback()
        return None
    try:
        verified = webauthn.verify_authentication_response(
            credential=credential,
            credential_public_key=base64url_to_bytes(found.public_key),
            credential_current_sign_count=found.sign_count,
            **_expected(challenge, rp),
        )
    except (InvalidAuthenticationResponse, WebAuthnException, ValueError, KeyError, TypeError):
        session.rollback()
        return None
    used = session.execute(
        update(Passkey)
        .where(Passkey.id == found.id, Passkey.sign_count == found.sign_count)
        .values(sign_count=verified.new_sign_count, last_used_at=utcnow())
        .execution_options(synchronize_session=False)
    ).rowcount
    if used != 1:  # removed, or used with a later count, a moment ago
        session.rollback()
        return None
    session.commit()
    return found.clinician_id


# ------------------------------------------------------------------------------------------------- removing


def remove(session: Session, clinician_id: int, passkey_id: int, *, address: str = '') -> None:
    """Remove one of the clinician's own passkeys; commits, with a PASSKEY_REMOVED audit row. NotFound when it is
    not theirs (or gone already)."""
    name = session.scalar(select(Passkey.name).where(Passkey.id == passkey_id, Passkey.clinician_id == clinician_id))
    gone = session.execute(
        delete(Passkey)
        .where(Passkey.id == passkey_id, Passkey.clinician_id == clinician_id)
        .execution_options(synchronize_session=False)
    ).rowcount
    if name is None or gone != 1:
        session.rollback()
        raise NotFound('That passkey is not there any more.')
    _audited(session, audit.PASSKEY_REMOVED, clinician_id, address, name)
    session.commit()


def remove_all(session: Session, clinician_id: int) -> int:
    """Remove every passkey of the clinician; how many. Neither commits nor audits: it is one part of an
    administrator's `two_step.reset`, which writes one audit row for all it removed and commits it all at once."""
    return session.execute(
        delete(Passkey).where(Passkey.clinician_id == clinician_id).execution_options(synchronize_session=False)
    ).rowcount


# ------------------------------------------------------------------------------------------------- helpers


def _expected(challenge: bytes, rp: RelyingParty) -> dict[str, Any]:
    """What py_webauthn checks an answer against, registering or signing in: user verification always."""
    return {
        'expected_challenge': challenge,
        'expected_rp_id': rp.id,
        'expected_origin': rp.origin,
        'require_user_verification': True,
    }


def _audited(session: Session, action: str, clinician_id: int, address: str, detail: str) -> None:
    """The audit row of a change to the clinician's passkeys, in the same unit of work."""
    username = session.scalar(select(Clinician.username).where(Clinician.id == clinician_id)) or ''
    audit.record_sync(session, audit.Entry(action, clinician_id, username, None, address, detail))


def _descriptor(credential_id: str, transports: str) -> PublicKeyCredentialDescriptor:
    known = [AuthenticatorTransport(t) for t in transports.split(',') if t in TRANSPORTS]
    return PublicKeyCredentialDescriptor(id=base64url_to_bytes(credential_id), transports=known or None)


def _parsed(credential_json: str) -> dict[str, Any] | None:
    """The browser's answer as a dict, or None when it is not one (the browser's value is never trusted)."""
    try:
        credential = json.loads(credential_json) if isinstance(credential_json, str) else None
    except ValueError:
        return None
    if not isinstance(credential, dict) or not isinstance(credential.get('response'), dict):
        return None
    return credential


def _decoded(value: object) -> bytes | None:
    if not isinstance(value, str):
        return None
    try:
        return base64url_to_bytes(value)
    except (binascii.Error, ValueError):
        return None


def _canonical_id(value: object) -> str:
    raw = _decoded(value)
    return bytes_to_base64url(raw) if raw else ''


def _transports(credential: dict[str, Any]) -> str:
    reported = credential['response'].get('transports')
    if not isinstance(reported, list):
        return ''
    return ','.join(sorted({t for t in reported if isinstance(t, str) and t in TRANSPORTS}))[:200]


def _check_address(credential: dict[str, Any], rp: RelyingParty, *, registering: bool) -> None:
    """InvalidInput when the answer came from a page at another address than `rp`'s, or was made for another
    relying party: the one refusal the clinician can do something about (open the right address)."""
    response = credential['response']
    client_data = _decoded(response.get('clientDataJSON'))
    try:
        origin = json.loads(client_data).get('origin') if client_data else None
    except (ValueError, AttributeError):
        origin = None
    if registering:
        attestation = _decoded(response.get('attestationObject')) or b''
        try:
            rp_id_hash = parse_attestation_object(attestation).auth_data.rp_id_hash
        except Exception:  # malformed: py_webauthn's own check refuses it next
            rp_id_hash = None
    else:
        auth_data = _decoded(response.get('authenticatorData')) or b''
        rp_id_hash = auth_data[:32] if len(auth_data) >= 32 else None
    wrong_origin = isinstance(origin, str) and origin != rp.origin
    wrong_rp = rp_id_hash is not None and rp_id_hash != hashlib.sha256(rp.id.encode()).digest()
    if wrong_origin or wrong_rp:
        where = f' (this page is at {origin[:100]})' if wrong_origin else ''
        raise InvalidInput(
            f'That passkey was made for another address{where}. Passkeys here work at {rp.origin}: open Casebook '
            'there, or ask whoever runs it to set CASEBOOK_PUBLIC_URL to the address you use.'
        )
