"""What the benchmarks share: paths, a `casebook serve` subprocess, the CLI, /proc readings, Chromium."""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

from support import (  # noqa: F401 (the benchmarks take these from here, with what only they need)
    CASEBOOK,
    CHROMIUM,
    PASSWORD,
    ROOT,
    Server,
    casebook_serve,
    clean_env,
    free_port,
    http_get,
    launch_chromium,
    terminate,
)

BENCH = Path(__file__).resolve().parent
CACHE = BENCH / '.cache'
WORK = CACHE / 'work'  # throw-away copies of seeded data dirs, one per server run
RESULTS = BENCH / 'results'
VENV_BIN = Path(sys.executable).parent

USERNAME = 'bench'
DISPLAY_NAME = 'Dr Bench Marker'
CLK_TCK = os.sysconf('SC_CLK_TCK')


def log(*parts: object) -> None:
    print(time.strftime('%H:%M:%S'), *parts, file=sys.stderr, flush=True)


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def machine() -> dict:
    """What the figures were taken on."""
    mem_kib = next(
        int(line.split()[1]) for line in Path('/proc/meminfo').read_text().splitlines() if line.startswith('MemTotal:')
    )
    cpuinfo = Path('/proc/cpuinfo').read_text().splitlines()
    model = next((line.split(':', 1)[1].strip() for line in cpuinfo if 'model name' in line), 'unknown')
    return {
        'cpus': os.cpu_count(),
        'cpu_model': model,
        'memory_gib': round(mem_kib / 2**20, 1),
        'python': sys.version.split()[0],
        'load_average_at_start': load_average(),
    }


def casebook_cli(data_dir: Path, *args: str, stdin: str | None = None, timeout: float = 600) -> str:
    """Run `casebook ARGS` on a data dir; its stdout, or an exception naming its stderr."""
    result = subprocess.run(
        [str(CASEBOOK), *args],
        input=stdin,
        env=clean_env(CASEBOOK_DATA_DIR=str(data_dir)),
        cwd=data_dir.parent,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f'casebook {" ".join(args[:2])} exited with {result.returncode}: {result.stderr.strip()}')
    return result.stdout


def has_import_command() -> bool:
    result = subprocess.run(
        [str(CASEBOOK), 'import', '--help'], capture_output=True, text=True, timeout=60, check=False
    )
    return result.returncode == 0


def work_dir(name: str) -> Path:
    """An empty folder bench/.cache/work/NAME (emptied if it was there)."""
    target = WORK / name
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True, mode=0o700)
    return target


