"""Patients' conversations: opening one, the recent list, reading pages of messages, appending one."""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

from casebook.models import Clinician, Conversation, EnteredInError, Message, utcnow
from casebook.services import audit, search
from casebook.services.accounts import ClinicianInfo
from casebook.services.errors import InvalidInput, NotFound

PATIENT_ID_PATTERN = re.compile(r'[A-Za-z0-9._-]{1,64}')
MESSAGE_MAX = 10_000
PAGE_SIZE = 50


@dataclass(frozen=True)
class ConversationInfo:
    id: int
    patient_id: str
    last_opened_at: datetime
    last_message_at: datetime | None


@dataclass(frozen=True)
class MessageInfo:
    id: int
    conversation_id: int
    client_id: str
    author_name: str
    sender_role: str
    text: str
    sent_at: datetime
    amends_id: int | None = None  # this message corrects that one
    entered_in_error: bool = False
    corrected: bool = False  # a later message corrects this one


def status_label(message: Any, *, corrected_as: str = 'Corrected below') -> str:
    """What is shown beside a message about its status (`Correction · Entered in error`), from its `amends_id`,
    `corrected` and `entered_in_error`; `corrected_as` says where the correction is, seen from where it is shown."""
    notes = []
    if message.amends_id is not None:
        notes.append('Correction')
    if message.corrected:
        notes.append(corrected_as)
    if message.entered_in_error:
        notes.append('Entered in error')
    return ' · '.join(notes)


def normalize_patient_id(raw: str) -> str:
    """Trimmed; 1–64 letters, digits, `.`, `_` or `-`; anything else is refused with the reason."""
    patient_id = (raw or '').strip()
    if not patient_id:
        raise InvalidInput('Patient ID: please enter one.')
    if len(patient_id) > 64:
        raise InvalidInput(f'Patient ID: at most 64 characters (this one has {len(patient_id)}).')
    if not PATIENT_ID_PATTERN.fullmatch(patient_id):
        raise InvalidInput('Patient ID: only letters, digits, ".", "_" and "-" are allowed.')
    return patient_id


# an unpaired surrogate (no character; PostgreSQL and UTF-8 refuse it): a pattern, not a loop over characters,
# as an import checks millions; also exchange's and templates' check
SURROGATE = re.compile(r'[\ud800-\udfff]')


def normalize_message(raw: str) -> str:
    """Surrounding whitespace trimmed; refused when empty, over the limit, or holding NUL characters."""
    text = (raw or '').strip()
    if not text:
        raise InvalidInput('The message is empty.')
    if len(text) > MESSAGE_MAX:
        raise InvalidInput(
            f'The message has {len(text):,} characters; the limit is {MESSAGE_MAX:,}. Your text is still in the box.'
        )
    if SURROGATE.search(text):
        raise InvalidInput(
            'The message contains a broken character (an unpaired surrogate). Your text is still in the box.'
        )
    if '\x00' in text:
        raise InvalidInput(
            'The message contains a NUL character, which cannot be stored. Your text is still in the box.'
        )
    return text


def _check_client_id(client_id: str) -> str:
    try:
        return str(uuid.UUID(client_id))
    except (ValueError, TypeError, AttributeError) as error:
        raise InvalidInput('The message carries a malformed id.') from error


def _conversation_info(conversation: Conversation) -> ConversationInfo:
    return ConversationInfo(
        conversation.id, conversation.patient_id, conversation.last_opened_at, conversation.last_message_at
    )


async def find_conversation(
    session: AsyncSession, *, clinician: ClinicianInfo, patient_id: str
) -> ConversationInfo | None:
    """The clinician's conversation about this patient, if there is one; reads only."""
    patient_id = normalize_patient_id(patient_id)
    conversation = await session.scalar(
        select(Conversation).where(Conversation.clinician_id == clinician.id, Conversation.patient_id == patient_id)
    )
    return _conversation_info(conversation) if conversation is not None else None


async def mark_opened(
    session: AsyncSession, *, clinician: ClinicianInfo, conversation_id: int, address: str = ''
) -> None:
    """Move a conversation to the top of the clinician's recent patients (and note the opening in the audit)."""
    await session.run_sync(
        lambda sync: mark_opened_sync(sync, clinician=clinician, conversation_id=conversation_id, address=address)
    )


