"""Two-step sign-in, the data side: an authenticator app (TOTP, RFC 6238) and one-time recovery codes.

Set-up is two calls: `begin_setup` makes a secret and keeps it, encrypted, as pending (a reload of the page does
not lose it, and the confirmation never trusts a secret sent back by the browser); `confirm_setup` switches it on
only for a current code from that secret, and hands out ten recovery codes, in clear this once.

At sign-in `verify` takes either a 6-digit code (this time step or one either side; never a step at or before
the last one accepted, so a code signs in once) or a recovery code (each once). Whatever was wrong, the refusal
reads the same (REFUSED): the caller counts it towards the password throttle and shows it as it is.

Secrets are stored as Fernet tokens under a key derived by HKDF-SHA256 from CASEBOOK_SECRET_KEY, or from the
storage secret when that is not set (`key_of`). They are never logged, never exported, and in a backup only
encrypted: a restore under another key cannot read them (`undecryptable` names who must set up again), while the
recovery codes, being hashes, still work there.

Recovery codes are ten characters from a 31-character alphabet without look-alikes (about 49.5 bits each),
stored as plain SHA-256: unlike a password they are random, so there is no dictionary to try and a slow hash
buys nothing worth its cost; guessing online meets the sign-in throttle first, and a code is worth nothing
without the password.

Every function takes the clinician's id and a plain Session, and commits what it changes together with its
audit row, like the other services' *_sync functions.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Literal

import pyotp
import segno
from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session

from casebook.models import Clinician, Passkey, RecoveryCode, TwoStep, utcnow
from casebook.services import audit
from casebook.services.errors import InvalidInput

if TYPE_CHECKING:
    from casebook.config import Settings

ISSUER = 'Casebook'  # what the authenticator app lists the account under
KEY_INFO = b'casebook two-step secrets v1'  # HKDF's info: a key for this use only, whatever else uses the material
STEP_SECONDS = 30  # RFC 6238's time step, what every authenticator app uses
DIGITS = 6
DRIFT_STEPS = 1  # a code of the step before or after is accepted too (a phone's clock, the time to type it)
RECOVERY_CODES = 10  # per set
RECOVERY_ALPHABET = 'abcdefghjkmnpqrstuvwxyz23456789'  # no i, l, o, 0, 1: nothing to confuse when typed from paper
RECOVERY_LENGTH = 10  # characters, shown as two groups of five: `abcde-fghjk`
REFUSED = 'That code is not right. Check it and try again.'  # one wording, whatever was wrong

Kind = Literal['code', 'recovery-code']


@dataclass(frozen=True)
class Setup:
    """A secret being set up: shown to the clinician (as a QR code, and as text to type by hand) until confirmed."""

    secret: str  # base32, what goes under `Secret key`
    uri: str  # otpauth://totp/Casebook:USERNAME?secret=…&issuer=Casebook, what the QR code holds

    def qr_svg(self) -> str:
        """The provisioning URI as an SVG QR code, for the Profile page."""
        return segno.make(self.uri, error='m').svg_inline(scale=4, border=2)

    def qr_data_uri(self) -> str:
        """The same QR code as a data: URI, for an <img> (markup the page never has to trust)."""
        return segno.make(self.uri, error='m').svg_data_uri(scale=5, border=2, dark='#000', light='#fff')


@dataclass(frozen=True)
class Verification:
    """What `verify` found: `kind` says which was used when accepted; `message` is REFUSED when not."""

    kind: Kind | None
    recovery_codes_left: int | None = None  # after a recovery code was used: how many unused ones remain

    @property
    def accepted(self) -> bool:
        return self.kind is not None

    @property
    def message(self) -> str:
        return '' if self.accepted else REFUSED


# ------------------------------------------------------------------------------------------------- keys


def derive_key(material: str) -> bytes:
    """A Fernet key (32 bytes, base64) from any secret text, by HKDF-SHA256 with this use's own `info`."""
    derived = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=KEY_INFO).derive(material.encode())
    return base64.urlsafe_b64encode(derived)


def key_of(settings: Settings) -> bytes:
    """The key for this installation: from CASEBOOK_SECRET_KEY when set, else from the storage secret."""
    material = settings.secret_key.get_secret_value() if settings.secret_key is not None else settings.secret
    return derive_key(material)


def _encrypt(key: bytes, secret: str) -> str:
    return Fernet(key).encrypt(secret.encode('ascii')).decode('ascii')


def _decrypt(key: bytes, token: str | None) -> str | None:
    """The secret, or None when there is none or this key cannot read it (made under another key)."""
    if token is None:
        return None
    try:
        return Fernet(key).decrypt(token.encode('ascii')).decode('ascii')
    except (InvalidToken, ValueError):
        return None


