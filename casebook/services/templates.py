"""A clinician's own note templates (a name and a text, e.g. "SOAP" -> "S: \\nO: \\nA: \\nP: ").

Each belongs to one clinician, like everything in the notebook: every function takes the signed-in clinician's
id, and a template of someone else's is "No such template." exactly like one that does not exist.

A name is trimmed and compared without regard to case (`name_key`); the database holds the key under a unique
constraint per clinician, so a duplicate is refused even when two tabs save it at the same moment.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass

from sqlalchemy import delete, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from casebook.models import Clinician, Template, utcnow
from casebook.services.conversations import MESSAGE_MAX, SURROGATE
from casebook.services.errors import InvalidInput, NotFound

NAME_MAX = 80  # characters in a template's name
TEMPLATES_MAX = 50  # templates per clinician
TEXT_MAX = MESSAGE_MAX  # a template's text becomes a message: the same limit


@dataclass(frozen=True)
class TemplateInfo:
    id: int
    name: str
    text: str


def normalize_name(raw: str) -> str:
    """Surrounding whitespace trimmed; refused when empty, longer than NAME_MAX, or holding control characters
    (tabs, line breaks, NUL and the like, U+2028/U+2029 too) or a broken character (an unpaired surrogate).
    Invisible formatting characters (right-to-left marks, the joiners inside emoji) are kept."""
    name = (raw or '').strip()
    if not name:
        raise InvalidInput('Template name: please enter one.')
    if len(name) > NAME_MAX:
        raise InvalidInput(f'Template name: at most {NAME_MAX} characters (this one has {len(name)}).')
    if SURROGATE.search(name):
        raise InvalidInput('Template name: it contains a broken character (an unpaired surrogate).')
    if any(unicodedata.category(ch) in {'Cc', 'Zl', 'Zp'} for ch in name):
        raise InvalidInput('Template name: line breaks, tabs and other control characters are not allowed.')
    return name


def name_key(name: str) -> str:
    """What two names are compared by: the same letters whatever their case or Unicode composition
    ("SOAP", "soap" and "Soap" are one name; "é" typed as one character or as e + accent too)."""
    return unicodedata.normalize('NFC', name).casefold()


def normalize_text(raw: str) -> str:
    """The text as it is stored and inserted, exactly but for its ends.

    Line breaks are made `\\n` (`\\r\\n` and a lone `\\r` too). Then only whole blank lines at the very start
    and the very end are removed: a blank line holds nothing but whitespace. Everything else is kept as typed:
    line breaks between lines, blank lines between them, indentation, and trailing spaces on every line, the
    last included (so "S: \\nO: \\nA: \\nP: " is stored as it is, the space after "P:" too). A text holding no
    more than whitespace is empty.

    Refused, as a message is (conversations.normalize_message): empty, more than MESSAGE_MAX characters (counted
    after the trimming above), a NUL character, or an unpaired surrogate. Any other character is stored as is.
    """
    text = (raw or '').replace('\r\n', '\n').replace('\r', '\n')
    if not text.strip():
        raise InvalidInput("The template's text is empty.")
    first = text.rfind('\n', 0, len(text) - len(text.lstrip())) + 1  # where the first line not blank begins
    last = text.find('\n', len(text.rstrip()))  # the line break after the last line not blank
    text = text[first : last if last != -1 else len(text)]
    if len(text) > TEXT_MAX:
        raise InvalidInput(f"The template's text has {len(text):,} characters; the limit is {TEXT_MAX:,}.")
    if SURROGATE.search(text):
        raise InvalidInput("The template's text contains a broken character (an unpaired surrogate).")
    if '\x00' in text:
        raise InvalidInput("The template's text contains a NUL character, which cannot be stored.")
    return text


def _info(template: Template) -> TemplateInfo:
    return TemplateInfo(template.id, template.name, template.text)


def _sort_key(template: TemplateInfo) -> tuple[str, int]:
    return name_key(template.name), template.id


def list_sync(session: Session, *, clinician_id: int) -> list[TemplateInfo]:
    """The clinician's templates, by name whatever its case, then id (sorted here, not by the database's
    collation, so both engines give the same order); reads only."""
    rows = session.scalars(select(Template).where(Template.clinician_id == clinician_id))
    return sorted(map(_info, rows), key=_sort_key)


def save_sync(
    session: Session, *, clinician_id: int, name: str, text: str, template_id: int | None = None
) -> TemplateInfo:
    """Add a template (`template_id` None) or change one of the clinician's; commits. Raises InvalidInput (its
    message fit to show) for a name or text refused by normalize_name or normalize_text, a name the clinician
    already uses (whatever its case; a template keeps its own), or an add beyond TEMPLATES_MAX; NotFound when
    `template_id` is not one of this clinician's templates."""
    name, text = normalize_name(name), normalize_text(text)
    key = name_key(name)
    duplicate = InvalidInput(f'Template name: you already have a template called "{name}".')
    # PostgreSQL: one save at a time per clinician, so the count below is exact (NO KEY UPDATE: sends, whose rows
    # refer to the clinician, do not wait for it). SQLite has one writer at a time anyway, from the insert on.
    session.execute(select(Clinician.id).where(Clinician.id == clinician_id).with_for_update(key_share=True))
    if template_id is not None:
        template = session.scalar(
            select(Template).where(Template.id == template_id, Template.clinician_id == clinician_id)
        )
        if template is None:
            session.rollback()
            raise NotFound('No such template.')
    if _name_taken(session, clinician_id, key, template_id):
        session.rollback()
        raise duplicate
    now = utcnow()
    if template_id is None:
        template = Template(clinician_id=clinician_id, created_at=now)
        session.add(template)
    template.name, template.name_key, template.text, template.updated_at = name, key, text, now
    try:
        session.flush()  # a name saved by another tab since the check above: the unique constraint refuses it
    except IntegrityError as error:
        session.rollback()
        raise duplicate from error
    if template_id is None:
        held = session.scalar(select(func.count()).where(Template.clinician_id == clinician_id)) or 0
        if held > TEMPLATES_MAX:
            session.rollback()
            raise InvalidInput(f'You have {TEMPLATES_MAX} templates, as many as one can keep: delete one first.')
    session.commit()
    return _info(template)


def _name_taken(session: Session, clinician_id: int, key: str, template_id: int | None) -> bool:
    """Whether another of the clinician's templates has this name (the unique constraint is the last word)."""
    query = select(Template.id).where(Template.clinician_id == clinician_id, Template.name_key == key)
    if template_id is not None:
        query = query.where(Template.id != template_id)
    return session.scalar(query.limit(1)) is not None


def delete_sync(session: Session, *, clinician_id: int, template_id: int) -> None:
    """Delete one of the clinician's templates; commits. NotFound when it is not theirs (or gone already)."""
    deleted = session.execute(
        delete(Template).where(Template.id == template_id, Template.clinician_id == clinician_id)
    ).rowcount
    if deleted != 1:
        session.rollback()
        raise NotFound('No such template.')
    session.commit()
