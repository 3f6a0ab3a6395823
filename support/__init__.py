"""What the tests, the benchmarks and the scripts share, once: where things are, the one password their accounts
use, free ports, the Redis they may use, the environment a served Casebook gets, and Debian's Chromium.

Not part of the app (nothing in casebook/ imports it). tests/, bench/ and scripts/ import it from the checkout's
root: pytest puts the root on the path, the benchmarks and scripts put it there themselves.
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
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CASEBOOK = Path(sys.executable).parent / 'casebook'  # the console script installed next to this interpreter

# The password of every account the tests, benchmarks and scripts make: long enough, not a common password, and
# not containing any of their usernames.
PASSWORD = 'correct horse battery staple 42'  # noqa: S105 (a test password)

# A Redis for tests and benchmarks that are about it; each run uses key prefixes of its own and removes them.
REDIS_URL = os.environ.get('CASEBOOK_TEST_REDIS_URL', 'redis://127.0.0.1:6379/0')

CHROMIUM = Path('/usr/bin/chromium')  # Debian's: Playwright's own download does not work here
CHROMIUM_ARGS = [
    '--no-sandbox',
    '--disable-gpu',
    '--disable-background-networking',
    '--disable-component-update',
    '--disable-sync',
    '--no-first-run',
]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


def clean_env(data_dir: Path | None = None, **extra: str) -> dict[str, str]:
    """The environment for a served Casebook or its command line: nothing from CASEBOOK_*, NICEGUI_* or PYTEST_*
    but what is given (and CASEBOOK_DATA_DIR when `data_dir` is).

    PYTEST_CURRENT_TEST would make NiceGUI's `ui.run` believe it runs under pytest and want
    NICEGUI_SCREEN_TEST_PORT; NICEGUI_STORAGE_PATH would move its storage. The served app must run as it does
    for a user.
    """
    prefixes = ('CASEBOOK_', 'NICEGUI_', 'PYTEST_')
    env = {key: value for key, value in os.environ.items() if not key.startswith(prefixes)}
    env['PYTHONUNBUFFERED'] = '1'
    if data_dir is not None:
        env['CASEBOOK_DATA_DIR'] = str(data_dir)
    env.update(extra)
    return env


def launch_chromium(playwright):
    """Headless Debian Chromium through a started Playwright (sync or async API: the caller awaits the latter)."""
    if not CHROMIUM.exists():
        raise RuntimeError(f'{CHROMIUM} not found: `make browser` installs it (apt-get install chromium)')
    return playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)


# ----- a served Casebook -------------------------------------------------------------------------------------------

STARTUP_TIMEOUT = 60.0  # seconds: a migration and a start-up on a busy 2-core machine
STOP_TIMEOUT = 15.0  # seconds after SIGTERM before SIGKILL


class ServerError(RuntimeError):
    """A server that did not start; the message holds the end of its output."""


def http_get(port: int, path: str, headers: dict[str, str] | None = None, timeout: float = 5) -> tuple[int, str]:
    """GET http://127.0.0.1:PORT/PATH: the status and body, or (0, '') when nothing answers."""
    connection = http.client.HTTPConnection('127.0.0.1', port, timeout=timeout)
    try:
        connection.request('GET', path, headers=headers or {})
        response = connection.getresponse()
        return response.status, response.read().decode(errors='replace')
    except OSError:
        return 0, ''
    finally:
        connection.close()