# ------------------------------------------------------------------------------------------------- codes


def _step(at: datetime | None) -> int:
    return int((at or utcnow()).timestamp()) // STEP_SECONDS


def _matching_step(secret: str, code: str, step: int) -> int | None:
    """The time step within DRIFT_STEPS of `step` whose code this is (the latest, should two match), or None.
    Every candidate is compared, in constant time."""
    totp = pyotp.TOTP(secret, digits=DIGITS, interval=STEP_SECONDS)
    found = None
    for candidate in range(step - DRIFT_STEPS, step + DRIFT_STEPS + 1):
        if hmac.compare_digest(totp.generate_otp(candidate), code):
            found = candidate
    return found


def _six_digits(raw: str) -> str | None:
    """The code as typed, spaces and dashes left out (`123 456`), when that is six digits."""
    code = ''.join((raw or '').split()).replace('-', '')
    return code if len(code) == DIGITS and code.isascii() and code.isdigit() else None


def normalize_recovery_code(raw: str) -> str | None:
    """A recovery code as stored, whatever its case, spaces or dashes (`ABCDE FGHJK`, `abcde-fghjk`); None when
    what is left cannot be one."""
    code = ''.join((raw or '').split()).replace('-', '').lower()
    if len(code) != RECOVERY_LENGTH or not set(code) <= set(RECOVERY_ALPHABET):
        return None
    return code


def _new_recovery_code() -> str:
    code = ''.join(secrets.choice(RECOVERY_ALPHABET) for _ in range(RECOVERY_LENGTH))
    return f'{code[:5]}-{code[5:]}'


def _hash(normalized: str) -> str:
    return hashlib.sha256(normalized.encode('ascii')).hexdigest()


# ------------------------------------------------------------------------------------------------- rows


def _row(session: Session, clinician_id: int, *, lock: bool = False) -> TwoStep | None:
    query = select(TwoStep).where(TwoStep.clinician_id == clinician_id)
    return session.scalar(query.with_for_update() if lock else query)


def _username(session: Session, clinician_id: int) -> str:
    username = session.scalar(select(Clinician.username).where(Clinician.id == clinician_id))
    if username is None:
        raise InvalidInput('No such clinician.')
    return username


def _record(session: Session, action: str, clinician_id: int, username: str, address: str, detail: str = '') -> None:
    audit.record_sync(session, audit.Entry(action, clinician_id, username, None, address, detail))


def _replace_recovery_codes(session: Session, clinician_id: int) -> list[str]:
    """A new set for the clinician in place of any old one; returned in clear, stored as hashes."""
    session.execute(delete(RecoveryCode).where(RecoveryCode.clinician_id == clinician_id))
    codes = [_new_recovery_code() for _ in range(RECOVERY_CODES)]
    session.add_all(
        RecoveryCode(clinician_id=clinician_id, code_hash=_hash(normalize_recovery_code(code) or '')) for code in codes
    )
    return codes


# ------------------------------------------------------------------------------------------------- set-up


@dataclass(frozen=True)
class Factors:
    """The second steps a clinician has: the authenticator app, and how many passkeys."""

    app: bool
    passkeys: int

    @property
    def any(self) -> bool:
        return self.app or self.passkeys > 0


def factors(session: Session, clinician_id: int) -> Factors:
    """What a password sign-in of the clinician must be followed by; reads only."""
    return Factors(is_on(session, clinician_id), _count_passkeys(session, clinician_id))


def _count_passkeys(session: Session, clinician_id: int) -> int:
    return session.scalar(select(func.count()).where(Passkey.clinician_id == clinician_id)) or 0


def is_on(session: Session, clinician_id: int) -> bool:
    """Whether the clinician signs in with a second step; reads only."""
    return session.scalar(select(TwoStep.enabled_at).where(TwoStep.clinician_id == clinician_id)) is not None


def begin_setup(session: Session, clinician_id: int, *, key: bytes) -> Setup:
    """A new secret for the clinician, kept encrypted as pending until `confirm_setup`; commits. Nothing is switched
    on. Starting again replaces the pending secret (a QR code scanned before no longer confirms). Refused while
    two-step sign-in is on: it is turned off first (with the password and a current code, by the caller)."""
    username = _username(session, clinician_id)
    row = _row(session, clinician_id, lock=True)
    if row is not None and row.enabled_at is not None:
        session.rollback()
        raise InvalidInput('Two-step sign-in is already on. Turn it off first to set up another app.')
    secret = pyotp.random_base32()
    if row is None:
        row = TwoStep(clinician_id=clinician_id)
        session.add(row)
    row.pending_secret = _encrypt(key, secret)
    session.commit()
    uri = pyotp.TOTP(secret, digits=DIGITS, interval=STEP_SECONDS).provisioning_uri(name=username, issuer_name=ISSUER)
    return Setup(secret, uri)