def mark_opened_sync(session: Session, *, clinician: ClinicianInfo, conversation_id: int, address: str = '') -> None:
    """`mark_opened` for a plain Session (a unit of work run by `Database.run`)."""
    patient_id = session.scalar(
        update(Conversation)
        .where(Conversation.id == conversation_id, Conversation.clinician_id == clinician.id)
        .values(last_opened_at=utcnow())
        .returning(Conversation.patient_id)
    )
    if patient_id is not None:
        entry = audit.Entry(audit.PATIENT_OPENED, clinician.id, clinician.username, patient_id, address)
        audit.record_sync(session, entry)
    session.commit()


async def open_conversation(session: AsyncSession, *, clinician: ClinicianInfo, patient_id: str) -> ConversationInfo:
    """The clinician's conversation about this patient, started if new, and marked as just opened."""
    return await session.run_sync(lambda sync: open_conversation_sync(sync, clinician=clinician, patient_id=patient_id))


def open_conversation_sync(session: Session, *, clinician: ClinicianInfo, patient_id: str) -> ConversationInfo:
    """`open_conversation` for a plain Session (a unit of work run by `Database.run`): its write transaction
    never waits on the event loop between statements."""
    patient_id = normalize_patient_id(patient_id)
    query = select(Conversation).where(Conversation.clinician_id == clinician.id, Conversation.patient_id == patient_id)
    conversation = session.scalar(query)
    if conversation is None:
        conversation = Conversation(clinician_id=clinician.id, patient_id=patient_id)
        session.add(conversation)
        try:
            session.commit()
        except IntegrityError:  # opened in another tab at the same moment
            session.rollback()
            conversation = session.scalar(query)
            if conversation is None:
                raise
    conversation.last_opened_at = utcnow()
    session.commit()
    return _conversation_info(conversation)


async def recent_conversations(
    session: AsyncSession, *, clinician: ClinicianInfo, limit: int = 10
) -> list[ConversationInfo]:
    """The clinician's most recently opened patients, newest first."""
    rows = await session.scalars(
        select(Conversation)
        .where(Conversation.clinician_id == clinician.id)
        .order_by(Conversation.last_opened_at.desc(), Conversation.id.desc())
        .limit(limit)
    )
    return [_conversation_info(row) for row in rows]


async def _owned(session: AsyncSession, clinician: ClinicianInfo, conversation_id: int) -> Conversation:
    conversation = await session.get(Conversation, conversation_id)
    if conversation is None or conversation.clinician_id != clinician.id:
        raise NotFound('No such conversation.')
    return conversation


def _message_query():
    return select(Message, Clinician.display_name).join(Clinician, Clinician.id == Message.author_id)


def _message_info(message: Message, author_name: str) -> MessageInfo:
    return MessageInfo(
        message.id,
        message.conversation_id,
        message.client_id,
        author_name,
        message.sender_role,
        message.text,
        message.sent_at,
        message.amends_id,
    )


async def _with_status(session: AsyncSession, messages: list[MessageInfo]) -> list[MessageInfo]:
    """Fill in entered-in-error and corrected, for one page of messages (two indexed lookups)."""
    if not messages:
        return messages
    ids = [m.id for m in messages]
    marked = set(await session.scalars(select(EnteredInError.message_id).where(EnteredInError.message_id.in_(ids))))
    corrected = set(await session.scalars(select(Message.amends_id).where(Message.amends_id.in_(ids))))
    return [replace(m, entered_in_error=m.id in marked, corrected=m.id in corrected) for m in messages]


async def latest_messages(
    session: AsyncSession,
    *,
    clinician: ClinicianInfo,
    conversation_id: int,
    before_id: int | None = None,
    limit: int = PAGE_SIZE,
) -> list[MessageInfo]:
    """Up to `limit` messages before `before_id` (or the newest), oldest first; keyset, never OFFSET."""
    await _owned(session, clinician, conversation_id)
    query = _message_query().where(Message.conversation_id == conversation_id)
    if before_id is not None:
        query = query.where(Message.id < before_id)
    rows = (await session.execute(query.order_by(Message.id.desc()).limit(limit))).all()
    return await _with_status(session, [_message_info(message, name) for message, name in reversed(rows)])


