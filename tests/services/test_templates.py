"""A clinician's note templates, on both engines: add, list, edit, delete; every refusal with its message; one
clinician's templates invisible and untouchable to another; the database's own refusal of a duplicate name."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from casebook.models import Template
from casebook.services import templates
from casebook.services.conversations import MESSAGE_MAX
from casebook.services.errors import InvalidInput, NotFound
from casebook.services.templates import NAME_MAX, TEMPLATES_MAX, TemplateInfo
from tests.conftest import add_clinician

SOAP = 'S: \nO: \nA: \nP: '


async def save(database, clinician, name: str, text: str = SOAP, template_id: int | None = None) -> TemplateInfo:
    return await database.run(
        lambda s: templates.save_sync(s, clinician_id=clinician.id, name=name, text=text, template_id=template_id)
    )


async def listed(database, clinician) -> list[TemplateInfo]:
    return await database.run(lambda s: templates.list_sync(s, clinician_id=clinician.id))


async def delete(database, clinician, template_id: int) -> None:
    await database.run(lambda s: templates.delete_sync(s, clinician_id=clinician.id, template_id=template_id))


async def fill(database, clinician, count: int) -> None:
    """`count` templates T0, T1, … for the clinician, straight into the table (faster than saving each)."""

    def work(session):
        session.add_all(
            Template(clinician_id=clinician.id, name=f'T{n}', name_key=f't{n}', text='x') for n in range(count)
        )
        session.commit()

    await database.run(work)


async def refused(database, clinician, name: str, text: str = SOAP, template_id: int | None = None) -> str:
    with pytest.raises(InvalidInput) as caught:
        await save(database, clinician, name, text, template_id)
    return caught.value.message


# ----- add, list, edit, delete ----------------------------------------------------------------------------------


async def test_add_list_edit_delete(database):
    ada = await add_clinician(database, 'ada')
    assert await listed(database, ada) == []
    soap = await save(database, ada, '  SOAP  ', SOAP)
    assert soap == TemplateInfo(soap.id, 'SOAP', SOAP)  # the name trimmed, the text exactly as typed
    sbar = await save(database, ada, 'SBAR', 'Situation:\nBackground:\nAssessment:\nRecommendation:')
    assert await listed(database, ada) == [sbar, soap]

    edited = await save(database, ada, 'SOAP note', 'S:\nO:', template_id=soap.id)
    assert edited == TemplateInfo(soap.id, 'SOAP note', 'S:\nO:')
    assert await listed(database, ada) == [sbar, edited]

    await delete(database, ada, sbar.id)
    assert await listed(database, ada) == [edited]
    with pytest.raises(NotFound, match=r'^No such template\.$'):
        await delete(database, ada, sbar.id)  # gone already
    with pytest.raises(NotFound, match=r'^No such template\.$'):
        await save(database, ada, 'SBAR', 'x', template_id=sbar.id)


async def test_listed_by_name_whatever_its_case_then_id(database):
    ada = await add_clinician(database, 'ada')
    for name in ['gamma', 'beta', 'Delta', 'alpha 2', 'Alpha']:
        await save(database, ada, name)
    assert [t.name for t in await listed(database, ada)] == ['Alpha', 'alpha 2', 'beta', 'Delta', 'gamma']


async def test_stored_times_and_key(database):
    ada = await add_clinician(database, 'ada')
    soap = await save(database, ada, 'SOAP')
    await save(database, ada, 'Soap ß', template_id=soap.id)

    def row(session):
        return session.get(Template, soap.id)

    stored = await database.run(row)
    assert (stored.clinician_id, stored.name, stored.name_key) == (ada.id, 'Soap ß', 'soap ss')
    assert stored.created_at.tzinfo is not None and stored.updated_at >= stored.created_at


# ----- the text, kept exactly -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ('typed', 'stored'),
    [
        (SOAP, SOAP),  # the space after every letter's colon, the last one included
        ('S: \nO: \n\n\nA: \nP: ', 'S: \nO: \n\n\nA: \nP: '),  # blank lines between lines are kept
        ('\n \n\t\nS: \nP: \n  \n\n', 'S: \nP: '),  # blank lines at either end are not
        ('   indented\n\tand tabbed  ', '   indented\n\tand tabbed  '),
        ('windows\r\nline\r\nbreaks \r\n', 'windows\nline\nbreaks '),
        ('x', 'x'),
    ],
)
async def test_text_is_kept_but_for_blank_lines_at_its_ends(database, typed, stored):
    ada = await add_clinician(database, 'ada')
    saved = await save(database, ada, 'T', typed)
    assert saved.text == stored
    assert [t.text for t in await listed(database, ada)] == [stored]


async def test_hostile_text_and_names_are_stored_as_they_are(database):
    ada = await add_clinician(database, 'ada')
    cases = {
        '<script>alert(1)</script>': '<img src=x onerror=alert(1)> "quotes" \'single\' \\back\\ & &amp;',
        'مرحبا \u202eevil\u202c': 'right to left: مرحبا بالعالم\n\u202eoverride\u202c',
        'Check-up 🩺 👩\u200d⚕️': 'emoji 🩺👩\u200d⚕️ zero\u200bwidth, 𝔘𝔫𝔦𝔠𝔬𝔡𝔢',
        "Robert'); DROP TABLE templates;--": "'; DELETE FROM templates; --",
    }
    for name, text in cases.items():
        await save(database, ada, name, text)
    assert {t.name: t.text for t in await listed(database, ada)} == cases


async def test_text_at_the_limit_is_kept(database):
    ada = await add_clinician(database, 'ada')
    text = 'x' * (MESSAGE_MAX - 1) + ' '  # the blank lines around it are not counted
    assert (await save(database, ada, 'long', '\n\n' + text + '\n \n')).text == text


# ----- refusals -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ('name', 'message'),
    [
        ('', 'Template name: please enter one.'),
        (' \t\n ', 'Template name: please enter one.'),
        ('x' * (NAME_MAX + 1), f'Template name: at most {NAME_MAX} characters (this one has {NAME_MAX + 1}).'),
        ('two\nlines', 'Template name: line breaks, tabs and other control characters are not allowed.'),
        ('tab\there', 'Template name: line breaks, tabs and other control characters are not allowed.'),
        ('nul\x00', 'Template name: line breaks, tabs and other control characters are not allowed.'),
        ('bell\x07', 'Template name: line breaks, tabs and other control characters are not allowed.'),
        ('line\u2028separator', 'Template name: line breaks, tabs and other control characters are not allowed.'),
        ('broken \ud800', 'Template name: it contains a broken character (an unpaired surrogate).'),
    ],
)
async def test_a_bad_name_is_refused(database, name, message):
    ada = await add_clinician(database, 'ada')
    assert await refused(database, ada, name) == message
    assert await listed(database, ada) == []


@pytest.mark.parametrize(
    ('text', 'message'),
    [
        ('', "The template's text is empty."),
        (' \n\t\n \r\n', "The template's text is empty."),
        ('x' * (MESSAGE_MAX + 1), f"The template's text has {MESSAGE_MAX + 1:,} characters; the limit is 10,000."),
        ('S: \x00', "The template's text contains a NUL character, which cannot be stored."),
        ('broken \udc00 pair', "The template's text contains a broken character (an unpaired surrogate)."),
    ],
)
async def test_a_bad_text_is_refused(database, text, message):
    ada = await add_clinician(database, 'ada')
    assert await refused(database, ada, 'SOAP', text) == message
    assert await listed(database, ada) == []


async def test_an_edit_refused_leaves_the_template_as_it_was(database):
    ada = await add_clinician(database, 'ada')
    soap = await save(database, ada, 'SOAP')
    assert await refused(database, ada, 'SOAP', '', template_id=soap.id) == "The template's text is empty."
    assert await refused(database, ada, '', 'x', template_id=soap.id) == 'Template name: please enter one.'
    assert await listed(database, ada) == [soap]


async def test_a_name_already_used_is_refused_whatever_its_case(database):
    ada = await add_clinician(database, 'ada')
    soap = await save(database, ada, 'SOAP')
    sbar = await save(database, ada, 'SBAR', 'S:\nB:')
    taken = 'Template name: you already have a template called "{}".'
    assert await refused(database, ada, ' soap ') == taken.format('soap')
    assert await refused(database, ada, 'Soap', 'other') == taken.format('Soap')
    assert await refused(database, ada, 'sbar', template_id=soap.id) == taken.format('sbar')  # another's name
    assert await listed(database, ada) == [sbar, soap]
    # an edit keeps its own name, in another case too
    assert await save(database, ada, 'soap', 'S:', template_id=soap.id) == TemplateInfo(soap.id, 'soap', 'S:')


async def test_a_name_is_the_same_whatever_its_unicode_composition(database):
    ada = await add_clinician(database, 'ada')
    await save(database, ada, 'Fi\u00e8vre')  # è as one character
    assert (
        await refused(database, ada, 'FIE\u0300VRE')
        == 'Template name: you already have a template called "FIE\u0300VRE".'
    )


async def test_at_most_templates_max_per_clinician(database):
    ada = await add_clinician(database, 'ada')
    bob = await add_clinician(database, 'bob')
    await fill(database, ada, TEMPLATES_MAX - 1)
    last = await save(database, ada, 'last one')
    message = f'You have {TEMPLATES_MAX} templates, as many as one can keep: delete one first.'
    assert await refused(database, ada, 'one too many') == message
    assert len(await listed(database, ada)) == TEMPLATES_MAX
    await save(
        database, ada, 'T1', 'edited', template_id=next(t.id for t in await listed(database, ada) if t.name == 'T1')
    )
    await save(database, bob, 'one too many')  # the limit is each clinician's
    await delete(database, ada, last.id)
    await save(database, ada, 'one too many')  # room again
    assert len(await listed(database, ada)) == TEMPLATES_MAX


# ----- one clinician's templates are theirs alone ---------------------------------------------------------------


async def test_another_clinician_can_neither_see_nor_change_nor_delete_them(database):
    ada = await add_clinician(database, 'ada')
    bob = await add_clinician(database, 'bob', role='nurse')
    soap = await save(database, ada, 'SOAP')
    assert await listed(database, bob) == []
    missing = 10**9
    for template_id in (soap.id, missing):  # another's and none at all: told apart by nothing
        with pytest.raises(NotFound) as edit:
            await save(database, bob, 'mine now', 'x', template_id=template_id)
        with pytest.raises(NotFound) as remove:
            await delete(database, bob, template_id)
        assert edit.value.message == remove.value.message == 'No such template.'
    # the same names are every clinician's to use
    bobs = await save(database, bob, 'soap', 'B: ')
    assert await listed(database, ada) == [soap]
    assert await listed(database, bob) == [bobs]
    # and ada's own edit of her template still works, by the same id
    assert (await save(database, ada, 'SOAP', 'S:', template_id=soap.id)).text == 'S:'
    with pytest.raises(NotFound):
        await delete(database, ada, bobs.id)
    assert await listed(database, bob) == [bobs]


# ----- the database refuses a duplicate itself ------------------------------------------------------------------


async def test_the_database_refuses_a_second_key_for_one_clinician(database):
    ada = await add_clinician(database, 'ada')
    await save(database, ada, 'SOAP')

    def insert_again(session):
        session.add(Template(clinician_id=ada.id, name='soap', name_key='soap', text='x'))
        session.commit()

    with pytest.raises(IntegrityError):
        await database.run(insert_again)


async def test_a_duplicate_the_check_missed_is_refused_by_the_constraint(database, monkeypatch):
    """As when another tab stored the name between this save's check and its insert."""
    ada = await add_clinician(database, 'ada')
    soap = await save(database, ada, 'SOAP')
    other = await save(database, ada, 'other')
    monkeypatch.setattr(templates, '_name_taken', lambda *_args: False)
    taken = 'Template name: you already have a template called "{}".'
    assert await refused(database, ada, 'soap') == taken.format('soap')
    assert await refused(database, ada, 'Soap', template_id=other.id) == taken.format('Soap')
    assert await listed(database, ada) == [other, soap]
    assert (await save(database, ada, 'fine', 'y')).name == 'fine'  # nothing was left half done


