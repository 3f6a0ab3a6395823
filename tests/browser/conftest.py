"""Real-browser fixtures: the real app served by `casebook serve` in a subprocess, driven by headless Chromium.

- `server`: a fresh data dir and a running `casebook serve` on a free port; `stop()` / `start()` restart it.
- `add_clinician`: adds an account through the real CLI (`casebook user add … --password-stdin`).
- `browser`: one Chromium for all the browser tests (Debian's /usr/bin/chromium, not Playwright's download).
- `new_visitor`: a fresh browser context per call — a separate browser with its own cookies, like a second
  computer or a private window — with one page whose console errors, page errors and dialogs are recorded.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from playwright.sync_api import expect, sync_playwright

CHROMIUM = Path('/usr/bin/chromium')
CHROMIUM_ARGS = [
    '--no-sandbox',
    '--disable-gpu',
    '--disable-background-networking',
    '--disable-component-update',
    '--disable-sync',
    '--no-first-run',
]
CASEBOOK = Path(sys.executable).parent / 'casebook'  # the console script installed next to this interpreter
STARTUP_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0
CLI_TIMEOUT = 60.0
EXPECT_TIMEOUT_MS = 10_000

PASSWORD = 'correct horse battery staple 42'  # long enough, not a common password


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


def casebook_env(data_dir: Path) -> dict[str, str]:
    """The environment for the app and its CLI: this test's data dir and nothing else from CASEBOOK_*.

    PYTEST_CURRENT_TEST is dropped too: NiceGUI's `ui.run` takes it to mean "inside pytest" and then wants
    NICEGUI_SCREEN_TEST_PORT; the served app must run as it does for a user.
    """
    prefixes = ('CASEBOOK_', 'NICEGUI_', 'PYTEST_')
    env = {key: value for key, value in os.environ.items() if not key.startswith(prefixes)}
    env['CASEBOOK_DATA_DIR'] = str(data_dir)
    env['PYTHONUNBUFFERED'] = '1'
    return env


class Server:
    """`casebook serve` in a subprocess; its stdout and stderr go to `log_path`."""

    def __init__(self, data_dir: Path, log_path: Path, extra_env: dict[str, str] | None = None) -> None:
        self.data_dir = data_dir
        self.log_path = log_path
        self.extra_env = extra_env or {}
        self.port = _free_port()
        self.base_url = f'http://127.0.0.1:{self.port}'
        self.process: subprocess.Popen[bytes] | None = None
        self._log_file = None

    @property
    def env(self) -> dict[str, str]:
        return {**casebook_env(self.data_dir), **self.extra_env}

    def start(self) -> None:
        """Start (again) on the same port and data dir; returns once the port answers HTTP."""
        assert self.process is None, 'the server is already running'
        if not CASEBOOK.exists():
            pytest.fail(f'{CASEBOOK} not found: run `make install` first', pytrace=False)
        self._log_file = open(self.log_path, 'ab')
        self._log_file.write(f'\n===== casebook serve --port {self.port} =====\n'.encode())
        self._log_file.flush()
        self.process = subprocess.Popen(
            [str(CASEBOOK), 'serve', '--host', '127.0.0.1', '--port', str(self.port)],
            env=self.env,
            cwd=self.data_dir.parent,
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while True:
            if self.process.poll() is not None:
                code = self.process.returncode
                self._close()
                pytest.fail(f'casebook serve exited with status {code} while starting:\n{self.log()}', pytrace=False)
            if self._answers_http():
                return
            if time.monotonic() > deadline:
                self.stop()
                pytest.fail(
                    f'casebook serve did not answer HTTP on port {self.port} within {STARTUP_TIMEOUT:.0f} s:\n'
                    f'{self.log()}',
                    pytrace=False,
                )
            time.sleep(0.05)

    def _answers_http(self) -> bool:
        connection = http.client.HTTPConnection('127.0.0.1', self.port, timeout=2)
        try:
            connection.request('GET', '/')
            connection.getresponse().read()
            return True
        except OSError:
            return False
        finally:
            connection.close()

    def stop(self) -> None:
        """SIGTERM, then wait; SIGKILL after 10 s."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._close()

    def _close(self) -> None:
        self.process = None
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def log(self) -> str:
        return self.log_path.read_text(encoding='utf-8', errors='replace') if self.log_path.exists() else ''

    def assert_log_clean(self) -> None:
        """No traceback and no ERROR/CRITICAL line in the server's output."""
        bad = [
            line for line in self.log().splitlines() if 'Traceback' in line or re.search(r'\b(ERROR|CRITICAL)\b', line)
        ]
        assert not bad, 'the server logged errors:\n' + self.log()


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
        command = [str(CASEBOOK), 'user', 'add', username, '--display-name', display_name, '--password-stdin']
        if role is not None:
            command += ['--role', role]
        result = subprocess.run(
            command,
            input=password + '\n',
            env=server.env,
            cwd=server.data_dir.parent,
            capture_output=True,
            text=True,
            timeout=CLI_TIMEOUT,
            check=False,
        )
        assert result.returncode == 0, (
            f'casebook user add {username} exited with {result.returncode}:\n{result.stdout}{result.stderr}'
        )

    return add


