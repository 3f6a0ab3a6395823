"""Full-text search over one clinician's own notes: what a query means, on SQLite and PostgreSQL alike."""

from __future__ import annotations

import asyncio
import io
import json
import uuid

import pytest
from alembic import command
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import create_engine, insert, select
from sqlalchemy.engine import make_url

from casebook.db import Database, alembic_config
from casebook.models import AuditEvent, Clinician, Conversation, Message
from casebook.services import accounts, audit, backup, conversations, exchange, search
from casebook.services.errors import InvalidInput
from tests.conftest import add_clinician


async def write(database, clinician, patient_id, *texts):
    async with database.session() as session:
        conversation = await conversations.open_conversation(session, clinician=clinician, patient_id=patient_id)
        stored = []
        for text in texts:
            message, _ = await conversations.post_message(
                session, clinician=clinician, conversation_id=conversation.id, client_id=str(uuid.uuid4()), text=text
            )
            stored.append(message)
    return conversation, stored


async def find(database, clinician, raw, **kwargs):
    query = search.parse(raw)
    return await database.run(lambda session: search.find_sync(session, clinician=clinician, query=query, **kwargs))


def at(term: search.Term, words: list[str], start: int) -> bool:
    """Whether the term's words are the text's words from `start` on (the last one's start, when a prefix)."""
    *whole, last = term.words
    if start + len(term.words) > len(words):
        return False
    found = words[start + len(whole)]
    return words[start : start + len(whole)] == whole and (found.startswith(last) if term.prefix else found == last)


def matches(query: search.Query, text: str) -> bool:
    """The rules, in plain Python: every term occurs somewhere in the text's words."""
    words = search.words(text)
    return all(any(at(term, words, start) for start in range(len(words))) for term in query.terms)


async def texts(database, clinician, raw, **kwargs):
    return [hit.text for hit in (await find(database, clinician, raw, **kwargs)).hits]


async def test_words_prefixes_phrases_accents_and_numbers(database):
    ada = await add_clinician(database, 'ada')
    await write(
        database,
        ada,
        'P1',
        'Started paracetamol 1 g four times daily.',
        'Fièvre à 38.4 °C ce matin.',
        'Temperature 384 is a typo.',
        'Paracetamol stopped; fever gone.',
    )
    assert await texts(database, ada, 'parac') == [
        'Paracetamol stopped; fever gone.',
        'Started paracetamol 1 g four times daily.',
    ]
    assert await texts(database, ada, 'fievre') == ['Fièvre à 38.4 °C ce matin.']
    assert await texts(database, ada, 'FIÈVRE') == ['Fièvre à 38.4 °C ce matin.']
    assert await texts(database, ada, '38.4') == ['Fièvre à 38.4 °C ce matin.']
    assert await texts(database, ada, 'paracetamol daily') == ['Started paracetamol 1 g four times daily.']
    assert await texts(database, ada, '"paracetamol stopped"') == ['Paracetamol stopped; fever gone.']
    assert await texts(database, ada, '"stopped paracetamol"') == []
    assert await texts(database, ada, 'zebra') == []


async def test_only_ones_own(database):
    ada = await add_clinician(database, 'ada')
    bob = await add_clinician(database, 'bob')
    await write(database, ada, 'P1', 'ada writes paracetamol')
    await write(database, bob, 'P1', 'bob writes paracetamol')
    assert await texts(database, ada, 'paracetamol') == ['ada writes paracetamol']
    assert await texts(database, bob, 'paracetamol') == ['bob writes paracetamol']


# ----- what a query means -----------------------------------------------------------------------------------------


async def test_every_word_must_occur_and_each_matches_the_start_of_words(database):
    ada = await add_clinician(database, 'ada')
    await write(database, ada, 'P1', 'fever and cough', 'fever only', 'cough only', 'feverish coughing child')
    assert await texts(database, ada, 'fever cough') == ['feverish coughing child', 'fever and cough']
    assert await texts(database, ada, 'cough fever') == ['feverish coughing child', 'fever and cough']
    assert await texts(database, ada, 'fev') == ['feverish coughing child', 'fever only', 'fever and cough']
    assert await texts(database, ada, 'ever') == []  # the start of a word, never its middle
    assert await texts(database, ada, 'fever zebra') == []
    assert await texts(database, ada, 'f c') == ['feverish coughing child', 'fever and cough']  # one letter


