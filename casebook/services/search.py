"""Full-text search over one clinician's own notes, answered from an index on SQLite and PostgreSQL alike.

Both engines are given the same words: the text is cut into words here, in Python, and the index holds exactly
those (an FTS5 table on SQLite, a tsvector on PostgreSQL, built from a literal so PostgreSQL's own parser never
sees the text). A query is cut by the same rules and handed to the engine as quoted words only, so nothing
typed is ever read as index syntax. The rules:

- a word is a run of letters and digits, with the marks written on them (vowel signs, points, tone marks: Hindi,
  Arabic, Hebrew and Thai words stay whole); `38.4` (digits with dots between them) is one word;
- case and accents are ignored (`FIÈVRE` and `fievre` are the same word);
- every word of a query must occur, and matches as the start of a word (`parac` finds "paracetamol");
- words in double quotes must occur together in that order, each whole (a quote left open: the last word is
  still being typed, so it matches as the start of a word).

The index row of a message is written in the transaction that stores the message, so a message acknowledged is
a message findable. Results come newest first, a page at a time, keyset on the message id (never OFFSET).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

from sqlalchemy import bindparam, func, select, text
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session

from casebook.models import Clinician, Conversation, EnteredInError, Message
from casebook.services import audit, conversations  # a module: conversations imports this one too
from casebook.services.accounts import ClinicianInfo
from casebook.services.errors import InvalidInput

QUERY_MAX = 200  # characters a query may have
WORDS_MAX = 16  # words a query may hold, quoted or not
WORD_MAX = 100  # characters of a word that are indexed and compared (PostgreSQL refuses lexemes over 2 KB)
PAGE = 20  # results per page
SNIPPET = 180  # characters of a result's snippet, about
TABLE = 'message_search'


def is_index_table(name: str) -> bool:
    """The index's tables (on SQLite, FTS5's shadow tables too): derived from messages, never in a backup."""
    return name == TABLE or name.startswith(f'{TABLE}_')


def alembic_include_name(name: str | None, type_: str, _parents: object) -> bool:
    """For Alembic's comparisons: the index is made by its migration's own SQL (an FTS5 table on SQLite), not
    by the models."""
    return not (type_ == 'table' and name is not None and is_index_table(name))


SQLITE_CREATE = (
    # the words are ours (see `words`); the tokenizer keeps each whole: marks are part of a word (categories M*)
    f"CREATE VIRTUAL TABLE {TABLE} USING fts5(terms, scope, content='', columnsize=0, "
    "tokenize=\"unicode61 remove_diacritics 0 categories 'L* N* Co M*' tokenchars '.'\", prefix='1')",
    f'CREATE TABLE {TABLE}_words (word TEXT PRIMARY KEY) WITHOUT ROWID',
    # words gathered in memory up to 16 MB before FTS5 writes them out: a big import writes fewer, larger
    # segments and merges them less often (a million messages indexed in about 5 s instead of 9); a send's
    # transaction holds a few words and writes them at its commit, as before
    f"INSERT INTO {TABLE} ({TABLE}, rank) VALUES ('hashsize', 16777216)",  # noqa: S608
)
EXPANSIONS_MAX = 64  # a word's start is looked up as the whole words it begins, up to this many


def _marks() -> str:
    """The combining marks (Unicode categories Mn, Mc, Me) as a regular expression's character class. Python's
    `\\w` leaves them out, which cut `नमस्ते` and a vowelled `مَرْحَبًا` into pieces; they belong to the word they
    are written on. (None lie outside these planes; scanning them costs about 40 ms, once.)"""
    ranges: list[list[int]] = []
    for code in (*range(0x20000), *range(0xE0000, 0xE1000)):
        if unicodedata.category(chr(code))[0] == 'M':
            if ranges and ranges[-1][1] == code - 1:
                ranges[-1][1] = code
            else:
                ranges.append([code, code])
    return '[' + ''.join(f'\\U{first:08x}-\\U{last:08x}' for first, last in ranges) + ']'


_MARK = _marks()
_WORD = re.compile(rf'\d+(?:\.\d+)+(?![^\W_]|{_MARK})|[^\W_](?:[^\W_]|{_MARK})*')
_ASCII_WORD = re.compile(r'\d+(?:\.\d+)+(?![^\W_])|[^\W_]+')  # the same for ASCII text (no marks), 3 times faster
# Faster still for lower-case ASCII (an import cuts a million texts): runs of letters and digits joined by dots,
# and only a run holding a dot cut again by _ASCII_WORD. The same words (checked on random strings).
_ASCII_RUN = re.compile(r'[a-z0-9]+(?:\.[a-z0-9]+)*', re.ASCII)
_DOTTED = re.compile(r'[a-z0-9]\.[a-z0-9]', re.ASCII)


# ---------------------------------------------------------------------------------------------------- words


def fold(word: str) -> str:
    """Lower case without accents: compatibility-decomposed, combining marks dropped, case-folded."""
    if word.isascii():
        return word.lower()
    return ''.join(ch for ch in unicodedata.normalize('NFKD', word) if not unicodedata.combining(ch)).casefold()


def _raw_words(text: str) -> Iterator[re.Match[str]]:
    return (_ASCII_WORD if text.isascii() else _WORD).finditer(text)


def _folded(raw: str) -> list[str]:
    """The indexed words of one word as written (folding may split it: `½` is `1⁄2`)."""
    if raw.isascii():
        return [raw.lower()[:WORD_MAX]]
    return [word[:WORD_MAX] for word in _WORD.findall(fold(raw))]


def words(text: str) -> list[str]:
    """The words of a text, as the index holds them, in order."""
    if text.isascii():  # the common case, and the same result as the general one
        lower = text.lower()
        found = _ASCII_RUN.findall(lower)
        if _DOTTED.search(lower):  # a dot between letters or digits: those runs are cut again
            found = [part for run in found for part in (_ASCII_WORD.findall(run) if '.' in run else (run,))]
        if max(map(len, found), default=0) > WORD_MAX:
            found = [word[:WORD_MAX] for word in found]
        return found
    found: list[str] = []
    for match in _raw_words(unicodedata.normalize('NFC', text)):
        found.extend(_folded(match.group()))
    return found


# ---------------------------------------------------------------------------------------------------- queries


@dataclass(frozen=True)
class Term:
    """Words that must occur in this order (one word, or a quoted phrase); the last may be the start of a word."""

    words: tuple[str, ...]
    prefix: bool

    def matches(self, word: str) -> bool:
        """Whether `word` (as indexed) is one of this term's words, for marking snippets."""
        *whole, last = self.words
        return word in whole or (word.startswith(last) if self.prefix else word == last)


