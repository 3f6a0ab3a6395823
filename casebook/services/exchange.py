"""Export a conversation (native JSON, FHIR R4, Markdown) and import the native JSON format.

Native JSON, `casebook.conversation.v1` (SPEC §3), as exported — one message per line::

    {"format": "casebook.conversation.v1", "patient_id": "PAT123", "messages": [
      {"id": "0b7c…", "sender": "doctor", "text": "Temp 39.4", "sent_at": "2026-11-24T09:00:00Z"},
      {"id": "5d2e…", "sender": "doctor", "text": "Temp 38.4", "sent_at": "2026-11-24T09:05:00.250000Z",
       "amends": "0b7c…"},
      {"id": "9a41…", "sender": "nurse", "text": "Wrong patient", "sent_at": "…", "entered_in_error": true}
    ]}

- `sender` ("doctor" or "nurse"), `text` (1–10,000 characters after trimming, no NUL) and `sent_at` (ISO 8601
  with a time zone; exported in UTC with `Z`, with microseconds only when there are any) are required.
- `id` (a UUID) is optional: it is the message's idempotency key, so importing a file twice stores each message
  once. A message without one gets a fresh UUID, so a second import of such a file stores it again.
- `amends` (optional) is the `id` of the message this one corrects: an earlier message of the file, or one
  already in the conversation.
- `entered_in_error` (optional) is `true` when the message is marked; `false` or absent when it is not.
No other fields are accepted. Errors name the first bad record, counting messages from 1.

Import reads the file twice, each time one message at a time: the first pass checks everything and writes
nothing; the second stores the messages in batches, in one transaction. The importing clinician becomes the
author; sender and sent_at are kept. Messages whose id is already in the conversation are skipped.

FHIR R4: a `collection` Bundle with one Patient (identifier system `urn:casebook:patient-id`), one Practitioner
(the clinician; identifier system `urn:casebook:username`, `name.text` the display name) and one Communication
per message, in order. A Communication's `fullUrl` is `urn:uuid:<message id>`; `status` is `completed`, or
`entered-in-error` where marked; `subject` and `sender` reference the Patient and Practitioner entries. A
correction names the message it corrects in `inResponseTo` (a reference to that Communication's fullUrl) and
says so in a `note`, because `inResponseTo` alone reads as a reply.

Markdown: a title with the patient id, then a numbered section per message (sender, author, UTC time) with its
text quoted line by line, HTML, links and entities escaped; corrections say which message they correct and the
corrected message says so; a message entered in error says so and its text is struck through.

Exports are async generators of text chunks that read the conversation in keyset pages, so a conversation of
any length is exported in constant memory.
"""

from __future__ import annotations

import asyncio
import codecs
import json
import os
import re
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import IO, Any, NamedTuple

from sqlalchemy import Select, insert, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import aliased

from casebook.models import Clinician, Conversation, EnteredInError, Message, utcnow
from casebook.services import search
from casebook.services.accounts import ClinicianInfo
from casebook.services.conversations import MESSAGE_MAX, SURROGATE, normalize_message, normalize_patient_id
from casebook.services.errors import InvalidInput, NotFound

FORMAT = 'casebook.conversation.v1'
SENDERS = ('doctor', 'nurse')
PATIENT_ID_SYSTEM = 'urn:casebook:patient-id'
USERNAME_SYSTEM = 'urn:casebook:username'
# media type and file name suffix of each export format
EXPORT_FORMATS = {
    'json': ('application/json', '.json'),
    'fhir': ('application/fhir+json', '.fhir.json'),
    'markdown': ('text/markdown; charset=utf-8', '.md'),
}
EXPORT_PAGE = 2_000  # messages per query while exporting
IMPORT_BATCH = 5_000  # messages per INSERT executemany while importing
READ_CHUNK = 1 << 20  # bytes read from the import file at a time
# the longest value read whole: a message of 10,000 characters takes at most 120,000 as JSON (escapes)
VALUE_MAX = 1 << 20
LOOKUP_CHUNK = 1_000  # ids per IN (...) query
# Patient and Practitioner fullUrls are derived from the patient id and username, so an export is repeatable
_FULL_URL_NAMESPACE = uuid.UUID('6f0c5d4e-8f43-4e39-9a35-0b2f4c1f7a11')