async def test_quoted_words_are_a_phrase_of_whole_words_and_an_open_quote_is_still_typed(database):
    ada = await add_clinician(database, 'ada')
    await write(database, ada, 'P1', 'Paracetamol stopped today', 'stopped paracetamol', 'paracetamols stopping')
    assert await texts(database, ada, '"paracetamol stopped"') == ['Paracetamol stopped today']
    assert await texts(database, ada, '"paracetamol"') == ['stopped paracetamol', 'Paracetamol stopped today']
    assert await texts(database, ada, '"parac"') == []  # quoted words are whole
    assert await texts(database, ada, '"paracetamol sto') == ['Paracetamol stopped today']  # left open: being typed
    assert await texts(database, ada, '"paracetamols sto') == ['paracetamols stopping']
    assert await texts(database, ada, 'today "paracetamol stopped"') == ['Paracetamol stopped today']
    assert await texts(database, ada, '"stopped today" "paracetamol stopped"') == ['Paracetamol stopped today']
    assert await texts(database, ada, '"today paracetamol"') == []  # in that order, side by side


async def test_case_and_accents_are_ignored_both_ways(database):
    ada = await add_clinician(database, 'ada')
    await write(database, ada, 'P1', 'Fièvre ce matin', 'FIEVRE le soir', 'Straße', 'naïve Ελληνικά ΠΥΡΕΤΌΣ')
    for raw in ('fievre', 'FIÈVRE', 'Fièvre', 'fièv', 'FIEV'):
        assert await texts(database, ada, raw) == ['FIEVRE le soir', 'Fièvre ce matin'], raw
    assert await texts(database, ada, 'STRASSE') == ['Straße']
    assert await texts(database, ada, 'straß') == ['Straße']
    assert await texts(database, ada, 'NAIVE πυρετος') == ['naïve Ελληνικά ΠΥΡΕΤΌΣ']
    assert await texts(database, ada, 'ελληνικα') == ['naïve Ελληνικά ΠΥΡΕΤΌΣ']


async def test_numbers_and_decimals_are_words(database):
    ada = await add_clinician(database, 'ada')
    await write(database, ada, 'P1', 'Temp 38.4 °C', 'Temp 384 (typo)', 'Temp 38', 'Dose 1.5 mg, BP 120/80')
    assert await texts(database, ada, '38.4') == ['Temp 38.4 °C']
    assert await texts(database, ada, '384') == ['Temp 384 (typo)']
    assert await texts(database, ada, '"38"') == ['Temp 38']
    assert await texts(database, ada, '38') == ['Temp 38', 'Temp 384 (typo)', 'Temp 38.4 °C']  # starts of words
    assert await texts(database, ada, '1.5 mg') == ['Dose 1.5 mg, BP 120/80']
    assert await texts(database, ada, '120/80') == ['Dose 1.5 mg, BP 120/80']
    assert await texts(database, ada, '5') == []


SCRIPTS = {
    'Температура 38.4, кашель': ['температура', 'ТЕМП', 'кашель 38.4'],
    'Πυρετός από χθες': ['πυρετος', 'ΧΘΕΣ'],
    '患者 发烧 三天': ['发烧', '患者 三天'],
    'حمى منذ أمس': ['حمى', 'امس'],  # the hamza on alef is a mark: ignored like an accent
    'مَرْحَبًا بالطبيب': ['مرحبا', 'مرح'],  # vowel signs are ignored, the word stays whole
    'חום גבוה מאתמול': ['גבוה', 'חום מאת'],
    'שָׁלוֹם': ['שלום', '"שלום"'],
    'नमस्ते डॉक्टर': ['नमस्ते', '"नमस्ते"', 'डॉक्टर नमस्ते'],
    'ไข้สูง': ['ไข้สูง', 'ไข้'],
    '発熱 テスト 🩺': ['テスト', '発熱'],
}