@dataclass(frozen=True)
class Query:
    terms: tuple[Term, ...]


def parse(raw: object) -> Query:
    """A query as typed, checked; refused with a message a clinician can act on."""
    if not isinstance(raw, str):
        raise InvalidInput('Type a word to search for.')
    if len(raw) > QUERY_MAX:
        raise InvalidInput(
            f'The search is too long: at most {QUERY_MAX} characters (this one has {len(raw):,}). '
            'A few distinctive words find a note best.'
        )
    terms: list[Term] = []
    parts = raw.split('"')
    for index, part in enumerate(parts):
        found = words(part)
        if not found:
            continue
        if index % 2:  # inside quotes
            left_open = index == len(parts) - 1
            terms.append(Term(tuple(found), prefix=left_open))
        else:
            terms.extend(Term((word,), prefix=True) for word in found)
    if not terms:
        raise InvalidInput('Type a word to search for (letters or digits).')
    if sum(len(term.words) for term in terms) > WORDS_MAX:
        raise InvalidInput(f'The search has too many words: at most {WORDS_MAX}.')
    unique = tuple(dict.fromkeys(terms))  # the same word twice finds the same notes
    return Query(unique)


def _fts5_expression(connection: Connection, query: Query, scopes: Iterable[str]) -> str | None:
    """An FTS5 MATCH expression of quoted words only (a word never holds a quote: see `_WORD`); None when a word
    starts no word in the index, so nothing can match.

    FTS5 reads a word's list lazily, newest first, and stops at a page of results; but for `start*` it first
    merges the lists of every word that begins so, whole. So the start of a word is asked as the whole words it
    begins (looked up in the vocabulary table) when they are few, and as FTS5's prefix otherwise (always for a
    number: numbers are most of the distinct words, and the vocabulary leaves them out); the starts of
    one character, which begin too many words, have their own lists in the index (`prefix='1'`; two characters
    cost FTS5 a merge of a few thousand lists, ~50 ms at 2M messages, and keeping them too would cost an import
    of a million ~3.5 s more).
    """
    parts = [f'scope : "{scope}"' for scope in scopes]
    for term in query.terms:
        if term.prefix and len(term.words) == 1 and len(term.words[0]) > 2 and not term.words[0][0].isdigit():
            (start,) = term.words
            found = connection.execute(_SQLITE_EXPAND, {'start': start, 'end': start + _LAST}).scalars().all()
            if not found:
                return None
            if len(found) <= EXPANSIONS_MAX:
                parts.append('terms : (' + ' OR '.join(f'"{word}"' for word in found) + ')')
                continue
        phrase = '"' + ' '.join(term.words) + '"'
        parts.append(f'terms : {phrase}{" *" if term.prefix else ""}')
    return ' AND '.join(parts)


