"""Send → visible, open → visible, RSS and bytes written: Casebook and the lesson's baseline in headless Chromium.

Every timing is taken inside the page (SPEC §4): `performance.now()` just before the button's `click()`, issued
from `page.evaluate`, until a MutationObserver sees the message text in a node the page added or changed.
The observer looks only at what each mutation added, so its own cost does not grow with the page.

For each conversation size Casebook gets a fresh copy of a seeded data dir (bench/seed.py, `casebook import`)
and a `casebook serve` of its own; the bench signs in through the real login page, opens the seeded patient
(timed), sends a few untimed messages, then the timed ones, reading the server's /proc before and after.
The baseline (bench/baseline_lesson.py) is measured the same way at its own sizes, in the same run.

    .venv/bin/python bench/browser_timing.py                          # 0, 10k, 100k, 1M; baseline 1k, 5k, 20k
    .venv/bin/python bench/browser_timing.py --sizes 0 100000 --baseline-sizes 1000 --sends 30
    .venv/bin/python bench/browser_timing.py --profile 100000         # py-spy on the server during the sends
    .venv/bin/python bench/browser_timing.py --sizes 0 1000000 --baseline-sizes --lines 3   # 3-line messages

A timed send that a reload of the page interrupts has no timing and is left out of the medians; every row
counts them (`sends_with_page_reload`, `sends_lost` of `sends_timed`), the table marks its median, and the run
exits non-zero when there was any, or when a size failed.
"""

from __future__ import annotations

import argparse
import json
import re
import secrets
import shutil
import sys
import time
import uuid
from pathlib import Path

if __package__ in (None, ''):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from playwright.sync_api import Error as PlaywrightError

from bench import seed
from bench.baseline_lesson import message_text as lesson_text
from bench.baseline_lesson import seed_storage
from bench.common import (
    BENCH,
    DISPLAY_NAME,
    PASSWORD,
    RESULTS,
    USERNAME,
    Server,
    casebook_server,
    clean_env,
    dir_bytes,
    fresh_copy,
    launch_chromium,
    load_average,
    log,
    machine,
    proc_cpu_seconds,
    proc_io,
    proc_status,
    profile_summary,
    start_profile,
    summary,
    work_dir,
    write_result,
)

DEFAULT_SIZES = [0, 10_000, 100_000, 1_000_000]
DEFAULT_BASELINE_SIZES = [1_000, 5_000, 20_000]
WARM_UP_SENDS = 3
TIMEOUT_MS = 10_000
BASELINE_TIMEOUT_MS = 120_000

# (button, [text, timeout]) → milliseconds from just before button.click() until the text is in the page
MEASURE_CLICK_JS = """
(button, [text, timeout]) => new Promise((resolve, reject) => {
  const skip = (node) => {
    const element = node.nodeType === 1 ? node : node.parentElement;
    return element !== null && element.closest('script, style, template') !== null;
  };
  const holder = (records) => {
    for (let r = records.length - 1; r >= 0; r--) {  // newest last: look there first
      const record = records[r];
      if (record.type === 'characterData') {
        if ((record.target.data || '').includes(text) && !skip(record.target)) return record.target;
        continue;
      }
      for (let n = record.addedNodes.length - 1; n >= 0; n--) {
        const node = record.addedNodes[n];
        if ((node.textContent || '').includes(text) && !skip(node)) return node;
      }
    }
    return null;
  };
  let started = 0;
  let arrived = null;  // when the socket.io message holding the text reached the page (before Vue renders it)
  const onMessage = (event, data) => {
    // the text as JSON spells it (a line break is \\n there)
    if (arrived === null && event === 'update' && JSON.stringify(data).includes(JSON.stringify(text).slice(1, -1))) {
      arrived = performance.now();
    }
  };
  if (window.socket && window.socket.onAny) window.socket.onAny(onMessage);
  const observer = new MutationObserver((records) => {
    const node = holder(records);
    if (node === null) return;
    const shown = performance.now();
    observer.disconnect();
    clearTimeout(timer);
    if (window.socket && window.socket.offAny) window.socket.offAny(onMessage);
    const split = {arrived: arrived === null ? null : arrived - started,
                   rendered: arrived === null ? null : shown - arrived};
    const element = node.nodeType === 1 ? node : node.parentElement;
    const inView = () => {
      const rect = element.getBoundingClientRect();
      return rect.height > 0 && rect.bottom > 0 && rect.top < window.innerHeight;
    };
    // also: when it is scrolled into the viewport (a frame or two later), up to 3 s
    const until = shown + 3000;
    const poll = () => {
      if (inView()) resolve({shown: shown - started, in_view: performance.now() - started, ...split});
      else if (performance.now() > until) resolve({shown: shown - started, in_view: null, ...split});
      else requestAnimationFrame(poll);
    };
    poll();
  });
  const timer = setTimeout(() => { observer.disconnect(); reject(new Error('not shown within ' + timeout + ' ms')); },
                           timeout);
  observer.observe(document.body, {childList: true, subtree: true, characterData: true});
  started = performance.now();
  button.click();
})
"""