async def test_words_from_other_scripts(database):
    ada = await add_clinician(database, 'ada')
    await write(database, ada, 'P1', *SCRIPTS, 'something else entirely')
    for text, queries in SCRIPTS.items():
        for raw in queries:
            assert await texts(database, ada, raw) == [text], raw


async def test_a_word_with_marks_is_one_word_not_its_pieces(database):
    ada = await add_clinician(database, 'ada')
    await write(database, ada, 'P1', 'नमस दिन त', 'नमस्ते')
    assert await texts(database, ada, 'नमस्ते') == ['नमस्ते']  # its pieces elsewhere are not the word
    assert await texts(database, ada, 'नमस') == ['नमस्ते', 'नमस दिन त']


async def test_a_start_that_begins_many_words(database):
    """More words than are looked up one by one (SQLite asks the index's own prefix then): the same hits."""
    ada = await add_clinician(database, 'ada')
    many = [f'prefix{n:03d}' for n in range(search.EXPANSIONS_MAX + 6)]
    await write(database, ada, 'P1', *many, 'other words')
    assert await texts(database, ada, 'prefix', limit=1000) == many[::-1]
    assert await texts(database, ada, 'prefix0', limit=1000) == many[::-1]
    assert await texts(database, ada, 'prefix06', limit=1000) == many[60:][::-1]


# ----- what is refused, and what never breaks ---------------------------------------------------------------------


@pytest.mark.parametrize('raw', ['', ' ', '\n\t ', '"', '""', '" "', '*', '-+()', '...', '%_\\', ':^', '😀', '—'])
def test_an_empty_query_gets_a_clear_message(raw):
    with pytest.raises(InvalidInput, match=r'^Type a word to search for'):
        search.parse(raw)


def test_an_over_long_query_gets_a_clear_message():
    with pytest.raises(InvalidInput) as refusal:
        search.parse('fever ' * 1667)  # 10,002 characters
    assert refusal.value.message.startswith('The search is too long: at most 200 characters (this one has 10,002)')
    with pytest.raises(InvalidInput, match='too many words: at most 16'):
        search.parse(' '.join(f'w{n}' for n in range(17)))
    assert len(search.parse('x' * search.QUERY_MAX).terms) == 1
    with pytest.raises(InvalidInput, match='Type a word'):
        search.parse(None)


HOSTILE = [
    '"', '*', '(', ')', ':', '^', '-', '+', 'NEAR', 'OR', 'AND', 'NOT', '%', '_', '\\', '"open', '😀', 'مرحبا',
    'fever OR cough', 'NOT fever', 'fever AND', 'NEAR(fever cough)', 'fever*', '*fever', 'terms:fever',
    'scope:u1', '"u1"', 'u1', 'c1', '-fever', '+fever', '^fever', "fe'ver", "'", "''", 'fever%', '%ever', 'f_ver',
    '\\"fever\\"', '"fever', 'fever"', '"fever" "', '\u202efever\u202c', 'fe\u200bver', '\x00', 'fever\x00',
    '\ud800', "'; DROP TABLE messages; --", "':*", '!fever', '&', '|', '<->', '{fever}', '[fever]', '38.4.', '.38',
    'x' * 200, 'x' * 201, 'x' * 10_000, 'a' * 150,
]  # fmt: skip


async def test_hostile_queries_are_words_or_a_clear_message(database):
    """Nothing typed is index syntax or an error: a query is its words (found as the rules say) or refused."""
    ada = await add_clinician(database, 'ada')
    bob = await add_clinician(database, 'bob')
    mine = 'NEAR OR AND NOT (fever) 100% a_b c\\d "open 😀 مرحبا terms:scope u1 c1 38.4.'
    await write(database, ada, 'P1', mine)
    await write(database, bob, 'P1', 'fever cough NEAR OR AND NOT u1 c1 open 38.4')
    refused = 0
    for raw in HOSTILE:
        try:
            query = search.parse(raw)
        except InvalidInput as refusal:
            assert refusal.message.endswith('.'), (raw, refusal.message)
            refused += 1
            continue
        results = await find(database, ada, raw, limit=1000)
        assert [hit.text for hit in results.hits] == ([mine] if matches(query, mine) else []), raw
    assert 0 < refused < len(HOSTILE)