_LAST = '\U0010ffff'  # sorts after every character a word can hold
_SQLITE_EXPAND = text(
    f'SELECT word FROM {TABLE}_words WHERE word >= :start AND word < :end '  # noqa: S608
    f'ORDER BY word LIMIT {EXPANSIONS_MAX + 1}'
)


def _lexeme(word: str) -> str:
    """A word as a quoted lexeme of a tsvector or tsquery literal."""
    return "'" + word.replace('\\', '\\\\').replace("'", "''") + "'"


def _tsquery(query: Query) -> str:
    """A tsquery literal of quoted lexemes (cast, never parsed by a text search configuration)."""

    def lexeme(word: str, prefix: bool) -> str:
        return _lexeme(word) + (':*' if prefix else '')

    parts = []
    for term in query.terms:
        last = len(term.words) - 1
        items = [lexeme(word, term.prefix and i == last) for i, word in enumerate(term.words)]
        parts.append(items[0] if len(items) == 1 else '(' + ' <-> '.join(items) + ')')
    return ' & '.join(parts)


# ---------------------------------------------------------------------------------------------------- the index


def tsvector_literal(text_: str, clinician_id: int, conversation_id: int) -> str:
    """The tsvector of a message, as a literal: each word with its positions (1-based, capped as PostgreSQL caps),
    and the message's scope as two words no text can hold (`#u<clinician>`, `#c<conversation>`), so the GIN index
    can find a clinician's or a conversation's rare word without visiting anyone else's."""
    positions: dict[str, list[str]] = {}
    for position, word in enumerate(words(text_), start=1):
        positions.setdefault(word, []).append(str(min(position, 16383)))
    found = ' '.join(_lexeme(word) + ':' + ','.join(places[:256]) for word, places in positions.items())
    return f"{found} '#u{int(clinician_id)}' '#c{int(conversation_id)}'"


def _scope_words(clinician_id: int, conversation_id: int) -> str:
    return f'u{clinician_id} c{conversation_id}'


_SQLITE_INDEX = f'INSERT INTO {TABLE} (rowid, terms, scope) VALUES (?, ?, ?)'  # noqa: S608 (our own table)
_SQLITE_VOCABULARY = f'INSERT OR IGNORE INTO {TABLE}_words (word) VALUES (?)'  # noqa: S608
_POSTGRES_INDEX = text(
    f'INSERT INTO {TABLE} (message_id, clinician_id, conversation_id, terms) '  # noqa: S608
    'VALUES (:id, :clinician, :conversation, CAST(:terms AS tsvector))'
)


def index_rows(connection: Connection, rows: Sequence[tuple[int, int, int, str]]) -> None:
    """Index these messages, given as (message id, clinician id, conversation id, text), in the caller's
    transaction."""
    if not rows:
        return
    if connection.dialect.name == 'postgresql':
        params = [
            {'id': m, 'clinician': c, 'conversation': v, 'terms': tsvector_literal(body, c, v)}
            for m, c, v, body in rows
        ]
        connection.execute(_POSTGRES_INDEX, params)
    else:
        terms, vocabulary = _sqlite_terms([row[3] for row in rows])
        params = [
            (message_id, found, _scope_words(clinician_id, conversation_id))
            for (message_id, clinician_id, conversation_id, _body), found in zip(rows, terms, strict=True)
        ]
        connection.exec_driver_sql(_SQLITE_INDEX, params)
        listed = sorted(word for word in vocabulary if not word[0].isdigit())  # numbers: see _fts5_expression
        if listed:
            connection.exec_driver_sql(_SQLITE_VOCABULARY, [(word,) for word in listed])  # in order


