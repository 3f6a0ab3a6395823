"""Searching in a workspace tab: the search box, the results over the conversation, and choosing one.

A part of `Workspace` (workspace.py). A search is one unit of work (the session check, the search and its audit
row: one trip to the database); more results load as the list is scrolled (keyset on the message id, not
audited again: like scrolling a conversation). A result is chosen by its message id, which the server accepts
only among the results it gave this tab.
"""

from __future__ import annotations

import asyncio
import logging

from nicegui import background_tasks, ui
from nicegui.events import GenericEventArguments
from sqlalchemy.orm import Session

from casebook.db import DATABASE_ERRORS
from casebook.services import search
from casebook.services.errors import CasebookError
from casebook.services.search import Hit, Query, Results
from casebook.services.sessions import SignedIn
from casebook.web import runtime
from casebook.web.components import heading

log = logging.getLogger(__name__)

# seconds after a keystroke before the results follow it: a keystroke's results within ~0.1 s, and a burst of fast
# typing searches once, when it pauses
TYPING_PAUSE = 0.08
NOT_SEARCHED = 'Could not search just now: the database could not be reached. Please try again.'

# Ctrl+K or Alt+S puts the cursor in the search box; Esc closes the results
SEARCH_KEYS_JS = """
<script>
document.addEventListener('keydown', (event) => {
  const ctrlK = (event.ctrlKey || event.metaKey) && !event.altKey && event.code === 'KeyK';
  const altS = event.altKey && !event.ctrlKey && !event.metaKey && event.code === 'KeyS';
  if (ctrlK || altS) {
    const box = document.querySelector('input[aria-label="Search notes"]');
    if (!box) return;
    event.preventDefault();
    box.focus();
    box.select();
  } else if (event.key === 'Escape' && document.querySelector('[aria-label="Search results"]:not(.hidden)')
             && !document.querySelector('.q-dialog')) {
    emitEvent('casebook_search_close');
  }
});
</script>
"""


class HitCard(ui.element, component='search_hit.js'):
    """One result, one element (search_hit.js): patient, sender, author, time, status and the snippet."""

    def __init__(self, hit: Hit, stamp: str) -> None:
        super().__init__()
        self._props['patient'] = hit.patient_id
        self._props['sender'] = hit.sender_role.capitalize()
        self._props['author'] = hit.author_name
        self._props['stamp'] = stamp
        self._props['status'] = hit.status
        self._props['pieces'] = [[text, marked] for text, marked in hit.snippet]  # drawn as text, never HTML
        self._props['hit-id'] = hit.message_id
        self.hit = hit

    def _displayed_contents(self, *, only_visible: bool) -> list:
        head = [self.hit.patient_id, self._props['sender'], self.hit.author_name, self._props['stamp']]
        return [*head, self.hit.status, ''.join(text for text, _ in self.hit.snippet)]


