"""A lost disk, in a real browser: back up while serving, lose the data dir, restore, sign in with the old password."""

from __future__ import annotations

import shutil

import pytest
from playwright.sync_api import expect

pytestmark = pytest.mark.browser

NOTES = ['Mild fever for 3 days', 'Temp 38.4 🙂 <b>not bold</b>']


def casebook(server, *args: str) -> str:
    return server.casebook(*args)


def test_a_restored_data_dir_brings_the_notebook_back(server, new_visitor, tmp_path):
    me = new_visitor()
    me.create_first_account('alice', 'Dr. Alice')
    me.open_patient('PAT123', 'Dr. Alice')
    for note in NOTES:
        me.send(note)
    file = tmp_path / 'clinic.cbk'
    assert 'messages 2,' in casebook(server, 'backup', '-o', str(file))  # online: the server keeps serving

    server.stop()
    shutil.rmtree(server.data_dir)  # the disk is lost
    assert 'audit trail intact' in casebook(server, 'restore', str(file))
    server.start()

    me.forget_connection_errors()
    me.goto('/')
    expect(me.page.get_by_role('button', name='Log in')).to_be_visible()  # sessions are not restored
    again = new_visitor()
    again.log_in('alice', 'Dr. Alice')  # the old password
    again.open_patient('PAT123', 'Dr. Alice')
    for note in NOTES:
        expect(again.message(note)).to_have_count(1)
    again.assert_clean()
    server.assert_log_clean()