_MESSAGE_FIELDS = ('id', 'sender', 'text', 'sent_at', 'amends', 'entered_in_error')
_REQUIRED_FIELDS = ('sender', 'text', 'sent_at')
_TOP_FIELDS = ('format', 'patient_id', 'messages')
_WHITESPACE = re.compile(r'[ \t\n\r]*')
_CANONICAL_UUID = re.compile(r'[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}')
_DECODER = json.JSONDecoder()
_json_string = json.encoder.encode_basestring  # C-accelerated; keeps non-ASCII characters as they are

Progress = Callable[[str, int, int], None]
"""Told (phase, bytes read, file size) as an import goes; phase is 'checking', then 'importing'."""


@dataclass(frozen=True)
class ImportResult:
    patient_id: str
    conversation_id: int
    imported: int  # messages newly stored; those already present are not counted


# ---------------------------------------------------------------------------------------------------- times


def format_instant(moment: datetime) -> str:
    """UTC, ISO 8601 with `Z`; microseconds only when there are any, so a time survives a round trip exactly."""
    return moment.astimezone(UTC).isoformat()[:-6] + 'Z'


def _parse_sent_at(value: object) -> datetime:
    """An aware datetime in UTC from ISO 8601 text that states its time zone."""
    if not isinstance(value, str):
        raise ValueError('sent_at is not an ISO 8601 time with a time zone')
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError('sent_at is not an ISO 8601 time with a time zone') from None
    if moment.tzinfo is None:
        raise ValueError('sent_at has no time zone (add Z for UTC)')
    return moment.astimezone(UTC)


# ---------------------------------------------------------------------------------------------------- export


class _Row(NamedTuple):
    id: int
    client_id: str
    sender: str
    text: str
    sent_at: datetime
    amends_id: int | None
    amends: str | None  # the client id of the message this one corrects
    in_error: bool
    author: str


async def export_conversation(
    session: AsyncSession,
    *,
    clinician: ClinicianInfo,
    fmt: str,
    patient_id: str | None = None,
    conversation_id: int | None = None,
) -> AsyncIterator[str]:
    """The clinician's conversation (by patient id or conversation id) as text chunks in `fmt`.

    Access is checked here, before the first chunk: anyone else's conversation is NotFound.
    """
    if fmt not in EXPORT_FORMATS:
        raise InvalidInput(f'Export format: one of {", ".join(EXPORT_FORMATS)}.')
    conversation = await _own_conversation(session, clinician, patient_id, conversation_id)
    writer = {'json': _native_json, 'fhir': _fhir_bundle, 'markdown': _markdown}[fmt]
    return writer(session, conversation, clinician)


def export_filename(patient_id: str, fmt: str) -> str:
    """A file name for a download of this export."""
    return f'casebook-{normalize_patient_id(patient_id)}{EXPORT_FORMATS[fmt][1]}'


async def _own_conversation(
    session: AsyncSession, clinician: ClinicianInfo, patient_id: str | None, conversation_id: int | None
) -> Conversation:
    query = select(Conversation).where(Conversation.clinician_id == clinician.id)
    if conversation_id is not None:
        query = query.where(Conversation.id == conversation_id)
    elif patient_id is not None:
        patient_id = normalize_patient_id(patient_id)
        query = query.where(Conversation.patient_id == patient_id)
    else:
        raise ValueError('give a patient id or a conversation id')
    conversation = await session.scalar(query)
    if conversation is None:
        raise NotFound(f'No conversation about patient {patient_id}.' if patient_id else 'No such conversation.')
    return conversation


async def _pages(session: AsyncSession, conversation_id: int) -> AsyncIterator[list[_Row]]:
    """The conversation's messages, oldest first, EXPORT_PAGE at a time (keyset on the id, never OFFSET)."""
    amended = aliased(Message)
    query = (
        select(
            Message.id,
            Message.client_id,
            Message.sender_role,
            Message.text,
            Message.sent_at,
            Message.amends_id,
            amended.client_id,
            EnteredInError.id.is_not(None),
            Clinician.display_name,
        )
        .join(Clinician, Clinician.id == Message.author_id)
        .outerjoin(amended, amended.id == Message.amends_id)
        .outerjoin(EnteredInError, EnteredInError.message_id == Message.id)
        .where(Message.conversation_id == conversation_id)
        .order_by(Message.id)
        .limit(EXPORT_PAGE)
    )
    last_id = 0
    while True:
        rows = [_Row(*row) for row in await session.execute(query.where(Message.id > last_id))]
        if not rows:
            return
        yield rows
        last_id = rows[-1].id