class SearchPanel:
    """The search box's results and what choosing one does (mixed into `Workspace`)."""

    def _build_search_box(self) -> None:
        """In the header: the box, and its button for those who do not press Enter."""
        self.search_query: Query | None = None
        self.search_hits: dict[int, Hit] = {}
        self.search_generation = 0
        self.search_more = False
        self.search_loading = False
        self.search_timer: asyncio.TimerHandle | None = None
        with ui.row().classes('grow items-start gap-2 no-wrap max-w-md'):
            self.search_input = (
                ui.input('Search notes')
                .props(
                    'dark dense outlined color=white type=search autocomplete=off '
                    'aria-keyshortcuts="Control+K Alt+S" title="Search notes (Ctrl+K or Alt+S)"'
                )
                .classes('grow')
            )
            self.search_input.on('keydown.enter', self._search_now)
            self.search_input.on_value_change(self._search_typed)
            ui.button(icon='search', on_click=self._search_now).props(
                'color=white text-color=primary aria-label="Search" title="Search"'
            )

    def _build_search_results(self) -> None:
        """Over the conversation, hidden until a search: heading, scope, close, what was found, more."""
        with ui.column().classes('w-full gap-2').props('role=region aria-label="Search results"') as self.search_area:
            with ui.row().classes('w-full items-center gap-2'):
                heading('Search results', level=2, classes='text-lg font-semibold')
                ui.space()
                self.search_scope = ui.switch('This patient only', on_change=self._scope_changed)
                ui.button('Close', icon='close', on_click=self._close_search).props('flat no-caps').props(
                    'aria-label="Close search results" title="Close (Esc)"'
                )
            self.search_status = ui.label().props('role=status aria-live=polite').classes('text-sm')
            self.search_list = ui.column().classes('w-full gap-2')
            self.search_more_button = ui.button('More results', on_click=self._more_results).props('flat no-caps')
        self.search_area.set_visibility(False)
        self.search_more_button.set_visibility(False)
        ui.on('casebook_hit', self._hit_chosen)
        ui.on('casebook_search_close', self._close_search)
        ui.add_body_html(SEARCH_KEYS_JS)

    # ----- searching ----------------------------------------------------------------------------------

    def _search_typed(self) -> None:
        """The results follow typing, a moment after it pauses; emptying the box drops a search under way."""
        if self.search_timer is not None:
            self.search_timer.cancel()
        self.search_timer = None
        value = self.search_input.value
        if not isinstance(value, str) or not value.strip():
            self.search_generation += 1  # a search still under way is not shown
            return
        self.search_timer = asyncio.get_running_loop().call_later(TYPING_PAUSE, self._search_paused)

    def _search_paused(self) -> None:
        async def typed() -> None:
            with self.client:  # a task of its own: the tab's elements are reached through its client
                await self._search(quiet=True)

        if not self.client.is_deleted:
            background_tasks.create(typed(), name='search as typed')

    async def _search_now(self) -> None:
        if self.search_timer is not None:
            self.search_timer.cancel()
            self.search_timer = None
        await self._search(quiet=False)

    async def _scope_changed(self) -> None:
        if self.search_query is not None or (self.search_input.value or '').strip():
            await self._search(quiet=False)

    async def _search(self, *, quiet: bool) -> None:
        """A new search for what is in the box. `quiet` (typing): a query that cannot be searched yet says so in
        the results only if they are open."""
        if self.client.is_deleted:
            return
        self.search_timer = None
        self.search_generation += 1
        generation = self.search_generation
        try:
            query = search.parse(self.search_input.value)
        except CasebookError as refusal:
            if not quiet or self.search_area.visible:
                self._show_search_area()
                self._show_found([], more=False, message=refusal.message)
            return
        self._show_search_area()
        results = await self._run_search(query, before=None)
        if results is None or generation != self.search_generation or self.client.is_deleted:
            return
        self.search_query = query
        self._show_found(list(results.hits), more=results.more)

    async def _more_results(self) -> None:
        """The next page, older than the last shown (scrolled to the end of the list, or More results)."""
        if self.search_loading or not self.search_more or self.search_query is None or not self.search_hits:
            return
        generation, query, last = self.search_generation, self.search_query, min(self.search_hits)
        self.search_loading = True
        try:
            results = await self._run_search(query, before=last)
        finally:
            self.search_loading = False
        if results is None or generation != self.search_generation or self.client.is_deleted:
            return
        self._add_found(list(results.hits), more=results.more)

    async def _run_search(self, query: Query, *, before: int | None) -> Results | None:
        """One unit of work: the session, the search, and (for a new search) its audit row; None when not done
        (the user told, or sent to the login page)."""
        conversation = self.conversation if self.search_scope.value else None
        if self.search_scope.value and conversation is None:
            self._show_found([], more=False, message='Open a patient to search only their notes.')
            return None
        address = self.address

        def work(session: Session, signed: SignedIn) -> Results:
            session.commit()  # the session's check is written before the search reads (no lock held meanwhile)
            return search.search_sync(
                session,
                clinician=signed.clinician,
                query=query,
                patient_id=conversation.patient_id if conversation else None,
                conversation_id=conversation.id if conversation else None,
                before=before,
                address=address,
                audited=before is None,
            )

        if before is None:
            self.search_status.set_text('Searching…')
        try:
            signed, results = await runtime.current().database.run(self._for_this_session(work))
        except DATABASE_ERRORS as error:
            log.warning('search not done: %s', type(error).__name__)  # never the words searched
            if not self.client.is_deleted:
                self.search_status.set_text(NOT_SEARCHED)
                ui.notify(NOT_SEARCHED, type='negative')
            return None
        if self.client.is_deleted or not self._accept(signed) or results is None:
            return None
        return results

    # ----- showing what was found --------------------------------------------------------------------

    def _show_search_area(self) -> None:
        if not self.search_area.visible:
            ui.run_javascript('window.casebookScroll.keep()')
            self.conversation_area.set_visibility(False)
            self.search_area.set_visibility(True)
        self.search_scope.set_enabled(self.conversation is not None)

    def _show_found(self, hits: list[Hit], *, more: bool, message: str | None = None) -> None:
        self.search_list.clear()
        self.search_hits.clear()
        self._add_found(hits, more=more)
        if message is not None:
            self.search_status.set_text(message)
        elif not hits:
            where = f' in {self.conversation.patient_id}' if self.search_scope.value and self.conversation else ''
            self.search_status.set_text(f'No notes match{where}.')
        ui.run_javascript('window.scrollTo(0, 0)')

    def _add_found(self, hits: list[Hit], *, more: bool) -> None:
        with self.search_list:
            for hit in hits:
                if hit.message_id not in self.search_hits:
                    HitCard(hit, self.list.format(hit.sent_at))
                    self.search_hits[hit.message_id] = hit
        self.search_more = more
        self.search_more_button.set_visibility(more)
        if self.search_hits:
            count = len(self.search_hits)
            self.search_status.set_text(
                f'{count} note{"s" if count != 1 else ""} found' + (', newest first; more below.' if more else '.')
            )

    def _close_search(self) -> None:
        """Back to the conversation, where it was."""
        if self.search_area.visible:
            self._hide_search()
            ui.run_javascript('window.casebookScroll.back()')

    async def _near_bottom(self) -> None:
        """Scrolled to the end: more results when they are shown, else newer messages of the conversation."""
        if self.search_area.visible:
            await self._more_results()
        else:
            await self._load_newer()

    async def _near_top(self) -> None:
        if not self.search_area.visible:
            await self._load_older()

    # ----- choosing a result --------------------------------------------------------------------------

    async def _hit_chosen(self, event: GenericEventArguments) -> None:
        """A result's button: its message in its conversation; only a result this tab was given."""
        message_id = event.args
        if not isinstance(message_id, int) or isinstance(message_id, bool) or message_id not in self.search_hits:
            return
        if not await self._still_signed_in():
            return
        hit = self.search_hits[message_id]
        await self._open(hit.patient_id, around=hit.message_id)

    def _hide_search(self) -> None:
        """A patient was opened (a result chosen, or another patient): the conversation is shown again."""
        if self.search_area.visible:
            self.search_generation += 1
            self.search_area.set_visibility(False)
            self.conversation_area.set_visibility(True)
