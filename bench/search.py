"""Full-text search at a million messages (issue 13's budgets), on SQLite and PostgreSQL in one run.

The notebook: clinician A (`bench`) with N messages spread over P patients, and clinician B (`bench-b`) with as
many, loaded through the real import path (`exchange.import_conversation`, in-process, one native-JSON file per
patient, A's and B's patients alternating), so the index is written exactly as production writes it. Texts are
two clinical phrases out of ~40 with a unique number each; a word in nearly every message (`note`, 99%); a rare
word (`zolmitriptan`) in 5 of A's messages and in every 20th of B's (isolation must cost nothing). The SQLite
data dir is cached under bench/.cache/search/; the PostgreSQL database is made on 127.0.0.1:5432 (user postgres)
and dropped at the end.

Measured, per engine (`search.find_sync`, first page of 20, in a database thread's plain Session, as the web
app's unit of work runs it; p50/p95 over --runs runs, after 3 untimed):
  - a rare word; a word in nearly every message;
  - a two-word prefix query as one types it (each prefix of `paracetamol daily` a search of its own);
  - the same with `This patient only` (conversation_id);
  - `LIKE '%word%'` over the same data (A's messages, newest first, 20) beside it (ILIKE on PostgreSQL);
  - the index's size on disk;
  - the migration that indexes the messages already stored: the index dropped, alembic_version set back to
    0006, then `casebook migrate` timed (a copy of the SQLite data dir; the PostgreSQL database itself, last).
And the import of 1,000,000 messages in one conversation through the CLI (bench/seed.py, `--import-1m`).

    .venv/bin/python bench/search.py                 # 1,000 patients x 1,000 messages, each clinician
    .venv/bin/python bench/search.py --quick         # smoke: tiny sizes, < 1 min, exit 1 if anything broke
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import random
import shutil
import sqlite3
import statistics
import subprocess
import sys
import time
import traceback
from dataclasses import asdict
from datetime import UTC, datetime, timedelta
from pathlib import Path

if __package__ in (None, ''):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (
    CACHE,
    CASEBOOK,
    DISPLAY_NAME,
    PASSWORD,
    POSTGRES_ADMIN_URL,
    USERNAME,
    clean_env,
    dir_bytes,
    load_average,
    log,
    machine,
    postgres_admin,
    summary,
    write_result,
)
from bench.seed import PHRASES

SEARCH_CACHE = CACHE / 'search'
BUILD_VERSION = 2  # bump when what is built changes (2: built by the migration of 3e9eab3, FTS5 hashsize)
OTHER_USERNAME = 'bench-b'
OTHER_DISPLAY_NAME = 'Dr Other Clinician'
RARE = 'zolmitriptan'
COMMON = 'note'
TYPED = 'paracetamol daily'
RARE_IN_A = 5
RARE_EVERY_B = 20  # B: the rare word in every 20th message
START = datetime(2022, 1, 1, tzinfo=UTC)
BUDGETS_MS = {'common_db_p95': 50.0, 'import_1m_s': 60.0}

MORE_PHRASES = [
    'Paracetamol 1 g four times daily, review in a week.',
    'Ibuprofen 400 mg three times daily with food.',
    'Amoxicillin 500 mg three times daily for 7 days.',
    'Temperature 38.4 °C this morning, settling with antipyretics.',
    'Chest clear, heart sounds normal, abdomen soft and non-tender.',
    'Fièvre modérée, pas de signe méningé.',
    'Daughter phoned with questions about the discharge letter.',
    'HbA1c 58 mmol/mol, up from 52; diet discussed.',
    'Metformin increased to 1 g twice daily.',
    'Wound inspected: clean, edges healing, dressing changed.',
    'Physiotherapy referral sent for the left knee.',
    'Sleep poor, worried about work; signposted to talking therapies.',
    'Bloods booked for renal function and electrolytes.',
    'Blood pressure 142/90 on two readings; home monitoring advised.',
    'No allergies known. Non-smoker, alcohol 6 units a week.',
    'Inhaler technique checked, spacer given.',
    'Peak flow 420, best 480; asthma well controlled.',
    'Rash on both forearms, itchy, no new products.',
    'Saw the practice nurse for the dressing; healing well.',
    'Follow-up telephone call: symptoms resolved.',
    'Daily paracetamol stopped, pain now mild.',
    'Urine dip negative for nitrites and leucocytes.',
    'Headache behind the eyes, worse in the evening, no visual change.',
    'Weight 74 kg, down 3 kg since last review.',
    'Plan discussed with the patient and her husband.',
    'Prescription for omeprazole 20 mg daily renewed.',
    'Dizziness on standing; lying and standing BP taken.',
    'Ear: wax both sides, drops advised.',
    'Cough for ten days, productive, no haemoptysis.',
    'Referral to dermatology, routine.',
    'Letter from cardiology: echo normal.',
    'Sick note for two weeks issued.',
]
ALL_PHRASES = PHRASES + MORE_PHRASES


# ---------------------------------------------------------------------------------------------------- texts


def message_text(rng: random.Random, number: int, *, rare: bool) -> str:
    """Two phrases and a unique number; `note` in 99 of 100 messages; the rare word when asked."""
    head = f'Clinic note {number}:' if number % 100 else f'Entry {number}:'
    first, second = rng.sample(ALL_PHRASES, 2)
    tail = f' Started {RARE} for migraine.' if rare else ''
    return f'{head} {first} {second}{tail}'


def rare_positions_a(patients: int, per_patient: int) -> set[tuple[int, int]]:
    """(patient index, message index) of A's few messages with the rare word, spread over the notebook."""
    spots = [0.02, 0.3, 0.5, 0.7, 0.99]
    return {(min(patients - 1, int(patients * s)), per_patient // 2) for s in spots[:RARE_IN_A]}


def conversation_file(
    clinician: str, patient: int, per_patient: int, number_start: int, rare_spots: set[tuple[int, int]] | None
) -> tuple[io.BytesIO, str]:
    """A native-JSON conversation (SPEC §3), as bench/seed.py writes it, in memory."""
    rng = random.Random(f'{clinician}-{patient}')
    patient_id = f'{clinician.upper()}-P{patient:04d}'
    parts = [f'{{"format": "casebook.conversation.v1", "patient_id": {json.dumps(patient_id)}, "messages": [']
    base = START + timedelta(minutes=patient)
    for index in range(per_patient):
        if rare_spots is None:  # B: the rare word everywhere
            rare = index % RARE_EVERY_B == 0
        else:
            rare = (patient, index) in rare_spots
        record = {
            'sender': 'doctor' if index % 3 else 'nurse',
            'text': message_text(rng, number_start + index, rare=rare),
            'sent_at': (base + index * timedelta(hours=6)).strftime('%Y-%m-%dT%H:%M:%SZ'),
        }
        parts.append(('\n' if index == 0 else ',\n') + json.dumps(record, ensure_ascii=False))
    parts.append('\n]}\n')
    return io.BytesIO(''.join(parts).encode()), patient_id


# ---------------------------------------------------------------------------------------------------- building


def settings_for(data_dir: Path, url: str | None):
    from casebook.config import Settings

    return Settings(data_dir=data_dir, database_url=url)


async def build_notebook(data_dir: Path, url: str | None, patients: int, per_patient: int) -> dict:
    """Both clinicians' notebooks, imported patient by patient (A, B, A, B…) through exchange.import_conversation."""
    from casebook.db import Database
    from casebook.services import accounts, exchange

    settings = settings_for(data_dir, url)
    settings.prepare_data_dir()
    database = Database.from_settings(settings)
    try:
        await database.migrate()
        async with database.session() as session:
            a = await accounts.add_clinician(session, username=USERNAME, display_name=DISPLAY_NAME, password=PASSWORD)
            b = await accounts.add_clinician(
                session, username=OTHER_USERNAME, display_name=OTHER_DISPLAY_NAME, password=PASSWORD
            )
        spots = rare_positions_a(patients, per_patient)
        started = time.perf_counter()
        make_seconds = 0.0
        imported = 0
        for patient in range(patients):
            for clinician, rare in ((a, spots), (b, None)):
                made = time.perf_counter()
                number_start = (2 * patient + (clinician is b)) * per_patient
                source, _patient_id = conversation_file(clinician.username, patient, per_patient, number_start, rare)
                make_seconds += time.perf_counter() - made
                async with database.session() as session:
                    result = await exchange.import_conversation(session, clinician=clinician, source=source)
                imported += result.imported
            if patient and patient % 100 == 0:
                rate = imported / (time.perf_counter() - started - make_seconds)
                log(f'  {imported:,} messages imported ({rate:,.0f}/s), load {load_average()[0]}')
        seconds = time.perf_counter() - started - make_seconds
        return {
            'messages': imported,
            'import_seconds': round(seconds, 1),
            'files_made_seconds': round(make_seconds, 1),
            'import_rate_per_s': round(imported / seconds),
            'load_average_end': load_average(),
        }
    finally:
        await database.dispose()


def sqlite_notebook(patients: int, per_patient: int, rebuild: bool) -> tuple[Path, dict]:
    """The cached SQLite data dir of the notebook, built if missing."""
    root = SEARCH_CACHE / f'notebook-{patients}x{per_patient}'
    marker = root / 'build.json'
    if not rebuild and marker.exists():
        info = json.loads(marker.read_text())
        if info.get('version') == BUILD_VERSION and (root / 'data').exists():
            info['cached'] = True
            return root / 'data', info
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    log(f'sqlite: building {2 * patients * per_patient:,} messages into {root / "data"}')
    info = asyncio.run(build_notebook(root / 'data', None, patients, per_patient))
    info |= {'version': BUILD_VERSION, 'load_average_at_build': load_average()}
    marker.write_text(json.dumps(info, indent=2) + '\n')
    info['cached'] = False
    return root / 'data', info


# ---------------------------------------------------------------------------------------------------- measuring


def sync_sessionmaker(url: str):
    """Plain Sessions on the driver the app's database threads use (sqlite3 with the app's pragmas, psycopg)."""
    from sqlalchemy import create_engine, event
    from sqlalchemy.engine import make_url
    from sqlalchemy.orm import sessionmaker

    from casebook.db import _sqlite_pragmas

    made = make_url(url)
    if made.get_backend_name() == 'sqlite':
        engine = create_engine(made.set(drivername='sqlite+pysqlite'))
        event.listen(engine, 'connect', _sqlite_pragmas)
    else:
        engine = create_engine(made.set(drivername='postgresql+psycopg'))
    return engine, sessionmaker(engine, expire_on_commit=False)


def timed(work, runs: int, warmup: int = 3) -> tuple[list[float], object]:
    result = None
    for _ in range(warmup):
        result = work()
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        result = work()
        times.append((time.perf_counter() - started) * 1000)
    return times, result


def unique_word_of_a(patients: int, per_patient: int) -> str:
    """The number of one of A's messages: a word only A has, once (no longer number starts with it)."""
    return str(2 * int(patients * 0.7) * per_patient + per_patient // 2 + 1)


def measure_engine(url: str, runs: int, like_runs: int, only_a: str) -> dict:
    """find_sync and LIKE for the query shapes, on one database."""
    from sqlalchemy import select, text

    from casebook.models import Clinician, Conversation
    from casebook.services import search
    from casebook.services.accounts import to_info

    engine, Session = sync_sessionmaker(url)
    out: dict = {'load_average_start': load_average()}
    try:
        with Session() as session:
            a = to_info(session.scalar(select(Clinician).where(Clinician.username == USERNAME)))
            # a patient of A's with the typed words in it: the one of the newest paracetamol note
            found = search.find_sync(session, clinician=a, query=search.parse(TYPED), limit=1)
            conversation_id = found.hits[0].conversation_id
            patient = session.get(Conversation, conversation_id).patient_id
            session.rollback()
        out['patient_only'] = patient

        def find(raw: str, conversation: int | None = None):
            def work():
                with Session() as session:
                    results = search.find_sync(
                        session, clinician=a, query=search.parse(raw), conversation_id=conversation
                    )
                    session.rollback()
                    return len(results.hits), results.more

            return work

        shapes = {}
        for name, raw in (('rare', RARE), ('rare_only_a', only_a), ('common', COMMON)):
            times, (hits, more) = timed(find(raw), runs)
            shapes[name] = summary(times) | {'query': raw, 'hits_first_page': hits, 'more': more}
            shapes[name]['load_average'] = load_average()[0]
            log(f'  {name} {raw!r}: p50 {shapes[name]["median"]} ms, p95 {shapes[name]["p95"]} ms, {hits} hits')
        for label, conversation in (('typing', None), ('typing_patient_only', conversation_id)):
            keystrokes = []
            for end in range(1, len(TYPED) + 1):
                raw = TYPED[:end]
                times, (hits, more) = timed(find(raw, conversation), runs, warmup=1)
                keystrokes.append(summary(times) | {'query': raw, 'hits_first_page': hits, 'more': more})
            medians = [k['median'] for k in keystrokes]
            shapes[label] = {
                'median_of_keystroke_medians': round(statistics.median(medians), 2),
                'slowest_keystroke_median': max(medians),
                'slowest_keystroke_p95': max(k['p95'] for k in keystrokes),
                'keystrokes': keystrokes,
                'load_average': load_average()[0],
            }
            slow = max(keystrokes, key=lambda k: k['median'])
            log(
                f'  {label}: median over keystrokes {shapes[label]["median_of_keystroke_medians"]} ms, '
                f'slowest {slow["query"]!r} {slow["median"]} ms (p95 {slow["p95"]})'
            )
        out['find_sync_ms'] = shapes

        postgres = engine.dialect.name == 'postgresql'
        operator = 'ILIKE' if postgres else 'LIKE'  # SQLite's LIKE ignores ASCII case already
        like_sql = text(
            'SELECT m.id FROM messages m JOIN conversations c ON c.id = m.conversation_id '  # noqa: S608 (constants)
            f'WHERE c.clinician_id = :clinician AND m.text {operator} :pattern ORDER BY m.id DESC LIMIT 21'
        )

        def like(word: str):
            def work():
                with Session() as session:
                    ids = session.execute(like_sql, {'clinician': a.id, 'pattern': f'%{word}%'}).scalars().all()
                    session.rollback()
                    return len(ids)

            return work

        likes = {}
        for name, raw in (('rare', RARE), ('common', COMMON)):
            times, hits = timed(like(raw), like_runs, warmup=1)
            likes[name] = summary(times) | {'query': f'%{raw}%', 'rows': hits, 'load_average': load_average()[0]}
            ratio = likes[name]['median'] / max(shapes[name]['median'], 0.001)
            likes[name]['ratio_to_find_sync_median'] = round(ratio, 1)
            log(f'  LIKE %{raw}%: p50 {likes[name]["median"]} ms ({ratio:.0f}x find_sync), {hits} rows')
        out['like_ms'] = likes
        out['explain'] = explain(Session, postgres, a.id)
        out['index_size'] = index_size(Session, postgres)
    finally:
        engine.dispose()
    out['load_average_end'] = load_average()
    return out


def explain(Session, postgres: bool, clinician_id: int) -> dict:
    """The plans of the common and rare word's first page: on PostgreSQL EXPLAIN ANALYZE of both of find_sync's
    steps (the scope's newest messages, then the GIN index with the scope's word); on SQLite the MATCH asked."""
    from sqlalchemy import text

    from casebook.services import search

    plans = {}
    for raw in (COMMON, RARE):
        query = search.parse(raw)
        with Session() as session:  # each step in a transaction of its own: SET LOCAL ends with it
            if postgres:
                params = {'scope': clinician_id, 'before': search.NO_LIMIT, 'limit': search.PAGE + 1}
                tsquery = search._tsquery(query)
                recent = text('EXPLAIN (ANALYZE, BUFFERS) ' + search._POSTGRES_RECENT['clinician'].text)
                indexed = text('EXPLAIN (ANALYZE, BUFFERS) ' + search._POSTGRES_INDEXED['clinician'].text)
                plans[raw] = {'recent': [row[0] for row in session.execute(recent, params | {'query': tsquery})]}
                session.rollback()
                session.execute(text('SET LOCAL enable_indexscan = off'))  # as find_sync's second step
                scoped = f"{tsquery} & '#u{clinician_id}'"
                plans[raw]['indexed'] = [row[0] for row in session.execute(indexed, params | {'query': scoped})]
            else:
                connection = session.connection()
                expression = search._fts5_expression(connection, query, [f'u{clinician_id}'])
                plans[raw] = {'match': expression}
            session.rollback()
    return plans


def index_size(Session, postgres: bool) -> dict:
    from sqlalchemy import text

    with Session() as session:
        if postgres:
            row = session.execute(
                text(
                    "SELECT pg_total_relation_size('message_search'), pg_relation_size('message_search'), "
                    "pg_relation_size('ix_message_search_terms'), pg_relation_size('ix_message_search_clinician'), "
                    "pg_relation_size('ix_message_search_conversation'), pg_total_relation_size('messages'), "
                    'pg_database_size(current_database())'
                )
            ).one()
            keys = ('total', 'table', 'gin', 'btree_clinician', 'btree_conversation', 'messages_total', 'database')
            return {k: round(v / 1e6, 1) for k, v in zip(keys, row, strict=True)} | {'unit': 'MB'}
        try:
            rows = session.execute(
                text("SELECT name, SUM(pgsize) FROM dbstat WHERE name LIKE 'message_search%' GROUP BY name")
            ).all()
            sizes = {name: round(size / 1e6, 1) for name, size in rows}
            total = round(sum(sizes.values()), 1)
            messages = session.execute(
                text(
                    'SELECT SUM(pgsize) FROM dbstat WHERE name IN '
                    "(SELECT name FROM sqlite_master WHERE tbl_name = 'messages')"
                )
            ).scalar()
            database = session.execute(text('SELECT page_count * page_size FROM pragma_page_count, pragma_page_size'))
            return {
                'total': total,
                'tables': sizes,
                'messages_total': round((messages or 0) / 1e6, 1),
                'database': round(database.scalar() / 1e6, 1),
                'unit': 'MB',
            }
        except Exception as error:  # dbstat is a compile-time option of SQLite
            return {'error': str(error)}


# ---------------------------------------------------------------------------------------------------- migration


def run_cli(args: list[str], env: dict[str, str], cwd: Path, timeout: float = 1800) -> dict:
    """`casebook ARGS`: wall time, CPU time and peak RSS of the child (wait4), its output."""
    started = time.perf_counter()
    process = subprocess.Popen(
        [str(CASEBOOK), *args], env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        raise
    seconds = time.perf_counter() - started
    if process.returncode != 0:
        raise RuntimeError(f'casebook {" ".join(args)} exited with {process.returncode}: {err.strip()[-2000:]}')
    return {'command': f'casebook {" ".join(args)}', 'seconds': round(seconds, 2), 'output': (out + err).strip()}


def migration_sqlite(data_dir: Path, name: str) -> dict:
    """A copy of a data dir set back to revision 0006 (index dropped), then `casebook migrate` timed."""
    target = CACHE / 'work' / name
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(data_dir, target)
    connection = sqlite3.connect(target / 'casebook.sqlite3')
    try:
        messages = connection.execute('SELECT count(*) FROM messages').fetchone()[0]
        connection.execute('DROP TABLE message_search')
        connection.execute('DROP TABLE message_search_words')
        connection.execute("UPDATE alembic_version SET version_num = '0006'")
        connection.commit()
        connection.execute('VACUUM')
    finally:
        connection.close()
    os.sync()
    log(f'migration (sqlite): indexing {messages:,} stored messages')
    load = load_average()[0]
    result = run_cli(['migrate'], clean_env(CASEBOOK_DATA_DIR=str(target)), target.parent)
    result |= {'messages': messages, 'load_average': load, 'load_average_end': load_average()[0]}
    result['seconds_per_million'] = round(result['seconds'] * 1e6 / messages, 1)
    log(f'  {result["seconds"]} s ({result["seconds_per_million"]} s per million)')
    shutil.rmtree(target)
    return result


def migration_postgres(url: str, data_dir: Path) -> dict:
    """The PostgreSQL database itself set back to 0006 (index dropped), then `casebook migrate` timed."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    engine = create_engine(make_url(url).set(drivername='postgresql+psycopg'))
    try:
        with engine.begin() as connection:
            messages = connection.execute(text('SELECT count(*) FROM messages')).scalar()
            connection.execute(text('DROP TABLE message_search'))
            connection.execute(text("UPDATE alembic_version SET version_num = '0006'"))
        with engine.connect() as connection:
            connection.execution_options(isolation_level='AUTOCOMMIT').execute(text('VACUUM ANALYZE'))
    finally:
        engine.dispose()
    log(f'migration (postgresql): indexing {messages:,} stored messages')
    load = load_average()[0]
    env = clean_env(CASEBOOK_DATA_DIR=str(data_dir), CASEBOOK_DATABASE_URL=url)
    result = run_cli(['migrate'], env, data_dir.parent)
    result |= {'messages': messages, 'load_average': load, 'load_average_end': load_average()[0]}
    result['seconds_per_million'] = round(result['seconds'] * 1e6 / messages, 1)
    log(f'  {result["seconds"]} s ({result["seconds_per_million"]} s per million)')
    return result


# ---------------------------------------------------------------------------------------------------- import 1M


def import_one_conversation(messages: int) -> dict:
    """bench/seed.py's import of one conversation of `messages` through the CLI, forced (index included)."""
    from bench.seed import seeded

    load = load_average()[0]
    info = seeded(messages, force=True)
    return {
        'messages': messages,
        'seconds': info.import_seconds,
        'output': info.import_output,
        'load_average': load,
        'load_average_end': load_average()[0],
        'budget_s': BUDGETS_MS['import_1m_s'],
        'within_budget': info.import_seconds is not None and info.import_seconds <= BUDGETS_MS['import_1m_s'],
        'seeded': asdict(info),
    }


def import_at_commit(commit: str, messages: int) -> dict:
    """The same import (bench/seed.py's file, `casebook user add` then `casebook import`) by the code of another
    commit: a temporary git worktree put first on PYTHONPATH, the same venv; removed after."""
    from bench.common import ROOT, work_dir
    from bench.seed import patient_id, write_conversation

    tree = CACHE / 'work' / f'tree-{commit}'
    if tree.exists():
        subprocess.run(['git', '-C', str(ROOT), 'worktree', 'remove', '--force', str(tree)], check=False)
    subprocess.run(['git', '-C', str(ROOT), 'worktree', 'add', '--detach', str(tree), commit], check=True)
    try:
        folder = work_dir(f'import-{commit}')
        data_dir = folder / 'data'
        env = clean_env(CASEBOOK_DATA_DIR=str(data_dir), PYTHONPATH=str(tree))
        cli = [sys.executable, '-c', 'import sys; from casebook.cli import main; sys.exit(main())']
        check = subprocess.run(
            [*cli[:2], 'import casebook; print(casebook.__file__)'], env=env, cwd=folder, capture_output=True, text=True
        )
        where = check.stdout.strip()
        if not where.startswith(str(tree)):
            raise RuntimeError(f'the old code was not the one imported: {where}')
        subprocess.run(
            [*cli, 'user', 'add', USERNAME, '--display-name', DISPLAY_NAME, '--password-stdin'],
            input=PASSWORD + '\n',
            env=env,
            cwd=folder,
            capture_output=True,
            text=True,
            check=True,
        )
        conversation = folder / 'conversation.json'
        write_conversation(conversation, messages, patient_id(messages))
        load = load_average()[0]
        started = time.perf_counter()
        done = subprocess.run(
            [*cli, 'import', str(conversation), '--user', USERNAME],
            env=env,
            cwd=folder,
            capture_output=True,
            text=True,
            check=True,
        )
        seconds = round(time.perf_counter() - started, 2)
        log(f'import at {commit}: {messages:,} messages in {seconds} s')
        shutil.rmtree(folder)
        return {
            'commit': commit,
            'messages': messages,
            'seconds': seconds,
            'output': done.stdout.strip(),
            'load_average': load,
            'load_average_end': load_average()[0],
        }
    finally:
        subprocess.run(['git', '-C', str(ROOT), 'worktree', 'remove', '--force', str(tree)], check=False)


# ---------------------------------------------------------------------------------------------------- browser

# Armed before the trigger: resolves with milliseconds from the trigger (a keydown seen in the capture phase,
# before the page's own handlers, or the click issued here) until what is awaited is in the DOM, and until it is
# in the viewport. kind 'hits': at least `want` results drawn after the trigger; kind 'message': a message
# (role=article) holding `text` drawn after the trigger.
ARM_JS = """
([kind, text, want, timeout, clickText]) => {
  window.__bench = new Promise((resolve, reject) => {
    let started = null;
    let target = null;
    const region = () => document.querySelector('[aria-label="Search results"]');
    const hits = () => { const r = region(); return r ? r.querySelectorAll('.casebook-hit') : []; };
    const check = (records) => {
      if (started === null) return null;
      if (kind === 'hits') {
        const added = records.some((record) => [...record.addedNodes].some((node) => node.nodeType === 1
          && (node.matches('.casebook-hit') || node.querySelector('.casebook-hit'))));
        if (!added) return null;
        const list = hits();
        return list.length >= want ? list[0] : null;
      }
      for (const record of records) {
        for (const node of record.addedNodes) {
          if (node.nodeType !== 1) continue;
          const articles = node.matches('[role=article]') ? [node] : [...node.querySelectorAll('[role=article]')];
          const found = articles.find((a) => (a.textContent || '').includes(text));
          if (found) return found;
        }
      }
      return null;
    };
    const observer = new MutationObserver((records) => {
      const element = check(records);
      if (element === null) return;
      target = element;
      const shown = performance.now();
      observer.disconnect();
      clearTimeout(timer);
      const until = shown + 5000;
      const inView = () => {
        const rect = target.getBoundingClientRect();
        return rect.height > 0 && rect.bottom > 0 && rect.top < window.innerHeight;
      };
      const poll = () => {
        if (inView()) resolve({shown: shown - started, in_view: performance.now() - started});
        else if (performance.now() > until) resolve({shown: shown - started, in_view: null});
        else requestAnimationFrame(poll);
      };
      poll();
    });
    const timer = setTimeout(() => { observer.disconnect(); reject(new Error('not shown within ' + timeout + ' ms')); },
                             timeout);
    observer.observe(document.body, {childList: true, subtree: true});
    if (clickText) {
      const button = [...hits()].find((b) => (b.textContent || '').includes(clickText));
      if (!button) { reject(new Error('no result holding ' + clickText)); return; }
      started = performance.now();
      button.click();
    } else {
      document.addEventListener('keydown', () => { if (started === null) started = performance.now(); },
                                {capture: true, once: true});
    }
  });
}
"""
BROWSER_TIMEOUT_MS = 30_000


def _search_reset(page) -> None:
    """A search that finds nothing: the results list emptied, so the next search's results are new nodes."""
    box = page.get_by_label('Search notes')
    box.fill('qqqqqqzzz')
    box.press('Enter')
    page.get_by_role('region', name='Search results').get_by_text('No notes match').wait_for(timeout=BROWSER_TIMEOUT_MS)


def _await_armed(page) -> dict:
    return page.evaluate('() => window.__bench')


def _search_timed(page, word: str, want: int) -> dict:
    """Type the word, then time Enter → `want` results drawn (and the first in view)."""
    _search_reset(page)
    box = page.get_by_label('Search notes')
    box.fill(word)
    page.evaluate(ARM_JS, ['hits', '', want, BROWSER_TIMEOUT_MS, None])
    box.press('Enter')
    return _await_armed(page)


def _typing_timed(page, typed: str, pause_s: float) -> list[dict]:
    """Type one key at a time into an empty box; each keystroke → the results drawn anew (the app searches once
    typing pauses for search_panel.TYPING_PAUSE), then a pause before the next key."""
    _search_reset(page)
    box = page.get_by_label('Search notes')
    box.fill('')
    box.focus()
    page.wait_for_timeout(500)
    out = []
    for char in typed:
        page.evaluate(ARM_JS, ['hits', '', 20, BROWSER_TIMEOUT_MS, None])
        page.keyboard.type(char)
        out.append(_await_armed(page) | {'query': box.input_value()})
        page.wait_for_timeout(int(pause_s * 1000))
    return out


def _choose_timed(page, word: str, text: str, other_patient: str) -> dict:
    """Another patient open; search the word (Enter); time the click on its result → the message (role=article)
    in the conversation, and in view."""
    from bench.browser_timing import _open

    _open(page, other_patient)
    box = page.get_by_label('Search notes')
    box.fill(word)
    box.press('Enter')
    page.get_by_role('region', name='Search results').locator('.casebook-hit').first.wait_for(
        timeout=BROWSER_TIMEOUT_MS
    )
    page.evaluate(ARM_JS, ['message', text, 0, BROWSER_TIMEOUT_MS, word])
    result = _await_armed(page)
    page.locator('.casebook-found').first.wait_for(timeout=BROWSER_TIMEOUT_MS)
    return result


def typing_pause() -> float:
    """search_panel.TYPING_PAUSE, read from its source (importing it would import NiceGUI here)."""
    import re

    from bench.common import ROOT

    source = (ROOT / 'casebook' / 'web' / 'pages' / 'search_panel.py').read_text()
    return float(re.search(r'^TYPING_PAUSE = ([0-9.]+)', source, re.M).group(1))


def _ms(results: list[dict], key: str) -> dict:
    return summary([r[key] for r in results if r.get(key) is not None])


def measure_browser(data_dir: Path, name: str, repeats: int, *, choose: tuple[str, str] | None, searches: bool) -> dict:
    """A fresh copy of a data dir served by `casebook serve`, signed in as A in headless Chromium."""
    from playwright.sync_api import sync_playwright

    from bench.browser_timing import _log_in
    from bench.common import casebook_server, fresh_copy, launch_chromium

    copy = fresh_copy(data_dir, f'search-browser-{name}')
    server = casebook_server(copy, CACHE / 'work' / f'search-browser-{name}.log')
    out: dict = {'data_dir': str(data_dir), 'repeats': repeats, 'typing_pause_s': typing_pause()}
    log(f'browser ({name}): serving a copy of {data_dir}')
    with server, sync_playwright() as playwright:
        browser = launch_chromium(playwright)
        context = browser.new_context(viewport={'width': 1280, 'height': 800})
        context.set_default_timeout(BROWSER_TIMEOUT_MS)
        page = context.new_page()
        errors: list[str] = []
        page.on('pageerror', lambda error: errors.append(str(error)))
        try:
            _log_in(page, server.base_url)
            if searches:
                for label, word, want in (('rare', RARE, RARE_IN_A), ('common', COMMON, 20)):
                    _search_timed(page, word, want)  # untimed, once
                    runs = [_search_timed(page, word, want) for _ in range(repeats)]
                    out[label] = {
                        'query': word,
                        'results_awaited': want,
                        'shown_ms': _ms(runs, 'shown'),
                        'in_view_ms': _ms(runs, 'in_view'),
                        'load_average': load_average()[0],
                    }
                    log(f'  {label} {word!r}: Enter → {want} results median {out[label]["shown_ms"]["median"]} ms')
                pause = typing_pause()
                sequences = [_typing_timed(page, TYPED, 0.2) for _ in range(repeats)]
                keystrokes = []
                for index, char in enumerate(TYPED):
                    runs = [sequence[index] for sequence in sequences]
                    shown = _ms(runs, 'shown')
                    keystrokes.append(
                        {
                            'query': TYPED[: index + 1],
                            'char': char,
                            'shown_ms': shown,
                            'in_view_ms': _ms(runs, 'in_view'),
                        }
                    )
                medians = [k['shown_ms']['median'] for k in keystrokes]
                out['typing'] = {
                    'median_of_keystroke_medians_ms': round(statistics.median(medians), 1),
                    'same_less_typing_pause_ms': round(statistics.median(medians) - pause * 1000, 1),
                    'slowest_keystroke_median_ms': max(medians),
                    'keystrokes': keystrokes,
                    'load_average': load_average()[0],
                }
                log(
                    f'  typing: keystroke → results median {out["typing"]["median_of_keystroke_medians_ms"]} ms '
                    f'(of which the {pause * 1000:.0f} ms pause the app waits for)'
                )
            if choose is not None:
                word, text = choose
                _choose_timed(page, word, text, 'BENCH-OTHER')  # untimed, once
                runs = [_choose_timed(page, word, text, 'BENCH-OTHER') for _ in range(repeats)]
                out['choose'] = {
                    'word': word,
                    'message_text_awaited': text,
                    'shown_ms': _ms(runs, 'shown'),
                    'in_view_ms': _ms(runs, 'in_view'),
                    'load_average': load_average()[0],
                }
                log(
                    f'  choose a result: click → message in the DOM median {out["choose"]["shown_ms"]["median"]} ms, '
                    f'in view {out["choose"]["in_view_ms"].get("median")} ms'
                )
            out['page_errors'] = errors
        finally:
            context.close()
            browser.close()
    out['server_log_errors'] = server.errors_in_log()
    shutil.rmtree(copy, ignore_errors=True)
    return out


def browser_part(args: argparse.Namespace, data_dir: Path) -> dict:
    """In the notebook: rare, common, typing, and a result 500,000 messages back in A's notebook; in the seeded
    single conversation of 1M: a result 500,000 messages back in that conversation."""
    from bench.seed import seeded

    out = {}
    a_patients_back = args.patients // 2  # A's patients are imported in order: half of A's notebook is newer
    number = 2 * (args.patients - 1 - a_patients_back) * args.per_patient + args.per_patient - 1
    out['notebook'] = measure_browser(
        data_dir, 'notebook', args.browser_repeats, choose=(str(number), f'note {number}:'), searches=True
    )
    out['notebook']['choose_note'] = f"A's message {a_patients_back * args.per_patient:,} back in A's notebook"
    if args.browser_conversation:
        info = seeded(args.browser_conversation)
        back = args.browser_conversation // 2
        index = args.browser_conversation - 1 - back
        word = f'{index:07d}'
        out['conversation'] = measure_browser(
            Path(info.data_dir), 'conversation', args.browser_repeats, choose=(word, f'#{word} of'), searches=False
        )
        out['conversation']['choose_note'] = f'message {back:,} back from the newest of {args.browser_conversation:,}'
    return out


# ---------------------------------------------------------------------------------------------------- main


def run(args: argparse.Namespace) -> dict:
    info: dict = {
        'machine': machine(),
        'patients': args.patients,
        'messages_per_patient': args.per_patient,
        'messages_per_clinician': args.patients * args.per_patient,
        'runs': args.runs,
        'like_runs': args.like_runs,
        'words': {'rare': RARE, 'common': COMMON, 'typed': TYPED},
        'started': datetime.now(UTC).isoformat(timespec='seconds'),
        'errors': [],
    }
    engines: dict = {}
    info['engines'] = engines

    def part(name: str, work):
        try:
            return work()
        except Exception as error:
            log(f'{name} FAILED: {error}')
            info['errors'].append({'part': name, 'error': repr(error), 'traceback': traceback.format_exc()})
            return None

    only_a = unique_word_of_a(args.patients, args.per_patient)
    info['words']['rare_only_a'] = only_a
    if args.skip_notebook:
        args.no_postgres = True
    else:  # SQLite
        data_dir, build = sqlite_notebook(args.patients, args.per_patient, args.rebuild)
        log(f'sqlite notebook: {data_dir} ({"cached" if build.get("cached") else "built"}): {build}')
        sqlite_url = f'sqlite+aiosqlite:///{data_dir / "casebook.sqlite3"}'
        engines['sqlite'] = {'build': build, 'data_dir_mb': round(dir_bytes(data_dir) / 1e6, 1)}
        log('sqlite: measuring')
        engines['sqlite']['measured'] = part(
            'sqlite measure', lambda: measure_engine(sqlite_url, args.runs, args.like_runs, only_a)
        )
        if not args.no_migration:
            engines['sqlite']['migration'] = part(
                'sqlite migration', lambda: migration_sqlite(data_dir, 'search-migrate')
            )

    # PostgreSQL
    if not args.no_postgres:
        name = f'casebook_bench_search_{os.getpid()}'
        url = POSTGRES_ADMIN_URL.rsplit('/', 1)[0] + f'/{name}'
        pg_dir = CACHE / 'work' / 'search-postgres'
        if pg_dir.exists():
            shutil.rmtree(pg_dir)
        asyncio.run(postgres_admin(f'CREATE DATABASE {name}'))
        try:
            log(f'postgresql: building {2 * args.patients * args.per_patient:,} messages into {name}')
            build = part(
                'postgresql build', lambda: asyncio.run(build_notebook(pg_dir, url, args.patients, args.per_patient))
            )
            engines['postgresql'] = {'build': build}
            if build is not None:
                from sqlalchemy import create_engine, text
                from sqlalchemy.engine import make_url

                engine = create_engine(make_url(url).set(drivername='postgresql+psycopg'))
                with engine.connect() as connection:  # as autovacuum would, soon after a big import
                    connection.execution_options(isolation_level='AUTOCOMMIT').execute(text('VACUUM ANALYZE'))
                engine.dispose()
                log('postgresql: measuring')
                engines['postgresql']['measured'] = part(
                    'postgresql measure', lambda: measure_engine(url, args.runs, args.like_runs, only_a)
                )
                if not args.no_migration:
                    engines['postgresql']['migration'] = part(
                        'postgresql migration', lambda: migration_postgres(url, pg_dir)
                    )
        finally:
            if args.keep_postgres:
                log(f'postgresql: kept {url} (DROP DATABASE {name} when done)')
                info['kept_postgres'] = url
            else:
                asyncio.run(postgres_admin(f'DROP DATABASE IF EXISTS {name} WITH (FORCE)'))
                shutil.rmtree(pg_dir, ignore_errors=True)

    if args.import_messages:
        info['import_one_conversation'] = part('import', lambda: import_one_conversation(args.import_messages))
        if args.compare_commit and not args.quick:
            info['import_one_conversation_before'] = part(
                'import at commit', lambda: import_at_commit(args.compare_commit, args.import_messages)
            )

    if args.browser and not args.skip_notebook:
        info['browser'] = part('browser', lambda: browser_part(args, data_dir))

    verdicts = {}
    for engine_name, engine in engines.items():
        measured = engine.get('measured') or {}
        common = measured.get('find_sync_ms', {}).get('common')
        if common:
            verdicts[f'{engine_name}_common_db_p95_ms'] = {
                'measured': common['p95'],
                'budget': BUDGETS_MS['common_db_p95'],
                'pass': common['p95'] <= BUDGETS_MS['common_db_p95'],
            }
    if info.get('import_one_conversation'):
        imported = info['import_one_conversation']
        verdicts['import_one_conversation_s'] = {
            'measured': imported['seconds'],
            'budget': BUDGETS_MS['import_1m_s'],
            'pass': imported['within_budget'],
        }
    info['verdicts'] = verdicts
    info['load_average_end'] = load_average()
    info['finished'] = datetime.now(UTC).isoformat(timespec='seconds')
    return info


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--quick', action='store_true', help='smoke run at tiny sizes (< 1 min); exit 1 on error')
    parser.add_argument('--patients', type=int, default=1000, help='patients per clinician')
    parser.add_argument('--per-patient', type=int, default=1000, help='messages per patient')
    parser.add_argument('--runs', type=int, default=30, help='timed runs of each find_sync query')
    parser.add_argument('--like-runs', type=int, default=10, help='timed runs of each LIKE query')
    parser.add_argument('--import-messages', type=int, default=1_000_000, help='one conversation via the CLI; 0: skip')
    parser.add_argument(
        '--compare-commit', default='', help='also import with the code of this commit (e.g. 0d7dcf2, before search)'
    )
    parser.add_argument('--browser', action='store_true', help='also the searches in Chromium (SQLite)')
    parser.add_argument('--browser-repeats', type=int, default=10)
    parser.add_argument('--browser-conversation', type=int, default=1_000_000, help='one conversation; 0: skip')
    parser.add_argument('--no-postgres', action='store_true')
    parser.add_argument('--keep-postgres', action='store_true', help='leave the database for EXPLAIN; say its name')
    parser.add_argument('--skip-notebook', action='store_true', help='only the import of one conversation')
    parser.add_argument('--no-migration', action='store_true')
    parser.add_argument('--rebuild', action='store_true', help='build the SQLite notebook again even if cached')
    parser.add_argument('--name', default='search', help='bench/results/NAME.json')
    args = parser.parse_args()
    if args.quick:
        args.patients, args.per_patient, args.runs, args.like_runs = 10, 100, 5, 3
        args.import_messages = 2000
        args.browser_repeats, args.browser_conversation = 2, 2000
        args.name = f'{args.name}-quick' if args.name == 'search' else args.name
    info = run(args)
    path = write_result(args.name, info)
    log(f'written {path}')
    print(json.dumps(info['verdicts'], indent=2))
    if info['errors']:
        for error in info['errors']:
            print(f'ERROR in {error["part"]}: {error["error"]}', file=sys.stderr)
        return 1
    if args.quick:
        for engine in info['engines'].values():
            shapes = (engine.get('measured') or {}).get('find_sync_ms', {})
            found = [shapes.get(k, {}).get('hits_first_page') for k in ('rare', 'rare_only_a', 'common')]
            if found != [RARE_IN_A, 1, 20]:
                print('ERROR: the searches did not find what was seeded', file=sys.stderr)
                return 1
    return 0


if __name__ == '__main__':
    sys.exit(main())
