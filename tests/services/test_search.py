"""Full-text search over one clinician's own notes: what a query means, on SQLite and PostgreSQL alike."""

from __future__ import annotations

import uuid

import pytest

from casebook.services import conversations, search
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
