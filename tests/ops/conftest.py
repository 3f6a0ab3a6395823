"""A served Casebook of the test's own, for what only a real `casebook serve` shows: its log output, and its
readiness while a dependency of its own comes and goes.

- `served(env)`: starts `casebook serve` on a free port with a fresh data dir and `env` added, and returns once
  /healthz answers; stopped (SIGTERM) at teardown. stdout and stderr are kept apart (`stdout_path`, `stderr_path`).
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from bench.common import http_get, terminate
from tests.browser_support import CASEBOOK, PASSWORD, casebook_env, free_port

STARTUP_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0


class Served:
    """`casebook serve` in a subprocess."""

    def __init__(self, directory: Path, env: dict[str, str]) -> None:
        self.directory = directory
        self.data_dir = directory / 'data'
        self.env = {**casebook_env(self.data_dir), **env}
        self.port = free_port()
        self.base_url = f'http://127.0.0.1:{self.port}'
        self.stdout_path = directory / 'serve.stdout'
        self.stderr_path = directory / 'serve.stderr'
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        if not CASEBOOK.exists():
            pytest.fail(f'{CASEBOOK} not found: run `make install` first', pytrace=False)
        with open(self.stdout_path, 'ab') as stdout, open(self.stderr_path, 'ab') as stderr:
            self.process = subprocess.Popen(
                [str(CASEBOOK), 'serve', '--host', '127.0.0.1', '--port', str(self.port)],
                env=self.env,
                cwd=self.directory,
                stdin=subprocess.DEVNULL,
                stdout=stdout,
                stderr=stderr,
            )
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while self.get('/healthz')[0] != 200:
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                pytest.fail(f'casebook serve did not start:\n{self.output()}', pytrace=False)
            time.sleep(0.05)

    def get(self, path: str, headers: dict[str, str] | None = None) -> tuple[int, str]:
        return http_get(self.port, path, headers, timeout=10)

    def ready(self) -> tuple[int, dict]:
        status, body = self.get('/readyz')
        return status, json.loads(body) if body else {}

    def add_clinician(self, username: str, display_name: str, password: str = PASSWORD) -> None:
        command = [str(CASEBOOK), 'user', 'add', username, '--display-name', display_name, '--password-stdin']
        result = subprocess.run(
            command,
            input=password + '\n',
            env=self.env,
            cwd=self.directory,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 0, result.stderr

    def stop(self) -> None:
        if self.process is not None:
            terminate(self.process, STOP_TIMEOUT)
        self.process = None

    def output(self) -> str:
        return '\n'.join(
            path.read_text(encoding='utf-8', errors='replace')
            for path in (self.stdout_path, self.stderr_path)
            if path.exists()
        )


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Callable[[dict[str, str]], Served]]:
    started: list[Served] = []

    def start(env: dict[str, str]) -> Served:
        instance = Served(tmp_path, env)
        started.append(instance)
        instance.start()
        return instance

    yield start
    for instance in started:
        instance.stop()
