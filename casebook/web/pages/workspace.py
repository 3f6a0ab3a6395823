"""The workspace: header, recent patients, one patient's conversation and the composer. This module holds the
page and its session; writing is in composer.py, reading the conversation in conversation_view.py.

Sending appends one element and redraws nothing already shown; every event re-checks the session and
acts only on the conversation this tab holds on the server, never on an id sent by the browser.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import Callable
from dataclasses import replace
from typing import TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from fastapi.responses import RedirectResponse
from nicegui import app, ui
from sqlalchemy.orm import Session

from casebook.db import DATABASE_ERRORS
from casebook.live import Resync, SessionsEnded, clinician_topic
from casebook.services import accounts, conversations, sessions
from casebook.services.conversations import ConversationInfo
from casebook.services.errors import InvalidInput
from casebook.services.sessions import SignedIn
from casebook.web import auth, lifecycle, oidc, runtime
from casebook.web.attempt import NOT_DONE, UNREACHABLE, NotDone, attempt, database_page
from casebook.web.components import heading, theme_switch
from casebook.web.message_list import SCROLL_JS, MessageList
from casebook.web.notebook import Notebook
from casebook.web.pages.composer import Composer
from casebook.web.pages.conversation_view import ConversationView
from casebook.web.pages.search_panel import SearchPanel
from casebook.web.pages.templates_ui import TemplatePicker
from casebook.web.passkeys_ui import passkey_section
from casebook.web.safeguards import IdleWatch, password_form, show_sessions
from casebook.web.two_step_ui import two_step_section

log = logging.getLogger(__name__)
T = TypeVar('T')
Checked = tuple[SignedIn | None, T | None]  # the session as checked, and what the work gave (None: not done)

# Alt+P (or "/" when not typing) puts the cursor in the patient box, from anywhere on the page
SHORTCUT_JS = """
<script>
document.addEventListener('keydown', (event) => {
  const typing = ['INPUT', 'TEXTAREA'].includes(document.activeElement?.tagName);
  const altP = event.altKey && !event.ctrlKey && !event.metaKey && event.code === 'KeyP';
  if (!altP && !(event.key === '/' && !typing && !event.ctrlKey && !event.metaKey && !event.altKey)) return;
  const box = document.querySelector('input[aria-label="Patient ID"]');
  if (!box) return;
  event.preventDefault();
  box.focus();
  box.select();
});
</script>
"""
TIMEZONE_JS = 'Intl.DateTimeFormat().resolvedOptions().timeZone'
EXPORTS = {'json': 'Casebook JSON', 'fhir': 'FHIR R4 bundle', 'markdown': 'Markdown transcript'}


OPEN_TABS: weakref.WeakSet[Workspace] = weakref.WeakSet()


def register() -> None:
    ui.page('/', title='Casebook')(database_page(workspace_page))
    app.on_shutdown(flush_all_drafts)  # registered before NiceGUI's own, which closes the notebooks' files
    lifecycle.on_stop(flush_all_drafts)  # and on SIGTERM before the tabs are moved to another instance


def flush_all_drafts() -> None:
    """Write every draft still waiting for its moment (the server is stopping)."""
    for tab in list(OPEN_TABS):
        tab._flush_draft()


async def workspace_page() -> RedirectResponse | None:
    if await auth.needs_first_account():
        return RedirectResponse('/setup', status_code=303)
    signed = await auth.current()
    book = auth.notebook()
    if signed is None or book.token is None:
        return RedirectResponse('/login', status_code=303)
    workspace = Workspace(signed, book.token, book)
    await workspace.build()
    return None


class Workspace(Composer, ConversationView, SearchPanel, TemplatePicker):
    """One tab's view of the signed-in clinician's notebook: the page, its header and the session it acts for;
    writing (composer.py), reading the conversation (conversation_view.py), searching (search_panel.py) and note
    templates (templates_ui.py) are parts of it."""

    def __init__(self, signed: SignedIn, token: str, book: Notebook) -> None:
        self.signed = signed
        self.token = token  # this tab acts for this session only, whatever later sign-ins do to the notebook
        self.exit = '/login'  # where the tab goes when its session ends (Log out: maybe the provider's logout page)
        self.book = book
        self.client = ui.context.client
        self.conversation: ConversationInfo | None = None
        self.unsubscribe = lambda: None
        self.loading = False
        self.send_id = Notebook.new_send_id()  # the id the composer's text is sent with, kept across retries
        self.unsaved = False  # the last send could not reach the database
        self.pending_draft: tuple[str, str, str] | None = None  # (patient, text, send id) not yet written
        self.draft_timer: asyncio.TimerHandle | None = None

    @property
    def clinician(self) -> accounts.ClinicianInfo:
        return self.signed.clinician

    async def build(self) -> None:
        # first: whatever fails below, no subscription outlives the tab
        self.client.on_delete(lambda: self.unsubscribe())
        self.client.on_delete(self._flush_draft)
        self.client.on_disconnect(self._flush_draft)
        for other in list(OPEN_TABS):  # a reload (or a new tab) of this browser finds every draft written
            if other.book.same_browser(self.book):
                other._flush_draft()
        OPEN_TABS.add(self)
        ui.add_body_html(SCROLL_JS + SHORTCUT_JS)
        with ui.left_drawer(bordered=True).props('width=260').classes('gap-1') as drawer:
            heading('Recent patients', level=2, classes='text-base font-semibold')
            self.recent_list = ui.list().classes('w-full gap-1').props('aria-label="Recent patients"')
        with ui.header(elevated=True).classes('items-center gap-x-4 gap-y-2 flex-wrap px-4 py-2'):
            ui.button(icon='menu', on_click=drawer.toggle).props('flat round color=white aria-label="Recent patients"')
            heading('Casebook', classes='text-xl font-semibold')
            self.header_label = ui.label().classes('text-base').props('data-testid=workspace-header')
            ui.space()
            actions = [('Sessions', 'devices', self._show_sessions), ('Profile', 'person', self._edit_profile)]
            if self.clinician.is_admin:
                actions.insert(0, ('Admin', 'admin_panel_settings', lambda: ui.navigate.to('/admin')))
            for label, icon, action in actions:  # in the bar from 600 px wide …
                ui.button(label, icon=icon, on_click=action).props('flat color=white no-caps').classes('gt-xs')
            with ui.button(icon='more_vert').props('flat round color=white aria-label="More"').classes('xs'):
                with ui.menu():  # … in a menu on a phone, where the bar has room for one row of buttons
                    for label, icon, action in actions:
                        with ui.menu_item(on_click=action).props('role=menuitem'):
                            ui.icon(icon).classes('mr-3')
                            ui.label(label)
            theme_switch(self.book)
            ui.button('Log out', on_click=self.log_out).props('outline color=white')
            with ui.row().classes('w-full items-start gap-x-6 gap-y-2'):  # one line on a desk, two on a phone
                with ui.row().classes('grow items-start gap-2 no-wrap max-w-md'):
                    self.patient_input = (
                        ui.input('Patient ID')
                        .props('dark dense outlined maxlength=200 aria-keyshortcuts=Alt+P title="Patient ID (Alt+P)"')
                        .classes('grow')
                    )
                    self.patient_input.on('keydown.enter', self.open_patient)
                    ui.button('Open patient', on_click=self.open_patient).props('color=white text-color=primary')
                self._build_search_box()
            self.patient_error = ui.label().props('role=alert').classes('w-full text-sm font-medium text-white')
        with ui.column().classes('w-full max-w-4xl mx-auto gap-3 pb-4'):
            self._build_search_results()
            with ui.column().classes('w-full gap-3') as self.conversation_area:
                with ui.row().classes('w-full items-center gap-2'):
                    self.title = heading('', level=2, classes='text-lg font-semibold')
                    ui.space()
                    with ui.button('Export', icon='download').props('flat no-caps') as self.export_button:
                        with ui.menu():
                            for fmt, label in EXPORTS.items():
                                ui.menu_item(label, on_click=lambda fmt=fmt: self._export(fmt))
                self.empty = ui.label().classes('text-gray-700')
                self.list = MessageList(on_actions=self._message_actions, on_older=self._load_older)
                self.list.zone = _zone(self.book.timezone)
        with ui.footer().classes('casebook-footer border-t px-4 py-2'):
            self._build_composer()
        ui.on('casebook_near_top', self._near_top, throttle=0.3)
        ui.on('casebook_near_bottom', self._near_bottom, throttle=0.3)

        await self._show_recent()
        if self.book.patient_id is not None:
            await self._open(self.book.patient_id)
        else:
            self._show_no_patient()
        self.client.on_connect(self._on_connect)
        self.idle = IdleWatch(self.token, self._leave)
        unsubscribe_sessions = runtime.current().hub.subscribe(clinician_topic(self.clinician.id), self._on_sessions)
        self.client.on_delete(unsubscribe_sessions)

    # ----- events from the browser -------------------------------------------------------------------

    async def open_patient(self) -> None:
        if not await self._still_signed_in():
            return
        try:
            patient_id = conversations.normalize_patient_id(self.patient_input.value)
        except InvalidInput as refusal:
            self.patient_error.set_text(refusal.message)
            return
        self.patient_error.set_text('')
        typed = self.patient_input.value
        self.patient_input.value = ''  # at once: whatever is typed while the patient opens is kept
        if not await self._open(patient_id) and not self.patient_input.value:
            self.patient_input.value = typed  # not opened: give the ID back to try again

    async def _export(self, fmt: str) -> None:
        if self.conversation is not None and await self._still_signed_in():
            ui.download.from_url(f'/export/{self.conversation.patient_id}/{fmt}')

    async def log_out(self) -> None:
        # signed in through the identity provider: its end-session page next, so the next clinician at this
        # computer does not walk straight back in (it sends the browser back to /login)
        self.exit = await oidc.end_session_url(self.token) or '/login'
        try:
            await auth.sign_out(self.token, clinician_id=self.clinician.id, reason='manual', address=self.address)
        except DATABASE_ERRORS:
            # this browser forgets the session all the same; the server ends it at its maximum age
            log.warning('session not ended on the server: the database could not be reached')
            if self._owns_notebook():
                self.book.sign_out()
        ui.navigate.to(self.exit)

    # ----- the profile ------------------------------------------------------------------------------

    async def _edit_profile(self) -> None:
        with ui.dialog().props('aria-label="Your profile"') as dialog, ui.card().classes('w-full max-w-lg'):
            heading('Your profile', level=2, classes='text-lg font-semibold')
            name = ui.input('Display name', value=self.clinician.display_name).classes('w-full')
            error = ui.label().props('role=alert').classes('text-red-800 text-sm')

            async def save() -> None:
                if not await self._still_signed_in():
                    return
                changed = await attempt(
                    lambda: accounts.change_display_name(
                        runtime.current().database.run, clinician_id=self.clinician.id, display_name=name.value
                    ),
                    error.set_text,
                    what='display name change',
                )
                if isinstance(changed, NotDone):
                    return
                self.signed = replace(self.signed, clinician=changed)
                self._show_header()
                dialog.close()

            name.on('keydown.enter', save)
            with ui.row().classes('w-full justify-end'):
                ui.button('Cancel', on_click=dialog.close).props('flat')
                ui.button('Save', on_click=save)
            ui.separator()
            self._build_templates_section()
            ui.separator()
            passkey_section(
                lambda: self.signed,
                address=self.address,
                still_signed_in=self._still_signed_in,
                format_time=self.list.format,
            )
            ui.separator()
            password_form(lambda: self.signed, address=self.address, still_signed_in=self._still_signed_in)
            ui.separator()
            show_two_step = two_step_section(
                lambda: self.signed, address=self.address, still_signed_in=self._still_signed_in
            )
        dialog.on('hide', dialog.delete)
        dialog.open()
        await self._show_templates()
        await show_two_step()

    # ----- reading ------------------------------------------------------------------------------------

    def _show_no_patient(self) -> None:
        self._show_header()
        self.title.set_text('No patient open')
        self.empty.set_text('Enter a patient ID above and press Open patient.')
        self.composer.disable()
        self.send_button.disable()
        self.export_button.set_visibility(False)

    def _show_header(self) -> None:
        patient = self.conversation.patient_id if self.conversation else '(not set)'
        self.header_label.set_text(f'User: {self.clinician.display_name} | Patient: {patient}')

    # ----- helpers ------------------------------------------------------------------------------------

    def _owns_notebook(self) -> bool:
        """False once this browser's notebook belongs to another session (logged out or in as someone else)."""
        return self.book.token == self.token

    async def _still_signed_in(self) -> bool:
        """Every event re-checks the session; a tab whose session ended goes to the login page."""
        try:
            signed = await auth.signed_in(self.token)
        except DATABASE_ERRORS:
            ui.notify(UNREACHABLE, type='negative')
            return False
        return self._accept(signed)

    def _for_this_session(self, work: Callable[[Session, SignedIn], T]) -> Callable[[Session], Checked[T]]:
        """`work` as a unit of work that first checks this tab's session, in the same trip to the database: it runs
        only while the session lives and is the clinician's this tab acts for. Give the result to `_accept`."""
        limits, token, clinician_id = runtime.current().limits, self.token, self.clinician.id

        def unit(session: Session) -> Checked[T]:
            signed = sessions.resolve_sync(session, token, max_age=limits.max_age, idle=limits.idle)
            if signed is None or signed.clinician.id != clinician_id:
                return signed, None
            return signed, work(session, signed)

        return unit

    async def _checked(
        self, work: Callable[[Session, SignedIn], T], tell: Callable[[str], object], *, what: str
    ) -> T | NotDone:
        """`work` done for this tab's session (see `_for_this_session`), the clinician told with `tell` when it was
        refused or the database could not be reached; a session that ended goes to the login page. NOT_DONE
        whenever the work was not done."""
        database = runtime.current().database
        done = await attempt(lambda: database.run(self._for_this_session(work)), tell, what=what)
        if isinstance(done, NotDone) or self.client.is_deleted:
            return NOT_DONE
        signed, result = done
        if not self._accept(signed):  # accepted: the work ran, and `result` is what it gave (None too)
            return NOT_DONE
        return result  # type: ignore[return-value]

    def _accept(self, signed: SignedIn | None) -> bool:
        """Keep acting for this session while it lives; otherwise go to the login page."""
        if signed is None or signed.clinician.id != self.clinician.id or not self._owns_notebook():
            self._leave()
            return False
        self.signed = signed
        if hasattr(self, 'idle'):
            self.idle.seen(signed)
        return True

    def _leave(self) -> None:
        """This tab's session ended (logout, idle, expiry, ended elsewhere): to the login page, which says why."""
        self.unsubscribe()
        if not self.client.is_deleted:
            with self.client:
                ui.navigate.to(self.exit)

    async def _on_sessions(self, event: SessionsEnded | Resync) -> None:
        if isinstance(event, Resync):  # a logoff may have been missed: ask the database
            with self.client:
                await self._still_signed_in()
        elif event.ends(self.signed.session_id):
            self._leave()

    @property
    def address(self) -> str:
        return self.client.ip or ''

    async def _show_sessions(self) -> None:
        if await self._still_signed_in():
            await show_sessions(
                self.signed, address=self.address, format_time=self.list.format, still_signed_in=self._still_signed_in
            )

    async def _on_connect(self) -> None:
        try:
            name = await ui.run_javascript(TIMEZONE_JS, timeout=3)
        except TimeoutError:
            return
        if isinstance(name, str) and name != self.book.timezone and _zone(name).key == name:
            self.book.timezone = name
            self.list.set_zone(_zone(name))
            await self._show_recent()


def _zone(name: str | None) -> ZoneInfo:
    try:
        return ZoneInfo(name or 'UTC')
    except (ZoneInfoNotFoundError, ValueError):
        return ZoneInfo('UTC')