def _ascii_table(letter_or_digit: Callable[[int], int], other: Callable[[int], int]) -> bytes:
    return bytes(letter_or_digit(c) if chr(c).isascii() and chr(c).isalnum() else other(c) for c in range(256))


_ASCII_WORDS = _ascii_table(lambda c: ord(chr(c).lower()), lambda _c: 32)  # words lower-cased, the rest spaces
_ASCII_SHAPE = _ascii_table(lambda _c: 97, lambda c: c if c == 46 else 32)  # letters and digits `a`, dots kept


def _sqlite_terms(texts: Sequence[str]) -> tuple[list[str], set[str]]:
    """What FTS5 is given to index for each text, and the words of them all (for the vocabulary).

    Most notes are ASCII with no dot between letters or digits. FTS5's tokenizer (which folds ASCII case itself)
    cuts such a text into exactly the words of `words` once its dots are spaces, and a batch of them is cut for
    the vocabulary at once, with byte tables. Text by text, the cutting took 6.5 s of a million-message import;
    this, under 1 s. Any other batch is given as each text's words."""
    joined = '\n'.join(texts)
    if joined.isascii():
        raw = joined.encode('ascii')
        if b'a.a' not in raw.translate(_ASCII_SHAPE):
            found = set(raw.translate(_ASCII_WORDS).split())
            if max(map(len, found), default=0) <= WORD_MAX:  # else a word the index holds cut short: as below
                return [body.replace('.', ' ') for body in texts], {word.decode('ascii') for word in found}
    terms, vocabulary = [], set()
    for body in texts:
        cut = words(body)
        vocabulary.update(cut)
        terms.append(' '.join(cut))
    return terms, vocabulary


def index_message(connection: Connection, message_id: int, clinician_id: int, conversation_id: int, body: str) -> None:
    """Index one message, in the transaction that stores it."""
    index_rows(connection, [(message_id, clinician_id, conversation_id, body)])


REBUILD_BATCH = 5000
POSTGRES_TABLE = (
    f'CREATE TABLE {TABLE} (message_id bigint PRIMARY KEY REFERENCES messages (id), '
    'clinician_id integer NOT NULL, conversation_id integer NOT NULL, terms tsvector NOT NULL)'
)
# The GIN index is written at once (fastupdate off): a pending list flushed by a send would make that send wait.
POSTGRES_INDEXES = {
    f'ix_{TABLE}_terms': f'CREATE INDEX ix_{TABLE}_terms ON {TABLE} USING gin (terms) WITH (fastupdate = off)',
    f'ix_{TABLE}_clinician': f'CREATE INDEX ix_{TABLE}_clinician ON {TABLE} (clinician_id, message_id)',
    f'ix_{TABLE}_conversation': f'CREATE INDEX ix_{TABLE}_conversation ON {TABLE} (conversation_id, message_id)',
}


SETTLE_FROM = 10_000  # messages indexed at once from which FTS5's segments are merged at the end


def settle(connection: Connection) -> None:
    """After many messages were indexed at once (an import, a restore, the migration), on SQLite: merge FTS5's
    segments into one now, in that operation's transaction, instead of leaving the merging to the sends that
    follow. Left to them, after a million imported, each send wrote about 2 MB and single sends waited up to 4 s
    for a merge forced at once; after this, 42 KB and 1.7 ms at most. It rewrites the whole index: about 4 s per
    million messages stored (measured on the 1M seeded data dir)."""
    if connection.dialect.name != 'postgresql':
        connection.exec_driver_sql(f"INSERT INTO {TABLE} ({TABLE}) VALUES ('optimize')")  # noqa: S608


LEVELS = 10  # levels a new SQLite index is given before a bulk write (see `prepare_bulk`)
_LEVELS = f'INSERT INTO {TABLE} ({TABLE}, rowid, terms, scope, rank) VALUES (?, ?, ?, ?, ?)'  # noqa: S608
_DUMMY = 'zzlevel'  # the word of the entries that make the levels
YOUNG_WORDS = 1000  # an index whose vocabulary has fewer words than this is given its levels before a bulk write
_WORDS_HELD = f'SELECT count(*) FROM (SELECT 1 FROM {TABLE}_words LIMIT {YOUNG_WORDS})'  # noqa: S608


