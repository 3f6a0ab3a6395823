"""Writing in a workspace tab: the composer's sends, their states, corrections and entered-in-error marks, and
the draft kept in the browser's notebook.

A part of `Workspace` (workspace.py): it acts on the tab's own state (the conversation it holds on the server,
its session, its notebook), never on an id sent by the browser. A send is one unit of work: the session check and
the message, one trip to the database.
"""

from __future__ import annotations

import asyncio
import logging
import time

from nicegui import background_tasks, ui
from sqlalchemy.orm import Session

from casebook import metrics
from casebook.db import DATABASE_ERRORS
from casebook.live import ConversationEvent
from casebook.services import conversations
from casebook.services.conversations import ConversationInfo, MessageInfo
from casebook.services.errors import CasebookError, InvalidInput
from casebook.services.sessions import SignedIn
from casebook.web import lifecycle, runtime
from casebook.web.attempt import NotDone, attempt
from casebook.web.components import heading
from casebook.web.notebook import Notebook

log = logging.getLogger(__name__)

NOT_SAVED = 'Not saved: the database could not be reached. Your text is still in the box; press Send to try again.'
NOT_SAVED_SHORT = 'Not saved: the database could not be reached. Your message is still in the box.'
SENDING_AFTER = 0.3  # seconds: a send that takes longer than this shows that it is on its way
DRAFT_DELAY = 1.0  # seconds after the last keystroke before a draft is written


LENGTH_SHOWN_FROM = 9_000  # characters from which the count is shown under the composer
# Enter sends; Shift+Enter breaks the line (the text area's own). Enter that confirms an input method's composition
# (Japanese, Chinese…) does not send: the browser marks it isComposing (Chrome) or keyCode 229 (Safari, after
# compositionend), and a composition the page was told of is remembered on the box until it ends.
SEND_ON_ENTER_JS = """(event) => {
  if (event.shiftKey || event.isComposing || event.keyCode === 229) return;
  if (event.target.dataset.composing) return;
  event.preventDefault();
  emit();
}"""
COMPOSITION_JS = """
<script>
document.addEventListener('compositionstart', (event) => { event.target.dataset.composing = '1'; }, true);
document.addEventListener('compositionend', (event) => { delete event.target.dataset.composing; }, true);
</script>
"""