# installed before every page load: when sessionStorage names a text, note when the page first shows it
PAGE_LOAD_JS = """
(() => {
  const text = sessionStorage.getItem('bench_wait_for');
  if (!text) return;
  sessionStorage.removeItem('bench_wait_for');
  window.__bench_shown = null;
  const skip = (node) => {
    const element = node.nodeType === 1 ? node : node.parentElement;
    return element !== null && element.closest('script, style, template') !== null;
  };
  const observer = new MutationObserver((records) => {
    for (const record of records) {
      const nodes = record.type === 'characterData' ? [record.target] : record.addedNodes;
      for (const node of nodes) {
        if ((node.textContent || '').includes(text) && !skip(node)) {
          window.__bench_shown = performance.now();  // since navigation start
          observer.disconnect();
          return;
        }
      }
    }
  });
  observer.observe(document, {childList: true, subtree: true, characterData: true});
})();
"""


class Snapshot:
    """What the server has used so far: CPU seconds, bytes written, memory, size of its data dir."""

    def __init__(self, pid: int, data_dir: Path) -> None:
        self.cpu = proc_cpu_seconds(pid)
        self.io = proc_io(pid)
        self.memory = proc_status(pid)
        self.dir_bytes = dir_bytes(data_dir)

    def per_message(self, before: Snapshot, count: int) -> dict[str, float]:
        return {
            'write_bytes': round((self.io['write_bytes'] - before.io['write_bytes']) / count),
            'wchar': round((self.io['wchar'] - before.io['wchar']) / count),
            'data_dir_growth_bytes': round((self.dir_bytes - before.dir_bytes) / count),
            'server_cpu_ms': round((self.cpu - before.cpu) * 1000 / count, 2),
        }


def _wait_input_empty(page, label: str, timeout_ms: int) -> None:
    """Until the server has cleared the input: typing before that would be wiped by the clearing."""
    page.wait_for_function(
        '(label) => [...document.querySelectorAll("input, textarea")].some(i => i.getAttribute("aria-label") === label '
        '&& i.value === "")',
        arg=label,
        timeout=timeout_ms,
    )


def _send_timed(page, button, text: str, timeout_ms: int) -> dict:
    page.get_by_label('Type message here').fill(text)  # reaches the server before the click: one socket, in order
    try:
        result = button.evaluate(MEASURE_CLICK_JS, [text, timeout_ms])
    except PlaywrightError as error:
        if 'context was destroyed' not in str(error):
            raise
        # the page reloaded itself while the server was busy (the lesson's baseline at 20k): the send is not timed
        page.wait_for_load_state()
        try:
            page.get_by_text(text).wait_for(state='attached', timeout=timeout_ms)
        except PlaywrightError:
            return {'shown': None, 'in_view': None, 'page_reloaded': True, 'lost': True}
        return {'shown': None, 'in_view': None, 'page_reloaded': True}
    _wait_input_empty(page, 'Type message here', timeout_ms)
    return result


def _sends(page, count: int, label: str, timeout_ms: int, lines: int = 1) -> list[dict]:
    """`count` timed sends; with `lines` > 1 each message has that many lines (Casebook's composer only)."""
    button = page.get_by_role('button', name='Send', exact=True)
    results = []
    for index in range(count):
        more = ''.join(f'\nline {line} of the note' for line in range(2, lines + 1))
        results.append(_send_timed(page, button, f'{label} send {index} {uuid.uuid4().hex}{more}', timeout_ms))
    return results


def _timed(results: list[dict], key: str = 'shown') -> list[float]:
    return [r[key] for r in results if r.get(key) is not None]


def _interrupted(results: list[dict]) -> dict[str, int]:
    """Timed sends a reload of the page cut short: they have no timing, so the medians leave them out; counted
    here so that a run reports them (bench/run_all.py treats any as a problem) instead of a flattering median."""
    return {
        'sends_timed': len(results),
        'sends_with_page_reload': sum(bool(r.get('page_reloaded')) for r in results),
        'sends_lost': sum(bool(r.get('lost')) for r in results),
    }