def confirm_setup(
    session: Session, clinician_id: int, code: str, *, key: bytes, at: datetime | None = None, address: str = ''
) -> list[str]:
    """Switch two-step sign-in on when `code` is current for the pending secret (one step either side accepted);
    commits, with its audit row. Returns the ten recovery codes, in clear this once (only their hashes are kept).
    The confirming code counts as used: it cannot sign in afterwards. InvalidInput, nothing changed, otherwise."""
    username = _username(session, clinician_id)
    row = _row(session, clinician_id, lock=True)
    if row is not None and row.enabled_at is not None:
        session.rollback()
        raise InvalidInput('Two-step sign-in is already on.')
    secret = _decrypt(key, row.pending_secret) if row is not None else None
    if row is None or secret is None:
        session.rollback()
        raise InvalidInput('Two-step sign-in: no set-up is under way. Please start it again.')
    digits = _six_digits(code)
    if digits is None:
        session.rollback()
        raise InvalidInput('Code: the 6 digits your authenticator app shows for Casebook.')
    step = _matching_step(secret, digits, _step(at))
    if step is None:
        session.rollback()
        raise InvalidInput(
            'Code: that is not the current code for this set-up. Check that the app shows Casebook and that '
            "the phone's clock is right, then try the new code."
        )
    row.secret, row.pending_secret, row.enabled_at, row.last_step = row.pending_secret, None, at or utcnow(), step
    codes = _replace_recovery_codes(session, clinician_id)
    _record(session, audit.TWO_STEP_ON, clinician_id, username, address, 'authenticator app')
    session.commit()
    return codes


def turn_off(
    session: Session, clinician_id: int, *, address: str = '', by: tuple[int | None, str] | None = None
) -> bool:
    """Turn two-step sign-in off: the secret (pending too) and every recovery code are deleted; commits, with an
    audit row when it was on. `by` (id, name) is someone else doing it; None, the clinician themselves. Checking the
    password and a current code first is the caller's part. Returns whether it was on."""
    username = _username(session, clinician_id)
    was_on = _switch_off(session, clinician_id)
    if was_on:
        if by is None:
            _record(session, audit.TWO_STEP_OFF, clinician_id, username, address, 'own')
        else:
            _record(session, audit.TWO_STEP_OFF, by[0], by[1], address, f'reset for {username}')
    session.commit()
    return was_on


def _switch_off(session: Session, clinician_id: int) -> bool:
    """Delete the clinician's secret and recovery codes (no commit); whether it was on."""
    row = _row(session, clinician_id, lock=True)
    was_on = row is not None and row.enabled_at is not None
    session.execute(delete(RecoveryCode).where(RecoveryCode.clinician_id == clinician_id))
    if row is not None:
        session.delete(row)
    return was_on


@dataclass(frozen=True)
class Reset:
    """What `reset` took away: the app (it was on), how many passkeys, and which sessions ended."""

    clinician_id: int
    username: str
    app: bool
    passkeys: int
    ended: frozenset[str]

    def summary(self) -> str:
        parts = ['authenticator app off' if self.app else 'no authenticator app']
        parts.append(f'{self.passkeys} passkey{"s" if self.passkeys != 1 else ""} removed')
        parts.append(f'{len(self.ended)} session{"s" if len(self.ended) != 1 else ""} ended')
        return ', '.join(parts)


def reset(session: Session, clinician_id: int, *, by: tuple[int | None, str], address: str = '') -> Reset:
    """An administrator's (or the command line's) `Reset two-step sign-in`: the clinician's app, recovery codes
    and passkeys are removed and every session of theirs ends, in one unit of work with one audit row by `by`;
    commits. They sign in with their password next time (and, when two-step sign-in is required, set it up
    again before anything else). Announcing the ended sessions to open tabs is the caller's part."""
    from casebook.services import sessions

    username = _username(session, clinician_id)
    app = _switch_off(session, clinician_id)
    removed = _remove_passkeys(session, clinician_id)
    audit_entry = audit.Entry(audit.RESET_TWO_STEP, by[0], by[1], None, address, username)
    audit.record_sync(session, audit_entry)  # before the logoffs it causes: the trail reads in order
    ended = sessions.end_all_sync(session, clinician_id=clinician_id, reason='two-step-reset', address=address)
    session.commit()
    return Reset(clinician_id, username, app, removed, ended)


def _remove_passkeys(session: Session, clinician_id: int) -> int:
    """The clinician's passkeys removed (no commit); how many."""
    from casebook.services import passkeys  # py_webauthn is loaded only where passkeys are used

    return passkeys.remove_all(session, clinician_id)


