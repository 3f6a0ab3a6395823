"""Fan-out of changes to every open tab they concern.

The database is the record; this only tells open pages that something new is there: a new or changed
message (carried along, so no tab has to query for it), or sessions that ended (logout, idle, a disabled
account), so every tab of those sessions leaves at once. Events go to a topic: one per conversation, one
per clinician. `LocalHub` delivers within one process. A hub that crosses instances (Redis pub/sub, a later
step) keeps the same two methods: `publish` sends an event to every subscriber of its topic on any
instance, `subscribe` listens on this instance.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal

from casebook.services.conversations import MessageInfo

log = logging.getLogger(__name__)

Subscriber = Callable[[Any], Awaitable[None]]


@dataclass(frozen=True)
class ConversationEvent:
    """`message`: a new message (a correction too); `marked`: a message was marked entered in error."""

    kind: Literal['message', 'marked']
    conversation_id: int
    message: MessageInfo

    @property
    def topic(self) -> str:
        return conversation_topic(self.conversation_id)


@dataclass(frozen=True)
class SessionsEnded:
    """These sessions of a clinician ended (all of them when `session_ids` is None); `reason` as audited."""

    clinician_id: int
    session_ids: frozenset[str] | None
    reason: str

    @property
    def topic(self) -> str:
        return clinician_topic(self.clinician_id)

    def ends(self, session_id: str) -> bool:
        return self.session_ids is None or session_id in self.session_ids


Event = ConversationEvent | SessionsEnded


def conversation_topic(conversation_id: int) -> str:
    return f'conversation:{conversation_id}'


def clinician_topic(clinician_id: int) -> str:
    return f'clinician:{clinician_id}'


class LocalHub:
    """In-process publish/subscribe by topic."""

    def __init__(self) -> None:
        self._subscribers: dict[str, set[Subscriber]] = defaultdict(set)
        self._tasks: set[asyncio.Task] = set()

    def subscribe(self, topic: str, subscriber: Subscriber) -> Callable[[], None]:
        """Call `subscriber` with every event of this topic; returns the function that stops it."""
        self._subscribers[topic].add(subscriber)

        def unsubscribe() -> None:
            subscribers = self._subscribers.get(topic)
            if subscribers is not None:
                subscribers.discard(subscriber)
                if not subscribers:
                    del self._subscribers[topic]

        return unsubscribe

    async def publish(self, event: Event) -> None:
        """Hand the event to each subscriber in a task of its own, so one slow tab delays no other."""
        for subscriber in list(self._subscribers.get(event.topic, ())):
            task = asyncio.create_task(self._deliver(subscriber, event))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    @staticmethod
    async def _deliver(subscriber: Subscriber, event: Event) -> None:
        try:
            await subscriber(event)
        except Exception:  # a tab that went away mid-delivery must not affect the others
            log.exception('live update not delivered')

    def subscriber_count(self, topic: str) -> int:
        return len(self._subscribers.get(topic, ()))