async def _native_json(
    session: AsyncSession, conversation: Conversation, _clinician: ClinicianInfo
) -> AsyncIterator[str]:
    yield f'{{"format": "{FORMAT}", "patient_id": {_json_string(conversation.patient_id)}, "messages": ['
    first = True
    async for page in _pages(session, conversation.id):
        yield ('\n' if first else ',\n') + ',\n'.join(_native_record(row) for row in page)
        first = False
    yield ']}\n' if first else '\n]}\n'


def _native_record(row: _Row) -> str:
    record = (
        f'  {{"id": {_json_string(row.client_id)}, "sender": {_json_string(row.sender)}, '
        f'"text": {_json_string(row.text)}, "sent_at": "{format_instant(row.sent_at)}"'
    )
    if row.amends is not None:
        record += f', "amends": {_json_string(row.amends)}'
    if row.in_error:
        record += ', "entered_in_error": true'
    return record + '}'


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


async def _fhir_bundle(
    session: AsyncSession, conversation: Conversation, clinician: ClinicianInfo
) -> AsyncIterator[str]:
    patient_url = _full_url(f'patient:{conversation.patient_id}')
    practitioner_url = _full_url(f'practitioner:{clinician.username}')
    patient = {
        'resourceType': 'Patient',
        'identifier': [{'system': PATIENT_ID_SYSTEM, 'value': conversation.patient_id}],
    }
    practitioner = {
        'resourceType': 'Practitioner',
        'identifier': [{'system': USERNAME_SYSTEM, 'value': clinician.username}],
        'name': [{'text': clinician.display_name}],
    }
    yield (
        '{"resourceType": "Bundle", "type": "collection", "entry": [\n'
        f'  {_dumps({"fullUrl": patient_url, "resource": patient})},\n'
        f'  {_dumps({"fullUrl": practitioner_url, "resource": practitioner})}'
    )
    async for page in _pages(session, conversation.id):
        yield ''.join(f',\n  {_dumps(_communication(row, patient_url, practitioner_url))}' for row in page)
    yield '\n]}\n'


def _full_url(name: str) -> str:
    return f'urn:uuid:{uuid.uuid5(_FULL_URL_NAMESPACE, name)}'


def _communication(row: _Row, patient_url: str, practitioner_url: str) -> dict[str, Any]:
    url = f'urn:uuid:{row.client_id}'
    resource: dict[str, Any] = {
        'resourceType': 'Communication',
        'identifier': [{'system': 'urn:ietf:rfc:3986', 'value': url}],
    }
    if row.amends is not None:
        resource['inResponseTo'] = [{'reference': f'urn:uuid:{row.amends}'}]
    resource['status'] = 'entered-in-error' if row.in_error else 'completed'
    resource['subject'] = {'reference': patient_url}
    resource['sent'] = format_instant(row.sent_at)
    resource['sender'] = {'reference': practitioner_url}
    resource['payload'] = [{'contentString': row.text}]
    if row.amends is not None:
        resource['note'] = [{'text': 'Correction of the message in inResponseTo, which is kept unchanged.'}]
    return {'fullUrl': url, 'resource': resource}


async def _markdown(session: AsyncSession, conversation: Conversation, clinician: ClinicianInfo) -> AsyncIterator[str]:
    corrected = await _corrected_ids(session, conversation.id)
    numbers: dict[int, int] = {}  # message id -> its number in the transcript, kept only for corrected messages
    yield (
        f'# Patient {_md_inline(conversation.patient_id)}\n\n'
        f'Casebook conversation of {_md_inline(clinician.display_name)} ({_md_inline(clinician.username)}). '
        'Times are UTC. Each message is quoted as it was written.\n'
    )
    number = 0
    async for page in _pages(session, conversation.id):
        entries = []
        for row in page:
            number += 1
            if row.id in corrected:
                numbers[row.id] = number
            entries.append(_markdown_entry(number, row, row.id in corrected, numbers))
        yield ''.join(entries)


async def _corrected_ids(session: AsyncSession, conversation_id: int) -> set[int]:
    """Ids of the conversation's messages that a later message corrects (one pass; corrections are few)."""
    query = select(Message.amends_id).where(Message.conversation_id == conversation_id, Message.amends_id.is_not(None))
    return set(await session.scalars(query))


