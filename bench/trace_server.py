"""`casebook serve` with wall-clock timers around the steps of a send: where one send's time goes.

Nothing in casebook/ is changed: this wrapper replaces a few functions with timed versions of themselves
before the app starts, then runs the ordinary `casebook.cli.main()`. Each call appends one JSON line
(`step`, `ms`, `at`) to $BENCH_TRACE_FILE. Steps that a later version of the app no longer has are skipped.

    BENCH_TRACE_FILE=trace.jsonl CASEBOOK_DATA_DIR=… .venv/bin/python bench/trace_server.py serve --port 8080
"""

from __future__ import annotations

import functools
import importlib
import inspect
import json
import os
import sys
import time

STEPS = [
    ('nicegui.client', 'Client.handle_event', 'NiceGUI: dispatch one browser event'),
    ('casebook.web.pages.workspace', 'Workspace.send', 'Send handler, all of it'),
    ('casebook.web.pages.workspace', 'Workspace._still_signed_in', 'session re-check, own DB session (not on send)'),
    ('casebook.services.sessions', 'resolve_sync', 'session re-check (in the DB thread)'),
    ('casebook.db', 'Database.run', 'one unit of work in the DB thread, hand-offs included'),
    ('casebook.web.pages.workspace', 'Workspace._post', 'store + show (_post)'),
    ('casebook.services.conversations', 'post_message_sync', 'store the message (in the DB thread, incl. commit)'),
    ('sqlalchemy.orm', 'Session.commit', 'COMMIT (SQLite WAL, synchronous=FULL)'),
    ('casebook.live', 'LocalHub.publish', 'live fan-out: publish'),
    ('casebook.web.pages.workspace', 'Workspace._show_message', 'draw the new message (elements)'),
    ('casebook.web.pages.workspace', 'Workspace._draft_changed', 'draft: schedule its write (each value event)'),
    ('casebook.web.pages.workspace', 'Workspace._flush_draft', 'draft: write if changed'),
    ('casebook.web.notebook', 'Notebook.save_draft', 'notebook: save draft'),
    ('casebook.web.notebook', 'Notebook.forget_draft', 'notebook: forget draft'),
    ('nicegui.persistence.file_persistent_dict', 'FilePersistentDict.backup', 'user storage: schedule file rewrite'),
    ('nicegui.outbox', 'Outbox._emit', 'NiceGUI: emit one socket.io message'),
]


def _install(output) -> list[str]:
    installed = []
    for module_name, path, label in STEPS:
        try:
            owner = importlib.import_module(module_name)
        except ImportError:
            continue
        *parents, name = path.split('.')
        for parent in parents:
            owner = getattr(owner, parent, None)
        original = getattr(owner, name, None) if owner is not None else None
        if original is None:
            continue
        setattr(owner, name, _timed(original, label, output))
        installed.append(label)
    return installed


def _timed(original, label: str, output):
    def record(started: float) -> None:
        output.write(json.dumps({'step': label, 'ms': (time.perf_counter() - started) * 1000, 'at': started}) + '\n')

    return around(original, record)


def around(original, done):
    """`original` (a function or a coroutine function) calling `done(started)` after each call, however it ended;
    `started` is time.perf_counter() when the call began. Also bench/import_steps.py's timers."""
    if inspect.iscoroutinefunction(original):

        @functools.wraps(original)
        async def timed_async(*args, **kwargs):
            started = time.perf_counter()
            try:
                return await original(*args, **kwargs)
            finally:
                done(started)

        return timed_async

    @functools.wraps(original)
    def timed(*args, **kwargs):
        started = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            done(started)

    return timed


def main() -> int:
    from casebook.config import load_settings

    settings = load_settings()
    settings.prepare_data_dir()
    # as `casebook serve` does: NiceGUI reads its storage path when it is imported, which _install does
    os.environ['NICEGUI_STORAGE_PATH'] = str(settings.storage_path)
    output = open(os.environ['BENCH_TRACE_FILE'], 'a', buffering=1, encoding='utf-8')  # open for the process' life
    installed = _install(output)
    output.write(json.dumps({'installed': installed}) + '\n')
    from casebook.cli import main as casebook_main

    return casebook_main(sys.argv[1:])


if __name__ == '__main__':
    sys.exit(main())