def interruptions(results: dict) -> list[str]:
    """Every row of a run whose timed sends a page reload interrupted, said in a line."""
    return [
        f'{row["app"]} at {row["messages"]:,}: {row["sends_with_page_reload"]} of {row["sends_timed"]} timed sends '
        f'interrupted by a page reload, left out of the median ({row["sends_lost"]} never shown)'
        for row in results.get('floor', []) + results.get('casebook', []) + results.get('baseline', [])
        if row.get('sends_with_page_reload')
    ]


# ----- Casebook -----------------------------------------------------------------------------------------------


def _log_in(page, base_url: str) -> None:
    page.goto(base_url + '/')
    page.get_by_label('Username').fill(USERNAME)
    page.get_by_label('Password', exact=True).fill(PASSWORD)
    page.get_by_role('button', name='Log in').click()
    _wait_header(page, '(not set)')


def _wait_header(page, patient: str) -> None:
    header = page.locator('header').get_by_text(re.compile(r'^\s*User: '))
    header.filter(has_text=f'User: {DISPLAY_NAME} | Patient: {patient}').wait_for(timeout=TIMEOUT_MS * 6)


def _open_timed(page, patient: str, newest: str) -> dict:
    page.get_by_label('Patient ID').fill(patient)
    button = page.get_by_role('button', name='Open patient')
    result = button.evaluate(MEASURE_CLICK_JS, [newest, TIMEOUT_MS * 6])
    _wait_header(page, patient)
    _wait_input_empty(page, 'Patient ID', TIMEOUT_MS)
    return result


def _open(page, patient: str) -> None:
    page.get_by_label('Patient ID').fill(patient)
    page.get_by_role('button', name='Open patient').click()
    _wait_header(page, patient)
    _wait_input_empty(page, 'Patient ID', TIMEOUT_MS)


def _reload_timed(page, newest: str) -> float | None:
    page.evaluate('(text) => sessionStorage.setItem("bench_wait_for", text)', newest)
    page.reload()
    page.wait_for_function(
        '() => window.__bench_shown !== undefined && window.__bench_shown !== null', timeout=BASELINE_TIMEOUT_MS
    )
    return page.evaluate('() => window.__bench_shown')