def _skip_without_chromium() -> None:
    if not CHROMIUM.exists():
        pytest.skip(
            f'CHROMIUM IS MISSING: {CHROMIUM} not found, so the real-browser tests did NOT run. '
            '`make test` installs it (apt-get install chromium).'
        )


@pytest.fixture(autouse=True)
def _chromium_required() -> None:
    """Skip loudly, before any server is started, when there is no Chromium to drive."""
    _skip_without_chromium()


@pytest.fixture(scope='package')
def browser():
    """One headless Chromium for all the browser tests of a run (in effect, one per test session).

    Package scope, not session scope: while Playwright's sync API is alive, its event loop counts as
    running in this thread, so every later `asyncio.run()` (the CLI tests) and pytest-asyncio test of
    the same session would fail. It is closed as soon as the last test of this package is done.
    """
    _skip_without_chromium()
    expect.set_options(timeout=EXPECT_TIMEOUT_MS)
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


class Visitor:
    """One browser (a context of its own: own cookies and storage) with one page, and what went wrong in it."""

    def __init__(self, context, base_url: str) -> None:
        self.context = context
        self.base_url = base_url
        self.console_errors: list[str] = []
        self.page_errors: list[str] = []
        self.dialogs: list[str] = []
        self.page = context.new_page()
        self.page.on('console', self._on_console)
        self.page.on('pageerror', lambda error: self.page_errors.append(str(error)))
        self.page.on('dialog', self._on_dialog)

    def _on_console(self, message) -> None:
        if message.type == 'error':
            self.console_errors.append(f'{message.text} ({message.location})')

    def _on_dialog(self, dialog) -> None:
        self.dialogs.append(f'{dialog.type}: {dialog.message}')
        with contextlib.suppress(Exception):
            dialog.dismiss()

    def goto(self, path: str = '/') -> None:
        self.page.goto(self.base_url + path)

    # ----- the workspace's parts, found the way a user finds them (labels, roles, visible text) -----------

    @property
    def header(self):
        """The `User: … | Patient: …` line in the page header."""
        return self.page.locator('header').get_by_text(re.compile(r'^\s*User: '))

    @property
    def composer(self):
        return self.page.get_by_label('Type message here')

    @property
    def patient_input(self):
        return self.page.get_by_label('Patient ID')

    @property
    def messages(self):
        """Every message shown; each is an element with role=article."""
        return self.page.get_by_role('article')

    def message(self, text: str):
        """The shown messages whose text is exactly `text`."""
        return self.messages.filter(has=self.page.get_by_text(text, exact=True))

    # ----- flows ---------------------------------------------------------------------------------------

    def create_first_account(self, username: str, display_name: str, password: str = PASSWORD) -> None:
        self.goto('/')
        self.page.get_by_label('Username').fill(username)
        self.page.get_by_label('Display name').fill(display_name)
        self.page.get_by_label('Password', exact=True).fill(password)
        self.page.get_by_role('button', name='Create account').click()
        expect(self.header).to_have_text(f'User: {display_name} | Patient: (not set)')

    def log_in(self, username: str, display_name: str, password: str = PASSWORD, patient: str = '(not set)') -> None:
        self.goto('/')
        self.page.get_by_label('Username').fill(username)
        self.page.get_by_label('Password', exact=True).fill(password)
        self.page.get_by_role('button', name='Log in').click()
        expect(self.header).to_have_text(f'User: {display_name} | Patient: {patient}')

    def open_patient(self, patient_id: str, display_name: str) -> None:
        self.patient_input.fill(patient_id)
        self.page.get_by_role('button', name='Open patient').click()
        expect(self.header).to_have_text(f'User: {display_name} | Patient: {patient_id}')

    def send(self, text: str) -> None:
        """Type a message and click Send; waits until it is shown and the input is cleared."""
        count = self.messages.count()
        self.composer.fill(text)
        self.page.get_by_role('button', name='Send').click()
        expect(self.messages).to_have_count(count + 1)
        expect(self.messages.last).to_contain_text(text.strip())
        expect(self.composer).to_have_value('')

    def forget_console_errors(self) -> None:
        """Connection errors while the server is deliberately down are expected; forget them."""
        self.console_errors.clear()

    def assert_clean(self) -> None:
        assert not self.dialogs, f'dialogs were opened: {self.dialogs}'
        assert not self.page_errors, f'errors in the page: {self.page_errors}'
        assert not self.console_errors, f'errors on the console: {self.console_errors}'


@pytest.fixture
def new_visitor(browser, server: Server) -> Iterator[Callable[[], Visitor]]:
    """Call it for each separate browser you need; all are closed at teardown."""
    contexts = []

    def make() -> Visitor:
        context = browser.new_context(viewport={'width': 1280, 'height': 800})
        context.set_default_timeout(EXPECT_TIMEOUT_MS)
        contexts.append(context)
        return Visitor(context, server.base_url)

    yield make
    for context in contexts:
        with contextlib.suppress(Exception):
            context.close()