def fresh_copy(source: Path, name: str) -> Path:
    """A copy of a (seeded) data dir under bench/.cache/work/, so runs never change the cache."""
    target = WORK / name
    if target.exists():
        shutil.rmtree(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(source, target)
    os.sync()  # else the copy's write-back (227 MB at 1M) competes with the server's commits for the disk
    return target


def dir_bytes(path: Path) -> int:
    """Sum of the sizes of the files under a folder (the database, its WAL, NiceGUI's storage files)."""
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            with contextlib.suppress(FileNotFoundError):
                total += (Path(root) / name).stat().st_size
    return total


# ----- /proc readings of a process ------------------------------------------------------------------------


def proc_status(pid: int) -> dict[str, float]:
    """VmRSS and VmHWM in MiB."""
    values = {}
    for line in Path(f'/proc/{pid}/status').read_text().splitlines():
        key, _, rest = line.partition(':')
        if key in ('VmRSS', 'VmHWM'):
            values[key] = round(int(rest.split()[0]) / 1024, 1)
    return values


def proc_io(pid: int) -> dict[str, int]:
    """rchar, wchar, read_bytes, write_bytes… of a process (all its threads)."""
    values = {}
    for line in Path(f'/proc/{pid}/io').read_text().splitlines():
        key, _, rest = line.partition(':')
        values[key] = int(rest)
    return values


def proc_cpu_seconds(pid: int, *, main_thread: bool = False) -> float:
    """utime + stime of a process (or of its main thread alone: the event loop's), in seconds."""
    text = Path(f'/proc/{pid}/task/{pid}/stat' if main_thread else f'/proc/{pid}/stat').read_text()
    fields = text[text.rindex(')') + 2 :].split()  # the command name may hold spaces
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


# ----- PostgreSQL ------------------------------------------------------------------------------------------

POSTGRES_ADMIN_URL = 'postgresql+asyncpg://postgres@127.0.0.1:5432/postgres'


async def postgres_admin(statement: str) -> None:
    """One statement outside a transaction as the local superuser (CREATE / DROP DATABASE)."""
    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import create_async_engine

    engine = create_async_engine(POSTGRES_ADMIN_URL, isolation_level='AUTOCOMMIT')
    try:
        async with engine.connect() as connection:
            await connection.execute(text(statement))
    finally:
        await engine.dispose()


def default_limits():
    """How long a session lives when nothing is configured (CASEBOOK_SESSION_MAX_HOURS, …_IDLE_TIMEOUT_MINUTES)."""
    from datetime import timedelta

    from casebook.config import Settings
    from casebook.services.sessions import Limits

    fields = Settings.model_fields
    return Limits(
        max_age=timedelta(hours=fields['session_max_hours'].default),
        idle=timedelta(minutes=fields['idle_timeout_minutes'].default),
    )


# ----- servers ---------------------------------------------------------------------------------------------


def casebook_server(
    data_dir: Path, log_path: Path, *, gc_threshold2: int | None = None, trace: Path | None = None, **env: str
) -> Server:
    """`casebook serve` on a data dir of its own.

    `gc_threshold2` is an experiment, not a setting of the app: the same `casebook serve`, started by a wrapper
    that first raises CPython's generation-2 collection threshold (default 10), to show what full collections
    cost a server holding many tabs.
    """
    command = [str(CASEBOOK), 'serve', '--host', '127.0.0.1']
    if gc_threshold2 is not None:
        wrapper = (
            'import gc, sys; from casebook.cli import main; '
            f'gc.set_threshold(gc.get_threshold()[0], gc.get_threshold()[1], {int(gc_threshold2)}); sys.exit(main())'
        )
        command = [sys.executable, '-c', wrapper, 'serve', '--host', '127.0.0.1']
    if trace is not None:  # bench/trace_server.py: timers around the steps of a send
        command = [sys.executable, str(BENCH / 'trace_server.py'), 'serve', '--host', '127.0.0.1']
        env['BENCH_TRACE_FILE'] = str(trace)
    return casebook_serve(data_dir, log_path, command=command, env=env)


# ----- figures ---------------------------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty list."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), math.ceil(q / 100 * len(ordered))))
    return ordered[rank - 1]


def summary(values: list[float]) -> dict[str, float]:
    if not values:
        return {'n': 0}
    ordered = sorted(values)
    middle = len(ordered) // 2
    median = ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2
    return {
        'n': len(values),
        'median': round(median, 2),
        'p95': round(percentile(values, 95), 2),
        'p99': round(percentile(values, 99), 2),
        'min': round(ordered[0], 2),
        'max': round(ordered[-1], 2),
    }


def write_result(name: str, data: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f'{name}.json'
    path.write_text(json.dumps(data, indent=2) + '\n')
    return path


# ----- profiles (py-spy, when it is installed in the venv; it is not a project dependency) ----------------


def start_profile(pid: int, seconds: float, output: Path) -> subprocess.Popen | None:
    """`py-spy record` of a running server for `seconds`, collapsed stacks per thread, at 1000 Hz."""
    spy = VENV_BIN / 'py-spy'
    if not spy.exists():
        log('py-spy is not installed in the venv: no profile (.venv/bin/pip install py-spy)')
        return None
    output.parent.mkdir(parents=True, exist_ok=True)
    command = [str(spy), 'record', '--pid', str(pid), '--rate', '1000', '--duration', str(int(seconds))]
    command += ['--format', 'raw', '--threads', '--function', '--nonblocking', '--output', str(output)]
    if os.environ.get('BENCH_PYSPY_NATIVE'):
        command.append('--native')  # C frames too (zlib, socket writes, SQLite): slower to sample
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def profile_summary(path: Path, events: int, top: int = 30) -> dict:
    """Milliseconds per event (a send) from py-spy's collapsed stacks, by thread, own and inclusive time."""
    if not path.exists():
        return {'error': 'no profile written'}
    threads: dict[str, int] = {}
    own: dict[str, int] = {}
    inclusive: dict[str, int] = {}
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(' ')
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(';')
        thread = frames[0] if frames[0].startswith(('thread', 'process')) else 'thread ?'
        frames = [_short_frame(frame) for frame in frames if not frame.startswith(('thread', 'process'))]
        if not frames:
            continue
        main = 'MainThread' in thread or 'uvicorn' in thread or any('run_forever' in f for f in frames[:6])
        threads['event loop thread' if main else 'other threads'] = (
            threads.get('event loop thread' if main else 'other threads', 0) + count
        )
        if not main:
            frames = ['[other thread] ' + frames[-1]]
        own[frames[-1]] = own.get(frames[-1], 0) + count
        for frame in set(frames):
            inclusive[frame] = inclusive.get(frame, 0) + count
    per_event = 1 / events  # samples at 1000 Hz: one sample is 1 ms

    def ranked(counts: dict[str, int]) -> list[list]:
        return [[frame, round(n * per_event, 2)] for frame, n in sorted(counts.items(), key=lambda x: -x[1])[:top]]

    return {
        'events': events,
        'ms_per_event_by_thread': {name: round(n * per_event, 2) for name, n in threads.items()},
        'own_ms_per_event': ranked(own),
        'inclusive_ms_per_event': ranked(inclusive),
        'file': str(path),
    }


def _short_frame(frame: str) -> str:
    """'func (/path/to/site-packages/pkg/mod.py:12)' → 'func (pkg/mod.py:12)'."""
    match = re.match(r'(.*) \((.*)\)$', frame)
    if not match:
        return frame
    name, where = match.groups()
    for marker in ('site-packages/', 'lib/python3.11/', str(ROOT) + '/'):
        if marker in where:
            where = where.split(marker, 1)[1]
    return f'{name} ({where})'