def prepare_bulk(connection: Connection) -> None:
    """Before many messages are indexed at once into an index that holds few (the migration, a restore, a first
    import), on SQLite: give the index its levels first, so that the segment `settle` makes is not rewritten by
    the sends that follow.

    FTS5 keeps the index as segments in levels and merges by count: four segments of a level become one of the
    next. `optimize` puts the one segment it makes at the deepest level the index has had. In a new index that is
    level 0 or 1, so the few segments written by the next sends merge with it and rewrite the whole index inside
    one send's commit (after a 100,000-message import, the 15th send wrote 20 MB; 1.1 MB per send on average over
    40). Entries of one dummy word, each merged in, make the levels (a binary counter: 2**LEVELS entries, about
    0.2 s); they are deleted at once and gone after `settle`. The segment then sits at level LEVELS, which sends'
    own segments reach after about 4**LEVELS (a million) sends. An index that already holds many messages has
    levels of its own; the dummy entries would merge them again and again, so it is left as it is."""
    if connection.dialect.name == 'postgresql':
        return
    if (connection.exec_driver_sql(_WORDS_HELD).scalar() or 0) >= YOUNG_WORDS:
        return
    rowids = range(-1, -1 - 2**LEVELS, -1)
    # one statement: a row whose first value is 'merge' is FTS5's merge command, the others are entries
    each = [[(None, rowid, _DUMMY, _DUMMY, None), ('merge', None, None, None, -16)] for rowid in rowids]
    connection.exec_driver_sql(_LEVELS, [row for pair in each for row in pair])
    connection.exec_driver_sql(_LEVELS, [('delete', rowid, _DUMMY, _DUMMY, None) for rowid in rowids])


def _at_least(connection: Connection, after_id: int, count: int) -> bool:
    """Whether `count` messages or more have an id above `after_id`."""
    query = select(func.count()).select_from(select(Message.id).where(Message.id > after_id).limit(count).subquery())
    return (connection.execute(query).scalar() or 0) >= count


def rebuild(connection: Connection, *, after_id: int = 0, bulk: bool = False) -> int:
    """Index every message with an id above `after_id` (a migration, a restore); how many were indexed.

    Batched on the message id, so memory stays flat whatever the number of messages. `bulk` (nobody else writes:
    a migration, a restore into an empty database): on PostgreSQL the indexes are built once at the end, many
    times faster than kept row by row."""
    postgres = connection.dialect.name == 'postgresql'
    if postgres and bulk:
        for name in POSTGRES_INDEXES:
            connection.exec_driver_sql(f'DROP INDEX IF EXISTS {name}')
    if bulk and _at_least(connection, after_id, SETTLE_FROM):
        prepare_bulk(connection)
    query = (
        select(Message.id, Conversation.clinician_id, Message.conversation_id, Message.text)
        .join(Conversation, Conversation.id == Message.conversation_id)
        .where(Message.id > bindparam('after'))
        .order_by(Message.id)
        .limit(REBUILD_BATCH)
    )
    done = 0
    while rows := [tuple(row) for row in connection.execute(query, {'after': after_id})]:
        index_rows(connection, rows)  # type: ignore[arg-type]
        done += len(rows)
        after_id = rows[-1][0]
    if done >= SETTLE_FROM:
        settle(connection)
    if postgres and bulk:
        connection.exec_driver_sql("SET LOCAL maintenance_work_mem = '256MB'")
        for statement in POSTGRES_INDEXES.values():
            connection.exec_driver_sql(statement)
        connection.exec_driver_sql(f'ANALYZE {TABLE}')
    return done


# ---------------------------------------------------------------------------------------------------- results


@dataclass(frozen=True)
class Hit:
    """One message found: where it is, who wrote it, and a snippet as (text, matched) pieces."""

    message_id: int
    conversation_id: int
    patient_id: str
    sender_role: str
    author_name: str
    sent_at: object  # datetime
    text: str
    snippet: tuple[tuple[str, bool], ...]
    amends_id: int | None = None
    entered_in_error: bool = False
    corrected: bool = False

    @property
    def status(self) -> str:
        return conversations.status_label(self, corrected_as='Corrected later')


@dataclass(frozen=True)
class Results:
    hits: tuple[Hit, ...]
    more: bool  # older hits exist: ask again with `before` = the last hit's message id


