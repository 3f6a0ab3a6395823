"""A served Casebook of the test's own, for what only a real `casebook serve` shows: its log output, and its
readiness while a dependency of its own comes and goes.

- `served(env)`: starts `casebook serve` on a free port with a fresh data dir and `env` added, and returns once
  /healthz answers; stopped (SIGTERM) at teardown. stdout and stderr are kept apart (`stdout_path`, `stderr_path`).
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import support
from support import CASEBOOK, PASSWORD, clean_env, http_get

STARTUP_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0


class Served(support.Server):
    """`casebook serve` in a subprocess, ready once /healthz says so; stdout and stderr (the log) kept apart."""

    def __init__(self, directory: Path, env: dict[str, str]) -> None:
        self.directory = directory
        self.data_dir = directory / 'data'
        super().__init__(
            command=[str(CASEBOOK), 'serve', '--host', '127.0.0.1'],
            env={**clean_env(self.data_dir), **env},
            cwd=directory,
            log_path=directory / 'serve.stdout',
            stderr_path=directory / 'serve.stderr',
            ready_path='/healthz',
            ready_status=200,
            startup_timeout=STARTUP_TIMEOUT,
            stop_timeout=STOP_TIMEOUT,
            announce=False,  # the output is the app's own (JSON lines in some tests)
        )
        self.stdout_path = self.log_path

    def start(self) -> Served:
        if not CASEBOOK.exists():
            pytest.fail(f'{CASEBOOK} not found: run `make install` first', pytrace=False)
        try:
            return super().start()
        except support.ServerError as error:
            pytest.fail(f'casebook serve did not start: {error}', pytrace=False)

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
