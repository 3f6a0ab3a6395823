"""Database tables. Messages are append-only: nothing here is ever updated or deleted in place."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# Integer on SQLite so the primary key is the rowid alias (autoincrement); 64-bit elsewhere.
BigId = BigInteger().with_variant(Integer(), 'sqlite')


class UTCDateTime(TypeDecorator[datetime]):
    """Stores aware datetimes as UTC and always returns them aware, on SQLite too."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError('naive datetime given; Casebook stores UTC only')
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == 'sqlite' else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def utcnow() -> datetime:
    return datetime.now(UTC)


def storable(text: str) -> str:
    """Free text (from headers, URLs, filters) as both engines keep it: PostgreSQL's text types refuse NUL, so it
    becomes U+FFFD on SQLite too. Message text and names are validated instead, and NUL refused with a message."""
    return text.replace('\x00', '\ufffd')


class Base(DeclarativeBase):
    metadata = MetaData(
        naming_convention={
            'ix': 'ix_%(column_0_label)s',
            'uq': 'uq_%(table_name)s_%(column_0_name)s',
            'ck': 'ck_%(table_name)s_%(constraint_name)s',
            'fk': 'fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s',
            'pk': 'pk_%(table_name)s',
        }
    )


class Installation(Base):
    """One row once the first account exists; its primary key makes the first-run race safe."""

    __tablename__ = 'installation'

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    __table_args__ = (CheckConstraint('id = 1', name='single_row'),)


class Clinician(Base):
    __tablename__ = 'clinicians'

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    username: Mapped[str] = mapped_column(String(64), unique=True)
    display_name: Mapped[str] = mapped_column(String(100))
    role: Mapped[str] = mapped_column(String(16))
    password_hash: Mapped[str] = mapped_column(String(255))
    disabled: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    __table_args__ = (CheckConstraint("role IN ('doctor', 'nurse', 'admin')", name='role'),)


class Template(Base):
    """A clinician's own note template (a name and a text to start a note from); nobody else sees it.

    `name_key` is the name as compared (casebook.services.templates.name_key): unique per clinician, so two tabs
    saving "SOAP" and "soap" at once cannot both succeed."""

    __tablename__ = 'templates'

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    clinician_id: Mapped[int] = mapped_column(ForeignKey('clinicians.id'))
    name: Mapped[str] = mapped_column(String(80))  # templates.NAME_MAX
    name_key: Mapped[str] = mapped_column(Text)  # case-folding can make a name longer: no limit of its own
    text: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    __table_args__ = (UniqueConstraint('clinician_id', 'name_key', name='uq_templates_clinician_name_key'),)


class TwoStep(Base):
    """A clinician's authenticator app (two-step sign-in, casebook.services.two_step); no row: never set up.

    A table of its own rather than columns on clinicians: the clinicians row is read at every sign-in and listed
    on the Admin page, and it never holds a secret; a clinician without two-step sign-in has no row, turning it
    off deletes the row, and a backup names the table (so a file made before it still restores, with none).
    Secrets are Fernet tokens (encrypted with a key derived from CASEBOOK_SECRET_KEY or the storage secret).
    `secret` and `enabled_at` are set together: it is on exactly when both are."""

    __tablename__ = 'two_step'

    clinician_id: Mapped[int] = mapped_column(ForeignKey('clinicians.id'), primary_key=True, autoincrement=False)
    secret: Mapped[str | None] = mapped_column(String(255), nullable=True)  # the confirmed secret, encrypted
    pending_secret: Mapped[str | None] = mapped_column(String(255), nullable=True)  # set up, not yet confirmed
    enabled_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    last_step: Mapped[int | None] = mapped_column(Integer, nullable=True)  # the last accepted code's time step
    __table_args__ = (CheckConstraint('(secret IS NULL) = (enabled_at IS NULL)', name='on_with_secret'),)


class RecoveryCode(Base):
    """One of a clinician's one-time recovery codes, as its SHA-256 only; `used_at` once it has signed someone in."""

    __tablename__ = 'recovery_codes'

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    clinician_id: Mapped[int] = mapped_column(ForeignKey('clinicians.id'), index=True)
    code_hash: Mapped[str] = mapped_column(String(64))
    used_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class Passkey(Base):
    """One of a clinician's passkeys (WebAuthn, casebook.services.passkeys): the public key only, never a secret.

    `credential_id` and `public_key` are base64url text (so a backup carries them as any other text); the
    credential id is unique across clinicians, as the authenticator makes it. `sign_count` is the authenticator's
    counter (32 bits unsigned, hence 64 here), 0 for the many that keep none. `transports` is what the browser
    reported (`internal,hybrid`), a hint for later sign-ins; it may be empty."""

    __tablename__ = 'passkeys'

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    clinician_id: Mapped[int] = mapped_column(ForeignKey('clinicians.id'), index=True)
    credential_id: Mapped[str] = mapped_column(Text, unique=True)
    public_key: Mapped[str] = mapped_column(Text)
    sign_count: Mapped[int] = mapped_column(BigInteger, default=0)
    name: Mapped[str] = mapped_column(String(80))  # passkeys.NAME_MAX
    transports: Mapped[str] = mapped_column(String(200), default='')
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    __table_args__ = (UniqueConstraint('clinician_id', 'name', name='uq_passkeys_clinician_name'),)


