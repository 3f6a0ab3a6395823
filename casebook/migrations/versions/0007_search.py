"""Full-text search: an index of every message's words, and the messages already stored indexed into it.

SQLite: an FTS5 table holding only the index (`content=''`: the text stays in messages alone). Its words are the
ones casebook.services.search cuts, lower-cased and without accents, separated by spaces, so its tokenizer only
splits at spaces (a dot and the marks written on letters are kept: `38.4` and `नमस्ते` are one word each).
`prefix='1'` keeps the first character of words in the index too, and `message_search_words`
lists every word indexed, so the start of a longer word is looked up as the whole words it begins (see
search._fts5_expression).
`scope` holds `u<clinician id> c<conversation id>`: a search asks for its clinician's word as well as its own,
so it never walks another clinician's notes.

PostgreSQL: a table of tsvectors written from literals (never parsed by a text search configuration: both
engines index the same words), with a GIN index for rare words and b-tree indexes on (clinician, message) and
(conversation, message) for words found nearly everywhere, read newest first. The GIN index is written at once
(fastupdate off): a pending list flushed by a send would make that send wait.

Indexing what is already stored, measured on 2M messages (docs/performance.md, "Search"): SQLite 25–37 s per
million (the machine's speed varied by half that day), PostgreSQL 72 s per million.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-03
"""

import logging
import time

from alembic import op

from casebook.services import search

revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None

log = logging.getLogger('casebook.search')


def upgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name == 'postgresql':
        op.execute(search.POSTGRES_TABLE)  # its indexes are built by rebuild, once the stored messages are in
    else:
        for statement in search.SQLITE_CREATE:
            op.execute(statement)
    started = time.perf_counter()
    indexed = search.rebuild(bind, bulk=True)
    if indexed:
        log.info('search: indexed %s messages in %.1f s', f'{indexed:,}', time.perf_counter() - started)


def downgrade() -> None:
    op.execute(f'DROP TABLE {search.TABLE}')
    if op.get_bind().dialect.name != 'postgresql':
        op.execute(f'DROP TABLE {search.TABLE}_words')  # else upgrading again fails: the table exists
