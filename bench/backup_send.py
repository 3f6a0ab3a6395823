"""Send → visible in headless Chromium while `casebook backup` runs (SPEC §4: still ≤ 15 ms median).

One `casebook serve` on a fresh copy of the seeded million-message data dir (bench/seed.py); the bench signs
in, opens the seeded patient and times sends exactly as bench/browser_timing.py does (inside the page, click to
MutationObserver). First N sends with nothing else running, then N sends while `casebook backup` runs in its
own process, one backup after another until the sends are done (a backup of a million messages takes longer
than the sends, so every timed send overlaps a backup's read transaction).

    .venv/bin/python bench/backup_send.py                      # 1,000,000 messages, 40 sends each way
    .venv/bin/python bench/backup_send.py --messages 10000 --sends 10
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import threading
import time
from pathlib import Path

if __package__ in (None, ''):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from playwright.sync_api import sync_playwright

from bench import seed
from bench.browser_timing import PAGE_LOAD_JS, TIMEOUT_MS, WARM_UP_SENDS, _log_in, _open, _sends, _timed
from bench.common import (
    CASEBOOK,
    RESULTS,
    casebook_server,
    clean_env,
    fresh_copy,
    launch_chromium,
    load_average,
    log,
    machine,
    summary,
    work_dir,
    write_result,
)


class Backups:
    """`casebook backup` again and again in a thread of ours, each a subprocess, until stopped."""

    def __init__(self, data_dir: Path, folder: Path) -> None:
        self.data_dir = data_dir
        self.folder = folder
        self.stop = threading.Event()
        self.runs: list[dict] = []
        self.thread = threading.Thread(target=self._loop, name='backups')

    def _loop(self) -> None:
        while not self.stop.is_set():
            started = time.perf_counter()
            result = subprocess.run(
                [str(CASEBOOK), 'backup', '-o', str(self.folder / 'during-sends.cbk')],
                env=clean_env(CASEBOOK_DATA_DIR=str(self.data_dir)),
                cwd=self.folder,
                capture_output=True,
                text=True,
                timeout=300,
                check=False,
            )
            self.runs.append(
                {'seconds': round(time.perf_counter() - started, 2), 'exit': result.returncode, 'err': result.stderr}
            )

    def __enter__(self) -> Backups:
        self.thread.start()
        time.sleep(2.0)  # the CLI has started and is reading inside its transaction
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop.set()
        self.thread.join()


def _reopen(page, patient_id: str) -> None:
    """Open another patient and this one again: each series starts with the same 50 messages on the page. (Sends
    slow down as the page grows: without this the second series was 7.5 ms slower with no backup at all.)"""
    _open(page, 'BENCH-OTHER')
    _open(page, patient_id)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--messages', type=int, default=1_000_000)
    parser.add_argument('--sends', type=int, default=40)
    parser.add_argument('--name', default='backup_send')
    args = parser.parse_args()
    info = seed.seeded(args.messages)
    data_dir = fresh_copy(Path(info.data_dir), 'backup-send')
    folder = work_dir('backup-send-files')
    result: dict = {'machine': machine(), 'messages': args.messages, 'sends': args.sends}
    server = casebook_server(data_dir, RESULTS / 'logs' / 'backup-send.log')
    with server, sync_playwright() as playwright:
        browser = launch_chromium(playwright)
        context = browser.new_context(viewport={'width': 1280, 'height': 800})
        context.set_default_timeout(TIMEOUT_MS * 6)
        context.add_init_script(PAGE_LOAD_JS)
        page = context.new_page()
        _log_in(page, server.base_url)
        _open(page, info.patient_id)
        _sends(page, WARM_UP_SENDS, 'warm-up', TIMEOUT_MS)
        result['load_average_quiet'] = load_average()
        _reopen(page, info.patient_id)
        quiet = _sends(page, args.sends, 'quiet', TIMEOUT_MS)
        _reopen(page, info.patient_id)
        with Backups(data_dir, folder) as backups:
            result['load_average_backup'] = load_average()
            during = _sends(page, args.sends, 'during-backup', TIMEOUT_MS)
        context.close()
        browser.close()
    result['send_ms_quiet'] = summary(_timed(quiet))
    result['send_ms_during_backup'] = summary(_timed(during))
    # click → the server's update arrives (network and server), and arrival → in the DOM (the browser)
    for key, sends in (('quiet', quiet), ('during_backup', during)):
        result[f'until_update_arrives_ms_{key}'] = summary(_timed(sends, 'arrived'))
        result[f'update_to_dom_ms_{key}'] = summary(_timed(sends, 'rendered'))
    result['backups'] = backups.runs
    result['server_log_errors'] = server.errors_in_log()
    path = write_result(args.name, result)
    log(f'written {path}')
    print(
        f'send -> visible median: quiet {result["send_ms_quiet"]["median"]} ms, during backup '
        f'{result["send_ms_during_backup"]["median"]} ms (p95 {result["send_ms_during_backup"]["p95"]} ms); '
        f'of which until the update arrives: {result["until_update_arrives_ms_quiet"].get("median")} and '
        f'{result["until_update_arrives_ms_during_backup"].get("median")} ms; '
        f'backups: {[(run["seconds"], run["exit"]) for run in backups.runs]}'
    )


if __name__ == '__main__':
    main()
