"""`casebook search` as an admin types it, against a real database of the test's own (SQLite in a fresh data dir,
or PostgreSQL; the command finds it through CASEBOOK_DATABASE_URL): the output's format and order, the scope and
limit, exit statuses, and hostile queries (exit 0 or 2, never a crash)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import create_engine, select
from sqlalchemy.engine import make_url

from casebook import cli
from casebook.db import Database
from casebook.models import AuditEvent, Message
from tests import postgres
from tests.cli.test_exchange_cli import add_user
from tests.conftest import BACKENDS
from tests.services.test_search import HOSTILE

CASEBOOK = Path(sys.executable).parent / 'casebook'
ADA = [  # imported in this order: the newest last
    ('PAT1', 'doctor', 'Temp 39.4\nfever\tstarted\r\nparacetamol 1 g', '2026-11-24T09:00:00Z'),
    ('PAT1', 'nurse', 'Fever settled, \x1b[31mred\x1b[0m text', '2026-11-24T10:30:15.250000Z'),
    ('PAT2', 'doctor', 'Fièvre à 38.4 °C\u2028since yesterday', '2026-11-25T08:00:00+01:00'),
    ('PAT2', 'nurse', 'no match here', '2026-11-25T08:05:00Z'),
]
BOB = [
    ('PAT1', 'doctor', 'bob writes fever too', '2026-11-26T09:00:00Z'),
    ('PAT3', 'doctor', 'fever', '2026-11-26T09:01:00Z'),
]


@pytest.fixture
def backend(request: pytest.FixtureRequest) -> postgres.PostgresServer | None:
    """SQLite here, unless a test asks for both engines: tests/services/test_search.py runs every query rule on
    both; what the command adds (arguments, the output's form, exit statuses) is the same code on either, and the
    one test of the output's form (times as each engine stores them) runs on both."""
    if getattr(request, 'param', 'sqlite') == 'postgresql':
        return request.getfixturevalue('postgres_server')
    return None


def sync_engine(url: str):
    parsed = make_url(url)
    driver = 'sqlite+pysqlite' if parsed.get_backend_name() == 'sqlite' else 'postgresql+psycopg'
    return create_engine(parsed.set(drivername=driver))


def stored(url: str) -> tuple[dict[str, int], list[AuditEvent]]:
    """Message ids by text, and the audit trail's rows."""
    engine = sync_engine(url)
    try:
        with engine.connect() as connection:
            ids = {text: message_id for message_id, text in connection.execute(select(Message.id, Message.text))}
            rows = list(connection.execute(select(AuditEvent).order_by(AuditEvent.seq)))
            return ids, rows
    finally:
        engine.dispose()


def import_notes(username: str, notes, tmp_path: Path) -> None:
    for patient in dict.fromkeys(patient for patient, *_ in notes):
        messages = [
            {'sender': sender, 'text': text, 'sent_at': sent_at}
            for their_patient, sender, text, sent_at in notes
            if their_patient == patient
        ]
        path = tmp_path / f'{username}-{patient}.json'
        path.write_text(json.dumps({'format': 'casebook.conversation.v1', 'patient_id': patient, 'messages': messages}))
        assert cli.main(['import', str(path), '--user', username]) == 0


@pytest.fixture
def notes(database: Database, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> str:
    """ada's notes about PAT1 and PAT2, bob's about PAT1 and PAT3; the database's URL."""
    add_user(database, 'ada')
    add_user(database, 'bob')
    import_notes('ada', ADA, tmp_path)
    import_notes('bob', BOB, tmp_path)
    capsys.readouterr()
    return database.url


def search(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = cli.main(['search', *args])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize('backend', BACKENDS, indirect=True)
def test_one_tab_separated_line_per_hit_newest_first(notes, capsys):
    ids, _ = stored(notes)
    code, out, err = search(capsys, '--user', 'ada', 'f')
    assert (code, err) == (0, '')
    assert out.splitlines() == [
        f'PAT2\t2026-11-25T07:00:00Z\tdoctor\t{ids[ADA[2][2]]}\tFièvre à 38.4 °C since yesterday',
        f'PAT1\t2026-11-24T10:30:15Z\tnurse\t{ids[ADA[1][2]]}\tFever settled,  [31mred [0m text',
        f'PAT1\t2026-11-24T09:00:00Z\tdoctor\t{ids[ADA[0][2]]}\tTemp 39.4 fever started paracetamol 1 g',
    ]
    assert out.endswith('\n') and all(line.count('\t') == 4 for line in out.splitlines())
    assert '\x1b' not in out  # no escape sequence reaches the terminal


def test_the_query_rules_hold_on_the_command_line(notes, capsys):
    def found(*words: str) -> list[str]:
        code, out, err = search(capsys, '--user', 'ada', *words)
        assert (code, err) == (0, ''), err
        return [line.split('\t')[4] for line in out.splitlines()]

    assert found('FIEVRE', '38.4') == ['Fièvre à 38.4 °C since yesterday']
    assert found('"fever started"') == ['Temp 39.4 fever started paracetamol 1 g']
    assert found('fever started') == found('fever started') == found('"fever started"')
    assert found('parac') == ['Temp 39.4 fever started paracetamol 1 g']
    assert found('384') == []
    assert found('bob') == []  # bob's notes are never ada's results


def test_patient_and_limit(notes, capsys):
    def patients(*args: str) -> list[str]:
        code, out, err = search(capsys, '--user', 'ada', *args)
        assert (code, err) == (0, ''), err
        return [line.split('\t')[0] for line in out.splitlines()]

    assert patients('f') == ['PAT2', 'PAT1', 'PAT1']
    assert patients('--patient', 'PAT1', 'f') == ['PAT1', 'PAT1']
    assert patients('--patient', ' PAT2 ', 'f') == ['PAT2']  # trimmed, as the app does
    assert patients('--limit', '1', 'f') == ['PAT2']
    assert patients('--limit', '2', 'f') == ['PAT2', 'PAT1']
    assert patients('--limit', '1000', 'f') == ['PAT2', 'PAT1', 'PAT1']
    assert patients('--patient', 'PAT1', '--limit', '1', 'f') == ['PAT1']
    code, out, _ = search(capsys, '--user', 'bob', '--patient', 'PAT3', 'fever')
    assert code == 0 and len(out.splitlines()) == 1 and out.startswith('PAT3\t') and out.endswith('\tfever\n')


def test_nothing_found_is_no_output_and_exit_0(notes, capsys):
    assert search(capsys, '--user', 'ada', 'zebra') == (0, '', '')
    assert search(capsys, '--user', 'ada', '--patient', 'PAT2', 'settled') == (0, '', '')


BAD = [
    (['--user', 'ada', '"'], 'casebook: Type a word to search for (letters or digits).\n'),
    (['--user', 'ada', '', ' '], 'casebook: Type a word to search for (letters or digits).\n'),
    (['--user', 'ada', 'x' * 10_000], 'casebook: The search is too long: at most 200 characters (this one has 10,000)'),
    (['--user', 'nobody', 'fever'], 'casebook: no such user: nobody\n'),
    (['--user', 'nobody', '"'], 'casebook: Type a word to search for'),  # the query first: no database needed
    (['--user', 'ada', '--patient', 'PAT404', 'fever'], 'casebook: ada has no conversation about patient PAT404\n'),
    (['--user', 'ada', '--patient', 'PAT3', 'fever'], 'casebook: ada has no conversation about patient PAT3\n'),
    (['--user', 'ada', '--patient', '../x', 'fever'], 'casebook: Patient ID: only letters, digits'),
]


def test_bad_input_is_one_line_on_stderr_and_exit_2_and_no_audit_row(notes, capsys):
    _, before = stored(notes)
    for args, message in BAD:
        code, out, err = search(capsys, *args)
        assert (code, out) == (2, '') and err.startswith(message) and err.count('\n') == 1, (args, err)
    assert len(stored(notes)[1]) == len(before)


@pytest.mark.parametrize('limit', ['0', '1001', '-1', 'ten', ''])
def test_a_limit_out_of_bounds_is_refused(capsys, limit):
    with pytest.raises(SystemExit) as done:
        cli.main(['search', '--user', 'ada', '--limit', limit, 'fever'])
    assert done.value.code == 2
    assert 'argument --limit: a whole number from 1 to 1000' in capsys.readouterr().err


def test_each_search_is_one_audit_row_with_scope_and_count_never_the_words(notes, capsys):
    _, before = stored(notes)
    search(capsys, '--user', 'ada', 'fever')
    search(capsys, '--user', 'ada', '--patient', 'PAT1', '--limit', '1', 'fever')
    search(capsys, '--user', 'bob', 'zebra')
    _, after = stored(notes)
    rows = [(row.action, row.actor_id, row.actor, row.patient_id, row.detail) for row in after[len(before) :]]
    assert rows == [
        ('search', None, '(command line)', None, 'all patients, 2 hits, as ada'),
        ('search', None, '(command line)', 'PAT1', 'this patient, 1+ hits, as ada'),
        ('search', None, '(command line)', None, 'all patients, 0 hits, as bob'),
    ]
    assert not any('fever' in str(row).lower() or 'zebra' in str(row).lower() for row in after)
    assert cli.main(['audit', 'verify']) == 0


def test_hostile_queries_exit_0_or_2_and_never_crash(notes, capsys):
    for raw in [*HOSTILE, '-', '--', '-fever', '--fever', '\udcff', 'fever\udcff']:
        code, out, err = search(capsys, '--user', 'ada', '--', raw)
        if code == 0:
            assert err == '' and all(line.count('\t') == 4 for line in out.splitlines()), raw
        else:
            assert code == 2 and out == '' and err.startswith('casebook: ') and err.count('\n') == 1, raw


def test_the_installed_command(notes, data_dir):
    """The entry point `make install` leaves at .venv/bin/casebook, as a separate process, in the C locale."""
    env = {**os.environ, 'CASEBOOK_DATA_DIR': str(data_dir), 'LC_ALL': 'C'}

    def casebook(*args: str | bytes) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run([CASEBOOK, 'search', *args], capture_output=True, env=env, check=False, timeout=120)

    done = casebook('--user', 'ada', 'fièvre')
    assert done.returncode == 0 and done.stderr == b''
    assert done.stdout.decode().endswith('\tFièvre à 38.4 °C since yesterday\n')
    for args, status in [
        (('--user', 'ada', '"'), 2),
        (('--user', 'ada', b'\xff'), 2),  # not UTF-8: no word
        (('--user', 'ada', '--', '-fever'), 0),
        (('--user', 'ada', 'NOT', '(fever', 'OR', 'x)*'), 0),
        (('--user', 'nobody', 'fever'), 2),
    ]:
        done = casebook(*args)
        assert done.returncode == status, (args, done.stderr)
        assert done.stderr.count(b'\n') == (status == 2), done.stderr
    assert b'search' in subprocess.run([CASEBOOK, '--help'], capture_output=True, check=True, timeout=60).stdout