class Composer:
    """Sending, correcting and marking messages, and the draft (mixed into `Workspace`)."""

    in_flight: tuple[str, str] | None = None  # (send id, text) of the send under way, if any

    def _build_composer(self) -> None:
        """The footer's contents: the text area and Send, the length under it when near the limit, and the send's
        state when it is slow or failed."""
        with ui.row().classes('w-full max-w-4xl mx-auto items-end gap-2 no-wrap'):
            # created holding the draft: setting it later would reach the browser only after the socket
            # connects and overwrite whatever was typed in between
            draft = self.book.draft(self.book.patient_id) if self.book.patient_id else ''
            self.composer = (
                ui.textarea('Type message here', value=draft)
                .props('outlined dense autogrow rows=1 aria-keyshortcuts="Enter Shift+Enter"')
                .classes('grow casebook-composer')
            )
            self.composer.on('keydown.enter', self.send, js_handler=SEND_ON_ENTER_JS)
            ui.add_body_html(COMPOSITION_JS)
            self._build_template_picker()
            self.send_button = ui.button('Send', on_click=self.send)
        self.length_note = ui.label().classes('w-full max-w-4xl mx-auto text-sm')
        self.length_note.set_visibility(False)
        with ui.row().classes('w-full max-w-4xl mx-auto items-center gap-2') as self.send_state:
            self.send_state_text = ui.label().props('role=status aria-live=polite').classes('text-sm')
            self.retry_button = ui.button('Retry', icon='refresh', on_click=self.send).props('outline no-caps')
        self.send_state.set_visibility(False)
        self.composer.on_value_change(self._draft_changed)

    def _show_length(self, text: str) -> None:
        """From LENGTH_SHOWN_FROM characters on, how many of the limit the text holds; over it, by how many."""
        count = len(text.strip())
        if count < LENGTH_SHOWN_FROM:
            if self.length_note.visible:
                self.length_note.set_visibility(False)
            return
        over = count - conversations.MESSAGE_MAX
        note = f'{count:,} of {conversations.MESSAGE_MAX:,} characters'
        if over > 0:
            note += f': {over:,} too many to send'
        self.length_note.set_text(note)
        over_classes = ' text-red-800 font-medium' if over > 0 else ''
        self.length_note.classes(replace='w-full max-w-4xl mx-auto text-sm' + over_classes)
        self.length_note.set_visibility(True)

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
        self.in_flight = (send_id, text)
        try:
            message = await self._post(conversation, send_id, text)
        finally:
            slow.cancel()
            self.in_flight = None
        if self.client.is_deleted:
            return
        self._show_send_state('failed' if self.unsaved else 'idle')
        if message is None:
            self._flush_draft()  # not stored: the text in the box is kept as a draft at once
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

    @lifecycle.finish_before_stop
    async def _post(
        self, conversation: ConversationInfo, send_id: str, text: str, amends_id: int | None = None
    ) -> MessageInfo | None:
        """Store a message and show it here and in every other tab; None (and the user told) when not stored.

        The session check and the message are one unit of work: one trip to the database per send.
        """
        started = time.perf_counter()  # the event arrived just now: send() and the dialogs call this before any await
        rt, address = runtime.current(), self.address

        def store(session: Session, signed: SignedIn) -> tuple[MessageInfo, bool]:
            return conversations.post_message_sync(
                session,
                clinician=signed.clinician,
                conversation_id=conversation.id,
                client_id=send_id,
                text=text,
                amends_id=amends_id,
                patient_id=conversation.patient_id,
                address=address,
            )

        self.unsaved = False
        try:
            signed, stored = await rt.database.run(self._for_this_session(store))
            if stored is not None and stored[1]:  # a retried send found already stored is not written again
                metrics.message_written(started)
            if not self._accept(signed) or stored is None:
                return None
            message = stored[0]
        except CasebookError as refusal:
            if not self.client.is_deleted:  # the tab may have closed while the database was busy
                ui.notify(refusal.message, type='negative', multi_line=True)
            return None
        except DATABASE_ERRORS as error:
            self.unsaved = True
            log.warning('message not saved: %s', type(error).__name__)  # never the text itself
            if not self.client.is_deleted:
                ui.notify(NOT_SAVED, type='negative', multi_line=True)
            return None
        await runtime.current().hub.publish(
            ConversationEvent('message', conversation.id, message, clinician_id=self.clinician.id)
        )
        if self.client.is_deleted:
            return None
        if self.conversation is not None and self.conversation.id == message.conversation_id:
            if self.list.has_newer:
                await self._reload_newest()  # the clinician wrote while reading far back: jump to the newest
            if not self._show_message(message) and message.id not in self.list.views:
                ui.notify('Saved. Scroll down to see the newest messages.', type='positive')
            if (card := self.list.views.get(message.id)) is not None:
                card.scroll_to_newest()  # in the card's own update: no second frame for the scroll
            else:
                ui.run_javascript('window.casebookScroll.toNewest()')
        return message

    async def _message_actions(self, message_id: int) -> None:
        view = self.list.views.get(message_id)
        if view is None or self.conversation is None:
            return
        conversation, message = self.conversation, view.message
        with (
            ui.dialog().props('aria-label="Correct or mark this message"') as dialog,
            ui.card().classes('w-full max-w-lg'),
        ):
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

        def mark(session: Session) -> None:
            conversations.mark_entered_in_error_sync(
                session, clinician=clinician, conversation_id=conversation.id, message_id=message_id, address=address
            )

        done = await attempt(
            lambda: database.run(mark), lambda text: ui.notify(text, type='negative'), what='entered-in-error mark'
        )
        if isinstance(done, NotDone):
            return False
        try:  # marked: what it looks like now, for this tab and the others
            async with database.session() as session:
                (marked,) = await conversations.get_messages(
                    session, clinician=clinician, conversation_id=conversation.id, ids=[message_id]
                )
        except DATABASE_ERRORS:
            ui.notify('Marked as entered in error; it shows struck through after a reload.', type='warning')
            return True
        self.list.update(marked)
        await runtime.current().hub.publish(
            ConversationEvent('marked', conversation.id, marked, clinician_id=clinician.id)
        )
        return True

    def _draft_changed(self) -> None:
        """Keep the draft in the browser's notebook a moment after typing pauses (and when the tab goes away).

        Not on every keystroke: each write rewrites the notebook's file, and a message typed and sent within
        the moment never needs writing at all.
        """
        self.idle.activity()  # typing a long note is activity: it keeps the session from idling out
        value = self.composer.value if isinstance(self.composer.value, str) else ''
        self._show_length(value)
        if value == '/':  # a slash in an empty box: the clinician's templates to choose from
            background_tasks.create(self._open_templates(replace_slash=True), name='templates')
        if self.conversation is not None and self._owns_notebook() and isinstance(self.composer.value, str):
            self.pending_draft = (self.conversation.patient_id, self.composer.value, self.send_id)
            if self.draft_timer is None:
                self.draft_timer = asyncio.get_running_loop().call_later(DRAFT_DELAY, self._draft_pause)

    def _draft_pause(self) -> None:
        """Typing paused: write the draft, unless it is exactly the text being sent right now.

        A send slower than the pause would otherwise write the draft only for the send to remove it again a
        moment later: two rewrites of the browser's storage (with Redis, two publishes of all of it) per send,
        on the event loop, when the server is already slow (bench/load.py at 1,000 tabs: 40 % of the loop's time).
        If that send fails, the draft is written then.
        """
        if self.in_flight is not None and self.pending_draft is not None:
            send_id, text = self.in_flight
            if self.pending_draft[1:] == (text, send_id):  # look again after another pause
                self.draft_timer = asyncio.get_running_loop().call_later(DRAFT_DELAY, self._draft_pause)
                return
        self._flush_draft()

    def _flush_draft(self) -> None:
        if self.draft_timer is not None:
            self.draft_timer.cancel()
            self.draft_timer = None
        if self.pending_draft is not None and self._owns_notebook():
            self.book.save_draft(*self.pending_draft)
        self.pending_draft = None
