"""What the real-browser tests share (tests/browser, tests/cluster): Chromium, the served app's environment, a visitor.

Plain helpers, no fixtures: each test package defines its own `browser` and `new_visitor` fixtures from these,
so neither package's conftest has to import the other's.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Iterator

import pytest
from playwright.sync_api import expect, sync_playwright

import support
from support import CHROMIUM, PASSWORD

# What a page logs while its server is gone: the socket's failed connections and polls, refused or reset requests,
# nginx answering for an instance that is down.
CONNECTION_ERROR = re.compile(
    r"WebSocket connection to '[^']*/_nicegui_ws/socket\.io/[^']*' failed"
    r'|Failed to load resource: net::ERR_(CONNECTION_REFUSED|CONNECTION_RESET|EMPTY_RESPONSE|CONNECTION_CLOSED)'
    r'|Failed to load resource: the server responded with a status of 50[234]'
)
EXPECT_TIMEOUT_MS = 10_000


def skip_without_chromium() -> None:
    if not CHROMIUM.exists():
        pytest.skip(
            f'CHROMIUM IS MISSING: {CHROMIUM} not found, so the real-browser tests did NOT run. '
            '`make test` installs it (apt-get install chromium).'
        )


@contextlib.contextmanager
def launch_chromium():
    """Headless Debian Chromium through Playwright's sync API (not Playwright's own browser download).

    Use it for a package-scoped fixture, not a session-scoped one: while Playwright's sync API is alive, its event
    loop counts as running in this thread, so every later `asyncio.run()` (the CLI tests) and pytest-asyncio test
    of the same session would fail.
    """
    skip_without_chromium()
    expect.set_options(timeout=EXPECT_TIMEOUT_MS)
    with sync_playwright() as playwright:
        chromium = support.launch_chromium(playwright)
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
        """Forget every console error so far (a test that provokes errors of its own and checks them otherwise)."""
        self.console_errors.clear()

    def forget_connection_errors(self) -> None:
        """Forget the console errors of a server that went away deliberately (the socket failing to reach it, a
        gateway error from nginx meanwhile); any other error stays, for `assert_clean`."""
        self.console_errors = [error for error in self.console_errors if not CONNECTION_ERROR.search(error)]

    def assert_clean(self) -> None:
        assert not self.dialogs, f'dialogs were opened: {self.dialogs}'
        assert not self.page_errors, f'errors in the page: {self.page_errors}'
        assert not self.console_errors, f'errors on the console: {self.console_errors}'


@contextlib.contextmanager
def visitors(browser, base_url: str) -> Iterator[Callable[[], Visitor]]:
    """A maker of visitors of `base_url`, one fresh browser context each; all are closed on leaving."""
    contexts = []

    def make() -> Visitor:
        context = browser.new_context(viewport={'width': 1280, 'height': 800})
        context.set_default_timeout(EXPECT_TIMEOUT_MS)
        contexts.append(context)
        return Visitor(context, base_url)

    try:
        yield make
    finally:
        for context in contexts:
            with contextlib.suppress(Exception):
                context.close()