def _markdown_entry(number: int, row: _Row, corrected: bool, numbers: dict[int, int]) -> str:
    notes = []
    if row.amends_id is not None:
        notes.append(f'correction of #{numbers[row.amends_id]}' if row.amends_id in numbers else 'a correction')
    if corrected:
        notes.append('corrected by a later message')
    if row.in_error:
        notes.append('**entered in error**')
    heading = f'\n## #{number} · {row.sender.capitalize()} · {_md_inline(row.author)} · {_markdown_time(row.sent_at)}'
    lines = [_quote_line(line, row.in_error) for line in row.text.splitlines()]
    return heading + '\n\n' + ('_' + ', '.join(notes) + '_\n\n' if notes else '') + '\n'.join(lines) + '\n'


def _markdown_time(moment: datetime) -> str:
    return f'{moment.astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC'


# Inside a quote a message keeps its own line breaks and emphasis, but raw HTML, links, images and entities
# are shown as typed (nothing is fetched or run when the transcript is rendered); every line is prefixed with
# `>`, so no text can end the quote and break the layout.
_MD_TEXT = re.compile(r'[\\<\[]|&(?=#?[0-9A-Za-z]+;)')
_MD_INLINE = re.compile(r'[\\`*_\[\]<>~]|&(?=#?[0-9A-Za-z]+;)')
_ESCAPED_TILDE = '\\~'


def _quote_line(line: str, struck: bool) -> str:
    """One line of a message, quoted; struck through (GFM `~~`) when the message was entered in error."""
    if struck and line.strip():
        indent = line[: len(line) - len(line.lstrip())]
        return f'> {indent}~~{_md_text(line.strip()).replace("~", _ESCAPED_TILDE)}~~'
    return f'> {_md_text(line)}'.rstrip()  # trailing spaces would make a hard line break


def _md_text(text: str) -> str:
    return _MD_TEXT.sub(r'\\\g<0>', text)


def _md_inline(text: str) -> str:
    """Names in the title and headings: characters that could start emphasis, code, links or HTML escaped."""
    return _MD_INLINE.sub(r'\\\g<0>', text)


# ---------------------------------------------------------------------------------------------------- reading


class _Stream:
    """One JSON document read a value at a time from a binary file, so a huge file never sits in memory."""

    def __init__(self, source: IO[bytes], on_read: Callable[[int], None] | None = None) -> None:
        self._source = source
        self._on_read = on_read
        self._decoder = codecs.getincrementaldecoder('utf-8-sig')()
        self._buffer = ''
        self._pos = 0
        self._eof = False
        self._bytes_read = 0

    def _fill(self) -> bool:
        """Read the next chunk; False at the end of the file."""
        if self._eof:
            return False
        data = self._source.read(READ_CHUNK)
        self._eof = not data
        self._bytes_read += len(data)
        try:
            text = self._decoder.decode(data, final=self._eof)
        except UnicodeDecodeError:
            raise InvalidInput('The file is not UTF-8 text.') from None
        self._buffer = self._buffer[self._pos :] + text
        self._pos = 0
        if self._on_read is not None:
            self._on_read(self._bytes_read)
        return True

    def peek(self) -> str:
        """The next character that is not white space, not consumed; '' at the end."""
        while True:
            self._pos = _WHITESPACE.match(self._buffer, self._pos).end()  # type: ignore[union-attr]  # always matches
            if self._pos < len(self._buffer):
                return self._buffer[self._pos]
            if not self._fill():
                return ''

    def take(self, char: str) -> bool:
        """Consume `char` if it comes next."""
        if self.peek() == char:
            self._pos += 1
            return True
        return False

    def value(self, where: str) -> Any:
        """The next JSON value, whole; `where` names it in errors."""
        self.peek()
        while True:
            try:
                value, end = _DECODER.raw_decode(self._buffer, self._pos)
            except json.JSONDecodeError as error:
                if self._eof:
                    raise InvalidInput(f'{where}: malformed JSON ({error.msg})') from None
                if len(self._buffer) - self._pos > VALUE_MAX:  # memory stays bounded whatever the file holds
                    raise InvalidInput(f'{where}: malformed JSON, or longer than {VALUE_MAX:,} characters') from None
                self._fill()
                continue
            if end == len(self._buffer) and not self._eof and self._fill():
                continue  # a number or literal may go on in the next chunk
            self._pos = end
            return value


