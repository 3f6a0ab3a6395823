"""Seeded Casebook data dirs: one clinician and one patient whose conversation has N messages.

The conversation is written as a native-JSON file (SPEC §3) and imported with the real CLI
(`casebook user add … --password-stdin`, then `casebook import FILE --user bench`). Seeded data dirs are
cached under bench/.cache/seed/ so a million messages are imported once, not on every run.

    .venv/bin/python bench/seed.py --messages 100000        # prints the data dir
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

if __package__ in (None, ''):
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import CACHE, DISPLAY_NAME, PASSWORD, USERNAME, casebook_cli, has_import_command, log

SEED_VERSION = 2  # bump when what is seeded changes (2: support.PASSWORD); other versions are seeded anew
SEEDS = CACHE / 'seed'
START = datetime(2024, 1, 1, tzinfo=UTC)
STEP = timedelta(seconds=30)
PHRASES = [
    'Mild fever for 3 days, no rash.',
    'BP 128/82, pulse 76, afebrile today.',
    'Started paracetamol 1 g up to four times daily.',
    'Reviewed bloods: CRP falling, WBC normal.',
    'Patient reports better sleep; appetite improving.',
    'Plan: review in clinic in two weeks, sooner if worse.',
    'Discussed side effects; patient happy to continue.',
    'No chest pain on exertion. ECG unchanged from last visit.',
]


@dataclass(frozen=True)
class Seeded:
    """A seeded data dir and what is in it."""

    messages: int
    data_dir: str
    patient_id: str
    newest_text: str | None
    import_seconds: float | None
    import_output: str
    version: int = SEED_VERSION


def patient_id(messages: int) -> str:
    return f'BENCH-{messages}'


def message_text(index: int, total: int) -> str:
    """Unique per index; no text is a prefix of another (the number is zero-padded and followed by a colon)."""
    return f'Seeded note #{index:07d} of {total}: {PHRASES[index % len(PHRASES)]}'


def write_conversation(path: Path, messages: int, patient: str) -> None:
    """Stream a native-JSON conversation of `messages` doctor's messages to `path`."""
    with path.open('w', encoding='utf-8') as file:
        file.write(f'{{"format": "casebook.conversation.v1", "patient_id": {json.dumps(patient)}, "messages": [')
        for index in range(messages):
            sent_at = (START + index * STEP).strftime('%Y-%m-%dT%H:%M:%SZ')
            record = {'sender': 'doctor', 'text': message_text(index, messages), 'sent_at': sent_at}
            file.write(('\n' if index == 0 else ',\n') + json.dumps(record))
        file.write('\n]}\n')


def seeded(messages: int, *, force: bool = False) -> Seeded:
    """The cached data dir with `messages` messages for patient BENCH-<messages>, seeded if missing."""
    root = SEEDS / f'casebook-{messages}'
    marker = root / 'seed.json'
    if not force and marker.exists():
        info = Seeded(**json.loads(marker.read_text()))
        if info.version == SEED_VERSION and Path(info.data_dir).exists():
            return info
    if root.exists():
        shutil.rmtree(root)
    data_dir = root / 'data'
    root.mkdir(parents=True)
    log(f'seeding {messages:,} messages into {data_dir}')
    casebook_cli(
        data_dir,
        'user',
        'add',
        USERNAME,
        '--display-name',
        DISPLAY_NAME,
        '--password-stdin',
        stdin=PASSWORD + '\n',
        timeout=120,
    )
    patient = patient_id(messages)
    seconds, output, newest = None, '', None
    if messages:
        if not has_import_command():
            raise RuntimeError('`casebook import` is not there yet: it is needed to seed conversations')
        conversation = root / 'conversation.json'
        write_conversation(conversation, messages, patient)
        started = time.perf_counter()
        output = casebook_cli(data_dir, 'import', str(conversation), '--user', USERNAME, timeout=900).strip()
        seconds = round(time.perf_counter() - started, 2)
        conversation.unlink()
        newest = message_text(messages - 1, messages)
        log(f'imported {messages:,} messages in {seconds} s: {output!r}')
    info = Seeded(messages, str(data_dir), patient, newest, seconds, output)
    marker.write_text(json.dumps(asdict(info), indent=2) + '\n')
    return info


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--messages', type=int, required=True)
    parser.add_argument('--force', action='store_true', help='seed again even if a cached data dir exists')
    args = parser.parse_args()
    info = seeded(args.messages, force=args.force)
    print(json.dumps(asdict(info), indent=2))


if __name__ == '__main__':
    main()