# ----- results: pages, scope, marks, snippets ---------------------------------------------------------------------


async def test_pages_are_newest_first_without_duplicates_or_gaps(database):
    ada = await add_clinician(database, 'ada')
    _, first = await write(database, ada, 'P1', *[f'fever note {n}' for n in range(23)])
    _, second = await write(database, ada, 'P2', *[f'fever note {n}' for n in range(23, 45)], 'no match here')
    await write(database, ada, 'P1', 'fever again, the newest')
    expected = await texts(database, ada, 'fever', limit=1000)
    assert len(expected) == 46 and expected[0] == 'fever again, the newest'
    seen, before, pages = [], None, 0
    while True:
        results = await find(database, ada, 'fever note', before=before, limit=10)
        pages += 1
        seen.extend(results.hits)
        if not results.more:
            break
        assert len(results.hits) == 10
        before = results.hits[-1].message_id
    ids = [hit.message_id for hit in seen]
    assert pages == 5 and len(ids) == 45 == len(set(ids))
    assert ids == sorted(ids, reverse=True) == [m.id for m in first + second[:-1]][::-1]
    assert [hit.patient_id for hit in seen[:22]] == ['P2'] * 22
    last = await find(database, ada, 'fever note', before=ids[-1], limit=10)
    assert last.hits == () and not last.more
    exact = await find(database, ada, 'fever note', before=ids[-10], limit=9)  # exactly the rest: nothing more
    assert len(exact.hits) == 9 and not exact.more


async def test_this_patient_only(database):
    ada = await add_clinician(database, 'ada')
    bob = await add_clinician(database, 'bob')
    p1, _ = await write(database, ada, 'P1', 'fever on ward one')
    p2, _ = await write(database, ada, 'P2', 'fever on ward two')
    theirs, _ = await write(database, bob, 'P1', 'fever, bob writes')
    assert await texts(database, ada, 'fever', conversation_id=p1.id) == ['fever on ward one']
    assert await texts(database, ada, 'fever', conversation_id=p2.id) == ['fever on ward two']
    assert await texts(database, ada, 'fever') == ['fever on ward two', 'fever on ward one']
    assert await texts(database, ada, 'fever', conversation_id=theirs.id) == []  # another's conversation: nothing
    assert await texts(database, bob, 'fever', conversation_id=p1.id) == []


async def test_corrections_and_entered_in_error_are_found_and_marked(database):
    ada = await add_clinician(database, 'ada')
    conversation, (original, plain) = await write(database, ada, 'P1', 'Temp 39.4 fever', 'fever settled')
    correction, _ = await database.run(
        lambda s: conversations.post_message_sync(
            s,
            clinician=ada,
            conversation_id=conversation.id,
            client_id=str(uuid.uuid4()),
            text='Temp 38.4 fever (corrected)',
            amends_id=original.id,
        )
    )
    async with database.session() as session:
        await conversations.mark_entered_in_error(
            session, clinician=ada, conversation_id=conversation.id, message_id=plain.id
        )
    hits = (await find(database, ada, 'fever')).hits
    assert [(hit.text, hit.status) for hit in hits] == [
        ('Temp 38.4 fever (corrected)', 'Correction'),
        ('fever settled', 'Entered in error'),
        ('Temp 39.4 fever', 'Corrected later'),
    ]
    assert hits[0].amends_id == original.id and hits[1].entered_in_error and hits[2].corrected
    assert hits[0].message_id == correction.id and not hits[0].entered_in_error and not hits[0].corrected