def _walk(stream: _Stream) -> Iterator[tuple[str, Any]]:
    """(field, value) for each top-level field in file order; for the list, ('messages', None), then
    ('message', value) for each message."""
    if stream.peek() == '':
        raise InvalidInput('The file is empty.')
    if not stream.take('{'):
        raise InvalidInput(f'Not a {FORMAT} file: it is not a JSON object.')
    seen: set[str] = set()
    closed = stream.take('}')
    while not closed:
        key = stream.value('The file')
        if not isinstance(key, str) or not stream.take(':'):
            raise InvalidInput('The file: malformed JSON (expecting a field name and ":").')
        if key not in _TOP_FIELDS or key in seen:
            raise InvalidInput(f'The file: unexpected top-level field {_dumps(key)[:80]}.')
        seen.add(key)
        if key == 'messages':
            yield 'messages', None
            yield from _messages(stream)
        else:
            yield key, stream.value(key)
        closed = stream.take('}')
        if not closed and not stream.take(','):
            raise InvalidInput('The file: malformed JSON (expecting "," or "}" after a top-level field).')
    if stream.peek() != '':
        raise InvalidInput('The file: unexpected data after the conversation.')


def _messages(stream: _Stream) -> Iterator[tuple[str, Any]]:
    if not stream.take('['):
        raise InvalidInput('The file: messages is not a list.')
    if stream.take(']'):
        return
    index = 0
    while True:
        index += 1
        yield 'message', stream.value(f'message {index}')
        if stream.take(']'):
            return
        if not stream.take(','):
            raise InvalidInput(f'message {index}: malformed JSON (expecting "," or "]" after it)')


class _Record(NamedTuple):
    client_id: str | None
    sender: str
    text: str
    sent_at: datetime
    amends: str | None
    in_error: bool


def _record(index: int, value: Any) -> _Record:
    """One message of the file, checked and normalised; InvalidInput naming it otherwise."""
    try:
        return _checked_record(value)
    except ValueError as error:
        raise InvalidInput(f'message {index}: {error}') from None


def _checked_record(value: Any) -> _Record:
    if not isinstance(value, dict):
        raise ValueError('not a JSON object')
    for name in value:
        if name not in _MESSAGE_FIELDS:
            raise ValueError(f'unexpected field {_dumps(name)[:80]}')
    for name in _REQUIRED_FIELDS:
        if name not in value:
            raise ValueError(f'{name} is missing')
    sender = value['sender']
    if sender not in SENDERS:
        raise ValueError('sender is not "doctor" or "nurse"')
    in_error = value.get('entered_in_error', False)
    if not isinstance(in_error, bool):
        raise ValueError('entered_in_error is not true or false')
    client_id = _uuid(value['id'], 'id') if 'id' in value else None
    amends = _uuid(value['amends'], 'amends') if 'amends' in value else None
    return _Record(client_id, sender, _text(value['text']), _parse_sent_at(value['sent_at']), amends, in_error)


def _new_id() -> str:
    """A random (version 4) UUID for a message the file gives no id, as str(uuid.uuid4()) would write it, in a
    quarter of its time (a million of those took 4 s of an import)."""
    digits = os.urandom(16).hex()
    variant = '89ab'[int(digits[16], 16) & 3]
    return f'{digits[:8]}-{digits[8:12]}-4{digits[13:16]}-{variant}{digits[17:20]}-{digits[20:]}'


def _uuid(value: Any, name: str) -> str:
    """The UUID in its canonical form; the common case is checked by a pattern, as uuid.UUID is slow."""
    if isinstance(value, str) and _CANONICAL_UUID.fullmatch(value):
        return value
    try:
        return str(uuid.UUID(value))
    except (ValueError, TypeError, AttributeError):
        raise ValueError(f'{name} is not a UUID') from None


def _text(value: Any) -> str:
    """The rules of conversations.normalize_message, worded for a file."""
    if not isinstance(value, str):
        raise ValueError('text is not a string')
    text = value.strip()
    if not text:
        raise ValueError('text is empty')
    if len(text) > MESSAGE_MAX:
        raise ValueError(f'text has {len(text):,} characters; the limit is {MESSAGE_MAX:,}')
    if '\x00' in text:
        raise ValueError('text contains a NUL character')
    if SURROGATE.search(text):
        raise ValueError('text contains an unpaired surrogate (\\ud800–\\udfff), which is not a character')
    return normalize_message(text)  # the web's own rules have the last word


# ---------------------------------------------------------------------------------------------------- checking


