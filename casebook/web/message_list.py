"""The conversation on screen: a window of at most `MAX_SHOWN` messages over the whole history.

Opening shows the newest page; scrolling up prepends the page before it (keyset on the message id) and
keeps the reading position; new messages append one element. When the window is full, the messages
farthest from where the clinician reads are dropped (and fetched again when scrolled back to), so a tab
holds the same bounded number of elements however long the conversation or however far it is scrolled.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import replace
from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

from nicegui import ui
from nicegui.events import GenericEventArguments

from casebook.services.conversations import PAGE_SIZE, MessageInfo, status_label

MAX_SHOWN = 6 * PAGE_SIZE

SCROLL_JS = """
<script>
window.casebookScroll = {
  record() { this.h = document.documentElement.scrollHeight; this.y = window.scrollY; return true; },
  restore() {
    requestAnimationFrame(() => window.scrollTo(0, this.y + document.documentElement.scrollHeight - this.h));
  },
  toNewest() { requestAnimationFrame(() => window.scrollTo(0, document.documentElement.scrollHeight)); },
  followNewest() {  // only when the reader is already at the newest messages
    const el = document.documentElement;
    if (window.innerHeight + window.scrollY > el.scrollHeight - 600) this.toNewest();
  },
  reveal(id) {  // a message chosen in the search results: into view, highlighted a moment, focused for readers
    let tries = 0;
    const show = () => {
      const card = document.querySelector(`[data-message-id="${Number(id)}"]`);
      if (!card) { if (tries++ < 120) requestAnimationFrame(show); return; }
      card.scrollIntoView({block: 'center'});
      card.classList.add('casebook-found');
      card.focus({preventScroll: true});
      setTimeout(() => card.classList.remove('casebook-found'), 3000);
    };
    show();
  },
  keep() { this.kept = window.scrollY; },  // the conversation's place while search results cover it
  back() { const y = this.kept || 0; requestAnimationFrame(() => window.scrollTo(0, y)); },
};
document.documentElement.style.overflowAnchor = 'none';  // positions are kept by record/restore instead
window.addEventListener('scroll', () => {
  const el = document.documentElement;
  if (window.scrollY < 400) emitEvent('casebook_near_top');
  else if (window.innerHeight + window.scrollY > el.scrollHeight - 400) emitEvent('casebook_near_bottom');
}, {passive: true});
</script>
"""


class MessageCard(ui.element, component='message_card.js'):
    """One message on screen, one element: only its status and strike-through ever change."""

    def __init__(self, message: MessageInfo, stamp: str) -> None:
        super().__init__()
        self._props['text'] = message.text  # rendered by Vue as a text node: never HTML
        self._props['sender'] = message.sender_role.capitalize()
        self._props['author'] = message.author_name
        self._props['stamp'] = stamp
        self._props['message-id'] = message.id  # its ⋮ button sends the page-wide `casebook_actions` event
        self.message = message
        self._set_status(message)

    @property
    def text(self) -> str:
        return self.message.text

    @property
    def status(self) -> str:
        return self._props.get('status', '')

    def set_stamp(self, stamp: str) -> None:
        self._props['stamp'] = stamp
        self.update()

    def apply(self, message: MessageInfo) -> None:
        self._set_status(message)
        self.update()

    def _set_status(self, message: MessageInfo) -> None:
        self.message = message
        self._props['status'] = status_label(message)
        self._props['struck'] = message.entered_in_error

    def scroll_to_newest(self) -> None:
        """Once this card is drawn, the page scrolls to the newest message (the tab's own send).

        Said in the card's next update rather than by `run_javascript`: one frame to the browser per send
        instead of two, and no request id to make. The prop goes out once: a later drawing (an update of the
        card, a reload of the page) does not scroll again.
        """
        self._props['scroll'] = 'newest'
        self.update()

    def _to_dict(self) -> dict:
        data = super()._to_dict()
        if 'scroll' in self._props:  # sent with this drawing only (NiceGUI's dict holds the props themselves)
            data['props'] = dict(self._props)
            del self._props['scroll']
        return data

    def set_day(self, day: str) -> None:
        """The date divider above this message ('' for none); sent to the browser only when it changes."""
        if self._props.get('day', '') != day:
            self._props['day'] = day
            self.update()

    def _displayed_contents(self, *, only_visible: bool) -> list:
        shown = [self.message.text, self._props['sender'], self._props['author'], self._props['stamp'], self.status]
        return [self._props['day'], *shown] if self._props.get('day') else shown


class MessageList:
    """The message window of one tab, with the state that says what lies beyond either end."""

    def __init__(self, on_actions: Callable[[int], Awaitable[None]], on_older: Callable[[], Awaitable[None]]) -> None:
        self.on_actions = on_actions
        self.zone = ZoneInfo('UTC')
        self.views: dict[int, MessageCard] = {}
        self.at_beginning = True
        self.has_newer = False  # newer messages were dropped from the window
        self.latest_known_id = 0  # the newest message id this tab has heard of, shown or not
        self.generation = 0  # bumped by reset: a page fetched before it no longer fits
        ui.on('casebook_actions', self._actions_clicked)
        with ui.column().classes('w-full items-center gap-1'):
            self.spinner = ui.spinner(size='md').props('aria-label="Loading earlier messages"')
            self.spinner.set_visibility(False)
            self.beginning = ui.label('Beginning of the conversation').classes('text-sm text-gray-700')
            self.earlier = ui.button('Load earlier messages', on_click=on_older).props('flat no-caps')
        self.column = ui.column().classes('w-full gap-3').props('role=log aria-live=polite')
        self._show_ends()

    # ----- what is shown ------------------------------------------------------------------------------

    @property
    def oldest_id(self) -> int | None:
        return min(self.views) if self.views else None

    @property
    def newest_id(self) -> int | None:
        return max(self.views) if self.views else None

    def __len__(self) -> int:
        return len(self.views)

    def reset(self, messages: list[MessageInfo]) -> None:
        """Show a conversation's newest page."""
        self.column.clear()
        self.views.clear()
        self.generation += 1
        for message in messages:
            self._add(message)
        self.at_beginning = len(messages) < PAGE_SIZE
        self.has_newer = False
        self.latest_known_id = self.newest_id or 0  # this conversation's: another one's newest says nothing here
        self._show_ends()
        self._mark_days()

    def reset_around(self, messages: list[MessageInfo], *, at_beginning: bool, has_newer: bool) -> None:
        """Show a page from the middle of a conversation (a search result and its neighbours)."""
        self.reset(messages)
        self.at_beginning = at_beginning
        self.has_newer = has_newer
        self._show_ends()

    def append(self, message: MessageInfo) -> bool:
        """Add a newer message at the end; False when it is shown already or the newest are not in view."""
        if message.amends_id in self.views:
            original = self.views[message.amends_id]
            original.apply(replace(original.message, corrected=True))
        self.latest_known_id = max(self.latest_known_id, message.id)
        if message.id in self.views or self.has_newer:
            return False
        view = self._add(message)
        later = [message_id for message_id in self.views if message_id > message.id]
        if later:  # delivered out of order (another tab's send overtook this one's): keep id order on screen
            view.move(self.column, target_index=len(self.views) - 1 - len(later))
        self._trim(keep='newest')
        self._mark_days()
        return True

    def prepend(self, older: list[MessageInfo]) -> None:
        """Add the page before the oldest shown (oldest first); drops the newest beyond the window."""
        for index, message in enumerate(m for m in older if m.id not in self.views):
            self._add(message).move(self.column, target_index=index)
        self.at_beginning = len(older) < PAGE_SIZE
        self._trim(keep='oldest')
        self._show_ends()
        self._mark_days()

    def extend(self, newer: list[MessageInfo]) -> None:
        """Add the page after the newest shown (after scrolling back down); drops the oldest beyond the window."""
        for message in newer:
            if message.id not in self.views:
                self._add(message)
        self.has_newer = len(newer) == PAGE_SIZE or (self.newest_id or 0) < self.latest_known_id
        self._trim(keep='newest')
        self._show_ends()
        self._mark_days()

    def update(self, message: MessageInfo) -> None:
        if (view := self.views.get(message.id)) is not None:
            view.apply(message)

    def set_zone(self, zone: ZoneInfo) -> None:
        self.zone = zone
        for view in self.views.values():
            view.set_stamp(self.format(view.message.sent_at))
        self._mark_days()

    def format(self, moment: datetime) -> str:
        return moment.astimezone(self.zone).strftime('%Y-%m-%d %H:%M')

    def set_loading(self, loading: bool) -> None:
        self.spinner.set_visibility(loading)

    # ----- internals ----------------------------------------------------------------------------------

    async def _actions_clicked(self, event: GenericEventArguments) -> None:
        """A message's ⋮ button; only a message this tab shows (whatever id the browser sends)."""
        message_id = event.args
        if isinstance(message_id, int) and not isinstance(message_id, bool) and message_id in self.views:
            await self.on_actions(message_id)

    def _add(self, message: MessageInfo) -> MessageCard:
        with self.column:
            view = MessageCard(message, self.format(message.sent_at))
        self.views[message.id] = view
        return view

    def _mark_days(self) -> None:
        """A date divider above the first shown message of each day (the clinician's days); a send on the same
        day as the one before changes nothing, so only a new day's first message is sent to the browser."""
        previous = None
        for message_id in sorted(self.views):
            view = self.views[message_id]
            day = view.message.sent_at.astimezone(self.zone).date()
            view.set_day('' if day == previous else self.day_label(day))
            previous = day

    def day_label(self, day: date) -> str:
        today = datetime.now(self.zone).date()
        if day == today:
            return f'Today, {day:%-d %B %Y}'
        if day == today - timedelta(days=1):
            return f'Yesterday, {day:%-d %B %Y}'
        return f'{day:%A}, {day:%-d %B %Y}'

    def _trim(self, *, keep: str) -> None:
        excess = len(self.views) - MAX_SHOWN
        if excess <= 0:
            return
        ordered = sorted(self.views)
        dropped = ordered[-excess:] if keep == 'oldest' else ordered[:excess]
        for message_id in dropped:
            self.column.remove(self.views.pop(message_id))
        if keep == 'oldest':
            self.has_newer = True
        else:
            self.at_beginning = False
        self._show_ends()

    def _show_ends(self) -> None:
        self.beginning.set_visibility(self.at_beginning and bool(self.views))
        self.earlier.set_visibility(not self.at_beginning)