class AuthSession(Base):
    """A server-side sign-in; browsers hold only the token, the database holds its SHA-256."""

    __tablename__ = 'auth_sessions'

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    clinician_id: Mapped[int] = mapped_column(ForeignKey('clinicians.id'), index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_seen_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    end_reason: Mapped[str | None] = mapped_column(String(32), nullable=True)
    user_agent: Mapped[str] = mapped_column(String(256), default='')
    address: Mapped[str] = mapped_column(String(64), default='')


class Conversation(Base):
    """One per clinician and patient: the clinician's private notes about that patient."""

    __tablename__ = 'conversations'

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    clinician_id: Mapped[int] = mapped_column(ForeignKey('clinicians.id'))
    patient_id: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_opened_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_message_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    __table_args__ = (
        UniqueConstraint('clinician_id', 'patient_id', name='uq_conversations_clinician_patient'),
        Index('ix_conversations_recent', 'clinician_id', 'last_opened_at'),
    )


class Message(Base):
    __tablename__ = 'messages'

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    conversation_id: Mapped[int] = mapped_column(ForeignKey('conversations.id'))
    client_id: Mapped[str] = mapped_column(String(36))
    author_id: Mapped[int] = mapped_column(ForeignKey('clinicians.id'))
    sender_role: Mapped[str] = mapped_column(String(16))
    text: Mapped[str] = mapped_column(Text)
    sent_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # a correction is a new message pointing at the one it corrects; the original stays as it was
    amends_id: Mapped[int | None] = mapped_column(BigId, ForeignKey('messages.id'), nullable=True)
    __table_args__ = (
        # a retried send carries the same client id, so it is stored once
        UniqueConstraint('conversation_id', 'client_id', name='uq_messages_conversation_client'),
        # keyset pagination: the latest page of a conversation, then the ones before it
        Index('ix_messages_conversation_id_id', 'conversation_id', 'id'),
        # "is this message corrected?" for every page shown
        Index('ix_messages_amends_id', 'amends_id'),
    )


class EnteredInError(Base):
    """Marks a message as entered in error: the message itself is kept unchanged and shown struck through."""

    __tablename__ = 'entered_in_error'

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    message_id: Mapped[int] = mapped_column(BigId, ForeignKey('messages.id'), unique=True)
    marked_by: Mapped[int] = mapped_column(ForeignKey('clinicians.id'))
    marked_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class AuditEvent(Base):
    """One line of the append-only audit trail: who did what, when, from where, to which patient.

    Never message text or passwords. The trail is CHAINS hash chains side by side (`chain`, chosen by who acted):
    each row carries a SHA-256 over its own content and the hash of the previous row of its chain, so a row
    changed, removed or inserted out of order breaks its chain (`casebook audit verify`). `seq` orders the whole
    trail (all chains) and is unique. The database refuses UPDATE and DELETE on this table (triggers, migration
    0004).
    """

    __tablename__ = 'audit_events'

    seq: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=False)  # increasing, over all chains
    at: Mapped[datetime] = mapped_column(UTCDateTime)
    action: Mapped[str] = mapped_column(String(40))
    actor_id: Mapped[int | None] = mapped_column(Integer, nullable=True)  # no foreign key: the trail outlives rows
    actor: Mapped[str] = mapped_column(String(64), default='')
    patient_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    address: Mapped[str] = mapped_column(String(64), default='')
    detail: Mapped[str] = mapped_column(String(200), default='')
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))
    chain: Mapped[int] = mapped_column(Integer, default=1, server_default='1')  # 1..CHAINS (migration 0011); last
    __table_args__ = (
        Index('ix_audit_events_at_seq', 'at', 'seq'),  # the merged trail's order: time, then seq
        Index('ix_audit_events_actor_id', 'actor_id'),
        Index('ix_audit_events_chain_seq', 'chain', 'seq'),  # one chain in order, for verify
    )


AUDIT_CHAINS = 16  # how many chains the trail has: one head row each (migration 0011 made them)


class AuditHead(Base):
    """One chain's newest row: how many rows it has (`seq`) and the newest row's hash, one row per chain (id 1 to
    AUDIT_CHAINS). Appending updates its chain's head first, which serialises that chain's writers (only
    theirs) and lets verify notice rows removed from the chain's end. `legacy`: the chain's rows with seq up
    to this were hashed in the form before migration 0011 (chain 1 only; 0 elsewhere)."""

    __tablename__ = 'audit_head'

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    seq: Mapped[int] = mapped_column(BigId, default=0)
    hash: Mapped[str] = mapped_column(String(64))
    legacy: Mapped[int] = mapped_column(BigId, default=0, server_default='0')
    __table_args__ = (CheckConstraint(f'id BETWEEN 1 AND {AUDIT_CHAINS}', name='chain_number'),)


class ActivityHour(Base):
    """How many audit rows of one action one hour (UTC) holds: the admin's 30-day chart reads these instead of
    counting the trail again on every page load. Derived data, filled by `audit.daily_counts` for hours that
    are over (the trail is append-only, so a finished hour's count never changes); rebuilt at will."""

    __tablename__ = 'activity_hours'

    hour: Mapped[datetime] = mapped_column(UTCDateTime, primary_key=True)  # the hour's start
    action: Mapped[str] = mapped_column(String(40), primary_key=True)
    count: Mapped[int] = mapped_column(Integer)


class ActivityRollup(Base):
    """Which hours activity_hours holds, in one row: all of [rolled_from, rolled_until), none when null."""

    __tablename__ = 'activity_rollup'

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    rolled_from: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    rolled_until: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    __table_args__ = (CheckConstraint('id = 1', name='single_row'),)
