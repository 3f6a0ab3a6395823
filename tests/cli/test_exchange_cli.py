"""`casebook import` and `casebook export` as an admin types them, against a real database of the test's own (SQLite
in a fresh data dir, or PostgreSQL; the command finds it through CASEBOOK_DATABASE_URL)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from casebook import cli
from casebook.db import Database
from tests.conftest import FINISHED_BAR, Terminal, add_clinician
from tests.fhir_support import assert_valid_bundle

CASEBOOK = Path(sys.executable).parent / 'casebook'
ID = '0b7c1a52-2a8e-4c39-9d6b-0f2a7e1c9b11'
CONVERSATION = {
    'format': 'casebook.conversation.v1',
    'patient_id': 'PAT123',
    'messages': [
        {'id': ID, 'sender': 'doctor', 'text': 'Temp 39.4', 'sent_at': '2026-11-24T09:00:00Z'},
        {'sender': 'nurse', 'text': 'Temp 38.4 🙂', 'sent_at': '2026-11-24T09:05:00Z', 'amends': ID},
        {'sender': 'doctor', 'text': '<script>alert(1)</script>', 'sent_at': '2026-11-24T09:10:00Z'},
    ],
}


def add_user(database: Database, username: str) -> None:
    async def add() -> None:
        db = Database(database.url)  # an engine of this loop's own
        try:
            await add_clinician(db, username, display_name=f'Dr. {username.capitalize()}')
        finally:
            await db.dispose()

    asyncio.run(add())


@pytest.fixture
def ada(database: Database) -> str:
    add_user(database, 'ada')
    return 'ada'


@pytest.fixture
def conversation_file(tmp_path: Path) -> Path:
    path = tmp_path / 'conversation.json'
    path.write_text(json.dumps(CONVERSATION), encoding='utf-8')
    return path


def one_line_error(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    assert err.startswith('casebook: ') and err.count('\n') == 1, err
    return err


def test_import_then_export_in_every_format(ada, conversation_file, capsys):
    assert cli.main(['import', str(conversation_file), '--user', 'ada']) == 0
    assert capsys.readouterr().out == 'imported 3 messages (patient PAT123)\n'
    assert cli.main(['export', '--user', 'ada', '--patient', 'PAT123', '--format', 'json']) == 0
    exported = json.loads(capsys.readouterr().out)
    assert [m['text'] for m in exported['messages']] == [m['text'] for m in CONVERSATION['messages']]
    assert exported['messages'][1]['amends'] == ID
    assert cli.main(['import', str(conversation_file), '--user', 'ada']) == 0
    assert capsys.readouterr().out.startswith('imported 2 messages')  # only the one with an id was there already
    assert cli.main(['export', '--user', 'ada', '--patient', 'PAT123', '--format', 'fhir']) == 0
    assert_valid_bundle(json.loads(capsys.readouterr().out))  # with the correction in inResponseTo
    assert cli.main(['export', '--user', 'ada', '--patient', 'PAT123', '--format', 'markdown']) == 0
    assert '> Temp 38.4 🙂' in capsys.readouterr().out


def test_export_to_a_file_round_trips_and_is_private(ada, conversation_file, database, tmp_path, capsys):
    cli.main(['import', str(conversation_file), '--user', 'ada'])
    first, second = tmp_path / 'first.json', tmp_path / 'second.json'
    assert cli.main(['export', '--user', 'ada', '--patient', 'PAT123', '-o', str(first)]) == 0
    add_user(database, 'bob')
    assert cli.main(['import', str(first), '--user', 'bob']) == 0
    assert cli.main(['export', '--user', 'bob', '--patient', 'PAT123', '--output', str(second)]) == 0
    assert first.read_bytes() == second.read_bytes()
    assert stat.S_IMODE(first.stat().st_mode) == 0o600  # patient data: readable by its owner only
    assert capsys.readouterr().out.count('imported 3 messages') == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ['conversation.json', 'data', 'first.json', 'second.json']


@pytest.mark.parametrize(
    ('args', 'message'),
    [
        (['import', '{file}', '--user', 'nobody'], 'no such user: nobody'),
        (['import', '{missing}', '--user', 'ada'], 'cannot read'),
        (['import', '{bad}', '--user', 'ada'], 'message 1: text is empty'),
        (['export', '--user', 'nobody', '--patient', 'PAT123'], 'no such user: nobody'),
        (['export', '--user', 'ada', '--patient', 'PAT404'], 'No conversation about patient PAT404'),
        (['export', '--user', 'ada', '--patient', '../x'], 'Patient ID'),
        (['export', '--user', 'ada', '--patient', 'PAT404', '-o', '{out}'], 'No conversation about patient PAT404'),
        (['export', '--user', 'ada', '--patient', 'PAT123', '-o', '{nodir}'], 'cannot write'),
    ],
)
def test_bad_input_is_one_line_on_stderr_and_leaves_no_file(ada, conversation_file, tmp_path, capsys, args, message):
    cli.main(['import', str(conversation_file), '--user', 'ada'])
    bad = tmp_path / 'bad.json'
    bad.write_text(json.dumps({**CONVERSATION, 'messages': [{**CONVERSATION['messages'][0], 'text': ' '}]}))
    before = sorted(tmp_path.iterdir())
    paths = {
        'file': conversation_file,
        'missing': tmp_path / 'missing.json',
        'bad': bad,
        'out': tmp_path / 'out.json',
        'nodir': tmp_path / 'no' / 'such' / 'dir.json',
    }
    capsys.readouterr()
    assert cli.main([arg.format(**paths) for arg in args]) == 2
    assert message in one_line_error(capsys)
    assert sorted(tmp_path.iterdir()) == before


def test_a_malformed_file_names_itself_and_imports_nothing(ada, tmp_path, capsys):
    path = tmp_path / 'cut.json'
    path.write_text(json.dumps(CONVERSATION)[:-40])
    assert cli.main(['import', str(path), '--user', 'ada']) == 2
    assert f'casebook: {path}: message 3: malformed JSON' in one_line_error(capsys)
    assert cli.main(['export', '--user', 'ada', '--patient', 'PAT123']) == 2  # not even the conversation exists


def test_a_progress_bar_on_a_terminal_only(ada, conversation_file, monkeypatch, capsys):
    assert cli.main(['import', str(conversation_file), '--user', 'ada']) == 0
    assert capsys.readouterr().err == ''
    terminal = Terminal()
    monkeypatch.setattr('sys.stderr', terminal)
    assert cli.main(['import', str(conversation_file), '--user', 'ada']) == 0
    drawn = terminal.getvalue()  # a bar per phase, left on its own line with its rate, elapsed and remaining time
    assert [line.split(':')[0] for line in drawn.split('\n')[:-1]] == ['\rchecking', '\rimporting'], drawn
    for phase in ('checking', 'importing'):
        assert re.search(FINISHED_BAR.format(phase=phase, unit='B'), drawn), drawn
    assert drawn.endswith('\n') and '?B/s' in drawn  # the first draw, before any rate is known


def test_the_installed_commands(ada, data_dir, conversation_file, tmp_path):
    """The entry point `make install` leaves at .venv/bin/casebook, as separate processes, in the C locale."""
    env = {**os.environ, 'CASEBOOK_DATA_DIR': str(data_dir), 'LC_ALL': 'C'}

    def casebook(*args: str) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run([CASEBOOK, *args], capture_output=True, env=env, check=False, timeout=120)

    done = casebook('import', str(conversation_file), '--user', 'ada')
    assert done.returncode == 0 and done.stdout == b'imported 3 messages (patient PAT123)\n' and done.stderr == b''
    exported = casebook('export', '--user', 'ada', '--patient', 'PAT123')
    assert exported.returncode == 0 and 'Temp 38.4 🙂'.encode() in exported.stdout
    bad = casebook('export', '--user', 'ada', '--patient', 'PAT123', '--format', 'pdf')
    assert bad.returncode != 0 and b'invalid choice' in bad.stderr
