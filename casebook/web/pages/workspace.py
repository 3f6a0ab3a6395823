"""The workspace: header, recent patients, one patient's conversation and the composer.

Sending appends one element and redraws nothing already shown; every event re-checks the session and
acts only on the conversation this tab holds on the server, never on an id sent by the browser.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from datetime import datetime
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from fastapi.responses import RedirectResponse
from nicegui import ui
from sqlalchemy.exc import SQLAlchemyError

from casebook.services import accounts, conversations
from casebook.services.conversations import ConversationInfo, MessageInfo
from casebook.services.errors import CasebookError, InvalidInput
from casebook.services.sessions import SignedIn
from casebook.web import auth, runtime
from casebook.web.components import heading
from casebook.web.notebook import Notebook

log = logging.getLogger(__name__)

NOT_SAVED = 'Not saved: the database could not be reached. Your text is still in the box; press Send to try again.'
SCROLL_TO_NEWEST = 'requestAnimationFrame(() => window.scrollTo(0, document.documentElement.scrollHeight))'
TIMEZONE_JS = 'Intl.DateTimeFormat().resolvedOptions().timeZone'


def register() -> None:
    ui.page('/', title='Casebook')(workspace_page)


async def workspace_page() -> RedirectResponse | None:
    if await auth.needs_first_account():
        return RedirectResponse('/setup', status_code=303)
    book = auth.notebook()
    signed = await auth.signed_in(book.token)
    if signed is None or book.token is None:
        book.sign_out()
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
        self.conversation: ConversationInfo | None = None
        self.shown: set[int] = set()
        self.times: list[tuple[datetime, ui.label]] = []
        self.zone = _zone(book.timezone)

    @property
    def clinician(self):
        return self.signed.clinician

    async def build(self) -> None:
        ui.add_css('.casebook-text { white-space: pre-wrap; overflow-wrap: anywhere; }')
        with ui.left_drawer(bordered=True).props('width=260').classes('gap-1') as drawer:
            heading('Recent patients', level=2, classes='text-base font-semibold')
            self.recent_list = ui.column().classes('w-full gap-1')
        with ui.header(elevated=True).classes('items-center gap-x-4 gap-y-2 flex-wrap px-4 py-2'):
            ui.button(icon='menu', on_click=drawer.toggle).props('flat round color=white aria-label="Recent patients"')
            heading('Casebook', classes='text-xl font-semibold')
            self.header_label = ui.label().classes('text-base').props('data-testid=workspace-header')
            ui.space()
            ui.button('Profile', icon='person', on_click=self._edit_profile).props('flat color=white no-caps')
            ui.button('Log out', on_click=self.log_out).props('outline color=white')
            with ui.row().classes('w-full items-start gap-2 no-wrap'):
                self.patient_input = (
                    ui.input('Patient ID').props('dark dense outlined maxlength=200').classes('grow max-w-md')
                )
                self.patient_input.on('keydown.enter', self.open_patient)
                ui.button('Open patient', on_click=self.open_patient).props('color=white text-color=primary')
            self.patient_error = ui.label().props('role=alert').classes('w-full text-sm font-medium text-white')
        with ui.column().classes('w-full max-w-4xl mx-auto gap-3 pb-4'):
            self.title = heading('', level=2, classes='text-lg font-semibold')
            self.empty = ui.label().classes('text-gray-700')
            self.messages = ui.column().classes('w-full gap-3').props('role=log aria-live=polite')
        with ui.footer().classes('bg-white text-black border-t px-4 py-2'):
            with ui.row().classes('w-full max-w-4xl mx-auto items-center gap-2 no-wrap'):
                # created holding the draft: setting it later would reach the browser only after the socket
                # connects and overwrite whatever was typed in between
                draft = self.book.draft(self.book.patient_id) if self.book.patient_id else ''
                self.composer = ui.input('Type message here', value=draft).props('outlined dense').classes('grow')
                self.composer.on('keydown.enter', self.send)
                self.send_button = ui.button('Send', on_click=self.send)
        self.composer.on_value_change(self._draft_changed)

        await self._show_recent()
        if self.book.patient_id is not None:
            await self._open(self.book.patient_id)
        else:
            self._show_no_patient()
        ui.context.client.on_connect(self._on_connect)

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
        if await self._open(patient_id):
            self.patient_input.value = ''

    async def send(self) -> None:
        if self.conversation is None:
            ui.notify('Open a patient first.', type='warning')
            return
        conversation = self.conversation
        text = self.composer.value or ''
        if not text.strip():
            return  # the lesson's rule: an empty message does nothing
        try:
            conversations.normalize_message(text)
        except InvalidInput as refusal:
            ui.notify(refusal.message, type='negative', multi_line=True)
            return
        send_id = self.book.send_id(conversation.patient_id)  # taken before any await: a double click shares it
        if not await self._still_signed_in():
            return
        try:
            async with runtime.current().database.session() as session:
                message, created = await conversations.post_message(
                    session, clinician=self.clinician, conversation_id=conversation.id, client_id=send_id, text=text
                )
        except CasebookError as refusal:
            ui.notify(refusal.message, type='negative', multi_line=True)
            return
        except (SQLAlchemyError, OSError) as error:
            log.warning('message not saved: %s', type(error).__name__)  # never the text itself
            ui.notify(NOT_SAVED, type='negative', multi_line=True)
            return
        if self.conversation is None or self.conversation.id != message.conversation_id:
            return  # the tab switched patient while this send was in flight; the message is stored all the same
        self._append(message)
        self.book.forget_draft(conversation.patient_id)
        if not created and message.text != text.strip():
            self.book.save_draft(conversation.patient_id, text)  # the edited text gets a send id of its own
            ui.notify(
                'An earlier send of this draft had been saved (shown above); your edited text is still in the box.',
                type='info',
                multi_line=True,
            )
            return
        if self.composer.value == text:
            self.composer.value = ''
        ui.run_javascript(SCROLL_TO_NEWEST)

    async def log_out(self) -> None:
        await auth.sign_out(self.token)
        ui.navigate.to('/login')

    async def _edit_profile(self) -> None:
        with ui.dialog() as dialog, ui.card().classes('w-full max-w-sm'):
            heading('Your profile', level=2, classes='text-lg font-semibold')
            name = ui.input('Display name', value=self.clinician.display_name).classes('w-full')
            error = ui.label().props('role=alert').classes('text-red-800 text-sm')

            async def save() -> None:
                if not await self._still_signed_in():
                    return
                try:
                    async with runtime.current().database.session() as session:
                        changed = await accounts.change_display_name(
                            session, clinician_id=self.clinician.id, display_name=name.value
                        )
                except CasebookError as refusal:
                    error.set_text(refusal.message)
                    return
                self.signed = replace(self.signed, clinician=changed)
                self._show_header()
                dialog.close()

            name.on('keydown.enter', save)
            with ui.row().classes('w-full justify-end'):
                ui.button('Cancel', on_click=dialog.close).props('flat')
                ui.button('Save', on_click=save)
        dialog.on('hide', dialog.delete)
        dialog.open()

    # ----- drawing ------------------------------------------------------------------------------------

    async def _open(self, patient_id: str) -> bool:
        try:
            async with runtime.current().database.session() as session:
                conversation = await conversations.open_conversation(
                    session, clinician=self.clinician, patient_id=patient_id
                )
                latest = await conversations.latest_messages(
                    session, clinician=self.clinician, conversation_id=conversation.id
                )
        except (SQLAlchemyError, OSError) as error:
            log.warning('patient not opened: %s', type(error).__name__)
            ui.notify(
                'Could not open the patient: the database could not be reached. Please try again.', type='negative'
            )
            return False
        self.conversation = conversation
        self.book.patient_id = conversation.patient_id
        self._show_header()
        self.title.set_text(f'Conversation about {conversation.patient_id}')
        self.messages.clear()
        self.shown.clear()
        self.times.clear()
        for message in latest:
            self._append(message)
        self._update_empty()
        self.composer.enable()
        self.send_button.enable()
        draft = self.book.draft(conversation.patient_id)
        if self.composer.value != draft:
            self.composer.value = draft
        await self._show_recent()
        ui.run_javascript(SCROLL_TO_NEWEST)
        return True

    def _show_no_patient(self) -> None:
        self._show_header()
        self.title.set_text('No patient open')
        self.empty.set_text('Enter a patient ID above and press Open patient.')
        self.composer.disable()
        self.send_button.disable()

    def _show_header(self) -> None:
        patient = self.conversation.patient_id if self.conversation else '(not set)'
        self.header_label.set_text(f'User: {self.clinician.display_name} | Patient: {patient}')

    def _update_empty(self) -> None:
        if self.conversation is not None:
            self.empty.set_text('' if self.shown else f'No messages for {self.conversation.patient_id} yet.')
            self.empty.set_visibility(not self.shown)

    def _append(self, message: MessageInfo) -> None:
        if message.id in self.shown:
            return  # a retried send that was stored once is shown once
        self.shown.add(message.id)
        with self.messages:
            with ui.column().classes('w-full gap-0 rounded-lg bg-blue-50 px-3 py-2').props('role=article'):
                with ui.row().classes('items-baseline gap-x-2 gap-y-0 flex-wrap'):
                    ui.label(message.sender_role.capitalize()).classes('font-semibold')
                    ui.label(message.author_name).classes('text-sm text-gray-700')
                    stamp = ui.label(self._format(message.sent_at)).classes('text-xs text-gray-700')
                ui.label(message.text).classes('casebook-text')
        self.times.append((message.sent_at, stamp))
        self._update_empty()

    async def _show_recent(self) -> None:
        async with runtime.current().database.session() as session:
            recent = await conversations.recent_conversations(session, clinician=self.clinician)
        self.recent_list.clear()
        with self.recent_list:
            if not recent:
                ui.label('Patients you open appear here.').classes('text-sm text-gray-700')
            for item in recent:
                current = self.conversation is not None and item.id == self.conversation.id
                with (
                    ui.item(on_click=lambda pid=item.patient_id: self._switch(pid))
                    .classes('w-full rounded' + (' bg-blue-100' if current else ''))
                    .props('clickable' + (' aria-current=true' if current else ''))
                    .mark(f'recent-patient-{item.patient_id}')
                ):
                    with ui.item_section():
                        ui.item_label(item.patient_id).classes('font-medium')
                        when = item.last_message_at or item.last_opened_at
                        ui.item_label(self._format(when)).props('caption').classes('text-gray-700')

    async def _switch(self, patient_id: str) -> None:
        if await self._still_signed_in():
            await self._open(patient_id)

    # ----- helpers ------------------------------------------------------------------------------------

    def _draft_changed(self) -> None:
        if self.conversation is not None:
            self.book.save_draft(self.conversation.patient_id, self.composer.value or '')

    async def _still_signed_in(self) -> bool:
        """Every event re-checks the session; a tab whose session ended goes to the login page."""
        try:
            signed = await auth.signed_in(self.token)
        except (SQLAlchemyError, OSError):
            ui.notify('The database could not be reached. Nothing was changed; please try again.', type='negative')
            return False
        if signed is None or signed.clinician.id != self.clinician.id:
            ui.navigate.to('/login')
            return False
        self.signed = signed
        return True

    async def _on_connect(self) -> None:
        try:
            name = await ui.run_javascript(TIMEZONE_JS, timeout=3)
        except TimeoutError:
            return
        if isinstance(name, str) and name != self.book.timezone and _zone(name).key == name:
            self.book.timezone = name
            self.zone = _zone(name)
            for sent_at, label in self.times:
                label.set_text(self._format(sent_at))
            await self._show_recent()

    def _format(self, moment: datetime) -> str:
        return moment.astimezone(self.zone).strftime('%Y-%m-%d %H:%M')


def _zone(name: str | None) -> ZoneInfo:
    try:
        return ZoneInfo(name or 'UTC')
    except (ZoneInfoNotFoundError, ValueError):
        return ZoneInfo('UTC')