@dataclass
class _Check:
    """What the checking pass learns: the patient, the first error, and the ids later messages refer to."""

    patient_id: str | None = None
    has_format: bool = False
    has_messages: bool = False
    count: int = 0
    error: InvalidInput | None = None  # the first bad record; `outside` holds only references made before it
    seen: set[str] = field(default_factory=set)  # ids of the file's messages so far
    targets: set[str] = field(default_factory=set)  # ids that a later message of the file corrects
    outside: list[tuple[int, str]] = field(default_factory=list)  # (message, id) amending none before it in the file

    def top(self, name: str, value: Any) -> None:
        if name == 'format':
            if value != FORMAT:
                raise InvalidInput(f'Not a {FORMAT} file (its format is {_dumps(value)[:80]}).')
            self.has_format = True
        elif name == 'patient_id':
            if not isinstance(value, str):
                raise InvalidInput('Patient ID: the file gives no text.')
            self.patient_id = normalize_patient_id(value)
        else:
            self.has_messages = True

    def message(self, value: Any) -> None:
        """Check one message; only once all of it is good is anything about it remembered."""
        self.count += 1
        record = _record(self.count, value)
        if record.client_id in self.seen:
            raise InvalidInput(f'message {self.count}: id {record.client_id} is used by an earlier message')
        if record.amends is not None:
            if record.amends in self.seen:
                self.targets.add(record.amends)
            else:
                self.outside.append((self.count, record.amends))
        if record.client_id is not None:
            self.seen.add(record.client_id)

    def finish(self) -> None:
        for present, name in [(self.has_format, 'format'), (self.patient_id, 'patient_id')]:
            if not present:
                raise InvalidInput(f'Not a {FORMAT} file: it has no {name}.')
        if not self.has_messages:
            raise InvalidInput(f'Not a {FORMAT} file: it has no messages list.')


def _check_file(source: IO[bytes], progress: Progress | None, size: int) -> _Check:
    """The checking pass: reads the whole file, writes nothing, stops at the first bad record."""
    check = _Check()
    on_read = (lambda done: progress('checking', done, size)) if progress else None
    try:
        for name, value in _walk(_Stream(source, on_read)):
            if name == 'message':
                check.message(value)
            else:
                check.top(name, value)
        check.finish()
    except InvalidInput as error:
        check.error = error
    return check


async def _dangling(session: AsyncSession, conversation_id: int | None, refs: list[tuple[int, str]]) -> int | None:
    """The first message whose `amends` names no message of the conversation, if any."""
    for start in range(0, len(refs), LOOKUP_CHUNK):
        chunk = refs[start : start + LOOKUP_CHUNK]
        found = await _existing_ids(session, conversation_id, [ref for _, ref in chunk])
        for index, ref in chunk:
            if ref not in found:
                return index
    return None


async def _existing_ids(session: AsyncSession, conversation_id: int | None, client_ids: list[str]) -> dict[str, int]:
    """client id -> message id, for those of `client_ids` already in the conversation."""
    if conversation_id is None or not client_ids:
        return {}
    query = select(Message.client_id, Message.id).where(
        Message.conversation_id == conversation_id, Message.client_id.in_(client_ids)
    )
    return {client_id: message_id for client_id, message_id in await session.execute(query)}


# ---------------------------------------------------------------------------------------------------- importing


async def import_conversation(
    session: AsyncSession, *, clinician: ClinicianInfo, source: IO[bytes], progress: Progress | None = None
) -> ImportResult:
    """Import a native JSON file (open, binary, seekable) into the clinician's conversation about its patient.

    The whole file is checked first and nothing is written unless all of it is good; then every message is
    stored in one transaction, which this commits. Call it on a session with nothing pending.
    """
    size = source.seek(0, os.SEEK_END)
    source.seek(0)
    check = await asyncio.to_thread(_check_file, source, progress, size)
    if check.patient_id is None:  # without it, references to the conversation cannot be checked
        raise check.error or InvalidInput(f'Not a {FORMAT} file: it has no patient_id.')
    conversation = await session.scalar(_conversation_query(clinician, check.patient_id))
    conversation_id = conversation.id if conversation is not None else None
    if (index := await _dangling(session, conversation_id, check.outside)) is not None:
        raise InvalidInput(f'message {index}: amends names no earlier message of the file or the conversation')
    if check.error is not None:
        raise check.error
    await session.rollback()  # end the checking reads: the writing pass starts a transaction of its own
    source.seek(0)
    try:
        result = await _store(session, clinician, check, source, progress, size)
        await session.commit()
    except BaseException:
        await session.rollback()
        raise
    return result


