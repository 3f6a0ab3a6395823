"""A Casebook cluster per test: `deploy/cluster` (N `casebook serve` behind nginx) in a subprocess.

- `cluster`: a factory. `cluster()` — or `cluster(instances=3, env={'CASEBOOK_IDLE_TIMEOUT_MINUTES': '1'})` —
  starts deploy/cluster with a state dir in tmp_path, free ports, a PostgreSQL database of the test's own (a copy
  of the run's migrated template: `postgres_server` in tests/conftest.py) and a Redis key prefix of its own; it
  returns once the script printed `ready:`. `cluster(database='sqlite')` shares SQLite in the state dir instead.
  At teardown deploy/cluster gets SIGTERM (it stops nginx and the instances), the database is dropped and the
  prefix's Redis keys are deleted.
- `browser`, `new_visitor`: as in tests/browser; `new_visitor(cluster.url)` is a fresh browser visiting nginx.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from casebook.db import run_on_own_loop
from support import CASEBOOK, PASSWORD, REDIS_URL, clean_env, free_port
from tests.browser_support import Visitor, launch_chromium, visitors

DEPLOY_CLUSTER = Path(__file__).resolve().parents[2] / 'deploy' / 'cluster'
READY_TIMEOUT = 120.0  # one migration and N app start-ups on a busy 2-core machine
STOP_TIMEOUT = 30.0  # deploy/cluster itself gives its children 10 s before SIGKILL
REPORT_TIMEOUT = 10.0
CLI_TIMEOUT = 60.0


def _nginx() -> str | None:
    return shutil.which('nginx') or shutil.which('nginx', path='/usr/sbin:/usr/local/sbin')


def _free_port_run(count: int) -> int:
    """The first of `count` consecutive free ports on 127.0.0.1 (below Linux's ephemeral range)."""
    for _ in range(200):
        first = random.randrange(20_000, 32_000 - count)
        if all(_bindable(port) for port in range(first, first + count)):
            return first
    raise RuntimeError(f'no {count} consecutive free ports found')


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(('127.0.0.1', port))
        except OSError:
            return False
        return True


_LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith('linux') else None


def _terminate_with_pytest() -> None:
    """In the child: get SIGTERM when pytest dies, so that no cluster outlives a killed test run (Linux)."""
    if _LIBC is not None:
        _LIBC.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class Cluster:
    """A running deploy/cluster: nginx at `url`, instance n (1-based) at `instance_urls[n - 1]`."""

    def __init__(self, directory: Path, *, instances: int, database_url: str, redis_prefix: str, env: dict) -> None:
        self.directory = directory
        self.state_dir = directory / 'state'
        self.output_path = directory / 'cluster.out'
        self.port = free_port()
        self.first_instance_port = _free_port_run(instances)
        self.instances = instances
        self.url = f'http://127.0.0.1:{self.port}'
        self.instance_urls = [f'http://127.0.0.1:{self.first_instance_port + n}' for n in range(instances)]
        self.database_url = database_url
        self.redis_prefix = redis_prefix
        self.env = {
            **clean_env(self.state_dir / 'data'),
            'CASEBOOK_REDIS_KEY_PREFIX': redis_prefix,
            **env,
        }
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        command = [
            sys.executable,
            str(DEPLOY_CLUSTER),
            '--instances',
            str(self.instances),
            '--port',
            str(self.port),
            '--first-instance-port',
            str(self.first_instance_port),
            '--database-url',
            self.database_url,
            '--redis-url',
            REDIS_URL,
            '--state-dir',
            str(self.state_dir),
            '--casebook',
            str(CASEBOOK),
        ]
        with open(self.output_path, 'ab') as output:
            self.process = subprocess.Popen(
                command,
                env=self.env,
                cwd=self.directory,
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                preexec_fn=_terminate_with_pytest,
            )
        deadline = time.monotonic() + READY_TIMEOUT
        while not re.search(r'^ready: ', self.output(), flags=re.M):
            if self.process.poll() is not None:
                pytest.fail(f'deploy/cluster exited with {self.process.returncode}:\n{self.report()}', pytrace=False)
            if time.monotonic() > deadline:
                self.stop()
                pytest.fail(
                    f'deploy/cluster was not ready within {READY_TIMEOUT:.0f} s:\n{self.report()}', pytrace=False
                )
            time.sleep(0.1)

    def stop(self) -> int | None:
        """SIGTERM to deploy/cluster, which stops nginx and every instance; its exit status."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.process.kill()  # its instances and nginx get SIGTERM as it dies (PR_SET_PDEATHSIG)
                self.process.wait()
        return self.process.returncode

    def instance_pid(self, number: int) -> int:
        return int((self.state_dir / f'instance-{number}.pid').read_text(encoding='ascii'))

    def kill(self, number: int) -> int:
        """SIGKILL instance `number`; returns once deploy/cluster has noticed. Its pid."""
        pid = self.instance_pid(number)
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + REPORT_TIMEOUT
        while f'instance {number} (pid {pid}) exited' not in self.output():
            if time.monotonic() > deadline:
                pytest.fail(f'deploy/cluster did not report instance {number} gone:\n{self.report()}', pytrace=False)
            time.sleep(0.05)
        return pid

    def log(self, number: int) -> str:
        """Instance `number`'s output."""
        return _read(self.state_dir / f'instance-{number}.log')

    def output(self) -> str:
        """What deploy/cluster printed."""
        return _read(self.output_path)

    def report(self) -> str:
        """Everything there is to read after a failure: the script's output, nginx's errors, every instance's log."""
        parts = [
            f'--- deploy/cluster ---\n{self.output()}',
            f'--- nginx ---\n{_read(self.state_dir / "nginx-error.log")}',
        ]
        parts += [f'--- instance {n} ---\n{self.log(n)}' for n in range(1, self.instances + 1)]
        return '\n'.join(parts)

    def assert_logs_clean(self) -> None:
        """No traceback and no ERROR/CRITICAL line in any instance's output."""
        for number in range(1, self.instances + 1):
            bad = [line for line in self.log(number).splitlines() if re.search(r'Traceback|\b(ERROR|CRITICAL)\b', line)]
            assert not bad, f'instance {number} logged errors:\n{self.log(number)}'

    def add_clinician(self, username: str, display_name: str) -> None:
        """An account with the tests' password, through the real CLI."""
        added = self.cli(
            'user', 'add', username, '--display-name', display_name, '--password-stdin', input=PASSWORD + '\n'
        )
        assert added.returncode == 0, f'casebook user add {username}: {added.stdout}{added.stderr}'

    def cli(self, *args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
        """`casebook ARGS` against the cluster's database and Redis (e.g. `user add … --password-stdin`)."""
        env = {
            **self.env,
            'CASEBOOK_DATABASE_URL': self.database_url,
            'CASEBOOK_REDIS_URL': REDIS_URL,
            'CASEBOOK_STORAGE_SECRET': (self.state_dir / 'storage-secret').read_text(encoding='ascii').strip(),
        }
        if not self.database_url:
            del env['CASEBOOK_DATABASE_URL']
        return subprocess.run(
            [str(CASEBOOK), *args],
            input=input,
            env=env,
            cwd=self.directory,
            capture_output=True,
            text=True,
            timeout=CLI_TIMEOUT,
            check=False,
        )


def _read(path: Path) -> str:
    return path.read_text(encoding='utf-8', errors='replace') if path.exists() else ''


@pytest.fixture
def cluster(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Callable[..., Cluster]]:
    """Start clusters (see the module's docstring); all are stopped and cleaned up at teardown."""
    if _nginx() is None:
        pytest.skip('NGINX IS MISSING, so the cluster tests did NOT run. `make test` installs it (`make nginx`).')
    started: list[Cluster] = []
    databases: list[tuple[object, str]] = []  # (the run's PostgreSQL server, a database of this test's)
    prefixes: list[str] = []

    def start(instances: int = 2, *, database: str = 'postgresql', env: dict[str, str] | None = None) -> Cluster:
        if database == 'postgresql':
            server = request.getfixturevalue('postgres_server')
            name = run_on_own_loop(server.create)
            databases.append((server, name))
            database_url = server.url(name)
        elif database == 'sqlite':
            database_url = ''  # deploy/cluster leaves CASEBOOK_DATABASE_URL unset: SQLite in the shared data dir
        else:
            raise ValueError(f'database must be postgresql or sqlite, not {database!r}')
        prefix = f'casebook-test-{uuid.uuid4().hex[:12]}:'
        prefixes.append(prefix)
        running = Cluster(
            tmp_path / f'cluster-{len(started) + 1}',
            instances=instances,
            database_url=database_url,
            redis_prefix=prefix,
            env=env or {},
        )
        running.directory.mkdir()
        started.append(running)
        running.start()
        return running

    try:
        yield start
    finally:
        statuses = [(running, running.stop()) for running in started]
        for server, name in databases:
            run_on_own_loop(lambda server=server, name=name: server.drop(name))
        _delete_redis_keys(prefixes)
    for running, status in statuses:
        assert status in (0, None), f'deploy/cluster exited with {status} when stopped:\n{running.report()}'


def _delete_redis_keys(prefixes: list[str]) -> None:
    client = redis.Redis.from_url(REDIS_URL)
    try:
        for prefix in prefixes:
            keys = list(client.scan_iter(match=f'{prefix}*'))
            if keys:
                client.delete(*keys)
    except redis.RedisError:
        pass  # Redis not reachable: nothing was stored there either
    finally:
        client.close()


@pytest.fixture(scope='package')
def browser():
    """One headless Chromium for the browser tests of this package."""
    with launch_chromium() as chromium:
        yield chromium


@pytest.fixture
def new_visitor(browser) -> Iterator[Callable[[str], Visitor]]:
    """`new_visitor(cluster.url)`: a fresh browser context visiting that address; all are closed at teardown."""
    with contextlib.ExitStack() as stack:
        yield lambda base_url: stack.enter_context(visitors(browser, base_url))()


async def signed_in_tabs(running, directory: Path, count: int) -> list:
    """`count` clinicians with a live session each, their browsers' notebooks in the cluster's Redis: what a login
    leaves behind, ready for bench/load.py's clients (preset sign-in)."""
    import redis.asyncio as aioredis

    from bench.load import _prepare

    secret = (running.state_dir / 'storage-secret').read_text(encoding='ascii').strip()
    store = aioredis.from_url(REDIS_URL)

    async def write_storage(storage_id: str, notebook: dict) -> None:
        await store.set(f'{running.redis_prefix}nicegui:user-{storage_id}', json.dumps(notebook))

    try:
        return await _prepare(
            directory, count, secret, True, database_url=running.database_url, write_storage=write_storage
        )
    finally:
        await store.aclose()
