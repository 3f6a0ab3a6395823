"""Where the time of a big `casebook import` goes: the import run in this process, each step's wall-clock total.

The file is bench/seed.py's (one conversation of N doctor's messages); the account is added and the file imported
through the real command line code (`casebook.cli.main`), with the steps wrapped in timers:

    .venv/bin/python bench/import_steps.py --messages 1000000

Steps overlap (the storing includes the index), so they do not add up; `all` is the whole command.
"""

from __future__ import annotations

import argparse
import collections
import io
import os
import sys
import tempfile
import time
from contextlib import redirect_stdout
from pathlib import Path

if __package__ in (None, ''):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import DISPLAY_NAME, PASSWORD, USERNAME, write_result
from bench.seed import patient_id, write_conversation
from bench.trace_server import around
from casebook import cli
from casebook.services import exchange, search

TOTALS: collections.Counter[str] = collections.Counter()


def _timed(name: str, function):
    """`function` (or coroutine function) adding the time of each call to TOTALS[name]."""

    def add(started: float) -> None:
        TOTALS[name] += time.perf_counter() - started

    return around(function, add)


def _instrument() -> None:
    exchange._check_file = _timed('checking pass (parse and check every message)', exchange._check_file)
    batches = exchange._batches

    def timed_batches(*args, **kwargs):
        found = batches(*args, **kwargs)
        while True:
            started = time.perf_counter()
            batch = next(found, None)
            TOTALS['writing pass: parse and check'] += time.perf_counter() - started
            if batch is None:
                return
            yield batch

    exchange._batches = timed_batches
    exchange._Batches._insert = _timed('storing (messages and index)', exchange._Batches._insert)
    search.index_rows = _timed('  of which the index', search.index_rows)
    search._sqlite_terms = _timed('    of which cutting words', search._sqlite_terms)
    search.prepare_bulk = _timed('index levels (prepare_bulk)', search.prepare_bulk)
    search.settle = _timed('FTS5 optimize (settle)', search.settle)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--messages', type=int, default=1_000_000)
    parser.add_argument('--name', default='import_steps', help='results file bench/results/NAME.json')
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix='casebook-import-') as folder:
        conversation = Path(folder) / 'conversation.json'
        write_conversation(conversation, args.messages, patient_id(args.messages))
        os.environ['CASEBOOK_DATA_DIR'] = str(Path(folder) / 'data')
        sys.stdin = io.StringIO(PASSWORD + '\n')
        with redirect_stdout(io.StringIO()):
            cli.main(['user', 'add', USERNAME, '--display-name', DISPLAY_NAME, '--password-stdin'])
        _instrument()
        started = time.perf_counter()
        cli.main(['import', str(conversation), '--user', USERNAME])
        TOTALS['all'] = time.perf_counter() - started
    steps = {name: round(seconds, 2) for name, seconds in TOTALS.items()}
    for name, seconds in steps.items():
        print(f'{name:50s} {seconds:8.2f} s')
    print(f'results: {write_result(args.name, {"messages": args.messages, "seconds": steps})}')


if __name__ == '__main__':
    main()