def _conversation_query(clinician: ClinicianInfo, patient_id: str) -> Select[tuple[Conversation]]:
    return select(Conversation).where(Conversation.clinician_id == clinician.id, Conversation.patient_id == patient_id)


async def _store(
    session: AsyncSession,
    clinician: ClinicianInfo,
    check: _Check,
    source: IO[bytes],
    progress: Progress | None,
    size: int,
) -> ImportResult:
    """The writing pass: the conversation (started if new), then the messages in batches; the caller commits."""
    patient_id = check.patient_id or ''
    conversation = await session.scalar(_conversation_query(clinician, patient_id))
    if conversation is None:
        conversation = Conversation(clinician_id=clinician.id, patient_id=patient_id)
        session.add(conversation)
        await session.flush()
    # the file's ids are unique, so only a conversation with messages already can hold some of them
    has_messages = await session.scalar(select(Message.id).where(Message.conversation_id == conversation.id).limit(1))
    store = _Batches(session, clinician, conversation.id, check.targets, check_present=has_messages is not None)
    on_read = (lambda done: progress('importing', done, size)) if progress else None
    batches = _batches(_Stream(source, on_read), check.targets)
    if not store.check_present and check.count >= search.SETTLE_FROM:  # all of them new: many written at once
        await (await session.connection()).run_sync(search.prepare_bulk)
    async with _larger_page_cache(session):
        # parsed in a worker thread, so a server importing a file keeps answering between batches (parsing the
        # next batch while this one is written gains nothing: both need the GIL)
        while (batch := await asyncio.to_thread(next, batches, None)) is not None:
            await store.add(batch)
    if store.imported >= search.SETTLE_FROM:  # the index merged now, not by the sends that follow
        await (await session.connection()).run_sync(search.settle)
    if store.latest is not None and (conversation.last_message_at or store.latest) <= store.latest:
        conversation.last_message_at = store.latest
    return ImportResult(patient_id, conversation.id, store.imported)


@asynccontextmanager
async def _larger_page_cache(session: AsyncSession) -> AsyncIterator[None]:
    """On SQLite, a 64 MB page cache for the import, then the connection's own again: the unique index on
    message ids is written in random order, and this makes a big import about a sixth faster."""
    connection = await session.connection()
    if connection.dialect.name != 'sqlite':
        yield
        return
    own = (await connection.exec_driver_sql('PRAGMA cache_size')).scalar()
    await connection.exec_driver_sql('PRAGMA cache_size=-65536')
    try:
        yield
    finally:
        with suppress(SQLAlchemyError):  # the connection may be what failed; the import's error matters more
            await connection.exec_driver_sql(f'PRAGMA cache_size={int(own or -2000)}')


def _batches(stream: _Stream, targets: set[str]) -> Iterator[list[_Record]]:
    """The file's messages, each with an id, in batches; a batch ends before a message that corrects one of its
    own, because the row id of the corrected message is known only once it is stored."""
    batch: list[_Record] = []
    in_batch: set[str] = set()
    index = 0
    for name, value in _walk(stream):
        if name != 'message':
            continue
        index += 1
        record = _record(index, value)
        if record.client_id is None:
            record = record._replace(client_id=_new_id())
        if len(batch) >= IMPORT_BATCH or record.amends in in_batch:
            yield batch
            batch, in_batch = [], set()
        batch.append(record)
        if record.client_id in targets:
            in_batch.add(record.client_id)
    if batch:
        yield batch


_COLUMNS = ('conversation_id', 'client_id', 'author_id', 'sender_role', 'text', 'sent_at', 'amends_id')
_SQLITE_INSERT = (
    'INSERT INTO messages (conversation_id, client_id, author_id, sender_role, text, sent_at, amends_id) '
    'VALUES (?, ?, ?, ?, ?, ?, ?)'
)


def _sqlite_time(moment: datetime) -> str:
    """A UTC time as SQLAlchemy's SQLite DATETIME stores it (and models.UTCDateTime reads it back)."""
    return moment.replace(tzinfo=None).isoformat(' ', 'microseconds')