async def test_two_tabs_saving_one_name_at_once_store_it_once(database):
    ada = await add_clinician(database, 'ada')
    outcomes = await asyncio.gather(
        *(save(database, ada, name) for name in ['SOAP', 'soap', 'Soap']), return_exceptions=True
    )
    stored = [o for o in outcomes if isinstance(o, TemplateInfo)]
    refusals = [o for o in outcomes if isinstance(o, InvalidInput)]
    assert len(stored) == 1 and len(refusals) == 2, outcomes
    assert all(r.message.startswith('Template name: you already have a template called') for r in refusals)
    assert await listed(database, ada) == stored


async def test_two_tabs_adding_at_once_never_pass_the_limit(database):
    ada = await add_clinician(database, 'ada')
    await fill(database, ada, TEMPLATES_MAX - 2)
    outcomes = await asyncio.gather(*(save(database, ada, f'new {n}') for n in range(4)), return_exceptions=True)
    assert sum(isinstance(o, TemplateInfo) for o in outcomes) == 2, outcomes
    assert sum(isinstance(o, InvalidInput) for o in outcomes) == 2, outcomes
    assert len(await listed(database, ada)) == TEMPLATES_MAX

    def count(session):
        return len(session.scalars(select(Template.id).where(Template.clinician_id == ada.id)).all())

    assert await database.run(count) == TEMPLATES_MAX