def measure_casebook(
    browser,
    messages: int,
    *,
    sends: int,
    open_repeats: int,
    profile: bool = False,
    trace: bool = False,
    lines: int = 1,
) -> dict:
    info = seed.seeded(messages)
    data_dir = fresh_copy(Path(info.data_dir), f'casebook-{messages}')
    trace_path = RESULTS / f'trace-casebook-{messages}.jsonl' if trace else None
    if trace_path is not None:
        trace_path.unlink(missing_ok=True)
    server = casebook_server(data_dir, RESULTS / 'logs' / f'casebook-{messages}.log', trace=trace_path)
    result: dict = {
        'app': 'casebook',
        'messages': messages,
        'patient_id': info.patient_id,
        'import_seconds': info.import_seconds,
    }
    log(f'casebook at {messages:,} messages: serving {data_dir}')
    with server:
        context = browser.new_context(viewport={'width': 1280, 'height': 800})
        context.set_default_timeout(TIMEOUT_MS * 6)
        context.add_init_script(PAGE_LOAD_JS)
        page = context.new_page()
        errors: list[str] = []
        page.on('pageerror', lambda error: errors.append(str(error)))
        try:
            _log_in(page, server.base_url)
            if info.newest_text:
                opens = [_open_timed(page, info.patient_id, info.newest_text)]  # the first: nothing cached yet
                failures = []
                for attempt in range(open_repeats):
                    _open(page, 'BENCH-OTHER')
                    try:
                        opens.append(_open_timed(page, info.patient_id, info.newest_text))
                    except PlaywrightError as error:  # recorded with a screenshot; the run goes on
                        shot = RESULTS / f'open-failure-{messages}-{attempt}.png'
                        page.screenshot(path=str(shot), full_page=False)
                        failures.append(f'{str(error).splitlines()[0]} (screenshot {shot})')
                        _open(page, info.patient_id)
                result['open_failures'] = failures
                result['open_first_ms'] = {k: round(v, 1) if v is not None else None for k, v in opens[0].items()}
                result['open_ms'] = summary([o['shown'] for o in opens[1:]] or [opens[0]['shown']])
                result['open_in_view_ms'] = summary([o['in_view'] for o in opens[1:] if o['in_view'] is not None])
            else:
                _open(page, info.patient_id)
            _sends(page, WARM_UP_SENDS, 'warm-up', TIMEOUT_MS)
            before = Snapshot(server.pid, data_dir)
            result['load_average_before'] = load_average()
            spy = None
            if profile:
                profile_path = RESULTS / f'profile-casebook-{messages}.txt'
                spy = start_profile(server.pid, sends * 0.35 + 5, profile_path)
                time.sleep(1)  # py-spy attaches
            started = time.perf_counter()
            timed = _sends(page, sends, f'casebook-{messages}', TIMEOUT_MS, lines)
            wall = time.perf_counter() - started
            if trace_path is not None:
                result['trace'] = trace_summary(trace_path, started, started + wall, sends)
            after = Snapshot(server.pid, data_dir)
            if spy is not None:
                spy.wait(timeout=120)
                result['profile'] = profile_summary(profile_path, sends)
            result['load_average_after'] = load_average()
            result['send_ms'] = summary(_timed(timed))
            result['send_in_view_ms'] = summary(_timed(timed, 'in_view'))
            # the same sends split: click → the update message arrives (network + server), arrival → in the DOM
            result['send_until_update_arrives_ms'] = summary(_timed(timed, 'arrived'))
            result['send_update_to_dom_ms'] = summary(_timed(timed, 'rendered'))
            result['send_samples_ms'] = [round(t['shown'], 2) if t['shown'] is not None else None for t in timed]
            result['sends_per_second'] = round(sends / wall, 2)
            result.update(_interrupted(timed))
            result['per_message'] = after.per_message(before, sends)
            result['memory_mib'] = after.memory
            if info.newest_text:
                # after the sends: a reloaded tab's old client lives on for NiceGUI's reconnect timeout (3 s) and
                # still receives the live updates of its conversation, which would have slowed the sends above
                newest = page.get_by_role('article').last.inner_text()
                result['reload_ms'] = summary([_reload_timed(page, newest.splitlines()[-1]) for _ in range(3)])
            result['page_errors'] = errors
        finally:
            context.close()
    result['server_log_errors'] = server.errors_in_log()
    shutil.rmtree(data_dir, ignore_errors=True)
    log(f'casebook at {messages:,}: send median {result["send_ms"]["median"]} ms, p95 {result["send_ms"]["p95"]} ms')
    return result


# ----- the lesson's baseline ----------------------------------------------------------------------------------


def measure_baseline(browser, messages: int, *, sends: int) -> dict:
    work = work_dir(f'lesson-{messages}')
    storage = work / 'storage'
    secret = secrets.token_urlsafe(32)
    cookie = seed_storage(storage, secret, messages)
    server = Server(
        command=[sys.executable, str(BENCH / 'baseline_lesson.py'), '--host', '127.0.0.1', '--storage-secret', secret],
        env=clean_env(NICEGUI_STORAGE_PATH=str(storage)),
        cwd=work,
        log_path=RESULTS / 'logs' / f'lesson-{messages}.log',
    )
    result: dict = {'app': 'lesson baseline', 'messages': messages}
    log(f'lesson baseline at {messages:,} messages')
    with server:
        context = browser.new_context(viewport={'width': 1280, 'height': 800})
        context.set_default_timeout(BASELINE_TIMEOUT_MS)
        context.add_cookies([{**cookie, 'url': server.base_url}])
        context.add_init_script(PAGE_LOAD_JS)
        page = context.new_page()
        try:
            newest = lesson_text(messages - 1, messages)
            page.goto(server.base_url + '/')
            page.get_by_text(newest).wait_for(state='attached')
            result['reload_ms'] = summary([_reload_timed(page, newest) for _ in range(3)])
            _sends(page, 1, 'warm-up', BASELINE_TIMEOUT_MS)
            before = Snapshot(server.pid, work)
            result['load_average_before'] = load_average()
            timed = _sends(page, sends, f'lesson-{messages}', BASELINE_TIMEOUT_MS)
            after = Snapshot(server.pid, work)
            result['load_average_after'] = load_average()
            result['send_ms'] = summary(_timed(timed))
            result['send_until_update_arrives_ms'] = summary(_timed(timed, 'arrived'))
            result['send_update_to_dom_ms'] = summary(_timed(timed, 'rendered'))
            result['send_samples_ms'] = [round(t['shown'], 2) if t['shown'] is not None else None for t in timed]
            result['per_message'] = after.per_message(before, sends)
            result['memory_mib'] = after.memory
            result['storage_file_bytes'] = dir_bytes(storage)
            result.update(_interrupted(timed))
        finally:
            context.close()
    shutil.rmtree(work, ignore_errors=True)
    log(f'lesson at {messages:,}: send median {result["send_ms"]["median"]} ms, p95 {result["send_ms"]["p95"]} ms')
    return result


