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


@pytest.mark.parametrize(
    'raw', ['"', '*', '(', ')', ':', '^', '-', '+', 'NEAR', 'OR', 'AND', 'NOT', '%', '_', '\\', '"open', '😀', 'مرحبا']
)
async def test_hostile_queries_never_raise(database, raw):
    ada = await add_clinician(database, 'ada')
    await write(database, ada, 'P1', 'NEAR OR AND NOT (x) 100% a_b c\\d "open 😀 مرحبا')
    try:
        await find(database, ada, raw)
    except InvalidInput:
        pass


async def test_only_ones_own(database):
    ada = await add_clinician(database, 'ada')
    bob = await add_clinician(database, 'bob')
    await write(database, ada, 'P1', 'ada writes paracetamol')
    await write(database, bob, 'P1', 'bob writes paracetamol')
    assert await texts(database, ada, 'paracetamol') == ['ada writes paracetamol']
    assert await texts(database, bob, 'paracetamol') == ['bob writes paracetamol']