def terminate(process: subprocess.Popen, timeout: float = STOP_TIMEOUT) -> None:
    """SIGTERM (a graceful stop), then SIGKILL when the process is still there after `timeout` seconds."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@dataclass
class Server:
    """A web app in a subprocess on a free port of 127.0.0.1 (`--port` is appended to `command`); its output goes
    to `log_path` (stderr to `stderr_path` when given). Started again, it keeps its port and appends to its log.

    Ready once `ready_path` answers (with `ready_status`, when given); `announce`: a line naming the command and
    port is written to the log at each start."""

    command: list[str]
    env: dict[str, str]
    cwd: Path
    log_path: Path
    stderr_path: Path | None = None
    port: int = field(default_factory=free_port)
    ready_path: str = '/favicon.ico'
    ready_status: int | None = None
    startup_timeout: float = STARTUP_TIMEOUT
    stop_timeout: float = STOP_TIMEOUT
    announce: bool = True  # a line naming the command and port in the log at each start
    process: subprocess.Popen | None = None
    started_before: bool = False

    @property
    def base_url(self) -> str:
        return f'http://127.0.0.1:{self.port}'

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self) -> Server:
        """Start (again); returns once it is ready, raises ServerError when it exits or stays silent."""
        assert self.process is None or self.process.poll() is not None, 'the server is already running'
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        mode = 'ab' if self.started_before else 'wb'  # a new server: a new log
        self.started_before = True
        with contextlib.ExitStack() as files:  # handed to the child; closed here once it has them
            log_file = files.enter_context(open(self.log_path, mode))
            if self.announce:
                log_file.write(f'\n===== {" ".join(self.command)} --port {self.port} =====\n'.encode())
                log_file.flush()
            stderr = files.enter_context(open(self.stderr_path, mode)) if self.stderr_path else subprocess.STDOUT
            self.process = subprocess.Popen(
                [*self.command, '--port', str(self.port)],
                env=self.env,
                cwd=self.cwd,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=stderr,
            )
        deadline = time.monotonic() + self.startup_timeout
        while not self.answers():
            if self.process.poll() is not None:
                code, self.process = self.process.returncode, None
                raise ServerError(f'{self.command[0]} exited with status {code} while starting:\n{self.log_tail()}')
            if time.monotonic() > deadline:
                self.stop()
                raise ServerError(
                    f'no answer on port {self.port} within {self.startup_timeout:.0f} s:\n{self.log_tail()}'
                )
            time.sleep(0.05)
        return self

    def answers(self) -> bool:
        """Ready: `ready_path` answers (with `ready_status`, when given)."""
        status = http_get(self.port, self.ready_path, timeout=2)[0]
        return status != 0 if self.ready_status is None else status == self.ready_status

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after `stop_timeout` seconds."""
        if self.process is not None:
            terminate(self.process, self.stop_timeout)
        self.process = None

    def output(self) -> str:
        """Everything it wrote (stdout, then stderr when kept apart)."""
        paths = [self.log_path] + ([self.stderr_path] if self.stderr_path else [])
        return '\n'.join(path.read_text(encoding='utf-8', errors='replace') for path in paths if path.exists())

    def log_tail(self, lines: int = 40) -> str:
        return '\n'.join(self.output().splitlines()[-lines:])

    def errors_in_log(self) -> list[str]:
        """Tracebacks and ERROR/CRITICAL lines in its output."""
        return [line for line in self.output().splitlines() if 'Traceback' in line or ERROR_LINE.search(line)]

    def __enter__(self) -> Server:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()


ERROR_LINE = re.compile(r'\b(ERROR|CRITICAL)\b')


def casebook_serve(data_dir: Path, log_path: Path, *, command: list[str] | None = None, **kwargs) -> Server:
    """`casebook serve` (or `command`, started the same way) on 127.0.0.1 with a data dir of its own; `kwargs`:
    `env` (added to `clean_env`'s) and any other field of `Server`."""
    env = clean_env(data_dir, **kwargs.pop('env', {}))
    return Server(
        command=command or [str(CASEBOOK), 'serve', '--host', '127.0.0.1'],
        env=env,
        cwd=data_dir.parent,
        log_path=log_path,
        **kwargs,
    )


# ----- data written through the app's own services ----------------------------------------------------------------


async def seed_messages(database, username: str, patient_id: str, texts: list[str]) -> None:
    """`texts`, in order, as `username`'s messages about `patient_id`, written through the services into `database`
    (a `casebook.db.Database`: the running app's, or one opened on a served app's data dir)."""
    import uuid

    from casebook.services import accounts, conversations

    async with database.session() as session:
        clinician = await accounts.find_by_username(session, username)
        conversation = await conversations.open_conversation(session, clinician=clinician, patient_id=patient_id)
        for text in texts:
            await conversations.post_message(
                session, clinician=clinician, conversation_id=conversation.id, client_id=str(uuid.uuid4()), text=text
            )