async def test_a_snippet_marks_the_matched_words_and_stays_short(database):
    ada = await add_clinician(database, 'ada')
    long = ('lorem ipsum dolor ' * 300) + 'Paracétamol started\nat 38.4 °C ' + ('sit amet ' * 700)
    long = long[:10_000]
    assert len(long) == 10_000
    await write(database, ada, 'P1', long, 'x' * 10_000, 'Fièvre,\tfièvre et FIEVRE')
    (hit,) = (await find(database, ada, 'paracetamol 38.4')).hits
    text = ''.join(piece for piece, _ in hit.snippet)
    assert len(text) <= 200 and '\n' not in text and text.startswith('…') and text.endswith('…')
    assert [piece for piece, marked in hit.snippet if marked] == ['Paracétamol', '38.4']
    assert 'Paracétamol started at 38.4' in text
    (hit,) = (await find(database, ada, 'xxx')).hits
    assert len(''.join(piece for piece, _ in hit.snippet)) <= 200
    assert hit.snippet[0][1]  # the one 10,000-letter word, marked where it is shown
    (hit,) = (await find(database, ada, 'fievre')).hits
    assert hit.snippet == (('Fièvre', True), (', ', False), ('fièvre', True), (' et ', False), ('FIEVRE', True))
    (hit,) = (await find(database, ada, '"fievre et"')).hits
    assert [piece for piece, marked in hit.snippet if marked] == ['Fièvre', 'fièvre', 'et', 'FIEVRE']


# ----- the index is kept wherever messages are written ------------------------------------------------------------


async def test_a_send_rolled_back_leaves_nothing_findable(database):
    ada = await add_clinician(database, 'ada')
    conversation, _ = await write(database, ada, 'P1', 'an earlier note')
    query = search.parse('zanzibar')

    def send_then_roll_back(session):
        session.commit = session.flush  # the send's transaction stays open…
        conversations.post_message_sync(
            session, clinician=ada, conversation_id=conversation.id, client_id=str(uuid.uuid4()), text='zanzibar'
        )
        inside = search.find_sync(session, clinician=ada, query=query)
        session.rollback()  # …and ends without a commit
        return inside

    inside = await database.run(send_then_roll_back)
    assert [hit.text for hit in inside.hits] == ['zanzibar']  # in the send's transaction, the index has it
    assert await texts(database, ada, 'zanzibar') == []
    assert await texts(database, ada, 'earlier') == ['an earlier note']
    await write(database, ada, 'P1', 'zanzibar again')  # the same word later: only that message
    assert await texts(database, ada, 'zanzibar') == ['zanzibar again']


async def test_an_import_makes_its_messages_findable(database):
    ada = await add_clinician(database, 'ada')
    await write(database, ada, 'IMP1', 'written before the import: fever')
    messages = [
        {'sender': 'doctor', 'text': f'imported fever note {n}', 'sent_at': f'2026-11-24T09:{n:02d}:00Z'}
        for n in range(30)
    ] + [{'sender': 'nurse', 'text': 'Fièvre importée', 'sent_at': '2026-11-24T10:00:00Z', 'entered_in_error': True}]
    source = io.BytesIO(
        json.dumps({'format': 'casebook.conversation.v1', 'patient_id': 'IMP1', 'messages': messages}).encode()
    )
    async with database.session() as session:
        result = await exchange.import_conversation(session, clinician=ada, source=source)
    assert result.imported == 31
    found = await texts(database, ada, 'imported fever', limit=100)
    assert found == [m['text'] for m in messages[:30]][::-1]
    (hit,) = (await find(database, ada, 'FIEVRE IMPORTEE')).hits
    assert hit.patient_id == 'IMP1' and hit.status == 'Entered in error'
    assert len(await texts(database, ada, 'fever', limit=100)) == 31


async def test_a_restore_ends_with_every_message_findable(database, new_database, tmp_path):
    ada = await add_clinician(database, 'ada')
    bob = await add_clinician(database, 'bob')
    notes = {
        'ada': [f'common note{n} by ada' for n in range(12)] + ['Fièvre 38.4 नमस्ते', 'x' * 10_000],
        'bob': [f'common note{n} by bob' for n in range(5)],
    }
    await write(database, ada, 'P1', *notes['ada'])
    await write(database, bob, 'P1', *notes['bob'])
    file = tmp_path / 'search.cbk'
    with file.open('wb') as output:
        await asyncio.to_thread(backup.backup, database.url, output)
    target = await new_database('restored')
    assert (await asyncio.to_thread(backup.restore, target.url, file)).audit.ok
    for name, written in notes.items():
        async with target.session() as session:
            clinician = await accounts.find_by_username(session, name)
        for text in written:  # each by its words, as a phrase
            assert text in await texts(target, clinician, '"' + text[: search.QUERY_MAX - 2] + '"'), text
        assert await texts(target, clinician, 'common', limit=100) == [t for t in written if 'common' in t][::-1]
    assert await texts(target, clinician, 'fievre') == []  # bob's: not ada's notes