# ----- the floor: a trivial page that appends one label ------------------------------------------------------


def measure_floor(browser, *, sends: int, shown: tuple[int, ...] = (0, 50)) -> list[dict]:
    work = work_dir('floor')
    server = Server(
        command=[sys.executable, str(BENCH / 'floor_app.py'), '--host', '127.0.0.1'],
        env=clean_env(NICEGUI_STORAGE_PATH=str(work / 'storage')),
        cwd=work,
        log_path=RESULTS / 'logs' / 'floor.log',
    )
    results = []
    with server:
        context = browser.new_context(viewport={'width': 1280, 'height': 800})
        context.set_default_timeout(TIMEOUT_MS)
        page = context.new_page()
        try:
            for count in shown:
                page.goto(f'{server.base_url}/?shown={count}')
                _sends(page, WARM_UP_SENDS, 'warm-up', TIMEOUT_MS)
                load_before = load_average()
                timed = _sends(page, sends, f'floor-{count}', TIMEOUT_MS)
                results.append(
                    {
                        'app': 'trivial NiceGUI page (floor)',
                        'messages': count,
                        'load_average_before': load_before,
                        'send_ms': summary(_timed(timed)),
                        'send_until_update_arrives_ms': summary(_timed(timed, 'arrived')),
                        'send_update_to_dom_ms': summary(_timed(timed, 'rendered')),
                        'send_samples_ms': [round(t['shown'], 2) for t in timed if t['shown'] is not None],
                        **_interrupted(timed),
                    }
                )
                log(f'floor with {count} labels: send median {results[-1]["send_ms"]["median"]} ms')
        finally:
            context.close()
    shutil.rmtree(work, ignore_errors=True)
    return results


# ----- the whole run ------------------------------------------------------------------------------------------


def trace_summary(path: Path, start: float, end: float, sends: int) -> list[dict]:
    """Per step of bench/trace_server.py, within [start, end] (CLOCK_MONOTONIC is shared by processes)."""
    steps: dict[str, list[float]] = {}
    for line in path.read_text().splitlines():
        entry = json.loads(line)
        if 'step' in entry and start <= entry['at'] <= end:
            steps.setdefault(entry['step'], []).append(entry['ms'])
    return [
        {
            'step': step,
            'calls_per_send': round(len(values) / sends, 2),
            'median_ms_per_call': summary(values)['median'],
            'p95_ms_per_call': summary(values)['p95'],
            'total_ms_per_send': round(sum(values) / sends, 2),
        }
        for step, values in steps.items()
    ]


def _guarded(app: str, size: int, measure) -> dict:
    """One size's figures, or what went wrong there: one failed size does not lose the others."""
    try:
        return measure()
    except Exception as error:
        log(f'{app} at {size:,}: FAILED: {type(error).__name__}: {str(error).splitlines()[0]}')
        return {'app': app, 'messages': size, 'error': f'{type(error).__name__}: {str(error).splitlines()[0]}'}


def run(
    *,
    sizes,
    baseline_sizes,
    sends,
    baseline_sends,
    open_repeats,
    profile_size=None,
    trace_size=None,
    floor=True,
    floor_shown=(0, 50),
    lines=1,
) -> dict:
    from playwright.sync_api import sync_playwright

    results: dict = {
        'machine': machine(),
        'started': time.strftime('%Y-%m-%dT%H:%M:%S%z'),
        'method': 'in-page performance.now() from button.click() until a MutationObserver sees the text',
        'lines_per_message': lines,
        'casebook': [],
        'baseline': [],
    }
    for size in sizes:
        seed.seeded(size)  # before the browser starts: seeding a million takes a while
    with sync_playwright() as playwright:
        browser = launch_chromium(playwright)
        try:
            if floor:
                results['floor'] = measure_floor(browser, sends=sends, shown=tuple(floor_shown))
            for size in sizes:
                results['casebook'].append(
                    _guarded(
                        'casebook',
                        size,
                        lambda size=size: measure_casebook(
                            browser,
                            size,
                            sends=sends,
                            open_repeats=open_repeats,
                            profile=size == profile_size,
                            trace=size == trace_size,
                            lines=lines,
                        ),
                    )
                )
            for size in baseline_sizes:
                results['baseline'].append(
                    _guarded(
                        'lesson baseline',
                        size,
                        lambda size=size: measure_baseline(browser, size, sends=baseline_sends),
                    )
                )
        finally:
            browser.close()
    results['finished'] = time.strftime('%Y-%m-%dT%H:%M:%S%z')
    results['load_average_at_end'] = load_average()
    return results


