"""Export from the workspace as a download; nobody else's conversation can be fetched by guessing its URL."""

from __future__ import annotations

import json

import pytest
from playwright.sync_api import expect

from tests.browser.conftest import PASSWORD
from tests.fhir_support import assert_valid_bundle

pytestmark = pytest.mark.browser


def test_export_downloads_and_guessed_urls_reveal_nothing(server, new_visitor, add_clinician, tmp_path):
    me = new_visitor()
    me.create_first_account('alice', 'Dr. Alice')
    me.open_patient('PAT123', 'Dr. Alice')
    me.send('Mild fever for 3 days')
    me.send('<b>not bold</b>')

    downloaded = {}
    for fmt, label in [('json', 'Casebook JSON'), ('fhir', 'FHIR R4 bundle'), ('markdown', 'Markdown transcript')]:
        me.page.get_by_role('button', name='Export').click()
        with me.page.expect_download() as info:
            me.page.get_by_text(label, exact=True).click()
        path = tmp_path / info.value.suggested_filename
        info.value.save_as(path)
        downloaded[fmt] = path.read_text(encoding='utf-8')
        assert 'PAT123' in info.value.suggested_filename
    native = json.loads(downloaded['json'])
    assert native['format'] == 'casebook.conversation.v1' and native['patient_id'] == 'PAT123'
    assert [m['text'] for m in native['messages']] == ['Mild fever for 3 days', '<b>not bold</b>']
    bundle = json.loads(downloaded['fhir'])
    assert_valid_bundle(bundle)
    assert sum(e['resource']['resourceType'] == 'Communication' for e in bundle['entry']) == 2
    assert 'Mild fever for 3 days' in downloaded['markdown']

    add_clinician('eve', 'Eve', PASSWORD)
    eve = new_visitor()
    eve.log_in('eve', 'Eve')
    guessed = eve.page.request.get(server.base_url + '/export/PAT123/json')
    assert guessed.status == 404 and 'Mild fever' not in guessed.text()
    stranger = new_visitor()
    stranger.goto('/login')
    assert stranger.page.request.get(server.base_url + '/export/PAT123/json').status == 401
    own = me.page.request.get(server.base_url + '/export/PAT123/json')
    assert own.status == 200 and own.headers['cache-control'] == 'no-store'
    expect(me.messages).to_have_count(2)
    me.assert_clean()
