"""Reading in a workspace tab: opening a patient, the window of messages as the clinician scrolls, live
updates from other tabs, and the recent patients.

A part of `Workspace` (workspace.py). Opening shows the newest page at once; scrolling loads older ones and
fetches newer ones again after the window dropped them; nothing already shown is redrawn.
"""

from __future__ import annotations

import logging

from nicegui import background_tasks, ui

from casebook.db import DATABASE_ERRORS
from casebook.live import ConversationEvent, Resync, conversation_topic
from casebook.services import conversations
from casebook.services.conversations import ConversationInfo, MessageInfo
from casebook.web import runtime
from casebook.web.notebook import Notebook

log = logging.getLogger(__name__)


class ConversationView:
    """The open conversation and the recent patients (mixed into `Workspace`)."""

    async def _open(self, patient_id: str, *, around: int | None = None) -> bool:
        """Show a patient's conversation: its newest page, or (`around`, a search result) the page around that
        message, scrolled to it and highlighted."""
        early: list[ConversationEvent | Resync] = []  # events published while the page is being read

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
                unsubscribe_buffer = runtime.current().hub.subscribe(
                    conversation_topic(clinician.id, conversation.id), buffer
                )
                if around is None:
                    page = conversations.Around(
                        await conversations.latest_messages(
                            session, clinician=self.clinician, conversation_id=conversation.id
                        ),
                        at_beginning=False,
                        has_newer=False,
                    )
                else:
                    page = await conversations.messages_around(
                        session, clinician=self.clinician, conversation_id=conversation.id, message_id=around
                    )
        except DATABASE_ERRORS as error:
            unsubscribe_buffer()
            log.warning('patient not opened: %s', type(error).__name__)
            ui.notify(
                'Could not open the patient: the database could not be reached. Please try again.', type='negative'
            )
            return False
        same_patient = self.conversation is not None and self.conversation.id == conversation.id
        self.unsubscribe()
        self.conversation = conversation
        self.unsubscribe = runtime.current().hub.subscribe(
            conversation_topic(self.clinician.id, conversation.id), self._on_event
        )
        unsubscribe_buffer()
        self.book.patient_id = conversation.patient_id
        self._show_header()
        self.title.set_text(f'Conversation about {conversation.patient_id}')
        if around is None:
            self.list.reset(page.messages)
        else:
            self.list.reset_around(page.messages, at_beginning=page.at_beginning, has_newer=page.has_newer)
        self._hide_search()
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
        if around is None:
            ui.run_javascript('window.casebookScroll && window.casebookScroll.toNewest()')
        else:
            ui.run_javascript(f'window.casebookScroll && window.casebookScroll.reveal({int(around)})')
        if not (around is not None and same_patient):  # a result in the conversation already open: not reopened
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
        except DATABASE_ERRORS:
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
        except DATABASE_ERRORS:
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
        except DATABASE_ERRORS:
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
        except DATABASE_ERRORS:
            return  # the window stays where it was; the caller says the message was saved
        self.list.reset(latest)

    async def _on_event(self, event: ConversationEvent | Resync) -> None:
        """Another tab (or this one) changed the conversation this tab shows."""
        if self.conversation is None or event.topic != conversation_topic(self.clinician.id, self.conversation.id):
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

    def _update_empty(self) -> None:
        if self.conversation is not None:
            self.empty.set_text('' if len(self.list) else f'No messages for {self.conversation.patient_id} yet.')
            self.empty.set_visibility(not len(self.list))

    async def _show_recent(self) -> None:
        try:
            async with runtime.current().database.session() as session:
                recent = await conversations.recent_conversations(session, clinician=self.clinician)
        except DATABASE_ERRORS:
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