def snippet(body: str, query: Query, width: int = SNIPPET) -> tuple[tuple[str, bool], ...]:
    """About `width` characters of the text around its first matched word, on one line, as (text, matched)
    pieces; the matched words are the ones the query names (as a clinician reads them: accents kept)."""
    body = unicodedata.normalize('NFC', body)
    spans = []
    for match in _raw_words(body):
        if any(term.matches(word) for word in _folded(match.group()) for term in query.terms):
            spans.append(match.span())
    first = spans[0][0] if spans else 0
    start = 0 if first < width // 3 else first - width // 3
    if start:  # begin at a word's start
        space = body.rfind(' ', 0, start)
        start = space + 1 if space >= 0 and start - space < 20 else start
    end = min(len(body), start + width)
    if end < len(body):
        space = body.rfind(' ', start + width // 2, end)
        end = space if space > 0 else end
    pieces: list[tuple[str, bool]] = []
    at = start
    for left, right in spans:
        if right <= start or left >= end:
            continue
        left, right = max(left, start), min(right, end)
        if left > at:
            pieces.append((body[at:left], False))
        pieces.append((body[left:right], True))
        at = right
    if at < end:
        pieces.append((body[at:end], False))
    if start > 0:
        pieces.insert(0, ('…', False))
    if end < len(body):
        pieces.append(('…', False))
    return tuple((_SPACES.sub(' ', piece), marked) for piece, marked in _merge(pieces))


_SPACES = re.compile(r'\s+')  # line breaks and runs of spaces: a snippet is one line


def _merge(pieces: Iterable[tuple[str, bool]]) -> list[tuple[str, bool]]:
    merged: list[tuple[str, bool]] = []
    for piece, marked in pieces:
        if merged and merged[-1][1] == marked:
            merged[-1] = (merged[-1][0] + piece, marked)
        else:
            merged.append((piece, marked))
    return merged


_SQLITE_FIND = text(
    f'SELECT rowid FROM {TABLE} WHERE {TABLE} MATCH :expression AND rowid < :before '  # noqa: S608
    'ORDER BY rowid DESC LIMIT :limit'
)
# PostgreSQL, in two steps. First the newest WINDOW messages of the scope (the b-tree on (clinician or conversation,
# message) reads only those): a word found in most notes fills a page there, and a scope with fewer messages is
# searched whole. Only when the window holds less than a page and there is more is the GIN index asked, for the
# query and the scope's own word: then the matches are few, and sorting them is cheap. Left to itself, the planner
# chose the other way round often enough (a word rare for one clinician but common for another walked all of the
# first one's notes: 0.85 s at 1M; a conversation's word, the whole table's GIN bitmap: 0.1-0.4 s).
WINDOW = 2000
_POSTGRES_RECENT = {
    scope: text(
        'SELECT array_agg(message_id ORDER BY message_id DESC) FILTER (WHERE terms @@ CAST(:query AS tsquery)), '  # noqa: S608
        f'count(*) FROM (SELECT message_id, terms FROM {TABLE} '
        f'WHERE {column} = :scope AND message_id < :before ORDER BY message_id DESC LIMIT {WINDOW}) AS recent'
    )
    for scope, column in (('clinician', 'clinician_id'), ('conversation', 'conversation_id'))
}
_POSTGRES_INDEXED = {
    scope: text(
        f'SELECT message_id FROM {TABLE} WHERE terms @@ CAST(:query AS tsquery) '  # noqa: S608
        f'AND {column} = :scope AND message_id < :before ORDER BY message_id DESC LIMIT :limit'
    )
    for scope, column in (('clinician', 'clinician_id'), ('conversation', 'conversation_id'))
}
NO_LIMIT = 2**62


def find_sync(
    session: Session,
    *,
    clinician: ClinicianInfo,
    query: Query,
    conversation_id: int | None = None,
    before: int | None = None,
    limit: int = PAGE,
) -> Results:
    """The clinician's messages matching `query` (only in one conversation of theirs when given), newest first,
    older than message `before` when given. Reads only."""
    limit = max(1, min(limit, 1000))
    connection = session.connection()
    params = {'before': before if before is not None else NO_LIMIT, 'limit': limit + 1}
    if connection.dialect.name == 'postgresql':
        ids = _postgres_find(connection, clinician, query, conversation_id, params)
    else:
        scopes = [f'u{clinician.id}'] + ([f'c{conversation_id}'] if conversation_id is not None else [])
        expression = _fts5_expression(connection, query, scopes)
        if expression is None:
            return Results((), False)
        ids = list(connection.execute(_SQLITE_FIND, params | {'expression': expression}).scalars())
    more = len(ids) > limit
    ids = ids[:limit]
    return Results(_hits(session, clinician, query, ids), more)


def _postgres_find(
    connection: Connection, clinician: ClinicianInfo, query: Query, conversation_id: int | None, params: dict
) -> list[int]:
    scope, scope_id, word = (
        ('clinician', clinician.id, f'#u{clinician.id}')
        if conversation_id is None
        else ('conversation', conversation_id, f'#c{conversation_id}')
    )
    params = params | {'scope': scope_id, 'query': _tsquery(query)}
    found, looked_at = connection.execute(_POSTGRES_RECENT[scope], params).one()
    ids = list(found or [])
    if len(ids) >= params['limit'] or looked_at < WINDOW:  # a page found, or nothing older left to look at
        return ids[: params['limit']]
    # few matches near the top: the index, asked for the scope's own word too; a bitmap scan, never a walk
    connection.exec_driver_sql('SET LOCAL enable_indexscan = off')
    try:
        scoped = f"{params['query']} & '{word}'"
        if conversation_id is not None:  # the conversation is the clinician's own: asked for both
            scoped += f" & '#u{clinician.id}'"
        return list(connection.execute(_POSTGRES_INDEXED[scope], params | {'query': scoped}).scalars())
    finally:
        connection.exec_driver_sql('SET LOCAL enable_indexscan = on')


def _hits(session: Session, clinician: ClinicianInfo, query: Query, ids: list[int]) -> tuple[Hit, ...]:
    """The found messages as hits, newest first; only the clinician's own (checked again, whatever the index says)."""
    if not ids:
        return ()
    rows = session.execute(
        select(Message, Conversation.patient_id, Clinician.display_name)
        .join(Conversation, Conversation.id == Message.conversation_id)
        .join(Clinician, Clinician.id == Message.author_id)
        .where(Message.id.in_(ids), Conversation.clinician_id == clinician.id)
        .order_by(Message.id.desc())
    ).all()
    marked = set(session.scalars(select(EnteredInError.message_id).where(EnteredInError.message_id.in_(ids))))
    corrected = set(session.scalars(select(Message.amends_id).where(Message.amends_id.in_(ids))))
    return tuple(
        Hit(
            message.id,
            message.conversation_id,
            patient_id,
            message.sender_role,
            author,
            message.sent_at,
            message.text,
            snippet(message.text, query),
            message.amends_id,
            message.id in marked,
            message.id in corrected,
        )
        for message, patient_id, author in rows
    )


def audit_entry(
    clinician: ClinicianInfo, *, patient_id: str | None, results: Results, address: str = '', actor: str | None = None
) -> audit.Entry:
    """The audit row of a search: who, where (all patients or which), how many hits shown; never the words.

    `actor` names who searched when it is not the clinician (the command line, as its other commands do): the
    clinician whose notes were searched is then named in the detail."""
    count = len(results.hits)
    hits = f'{count}{"+" if results.more else ""} {"hit" if count == 1 and not results.more else "hits"}'
    scope = 'this patient' if patient_id is not None else 'all patients'
    if actor is not None:
        return audit.Entry(audit.SEARCH, None, actor, patient_id, address, f'{scope}, {hits}, as {clinician.username}')
    return audit.Entry(audit.SEARCH, clinician.id, clinician.username, patient_id, address, f'{scope}, {hits}')


def search_sync(
    session: Session,
    *,
    clinician: ClinicianInfo,
    query: Query,
    patient_id: str | None = None,
    conversation_id: int | None = None,
    before: int | None = None,
    limit: int = PAGE,
    address: str = '',
    audited: bool = True,
    actor: str | None = None,
) -> Results:
    """One unit of work: the search, then (for a new search, not a further page) its audit row, committed."""
    results = find_sync(
        session, clinician=clinician, query=query, conversation_id=conversation_id, before=before, limit=limit
    )
    if audited:
        entry = audit_entry(clinician, patient_id=patient_id, results=results, address=address, actor=actor)
        audit.record_sync(session, entry)
        session.commit()
    else:
        session.rollback()
    return results