class _Batches:
    """Stores batches of checked messages into one conversation, turning corrections and marks into row ids."""

    def __init__(
        self,
        session: AsyncSession,
        clinician: ClinicianInfo,
        conversation_id: int,
        targets: set[str],
        *,
        check_present: bool,
    ) -> None:
        self.session = session
        self.sqlite = session.get_bind().dialect.name == 'sqlite'
        self.check_present = check_present
        self.clinician = clinician
        self.conversation_id = conversation_id
        self.targets = targets
        self.row_ids: dict[str, int] = {}  # client id -> row id, of messages that are corrected or marked
        self.imported = 0
        self.latest: datetime | None = None

    async def add(self, batch: list[_Record]) -> None:
        new = batch
        if self.check_present:  # a re-import skips what it has
            present = await _existing_ids(self.session, self.conversation_id, [str(r.client_id) for r in batch])
            new = [record for record in batch if record.client_id not in present]
        await self._resolve([r.amends for r in new if r.amends is not None])
        if new:
            await self._insert([self._row(record) for record in new])
            self.imported += len(new)
            newest = max(record.sent_at for record in new)
            self.latest = newest if self.latest is None else max(self.latest, newest)
        marked = [str(r.client_id) for r in batch if r.in_error]
        await self._resolve([str(r.client_id) for r in batch if r.client_id in self.targets] + marked)
        await self._mark([self.row_ids[client_id] for client_id in marked])

    def _row(self, record: _Record) -> tuple[Any, ...]:
        """The values of _COLUMNS; on SQLite ready for the driver as they are (see _insert)."""
        amends_id = None
        if record.amends is not None:
            amends_id = self.row_ids.get(record.amends)
            if amends_id is None:  # checked in the first pass: the file changed in between
                raise InvalidInput('The file changed while it was being imported; nothing was imported.')
        sent_at = _sqlite_time(record.sent_at) if self.sqlite else record.sent_at
        return self.conversation_id, record.client_id, self.clinician.id, record.sender, record.text, sent_at, amends_id

    async def _insert(self, rows: list[tuple[Any, ...]]) -> None:
        """Store the rows and index them for search, in the import's transaction."""
        connection = await self.session.connection()
        clinician_id, conversation_id = self.clinician.id, self.conversation_id
        if self.sqlite:
            # SQLite has one writer, and this import is it: the new rows get the ids after the highest one.
            highest = (await connection.exec_driver_sql('SELECT max(id) FROM messages')).scalar() or 0
            # Straight to the driver: SQLAlchemy's bind processing, row by row, is a third of a big import's time.
            await connection.exec_driver_sql(_SQLITE_INSERT, rows)
            if (await connection.exec_driver_sql('SELECT max(id) FROM messages')).scalar() == highest + len(rows):
                ids = range(highest + 1, highest + 1 + len(rows))  # in the order given, as SQLite numbers rows
                found = [(m, clinician_id, conversation_id, row[4]) for m, row in zip(ids, rows, strict=True)]
            else:  # not numbered one after the other (cannot happen with rowids): read them back
                stored = await connection.exec_driver_sql(
                    'SELECT id, text FROM messages WHERE id > ? ORDER BY id', (highest,)
                )
                found = [(message_id, clinician_id, conversation_id, body) for message_id, body in stored]
        else:
            table = Message.__table__
            ids = await connection.execute(
                insert(table).returning(table.c.id, sort_by_parameter_order=True),
                [dict(zip(_COLUMNS, row, strict=True)) for row in rows],
            )
            texts = [row[4] for row in rows]
            found = [
                (message_id, clinician_id, conversation_id, body)
                for message_id, body in zip(ids.scalars(), texts, strict=True)
            ]
        await connection.run_sync(lambda sync: search.index_rows(sync, found))

    async def _resolve(self, client_ids: list[str]) -> None:
        """Learn the row ids of these messages of the conversation."""
        wanted = [client_id for client_id in client_ids if client_id not in self.row_ids]
        for start in range(0, len(wanted), LOOKUP_CHUNK):
            chunk = wanted[start : start + LOOKUP_CHUNK]
            self.row_ids.update(await _existing_ids(self.session, self.conversation_id, chunk))

    async def _mark(self, message_ids: list[int]) -> None:
        """Mark these messages entered in error, unless they are already (a re-import changes nothing)."""
        if not message_ids:
            return
        query = select(EnteredInError.message_id).where(EnteredInError.message_id.in_(message_ids))
        done = set(await self.session.scalars(query))
        now = utcnow()
        rows = [
            {'message_id': i, 'marked_by': self.clinician.id, 'marked_at': now} for i in message_ids if i not in done
        ]
        if rows:
            await self.session.execute(insert(EnteredInError.__table__), rows)
