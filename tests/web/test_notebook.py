"""The per-browser notebook: drafts carry the id their send is stored under, across tabs and reloads."""

from __future__ import annotations

import uuid

from casebook.web.notebook import Notebook


def test_a_reloaded_tab_sends_the_draft_under_the_same_id():
    storage: dict = {}
    first_tab = Notebook(storage)
    send_id = str(uuid.uuid4())
    first_tab.save_draft('PAT1', 'Temp 39.4', send_id)
    reloaded = Notebook(storage)  # the same browser's notebook, read again by the reloaded page
    assert reloaded.draft_and_id('PAT1') == ('Temp 39.4', send_id)
    first_tab.forget_draft('PAT1', send_id)  # the first tab's send was stored
    assert reloaded.draft_and_id('PAT1')[0] == ''


def test_a_stored_send_forgets_only_its_own_draft():
    storage: dict = {}
    book = Notebook(storage)
    book.save_draft('PAT1', 'typed since', 'b' * 8 + '-bbbb-4bbb-8bbb-' + 'b' * 12)
    book.forget_draft('PAT1', str(uuid.uuid4()))  # an earlier draft's send completing late
    assert book.draft('PAT1') == 'typed since'


def test_drafts_are_bounded_and_empty_ones_dropped():
    book = Notebook({})
    for n in range(30):
        book.save_draft(f'P{n}', f'draft {n}', str(uuid.uuid4()))
    book.save_draft('P29', '', str(uuid.uuid4()))
    assert book.draft('P0') == '' and book.draft('P28') == 'draft 28' and book.draft('P29') == ''
    assert len(book._storage['drafts']) <= 20


def test_signing_in_as_someone_else_wipes_the_previous_notebook():
    storage: dict = {}
    book = Notebook(storage)
    book.sign_in(token='t' * 43, clinician_id=1)
    book.patient_id = 'PAT1'
    book.save_draft('PAT1', 'private', str(uuid.uuid4()))
    book.sign_out()
    book.sign_in(token='u' * 43, clinician_id=2)
    assert book.patient_id is None and book.draft('PAT1') == ''