async def test_the_migration_indexes_the_messages_stored_before_it(backend, data_dir):
    """A database at 0006 holding messages: migrated to head, every message is findable; down and up again too."""
    if backend is None:
        data_dir.mkdir(parents=True, exist_ok=True)
        url, name = f'sqlite+aiosqlite:///{data_dir / "older.sqlite3"}', None
        driver = 'sqlite+pysqlite'
    else:
        name = await backend.create(from_template=False)
        url, driver = backend.url(name), 'postgresql+psycopg'
    engine = create_engine(make_url(url).set(drivername=driver))
    database = Database(url)

    def upgrade(revision: str) -> None:
        with engine.begin() as connection:
            command.upgrade(alembic_config(connection), revision)

    try:
        await asyncio.to_thread(upgrade, '0006')
        with engine.begin() as connection:
            connection.execute(
                insert(Clinician.__table__),
                [
                    {'id': 1, 'username': 'ada', 'display_name': 'Ada', 'role': 'doctor', 'password_hash': 'x'},
                    {'id': 2, 'username': 'bob', 'display_name': 'Bob', 'role': 'nurse', 'password_hash': 'x'},
                ],
            )
            connection.execute(
                insert(Conversation.__table__),
                [{'id': 1, 'clinician_id': 1, 'patient_id': 'P1'}, {'id': 2, 'clinician_id': 2, 'patient_id': 'P1'}],
            )
            texts_before = [f'stored before, note {n}, Fièvre' for n in range(search.REBUILD_BATCH // 500 + 3)]
            connection.execute(
                insert(Message.__table__),
                [
                    {
                        'conversation_id': 1 + n % 2,
                        'client_id': str(uuid.uuid4()),
                        'author_id': 1 + n % 2,
                        'sender_role': 'doctor',
                        'text': text,
                    }
                    for n, text in enumerate(texts_before)
                ],
            )
        ada = accounts.ClinicianInfo(1, 'ada', 'Ada', 'doctor')
        await asyncio.to_thread(upgrade, 'head')
        mine = texts_before[::2][::-1]
        assert await texts(database, ada, 'fievre stored', limit=100) == mine
        assert await texts(database, ada, '"note 4"') == ['stored before, note 4, Fièvre']
        await database.dispose()

        def down_and_up() -> None:
            with engine.begin() as connection:
                command.downgrade(alembic_config(connection), '0006')
            upgrade('head')

        await asyncio.to_thread(down_and_up)
        assert await texts(database, ada, 'fievre stored', limit=100) == mine
    finally:
        await database.dispose()
        engine.dispose()
        if name is not None:
            backend.drop_soon(name)


# ----- the audit trail --------------------------------------------------------------------------------------------


async def test_each_search_is_one_audit_row_with_its_scope_and_count_never_the_words(database):
    ada = await add_clinician(database, 'ada')
    p1, _ = await write(database, ada, 'P1', *[f'Secretword note {n}' for n in range(3)])
    await write(database, ada, 'P2', 'secretword elsewhere')

    async def audit_rows():
        async with database.session() as session:
            return (await session.scalars(select(AuditEvent).order_by(AuditEvent.seq))).all()

    async def search_sync(raw, **kwargs):
        query = search.parse(raw)
        return await database.run(lambda s: search.search_sync(s, clinician=ada, query=query, **kwargs))

    before = len(await audit_rows())
    results = await search_sync('secretw', limit=2)
    assert len(results.hits) == 2 and results.more
    await search_sync('"secretword note"', patient_id='P1', conversation_id=p1.id, address='10.0.0.9')
    await search_sync('secretword zebra')
    await search_sync('secretword', before=results.hits[-1].message_id, audited=False)  # a further page: no row
    await search_sync('secretword', actor='(command line)')
    rows = (await audit_rows())[before:]
    assert [(r.action, r.actor_id, r.actor, r.patient_id, r.address, r.detail) for r in rows] == [
        ('search', ada.id, 'ada', None, '', 'all patients, 2+ hits'),
        ('search', ada.id, 'ada', 'P1', '10.0.0.9', 'this patient, 3 hits'),
        ('search', ada.id, 'ada', None, '', 'all patients, 0 hits'),
        ('search', None, '(command line)', None, '', 'all patients, 4 hits, as ada'),
    ]
    for row in await audit_rows():
        assert 'secret' not in f'{row.actor} {row.patient_id} {row.address} {row.detail}'.lower()
    async with database.session() as session:
        assert (await audit.verify(session)).ok


# ----- only one's own, by property --------------------------------------------------------------------------------

VOCABULARY = [
    'fever', 'Fièvre', 'FIEVRE', 'fevers', 'feverish', 'paracetamol', 'Paracétamol', 'para', 'parac', '38.4', '384',
    '38', '4', 'cough', 'Cough', 'NEAR', 'or', 'not', 'नमस्ते', 'नमस', 'مَرْحَبًا', 'مرحبا', 'Straße', 'strasse', 'ab',
    'a', 'u1', 'c2', 'x',
]  # fmt: skip
SEPARATORS = [' ', ', ', '\n', ' - ', '. ', ' "', '*', '(', ':', '°C ']

texts_strategy = st.lists(
    st.tuples(st.sampled_from(VOCABULARY), st.sampled_from(SEPARATORS)), min_size=1, max_size=8
).map(lambda parts: ''.join(word + separator for word, separator in parts))
# a notebook: for each of the three clinicians, notes about some of the patients P1, P2 (the same IDs for all)
notebook_strategy = st.lists(
    st.tuples(st.integers(0, 2), st.sampled_from(['P1', 'P2']), st.lists(texts_strategy, min_size=1, max_size=4)),
    min_size=2,
    max_size=5,
)
fragment = st.sampled_from(VOCABULARY).flatmap(lambda word: st.integers(1, len(word)).map(lambda n: word[:n]))
query_strategy = st.lists(
    st.one_of(
        fragment,
        fragment.map(lambda f: f'"{f}"'),
        fragment.map(lambda f: f'"{f}'),
        st.lists(fragment, min_size=2, max_size=3).map(lambda fs: '"' + ' '.join(fs) + '"'),
        st.sampled_from(['"', '*', 'OR', '-', ':', 'NOT']),
    ),
    min_size=1,
    max_size=3,
).map(' '.join)


@pytest.fixture
async def clinics(database):
    """Three clinicians, and what each has written so far (the examples add to it): message id -> (conversation,
    text)."""
    clinicians = [await add_clinician(database, name) for name in ('ada', 'bob', 'cyd')]
    return database, clinicians, [{} for _ in clinicians]


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    notebook=notebook_strategy,
    searches=st.lists(st.tuples(st.integers(0, 2), query_strategy, st.booleans()), min_size=1, max_size=6),
    page_size=st.integers(2, 8),
)
async def test_a_search_finds_exactly_what_the_rules_say_in_ones_own_notes_only(clinics, notebook, searches, page_size):
    database, clinicians, written = clinics
    for who, patient_id, notes in notebook:
        conversation, stored = await write(database, clinicians[who], patient_id, *notes)
        written[who].update({message.id: (conversation.id, message.text) for message in stored})
    for who, raw, this_patient_only in searches:
        try:
            query = search.parse(raw)
        except InvalidInput:
            continue
        mine = written[who]
        scope = None
        if this_patient_only and mine:
            scope = min(conversation for conversation, _text in mine.values())
        results = await find(database, clinicians[who], raw, conversation_id=scope, limit=1000)
        assert not results.more
        expected = [
            message_id
            for message_id, (conversation, text) in sorted(mine.items(), reverse=True)
            if matches(query, text) and scope in (None, conversation)
        ]
        assert [hit.message_id for hit in results.hits] == expected, (raw, scope)
        assert all(hit.message_id in mine for hit in results.hits)
        paged, before, more = [], None, True  # the same a few at a time, keyset on the message id
        while more:
            page = await find(database, clinicians[who], raw, conversation_id=scope, before=before, limit=page_size)
            paged.extend(hit.message_id for hit in page.hits)
            more, before = page.more, page.hits[-1].message_id if page.hits else None
        assert paged == expected


@given(st.text(alphabet='aZz09.. _-\n#%:', max_size=40) | st.from_regex(r'[a-z0-9.]{95,110}', fullmatch=True))
def test_the_fast_cut_of_ascii_text_is_the_general_one(text):
    """`words` cuts ASCII text with a faster pattern (an import cuts a million texts): the same words."""
    general = [word for match in search._WORD.finditer(text) for word in search._folded(match.group())]
    assert search.words(text) == general


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.text(alphabet='aZz09.. _-\n#%:éİß', max_size=40) | st.from_regex(r'[a-zA-Z0-9.]{95,110}', fullmatch=True),
        min_size=1,
        max_size=5,
    )
)
def test_fts5_holds_exactly_the_words_of_each_text(texts):
    """A batch of plain ASCII texts is handed to FTS5 as it is, to be cut by its own tokenizer (an import indexes
    a million): what the index holds, word by word in order, is still what `words` says."""
    engine = create_engine('sqlite://')
    with engine.begin() as connection:
        for statement in search.SQLITE_CREATE:
            connection.exec_driver_sql(statement)
        connection.exec_driver_sql(f'CREATE VIRTUAL TABLE held USING fts5vocab({search.TABLE}, instance)')
        search.index_rows(connection, [(number, 1, 2, text) for number, text in enumerate(texts, start=1)])
        held = connection.exec_driver_sql("SELECT doc, term FROM held WHERE col = 'terms' ORDER BY doc, offset").all()
        vocabulary = {word for (word,) in connection.exec_driver_sql(f'SELECT word FROM {search.TABLE}_words')}  # noqa: S608
    engine.dispose()
    for number, text in enumerate(texts, start=1):
        assert [term for doc, term in held if doc == number] == search.words(text), text
    assert vocabulary == {word for text in texts for word in search.words(text) if not word[0].isdigit()}