async def messages_after(
    session: AsyncSession, *, clinician: ClinicianInfo, conversation_id: int, after_id: int, limit: int = PAGE_SIZE
) -> list[MessageInfo]:
    """Up to `limit` messages after `after_id`, oldest first."""
    await _owned(session, clinician, conversation_id)
    query = _message_query().where(Message.conversation_id == conversation_id, Message.id > after_id)
    rows = (await session.execute(query.order_by(Message.id).limit(limit))).all()
    return await _with_status(session, [_message_info(message, name) for message, name in rows])


@dataclass(frozen=True)
class Around:
    """A page of a conversation around one message, oldest first, and what lies beyond either end."""

    messages: list[MessageInfo]
    at_beginning: bool  # nothing older
    has_newer: bool  # newer messages exist beyond the page


async def messages_around(
    session: AsyncSession, *, clinician: ClinicianInfo, conversation_id: int, message_id: int, limit: int = PAGE_SIZE
) -> Around:
    """About `limit` messages around `message_id` (which is among them, when it is in the conversation): the
    half before it and the half after, keyset on the id both ways, whatever the conversation's length."""
    half = max(1, limit // 2)
    older = await latest_messages(
        session, clinician=clinician, conversation_id=conversation_id, before_id=message_id + 1, limit=half + 1
    )
    newer = await messages_after(
        session, clinician=clinician, conversation_id=conversation_id, after_id=message_id, limit=half + 1
    )
    return Around(older + newer[:half], at_beginning=len(older) <= half, has_newer=len(newer) > half)


async def get_messages(
    session: AsyncSession, *, clinician: ClinicianInfo, conversation_id: int, ids: list[int]
) -> list[MessageInfo]:
    """These messages of the conversation (others are silently left out), oldest first."""
    await _owned(session, clinician, conversation_id)
    query = _message_query().where(Message.conversation_id == conversation_id, Message.id.in_(ids[:PAGE_SIZE]))
    rows = (await session.execute(query.order_by(Message.id))).all()
    return await _with_status(session, [_message_info(message, name) for message, name in rows])


async def post_message(
    session: AsyncSession,
    *,
    clinician: ClinicianInfo,
    conversation_id: int,
    client_id: str,
    text: str,
    amends_id: int | None = None,
    patient_id: str | None = None,
    address: str = '',
) -> tuple[MessageInfo, bool]:
    """Append a message (a correction when `amends_id` is given); a retry with the same client id returns
    the stored one. True when newly stored."""
    return await session.run_sync(
        lambda sync: post_message_sync(
            sync,
            clinician=clinician,
            conversation_id=conversation_id,
            client_id=client_id,
            text=text,
            amends_id=amends_id,
            patient_id=patient_id,
            address=address,
        )
    )


def post_message_sync(
    session: Session,
    *,
    clinician: ClinicianInfo,
    conversation_id: int,
    client_id: str,
    text: str,
    amends_id: int | None = None,
    patient_id: str | None = None,
    address: str = '',
) -> tuple[MessageInfo, bool]:
    """`post_message` for a plain Session (a unit of work run by `Database.run`).

    A few prepared statements and one commit, whatever the conversation's length (the path every send takes);
    the audit row (which message, never its text) is committed with the message.
    """
    text = normalize_message(text)
    client_id = _check_client_id(client_id)
    if amends_id is not None:
        original = session.get(Message, amends_id)
        if original is None or original.conversation_id != conversation_id:
            conversation = session.get(Conversation, conversation_id)  # "no such conversation" comes first
            if conversation is None or conversation.clinician_id != clinician.id:
                raise NotFound('No such conversation.')
            raise NotFound('No such message.')
        if original.author_id != clinician.id:
            raise InvalidInput('Only the author of a message can correct it.')
    now = utcnow()
    connection = session.connection()
    owned = connection.execute(
        _TOUCH_CONVERSATION, {'conversation': conversation_id, 'owner': clinician.id, 'now': now}
    )
    if owned.rowcount != 1:
        raise NotFound('No such conversation.')
    values = {
        'conversation_id': conversation_id,
        'client_id': client_id,
        'author_id': clinician.id,
        'sender_role': clinician.sender_role,
        'text': text,
        'sent_at': now,
        'amends_id': amends_id,
    }
    new_id = connection.execute(_insert_message(connection.dialect.name), values).scalar()
    if new_id is None:  # this send was stored before (double click, reconnect, retry): keep the first
        session.rollback()
        row = session.execute(
            _message_query().where(Message.conversation_id == conversation_id, Message.client_id == client_id)
        ).first()
        if row is None:  # cannot happen while messages are never deleted
            raise NotFound('No such message.')
        return _message_info(*row), False
    search.index_message(connection, new_id, clinician.id, conversation_id, text)  # findable once acknowledged
    action, detail = (
        (audit.MESSAGE_WRITTEN, f'message {new_id}')
        if amends_id is None
        else (
            audit.CORRECTION,
            f'message {new_id} corrects message {amends_id}',
        )
    )
    audit.record_sync(
        session,
        audit.Entry(action, clinician.id, clinician.username, patient_id, address, detail),
    )
    session.commit()
    author, role = clinician.display_name, clinician.sender_role
    return MessageInfo(new_id, conversation_id, client_id, author, role, text, now, amends_id), True


_CONVERSATIONS, _MESSAGES = Conversation.__table__, Message.__table__
# Built once: a send runs these, and building a statement costs more than running it.
_TOUCH_CONVERSATION = (
    update(_CONVERSATIONS)
    .where(_CONVERSATIONS.c.id == bindparam('conversation'), _CONVERSATIONS.c.clinician_id == bindparam('owner'))
    .values(last_message_at=bindparam('now'))
)
_INSERT_MESSAGE = {
    # INSERT … ON CONFLICT DO NOTHING is spelled the same on SQLite and PostgreSQL, but lives in each dialect
    name: dialect.insert(_MESSAGES)
    .on_conflict_do_nothing(index_elements=['conversation_id', 'client_id'])
    .returning(_MESSAGES.c.id)
    for name, dialect in (('sqlite', sqlite), ('postgresql', postgresql))
}


def _insert_message(dialect_name: str):
    return _INSERT_MESSAGE['postgresql' if dialect_name == 'postgresql' else 'sqlite']


def mark_entered_in_error_sync(
    session: Session, *, clinician: ClinicianInfo, conversation_id: int, message_id: int, address: str = ''
) -> None:
    """One unit of work: mark a message as entered in error (kept, shown struck through), with its audit row;
    marking twice changes nothing."""
    conversation = session.get(Conversation, conversation_id)
    if conversation is None or conversation.clinician_id != clinician.id:
        raise NotFound('No such conversation.')
    message = session.get(Message, message_id)
    if message is None or message.conversation_id != conversation_id:
        raise NotFound('No such message.')
    if message.author_id != clinician.id:
        raise InvalidInput('Only the author of a message can mark it as entered in error.')
    if session.scalar(select(EnteredInError.id).where(EnteredInError.message_id == message_id)) is not None:
        return
    session.add(EnteredInError(message_id=message_id, marked_by=clinician.id))
    entry = audit.Entry(
        audit.ENTERED_IN_ERROR,
        clinician.id,
        clinician.username,
        conversation.patient_id,
        address,
        f'message {message_id}',
    )
    audit.record_sync(session, entry)
    try:
        session.commit()
    except IntegrityError:  # marked in another tab at the same moment
        session.rollback()


async def mark_entered_in_error(
    session: AsyncSession, *, clinician: ClinicianInfo, conversation_id: int, message_id: int, address: str = ''
) -> MessageInfo:
    """`mark_entered_in_error_sync`, then the message as it is now."""
    await session.run_sync(
        lambda sync: mark_entered_in_error_sync(
            sync, clinician=clinician, conversation_id=conversation_id, message_id=message_id, address=address
        )
    )
    (marked,) = await get_messages(session, clinician=clinician, conversation_id=conversation_id, ids=[message_id])
    return marked