def new_recovery_codes(session: Session, clinician_id: int, *, address: str = '') -> list[str]:
    """A new set of ten recovery codes in place of the old (unused ones of which stop working); commits, with its
    audit row. Returned in clear this once. Refused when two-step sign-in is off."""
    username = _username(session, clinician_id)
    row = _row(session, clinician_id, lock=True)
    if row is None or row.enabled_at is None:
        session.rollback()
        raise InvalidInput('Recovery codes: turn two-step sign-in on first.')
    codes = _replace_recovery_codes(session, clinician_id)
    _record(session, audit.RECOVERY_CODES_NEW, clinician_id, username, address, f'{RECOVERY_CODES} codes')
    session.commit()
    return codes


def recovery_codes_left(session: Session, clinician_id: int) -> int:
    """How many of the clinician's recovery codes are still unused; reads only."""
    query = select(func.count()).where(RecoveryCode.clinician_id == clinician_id, RecoveryCode.used_at.is_(None))
    return session.scalar(query) or 0


# ------------------------------------------------------------------------------------------------- sign-in


def verify(
    session: Session, clinician_id: int, code: str, *, key: bytes, at: datetime | None = None, address: str = ''
) -> Verification:
    """The second step of a sign-in: a 6-digit code from the app, or else a recovery code. Accepted once each: the
    time step is recorded, a recovery code marked used (and audited), both by a conditional UPDATE, so two tabs
    sending the same code at once cannot both succeed. Commits what it accepts; refuses (kind None) with the one
    wording REFUSED whatever was wrong, two-step sign-in being off included."""
    row = _row(session, clinician_id)
    if row is None or row.enabled_at is None:
        session.rollback()
        return Verification(None)
    digits = _six_digits(code)
    if digits is not None:
        return _verify_code(session, row, digits, key=key, at=at)
    recovery = normalize_recovery_code(code)
    if recovery is not None:
        return _use_recovery_code(session, clinician_id, recovery, at=at, address=address)
    session.rollback()
    return Verification(None)


def _verify_code(session: Session, row: TwoStep, digits: str, *, key: bytes, at: datetime | None) -> Verification:
    clinician_id = row.clinician_id
    secret = _decrypt(key, row.secret)  # None after a restore under another key: only recovery codes work then
    step = _matching_step(secret, digits, _step(at)) if secret is not None else None
    if step is None:
        session.rollback()
        return Verification(None)
    taken = session.execute(
        update(TwoStep)
        .where(
            TwoStep.clinician_id == clinician_id,
            TwoStep.enabled_at.is_not(None),
            (TwoStep.last_step.is_(None)) | (TwoStep.last_step < step),
        )
        .values(last_step=step)
        .execution_options(synchronize_session=False)
    ).rowcount
    if taken != 1:  # this code (or a later one) was accepted already
        session.rollback()
        return Verification(None)
    session.commit()
    return Verification('code')


def _use_recovery_code(
    session: Session, clinician_id: int, normalized: str, *, at: datetime | None, address: str
) -> Verification:
    wanted = _hash(normalized)
    unused = session.execute(
        select(RecoveryCode.id, RecoveryCode.code_hash).where(
            RecoveryCode.clinician_id == clinician_id, RecoveryCode.used_at.is_(None)
        )
    ).all()
    found = None
    for code_id, code_hash in unused:  # every one compared, in constant time
        if hmac.compare_digest(code_hash, wanted):
            found = code_id
    if found is None:
        session.rollback()
        return Verification(None)
    used = session.execute(
        update(RecoveryCode)
        .where(RecoveryCode.id == found, RecoveryCode.used_at.is_(None))
        .values(used_at=at or utcnow())
        .execution_options(synchronize_session=False)
    ).rowcount
    if used != 1:  # used by another tab a moment ago
        session.rollback()
        return Verification(None)
    left = recovery_codes_left(session, clinician_id)
    _record(session, audit.RECOVERY_CODE_USED, clinician_id, _username(session, clinician_id), address, f'{left} left')
    session.commit()
    return Verification('recovery-code', left)


# ------------------------------------------------------------------------------------------------- restore


def undecryptable(session: Session, key: bytes) -> list[str]:
    """The usernames (sorted) whose two-step sign-in secret `key` cannot read: after a restore under another key,
    they must set it up again (until then a recovery code, or an admin's reset, lets them in); reads only."""
    rows = session.execute(
        select(Clinician.username, TwoStep.secret)
        .join(TwoStep, TwoStep.clinician_id == Clinician.id)
        .where(TwoStep.secret.is_not(None))
    ).all()
    return sorted(username for username, token in rows if _decrypt(key, token) is None)