MATCHING = f'SELECT count(*) FROM {search.TABLE} WHERE {search.TABLE} MATCH ?'  # noqa: S608 (our own table)
INDEX_BYTES = f'SELECT sum(length(block)) FROM {search.TABLE}_data'  # noqa: S608


def test_an_index_written_at_once_is_not_rewritten_by_the_sends_after_it(tmp_path):
    """After a first import (or a restore, or the migration) FTS5's one merged segment must sit above the levels
    the next sends' small segments reach: each send's commit writes a few pages, never the whole index again.
    Bytes in the write-ahead log per commit: a count of pages written, not a timing."""
    path = tmp_path / 'index.sqlite3'
    engine = create_engine(f'sqlite:///{path}')
    with engine.begin() as connection:
        connection.exec_driver_sql('PRAGMA journal_mode=WAL')
        for statement in search.SQLITE_CREATE:
            connection.exec_driver_sql(statement)
    with engine.begin() as connection:
        search.prepare_bulk(connection)
        for start in range(0, 20_000, 5_000):
            notes = [
                (n, 1, 1, f'Clinic note {n}: word{n % 997} fever {n * 7919 % 100_003}')
                for n in range(start, start + 5_000)
            ]
            search.index_rows(connection, notes)
        search.settle(connection)
        assert connection.exec_driver_sql(MATCHING, ('zzlevel',)).scalar() == 0  # the entries that made the levels
    with engine.begin() as connection:
        connection.exec_driver_sql('PRAGMA wal_checkpoint(TRUNCATE)')
        index_bytes = connection.exec_driver_sql(INDEX_BYTES).scalar()
    wal = path.with_name(path.name + '-wal')
    written = []
    for n in range(100):  # FTS5 merges four segments of a level into one of the next: after 4, 16, 64 sends
        before = wal.stat().st_size if wal.exists() else 0
        with engine.begin() as connection:
            search.index_rows(connection, [(20_000 + n, 1, 1, f'sent note {n} about fever')])
        written.append(wal.stat().st_size - before)
    with engine.connect() as connection:
        assert connection.exec_driver_sql(MATCHING, ('fever',)).scalar() == 20_100
    engine.dispose()
    assert index_bytes > 1_000_000
    assert max(written) < index_bytes / 10, (max(written), index_bytes)
