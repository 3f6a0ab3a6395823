"""Real-browser fixtures: the real app served by `casebook serve` in a subprocess, driven by headless Chromium.

- `server`: a fresh data dir and a running `casebook serve` on a free port; `stop()` / `start()` restart it.
- `add_clinician`: adds an account through the real CLI (`casebook user add … --password-stdin`).
- `browser`: one Chromium for all the browser tests (Debian's /usr/bin/chromium, not Playwright's download).
- `new_visitor`: a fresh browser context per call — a separate browser with its own cookies, like a second
  computer or a private window — with one page whose console errors, page errors and dialogs are recorded.

The pieces shared with tests/cluster (Chromium, `Visitor`, the app's environment) live in tests/browser_support.py.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import support
from support import CASEBOOK, PASSWORD, clean_env
from tests.browser_support import Visitor, launch_chromium, skip_without_chromium, visitors

STARTUP_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0
CLI_TIMEOUT = 60.0


class Server(support.Server):
    """`casebook serve` in a subprocess on a data dir of its own; its stdout and stderr go to `log_path`."""

    def __init__(self, data_dir: Path, log_path: Path, extra_env: dict[str, str] | None = None) -> None:
        super().__init__(
            command=[str(CASEBOOK), 'serve', '--host', '127.0.0.1'],
            env={},
            cwd=data_dir.parent,
            log_path=log_path,
            startup_timeout=STARTUP_TIMEOUT,
            stop_timeout=STOP_TIMEOUT,
        )
        self.data_dir = data_dir
        self.extra_env = extra_env or {}

    @property
    def env(self) -> dict[str, str]:  # read at every start: a test may change extra_env between starts
        return {**clean_env(self.data_dir), **self.extra_env}

    @env.setter
    def env(self, _value: dict[str, str]) -> None:
        pass  # built from data_dir and extra_env

    def start(self) -> Server:
        """Start (again) on the same port and data dir; returns once the port answers HTTP."""
        if not CASEBOOK.exists():
            pytest.fail(f'{CASEBOOK} not found: run `make install` first', pytrace=False)
        try:
            return super().start()
        except support.ServerError as error:
            pytest.fail(f'casebook serve did not start: {error}', pytrace=False)

    def casebook(self, *args: str, stdin: str | None = None) -> str:
        """Run the real CLI (`casebook ARGS…`) on this server's data dir; its output, once it exited with 0."""
        result = subprocess.run(
            [str(CASEBOOK), *args],
            input=stdin,
            env=self.env,
            cwd=self.data_dir.parent,
            capture_output=True,
            text=True,
            timeout=CLI_TIMEOUT,
            check=False,
        )
        output = result.stdout + result.stderr
        assert result.returncode == 0, f'casebook {args[0]} exited with {result.returncode}:\n{output}'
        return result.stdout

    def import_conversation(self, username: str, patient_id: str, messages: list[dict], folder: Path) -> None:
        """A clinician's history as `casebook import` takes it (native JSON records: sender, text, sent_at)."""
        path = folder / f'import-{patient_id}.json'
        document = {'format': 'casebook.conversation.v1', 'patient_id': patient_id, 'messages': messages}
        path.write_text(json.dumps(document), encoding='utf-8')
        self.casebook('import', str(path), '--user', username)

    def log(self) -> str:
        return self.output()

    def assert_log_clean(self) -> None:
        """No traceback and no ERROR/CRITICAL line in the server's output."""
        assert not self.errors_in_log(), 'the server logged errors:\n' + self.log()


@pytest.fixture
def server_env() -> dict[str, str]:
    """Extra CASEBOOK_* settings for the served app; a test module overrides this fixture to change them."""
    return {}


@pytest.fixture
def server(tmp_path: Path, server_env: dict[str, str]) -> Iterator[Server]:
    """A fresh install: `casebook serve` on a free port with an empty data dir of its own."""
    running = Server(tmp_path / 'data', tmp_path / 'server.log', server_env)
    running.start()
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture
def add_clinician(server: Server) -> Callable[..., None]:
    """Add a clinician to the server's data dir through the real CLI."""

    def add(username: str, display_name: str, password: str = PASSWORD, role: str | None = None) -> None:
        args = ['user', 'add', username, '--display-name', display_name, '--password-stdin']
        server.casebook(*args, *(['--role', role] if role is not None else []), stdin=password + '\n')

    return add


@pytest.fixture(autouse=True)
def _chromium_required() -> None:
    """Skip loudly, before any server is started, when there is no Chromium to drive."""
    skip_without_chromium()


@pytest.fixture(scope='package')
def browser():
    """One headless Chromium for all the browser tests of a run (package scope: see `launch_chromium`)."""
    with launch_chromium() as chromium:
        yield chromium


@pytest.fixture
def new_visitor(browser, server: Server) -> Iterator[Callable[[], Visitor]]:
    """Call it for each separate browser you need; all are closed at teardown."""
    with visitors(browser, server.base_url) as make:
        yield make
