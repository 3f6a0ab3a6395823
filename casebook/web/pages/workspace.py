"""The workspace: header, recent patients, one patient's conversation and the composer.

Sending appends one element and redraws nothing already shown; every event re-checks the session and
acts only on the conversation this tab holds on the server, never on an id sent by the browser.
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from dataclasses import replace
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from fastapi.responses import RedirectResponse
from nicegui import app, background_tasks, ui
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from casebook import metrics
from casebook.live import ConversationEvent, Resync, SessionsEnded, clinician_topic, conversation_topic
from casebook.services import accounts, conversations, sessions
from casebook.services.conversations import ConversationInfo, MessageInfo
from casebook.services.errors import CasebookError, InvalidInput
from casebook.services.sessions import SignedIn
from casebook.web import auth, lifecycle, runtime
from casebook.web.attempt import UNREACHABLE, NotDone, attempt
from casebook.web.components import heading, theme_switch
from casebook.web.message_list import SCROLL_JS, MessageList
from casebook.web.notebook import Notebook
from casebook.web.safeguards import IdleWatch, password_form, show_sessions

log = logging.getLogger(__name__)

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
NOT_SAVED = 'Not saved: the database could not be reached. Your text is still in the box; press Send to try again.'
NOT_SAVED_SHORT = 'Not saved: the database could not be reached. Your message is still in the box.'
SENDING_AFTER = 0.3  # seconds: a send that takes longer than this shows that it is on its way
DRAFT_DELAY = 1.0  # seconds after the last keystroke before a draft is written
TIMEZONE_JS = 'Intl.DateTimeFormat().resolvedOptions().timeZone'
EXPORTS = {'json': 'Casebook JSON', 'fhir': 'FHIR R4 bundle', 'markdown': 'Markdown transcript'}


OPEN_TABS: weakref.WeakSet[Workspace] = weakref.WeakSet()


def register() -> None:
    ui.page('/', title='Casebook')(workspace_page)
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


class Workspace:
    """One tab's view of the signed-in clinician's notebook."""

    def __init__(self, signed: SignedIn, token: str, book: Notebook) -> None:
        self.signed = signed
        self.token = token  # this tab acts for this session only, whatever later sign-ins do to the notebook
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
            with ui.row().classes('w-full items-start gap-2 no-wrap'):
                self.patient_input = (
                    ui.input('Patient ID')
                    .props('dark dense outlined maxlength=200 aria-keyshortcuts=Alt+P title="Patient ID (Alt+P)"')
                    .classes('grow max-w-md')
                )
                self.patient_input.on('keydown.enter', self.open_patient)
                ui.button('Open patient', on_click=self.open_patient).props('color=white text-color=primary')
            self.patient_error = ui.label().props('role=alert').classes('w-full text-sm font-medium text-white')
        with ui.column().classes('w-full max-w-4xl mx-auto gap-3 pb-4'):
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
            with ui.row().classes('w-full max-w-4xl mx-auto items-center gap-2 no-wrap'):
                # created holding the draft: setting it later would reach the browser only after the socket
                # connects and overwrite whatever was typed in between
                draft = self.book.draft(self.book.patient_id) if self.book.patient_id else ''
                self.composer = ui.input('Type message here', value=draft).props('outlined dense').classes('grow')
                self.composer.on('keydown.enter', self.send)
                self.send_button = ui.button('Send', on_click=self.send)
            with ui.row().classes('w-full max-w-4xl mx-auto items-center gap-2') as self.send_state:
                self.send_state_text = ui.label().props('role=status aria-live=polite').classes('text-sm')
                self.retry_button = ui.button('Retry', icon='refresh', on_click=self.send).props('outline no-caps')
            self.send_state.set_visibility(False)
        self.composer.on_value_change(self._draft_changed)
        ui.on('casebook_near_top', self._load_older, throttle=0.3)
        ui.on('casebook_near_bottom', self._load_newer, throttle=0.3)

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

    async def send(self) -> None:
        if self.conversation is None:
            ui.notify('Open a patient first.', type='warning')
            return
        conversation = self.conversation
        text = self.composer.value if isinstance(self.composer.value, str) else ''
        if not text.strip():
            return  # the lesson's rule: an empty message does nothing
        try:
            conversations.normalize_message(text)
        except InvalidInput as refusal:
            ui.notify(refusal.message, type='negative', multi_line=True)
            return
        if not self._owns_notebook():
            ui.navigate.to('/login')
            return
        send_id = self.send_id  # taken before any await: a double click shares it
        slow = asyncio.get_running_loop().call_later(SENDING_AFTER, self._show_send_state, 'sending')
        try:
            message = await self._post(conversation, send_id, text)
        finally:
            slow.cancel()
        if self.client.is_deleted:
            return
        self._show_send_state('failed' if self.unsaved else 'idle')
        if message is None:
            return
        if self.send_id == send_id:
            self.send_id = Notebook.new_send_id()
        if self.pending_draft is not None and self.pending_draft[2] == send_id:  # not written yet: never needs to be
            patient, pending_text, _ = self.pending_draft
            self.pending_draft = None if pending_text == text else (patient, pending_text, self.send_id)
        self.book.forget_draft(conversation.patient_id, send_id)
        if message.text != text.strip():  # an earlier send of this draft had been stored; this text was not
            self.book.save_draft(conversation.patient_id, text, self.send_id)
            ui.notify(
                'An earlier send of this draft had been saved (shown above); your edited text is still in the box.',
                type='info',
                multi_line=True,
            )
            return
        if self.composer.value == text:
            self.composer.value = ''

    def _show_send_state(self, state: str) -> None:
        """Under the composer: nothing while sends are quick; 'Sending…' when one takes a while; when one could
        not be saved, why, and a Retry (the same send again: it is stored once however often it is retried)."""
        if state == 'idle' and not self.send_state.visible:
            return  # the common case: nothing to send to the browser
        self.send_state.set_visibility(state != 'idle')
        self.send_state_text.set_text({'sending': 'Sending…', 'failed': NOT_SAVED_SHORT}.get(state, ''))
        self.send_state_text.classes(replace='text-sm' + (' text-red-800 font-medium' if state == 'failed' else ''))
        self.retry_button.set_visibility(state == 'failed')
        if state == 'sending':
            self.send_button.props('loading')
        else:
            self.send_button.props(remove='loading')

    async def _export(self, fmt: str) -> None:
        if self.conversation is not None and await self._still_signed_in():
            ui.download.from_url(f'/export/{self.conversation.patient_id}/{fmt}')

    async def log_out(self) -> None:
        try:
            await auth.sign_out(self.token, clinician_id=self.clinician.id, reason='manual', address=self.address)
        except (SQLAlchemyError, OSError):
            # this browser forgets the session all the same; the server ends it at its maximum age
            log.warning('session not ended on the server: the database could not be reached')
            if self._owns_notebook():
                self.book.sign_out()
        ui.navigate.to('/login')

    # ----- writing ------------------------------------------------------------------------------------

    @lifecycle.finish_before_stop
    async def _post(
        self, conversation: ConversationInfo, send_id: str, text: str, amends_id: int | None = None
    ) -> MessageInfo | None:
        """Store a message and show it here and in every other tab; None (and the user told) when not stored.

        The session check and the message are one unit of work: one trip to the database per send.
        """
        started = time.perf_counter()  # the event arrived just now: send() and the dialogs call this before any await
        rt = runtime.current()
        token, clinician_id, limits, address = self.token, self.clinician.id, rt.limits, self.address

        def store(session: Session) -> tuple[SignedIn | None, MessageInfo | None, bool]:
            signed = sessions.resolve_sync(session, token, max_age=limits.max_age, idle=limits.idle)
            if signed is None or signed.clinician.id != clinician_id:
                return signed, None, False
            message, created = conversations.post_message_sync(
                session,
                clinician=signed.clinician,
                conversation_id=conversation.id,
                client_id=send_id,
                text=text,
                amends_id=amends_id,
                patient_id=conversation.patient_id,
                address=address,
            )
            return signed, message, created

        self.unsaved = False
        try:
            signed, stored, created = await rt.database.run(store)
            if created:  # a retried send found already stored is not written again
                metrics.message_written(started)
            if not self._accept(signed) or stored is None:
                return None
            message = stored
        except CasebookError as refusal:
            if not self.client.is_deleted:  # the tab may have closed while the database was busy
                ui.notify(refusal.message, type='negative', multi_line=True)
            return None
        except (SQLAlchemyError, OSError) as error:
            self.unsaved = True
            log.warning('message not saved: %s', type(error).__name__)  # never the text itself
            if not self.client.is_deleted:
                ui.notify(NOT_SAVED, type='negative', multi_line=True)
            return None
        await runtime.current().hub.publish(ConversationEvent('message', conversation.id, message))
        if self.client.is_deleted:
            return None
        if self.conversation is not None and self.conversation.id == message.conversation_id:
            if self.list.has_newer:
                await self._reload_newest()  # the clinician wrote while reading far back: jump to the newest
            if not self._show_message(message) and message.id not in self.list.views:
                ui.notify('Saved. Scroll down to see the newest messages.', type='positive')
            ui.run_javascript('window.casebookScroll.toNewest()')
        return message

    async def _message_actions(self, message_id: int) -> None:
        view = self.list.views.get(message_id)
        if view is None or self.conversation is None:
            return
        conversation, message = self.conversation, view.message
        with ui.dialog() as dialog, ui.card().classes('w-full max-w-lg'):
            heading('Correct or mark this message', level=2, classes='text-lg font-semibold')
            ui.label(message.text).classes('casebook-text text-sm text-gray-800 border-l-4 pl-2 max-h-40 overflow-auto')
            correction = ui.textarea('Corrected text', value=message.text).classes('w-full').props('autogrow outlined')
            correction_id = self.book.new_send_id()

            async def correct() -> None:
                if not (correction.value or '').strip():
                    return
                if await self._post(conversation, correction_id, correction.value, amends_id=message.id):
                    dialog.close()

            async def mark() -> None:
                if await self._mark(conversation, message.id):
                    dialog.close()

            with ui.row().classes('w-full justify-end gap-2'):
                ui.button('Cancel', on_click=dialog.close).props('flat')
                if not message.entered_in_error:
                    ui.button('Mark as entered in error', on_click=mark).props('outline color=negative')
                ui.button('Save correction', on_click=correct)
        dialog.on('hide', dialog.delete)
        dialog.open()

    async def _mark(self, conversation: ConversationInfo, message_id: int) -> bool:
        if not await self._still_signed_in():
            return False
        database, clinician, address = runtime.current().database, self.clinician, self.address

        async def mark() -> MessageInfo:
            await database.run(
                lambda session: conversations.mark_entered_in_error_sync(
                    session,
                    clinician=clinician,
                    conversation_id=conversation.id,
                    message_id=message_id,
                    address=address,
                )
            )
            async with database.session() as session:
                (marked,) = await conversations.get_messages(
                    session, clinician=clinician, conversation_id=conversation.id, ids=[message_id]
                )
            return marked

        marked = await attempt(mark, lambda text: ui.notify(text, type='negative'), what='entered-in-error mark')
        if isinstance(marked, NotDone):
            return False
        self.list.update(marked)
        await runtime.current().hub.publish(ConversationEvent('marked', conversation.id, marked))
        return True

    async def _edit_profile(self) -> None:
        with ui.dialog() as dialog, ui.card().classes('w-full max-w-sm'):
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
            password_form(lambda: self.signed, address=self.address, still_signed_in=self._still_signed_in)
        dialog.on('hide', dialog.delete)
        dialog.open()

    # ----- reading ------------------------------------------------------------------------------------

    async def _open(self, patient_id: str) -> bool:
        early: list[ConversationEvent | Resync] = []  # events published while the newest page is being read

        async def buffer(event: ConversationEvent | Resync) -> None:
            early.append(event)

        unsubscribe_buffer = lambda: None  # noqa: E731
        try:
            async with runtime.current().database.session() as session:
                # reading only, when the conversation exists: opening works while a long import holds the write lock
                clinician = self.clinician
                conversation = await conversations.find_conversation(
                    session, clinician=clinician, patient_id=patient_id
                ) or await runtime.current().database.run(
                    lambda sync: conversations.open_conversation_sync(sync, clinician=clinician, patient_id=patient_id)
                )
                unsubscribe_buffer = runtime.current().hub.subscribe(conversation_topic(conversation.id), buffer)
                latest = await conversations.latest_messages(
                    session, clinician=self.clinician, conversation_id=conversation.id
                )
        except (SQLAlchemyError, OSError) as error:
            unsubscribe_buffer()
            log.warning('patient not opened: %s', type(error).__name__)
            ui.notify(
                'Could not open the patient: the database could not be reached. Please try again.', type='negative'
            )
            return False
        self.unsubscribe()
        self.conversation = conversation
        self.unsubscribe = runtime.current().hub.subscribe(conversation_topic(conversation.id), self._on_event)
        unsubscribe_buffer()
        self.book.patient_id = conversation.patient_id
        self._show_header()
        self.title.set_text(f'Conversation about {conversation.patient_id}')
        self.list.reset(latest)
        for event in early:
            await self._on_event(event)
        self._update_empty()
        self.composer.enable()
        self.send_button.enable()
        self.export_button.set_visibility(True)
        self._flush_draft()
        draft, self.send_id = self.book.draft_and_id(conversation.patient_id)
        if self.composer.value != draft:
            self.composer.value = draft
        ui.run_javascript('window.casebookScroll && window.casebookScroll.toNewest()')
        background_tasks.create(self._mark_opened(conversation), name='recent patients')
        return True

    async def _mark_opened(self, conversation: ConversationInfo) -> None:
        try:
            clinician, address = self.clinician, self.address
            await runtime.current().database.run(
                lambda sync: conversations.mark_opened_sync(
                    sync, clinician=clinician, conversation_id=conversation.id, address=address
                )
            )
        except (SQLAlchemyError, OSError):
            log.warning('recent patients not updated: the database is busy')
        with self.client:
            await self._show_recent()

    async def _load_older(self) -> None:
        """Scrolled to the top: the page before the oldest shown, keeping the reading position."""
        if self.loading or self.conversation is None or self.list.at_beginning or self.list.oldest_id is None:
            return
        conversation, before_id, generation = self.conversation, self.list.oldest_id, self.list.generation
        self.loading = True
        self.list.set_loading(True)
        try:
            if not await self._still_signed_in():
                return
            async with runtime.current().database.session() as session:
                older = await conversations.latest_messages(
                    session, clinician=self.clinician, conversation_id=conversation.id, before_id=before_id
                )

            def fits() -> bool:  # nothing reset or trimmed the window meanwhile (else: scrolling again retries)
                return self.list.generation == generation and self.list.oldest_id == before_id

            if fits():
                await self._keeping_position(lambda: fits() and self.list.prepend(older))
        except (SQLAlchemyError, OSError):
            ui.notify('Earlier messages could not be loaded; scroll up again to retry.', type='warning')
        finally:
            self.loading = False
            self.list.set_loading(False)

    async def _load_newer(self) -> None:
        """Scrolled back down after newer messages were dropped from the window: fetch them again."""
        if self.loading or self.conversation is None or not self.list.has_newer or self.list.newest_id is None:
            return
        conversation, after_id, generation = self.conversation, self.list.newest_id, self.list.generation
        self.loading = True
        try:
            if not await self._still_signed_in():
                return
            async with runtime.current().database.session() as session:
                newer = await conversations.messages_after(
                    session, clinician=self.clinician, conversation_id=conversation.id, after_id=after_id
                )

            def fits() -> bool:
                return self.list.generation == generation and self.list.newest_id == after_id

            if fits():
                await self._keeping_position(lambda: fits() and self.list.extend(newer))
            if self.list.has_newer and len(newer) < conversations.PAGE_SIZE:
                background_tasks.create(self._load_newer(), name='newer arrived while loading')
        except (SQLAlchemyError, OSError):
            ui.notify('Newer messages could not be loaded; scroll down again to retry.', type='warning')
        finally:
            self.loading = False

    async def _keeping_position(self, change) -> None:
        try:
            await ui.run_javascript('window.casebookScroll.record()', timeout=2)
        except TimeoutError:
            pass  # the page went away or is slow: the change is made all the same
        change()
        ui.run_javascript('window.casebookScroll.restore()')

    async def _reload_newest(self) -> None:
        assert self.conversation is not None
        try:
            async with runtime.current().database.session() as session:
                latest = await conversations.latest_messages(
                    session, clinician=self.clinician, conversation_id=self.conversation.id
                )
        except (SQLAlchemyError, OSError):
            return  # the window stays where it was; the caller says the message was saved
        self.list.reset(latest)

    async def _on_event(self, event: ConversationEvent | Resync) -> None:
        """Another tab (or this one) changed the conversation this tab shows."""
        if self.conversation is None or event.topic != conversation_topic(self.conversation.id):
            return
        if not self._owns_notebook():
            return  # this tab's session ended (logged out elsewhere); its next action leads to the login page
        if isinstance(event, Resync):  # live updates were interrupted: show the newest again, as stored
            if not self.list.has_newer:
                with self.client:
                    await self._reload_newest()
                    self._update_empty()
            return
        with self.client:
            if event.kind == 'marked':
                self.list.update(event.message)
                return
            if self._show_message(event.message):
                self.client.run_javascript('window.casebookScroll.followNewest()')
            if event.message.client_id == self.send_id and self.composer.value == event.message.text:
                self.composer.value = ''  # another tab sent this very draft
                self.send_id = Notebook.new_send_id()

    def _show_message(self, message: MessageInfo) -> bool:
        shown = self.list.append(message)
        self._update_empty()
        return shown

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

    def _update_empty(self) -> None:
        if self.conversation is not None:
            self.empty.set_text('' if len(self.list) else f'No messages for {self.conversation.patient_id} yet.')
            self.empty.set_visibility(not len(self.list))

    async def _show_recent(self) -> None:
        try:
            async with runtime.current().database.session() as session:
                recent = await conversations.recent_conversations(session, clinician=self.clinician)
        except (SQLAlchemyError, OSError):
            return  # the list stays as it was; it is refreshed at the next patient opened
        self.recent_list.clear()
        with self.recent_list:
            if not recent:
                with ui.item():  # a list holds list items, even when it says it is empty
                    ui.item_label('Patients you open appear here.').classes('text-sm text-gray-700')
            for item in recent:
                current = self.conversation is not None and item.id == self.conversation.id
                with (
                    ui.item(on_click=lambda pid=item.patient_id: self._switch(pid))
                    .classes('w-full rounded' + (' casebook-current' if current else ''))
                    .props('clickable' + (' aria-current=true' if current else ''))
                    .mark(f'recent-patient-{item.patient_id}')
                ):
                    with ui.item_section():
                        ui.item_label(item.patient_id).classes('font-medium')
                        when = item.last_message_at or item.last_opened_at
                        ui.item_label(self.list.format(when)).props('caption').classes('text-gray-700')

    async def _switch(self, patient_id: str) -> None:
        if await self._still_signed_in():
            await self._open(patient_id)

    # ----- helpers ------------------------------------------------------------------------------------

    def _draft_changed(self) -> None:
        """Keep the draft in the browser's notebook a moment after typing pauses (and when the tab goes away).

        Not on every keystroke: each write rewrites the notebook's file, and a message typed and sent within
        the moment never needs writing at all.
        """
        self.idle.activity()  # typing a long note is activity: it keeps the session from idling out
        if self.conversation is not None and self._owns_notebook() and isinstance(self.composer.value, str):
            self.pending_draft = (self.conversation.patient_id, self.composer.value, self.send_id)
            if self.draft_timer is None:
                self.draft_timer = asyncio.get_running_loop().call_later(DRAFT_DELAY, self._flush_draft)

    def _flush_draft(self) -> None:
        if self.draft_timer is not None:
            self.draft_timer.cancel()
            self.draft_timer = None
        if self.pending_draft is not None and self._owns_notebook():
            self.book.save_draft(*self.pending_draft)
        self.pending_draft = None

    def _owns_notebook(self) -> bool:
        """False once this browser's notebook belongs to another session (logged out or in as someone else)."""
        return self.book.token == self.token

    async def _still_signed_in(self) -> bool:
        """Every event re-checks the session; a tab whose session ended goes to the login page."""
        try:
            signed = await auth.signed_in(self.token)
        except (SQLAlchemyError, OSError):
            ui.notify(UNREACHABLE, type='negative')
            return False
        return self._accept(signed)

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
                ui.navigate.to('/login')

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