def table(results: dict) -> str:
    """A Markdown table of what a run measured."""
    lines = [
        '| app | messages | send median ms | send p95 ms | of which click→update arrives | update→in DOM '
        '| open (click→newest) median ms | reload→newest ms '
        '| RSS MiB (HWM) | write_bytes/msg | wchar/msg | data dir +bytes/msg | server CPU ms/msg | load avg |',
        '|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|',
    ]
    for row in results.get('floor', []) + results.get('casebook', []) + results.get('baseline', []):
        if 'error' in row:
            lines.append(f'| {row["app"]} | {row["messages"]:,} | FAILED: {row["error"]} |')
            continue
        per = row.get('per_message', {})
        memory = row.get('memory_mib', {})
        opened = row.get('open_ms', {}).get('median', '–')
        reload = row.get('reload_ms', {}).get('median', '–')
        load = row.get('load_average_before', ['?'])[0]
        arrives = row.get('send_until_update_arrives_ms', {}).get('median', '–')
        renders = row.get('send_update_to_dom_ms', {}).get('median', '–')
        median = row['send_ms'].get('median', '–')
        if row.get('sends_with_page_reload'):
            median = f'{median} (without {row["sends_with_page_reload"]} of {row["sends_timed"]}: page reloaded)'
        lines.append(
            f'| {row["app"]} | {row["messages"]:,} | {median} | {row["send_ms"].get("p95", "–")} '
            f'| {arrives} | {renders} '
            f'| {opened} | {reload} | {memory.get("VmRSS")} ({memory.get("VmHWM")}) '
            f'| {per.get("write_bytes")} | {per.get("wchar")} '
            f'| {per.get("data_dir_growth_bytes")} | {per.get("server_cpu_ms")} | {load} |'
        )
    return '\n'.join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--sizes', type=int, nargs='*', default=DEFAULT_SIZES)
    parser.add_argument('--baseline-sizes', type=int, nargs='*', default=DEFAULT_BASELINE_SIZES)
    parser.add_argument('--sends', type=int, default=40, help='timed sends per Casebook size (default 40)')
    parser.add_argument('--baseline-sends', type=int, default=30, help='timed sends per baseline size (default 30)')
    parser.add_argument('--open-repeats', type=int, default=5, help='timed re-opens of the seeded patient')
    parser.add_argument('--profile', type=int, metavar='SIZE', help='record the server with py-spy at this size')
    parser.add_argument('--trace', type=int, metavar='SIZE', help='time the steps of each send at this size')
    parser.add_argument('--no-floor', action='store_true', help='skip the trivial-page floor measurement')
    parser.add_argument(
        '--floor-shown', type=int, nargs='+', default=[0, 50], help='labels on the trivial page before the sends'
    )
    parser.add_argument('--lines', type=int, default=1, help="lines in each of Casebook's timed messages")
    parser.add_argument('--name', default='browser_timing', help='results file bench/results/NAME.json')
    args = parser.parse_args()
    results = run(
        sizes=args.sizes,
        baseline_sizes=args.baseline_sizes,
        sends=args.sends,
        baseline_sends=args.baseline_sends,
        open_repeats=args.open_repeats,
        profile_size=args.profile,
        trace_size=args.trace,
        floor=not args.no_floor,
        floor_shown=args.floor_shown,
        lines=args.lines,
    )
    results['interrupted'] = interruptions(results)
    path = write_result(args.name, results)
    print(table(results))
    print(f'\nresults: {path}')
    for row in results['casebook']:
        for key in ('profile', 'trace'):
            if row.get(key):
                print(f'{key} at {row["messages"]:,}:', json.dumps(row[key], indent=1))
    rows = results['casebook'] + results['baseline']
    failed = [f'{row["app"]} at {row["messages"]:,}: {row["error"]}' for row in rows if 'error' in row]
    if results['interrupted'] or failed:
        print('\nPROBLEMS:', *results['interrupted'], *failed, sep='\n')
        return 1
    return 0


if __name__ == '__main__':
    sys.exit(main())
