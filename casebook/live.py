"""Fan-out of conversation changes to every open tab of its clinician.

The database is the record; this only tells open pages that something new is there, carrying the new
or changed message so no tab has to query for it. `LocalHub` delivers within one process. A hub that
crosses instances (Redis pub/sub, a later step) keeps the same two methods: `publish` sends an event
to every subscriber of its conversation on any instance, `subscribe` listens on this instance.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Literal

from casebook.services.conversations import MessageInfo

log = logging.getLogger(__name__)

Subscriber = Callable[['ConversationEvent'], Awaitable[None]]


@dataclass(frozen=True)
class ConversationEvent:
    """`message`: a new message (a correction too); `marked`: a message was marked entered in error."""

    kind: Literal['message', 'marked']
    conversation_id: int
    message: MessageInfo


class LocalHub:
    """In-process publish/subscribe by conversation id."""

    def __init__(self) -> None:
        self._subscribers: dict[int, set[Subscriber]] = defaultdict(set)
        self._tasks: set[asyncio.Task] = set()

    def subscribe(self, conversation_id: int, subscriber: Subscriber) -> Callable[[], None]:
        """Call `subscriber` with every event of this conversation; returns the function that stops it."""
        self._subscribers[conversation_id].add(subscriber)

        def unsubscribe() -> None:
            subscribers = self._subscribers.get(conversation_id)
            if subscribers is not None:
                subscribers.discard(subscriber)
                if not subscribers:
                    del self._subscribers[conversation_id]

        return unsubscribe

    async def publish(self, event: ConversationEvent) -> None:
        """Hand the event to each subscriber in a task of its own, so one slow tab delays no other."""
        for subscriber in list(self._subscribers.get(event.conversation_id, ())):
            task = asyncio.create_task(self._deliver(subscriber, event))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    @staticmethod
    async def _deliver(subscriber: Subscriber, event: ConversationEvent) -> None:
        try:
            await subscriber(event)
        except Exception:  # a tab that went away mid-delivery must not affect the others
            log.exception('live update not delivered')

    def subscriber_count(self, conversation_id: int) -> int:
        return len(self._subscribers.get(conversation_id, ()))
