"""Fan-out of changes to every open tab they concern.

The database is the record; this only tells open pages that something new is there: a new or changed
message (carried along, so no tab has to query for it), or sessions that ended (logout, idle, a disabled
account), so every tab of those sessions leaves at once. Events go to a topic: one per conversation, one
per clinician. `LocalHub` delivers within one process; `RedisHub` (with `CASEBOOK_REDIS_URL`) also carries
events to every other instance through Redis pub/sub. Both have the same two methods: `publish` sends an
event to every subscriber of its topic on any instance, `subscribe` listens on this instance.

Redis may drop events (a broken connection, Redis restarting); nothing is lost by that, since the database
is the record, but a tab may have missed an update. Whenever that can have happened, subscribers of the
affected topics get a `Resync`, and read again what they show.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections import defaultdict
from collections.abc import Awaitable, Callable
from contextlib import suppress
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any, Literal

from casebook import metrics
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


@dataclass(frozen=True)
class Resync:
    """Events of this topic may have been missed (live updates were interrupted): read the state again."""

    topic: str


Event = ConversationEvent | SessionsEnded | Resync


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
        self._deliver_all(event, time.time())

    def _deliver_all(self, event: Event, published_at: float | None = None) -> None:
        """`published_at`: when the event was published (time.time()), for casebook_live_delivery_seconds."""
        for subscriber in list(self._subscribers.get(event.topic, ())):
            task = asyncio.create_task(self._deliver(subscriber, event, published_at))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    @staticmethod
    async def _deliver(subscriber: Subscriber, event: Event, published_at: float | None) -> None:
        try:
            await subscriber(event)
        except Exception:  # a tab that went away mid-delivery must not affect the others
            log.exception('live update not delivered')
            return
        if published_at is not None:
            metrics.live_delivered(published_at)

    async def delivered(self) -> None:
        """Until every event published so far has been handed to its subscribers here (tests, a graceful stop)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    def subscriber_count(self, topic: str) -> int:
        return len(self._subscribers.get(topic, ()))


# ----- across instances ------------------------------------------------------------------------------------


def encode(event: Event, origin: str, published_at: float | None = None) -> str:
    """An event as JSON for Redis; `origin` names the instance that published it, `published_at` (time.time())
    when, so that the receiving instance can measure the delivery."""
    if isinstance(event, ConversationEvent):
        message = asdict(event.message)
        message['sent_at'] = event.message.sent_at.isoformat()
        body: dict[str, Any] = {'kind': event.kind, 'conversation_id': event.conversation_id, 'message': message}
    elif isinstance(event, SessionsEnded):
        ids = None if event.session_ids is None else sorted(event.session_ids)
        body = {'kind': 'ended', 'clinician_id': event.clinician_id, 'session_ids': ids, 'reason': event.reason}
    else:
        body = {'kind': 'resync', 'topic': event.topic}
    stamp = {} if published_at is None else {'at': published_at}
    return json.dumps({'origin': origin, **stamp, **body}, separators=(',', ':'))


def decode(data: str | bytes) -> tuple[str, Event]:
    """(origin, event) from `encode`'s JSON; ValueError (or KeyError/TypeError) when it is not one."""
    origin, event, _ = decode_stamped(data)
    return origin, event


def decode_stamped(data: str | bytes) -> tuple[str, Event, float | None]:
    """(origin, event, published_at) from `encode`'s JSON; published_at None when the sender did not stamp it."""
    body = json.loads(data)
    kind = body['kind']
    if kind in ('message', 'marked'):
        fields = dict(body['message'])
        fields['sent_at'] = datetime.fromisoformat(fields['sent_at'])
        event: Event = ConversationEvent(kind, int(body['conversation_id']), MessageInfo(**fields))
    elif kind == 'ended':
        ids = body['session_ids']
        event = SessionsEnded(int(body['clinician_id']), None if ids is None else frozenset(ids), str(body['reason']))
    elif kind == 'resync':
        event = Resync(str(body['topic']))
    else:
        raise ValueError(f'unknown event kind {kind!r}')
    at = body.get('at')
    return str(body['origin']), event, float(at) if isinstance(at, int | float) else None


def channel_prefix(prefix: str) -> str:
    """The start of every live-event channel under Casebook's Redis key prefix (a channel is this + a topic)."""
    return f'{prefix}live:'


class RedisHub(LocalHub):
    """`LocalHub` plus Redis pub/sub: events reach the subscribers on every instance.

    An event is handed to this instance's subscribers at once (Redis is not in the way of a tab on the same
    instance) and queued for Redis, published in order by one task; the publishing request never waits for
    Redis. Each instance listens with one pattern subscription to all of Casebook's channels and ignores
    its own events and topics nobody here follows: no subscribe round trip when a tab opens a patient, so
    no event can slip by between reading a conversation and following it. (Every instance receives every
    event: Redis's fan-out grows with instances x events; per-topic channels would be the next step.)

    When Redis goes away, local delivery goes on; events for other instances are dropped (logged) and both
    sides recover by themselves: the listener reconnects with a growing pause and, once subscribed again,
    gives every local topic a `Resync`; the publisher, once Redis takes events again, publishes a `Resync`
    for each topic whose events it dropped.
    """

    QUEUE_LIMIT = 10_000  # events waiting for Redis; beyond this the oldest are dropped (and resynced)
    RETRY_FIRST, RETRY_MAX = 0.2, 5.0  # seconds between reconnection attempts, doubling

    def __init__(self, redis: Any, *, prefix: str) -> None:
        """`redis`: the redis.asyncio client the instance shares (its owner closes it)."""
        super().__init__()
        self.redis = redis
        self._channel_prefix = channel_prefix(prefix)
        self.origin = uuid.uuid4().hex  # this instance
        self._outbox: asyncio.Queue[tuple[str, str]] = asyncio.Queue()
        self._dropped: set[str] = set()  # topics whose events did not reach Redis: resynced when it is back
        self._workers: list[asyncio.Task] = []
        self.connected = asyncio.Event()  # the listener is subscribed (tests and the health check wait on it)
        self.resyncs = 0  # how often the listener re-subscribed after losing Redis

    def channel(self, topic: str) -> str:
        return self._channel_prefix + topic

    async def start(self) -> None:
        self._workers = [
            asyncio.create_task(self._listen(), name='casebook-live-listen'),
            asyncio.create_task(self._publish_queued(), name='casebook-live-publish'),
        ]

    async def stop(self) -> None:
        for worker in self._workers:
            worker.cancel()
        for worker in self._workers:
            with suppress(asyncio.CancelledError):
                await worker
        self._workers = []

    async def publish(self, event: Event) -> None:
        published_at = time.time()
        self._deliver_all(event, published_at)
        if self._outbox.qsize() >= self.QUEUE_LIMIT:
            channel, _ = self._outbox.get_nowait()
            self._dropped.add(channel.removeprefix(self._channel_prefix))
        self._outbox.put_nowait((self.channel(event.topic), encode(event, self.origin, published_at)))

    # The publisher: one task, so events leave in the order they happened.

    async def _publish_queued(self) -> None:
        pause = self.RETRY_FIRST
        while True:
            try:
                channel, payload = await asyncio.wait_for(self._outbox.get(), timeout=pause if self._dropped else None)
            except TimeoutError:
                channel = payload = None  # nothing new, but resyncs are owed
            try:
                if self._dropped:
                    for topic in sorted(self._dropped):
                        await self.redis.publish(self.channel(topic), encode(Resync(topic), self.origin))
                        self._dropped.discard(topic)
                    log.warning('live updates reach other instances again')
                if channel is not None:
                    await self.redis.publish(channel, payload)
                pause = self.RETRY_FIRST
            except Exception as error:  # Redis unreachable or failing: the database already holds the change
                if not self._dropped:
                    log.warning('live update not sent to other instances (%s); will resync', type(error).__name__)
                if channel is not None:
                    self._dropped.add(channel.removeprefix(self._channel_prefix))
                pause = min(pause * 2, self.RETRY_MAX)

    # The listener: one pattern subscription per instance.

    async def _listen(self) -> None:
        pause = self.RETRY_FIRST
        subscribed_before = False
        while True:
            pubsub = self.redis.pubsub()
            try:
                await pubsub.psubscribe(self._channel_prefix + '*')
                while True:
                    message = await pubsub.get_message(timeout=None)
                    if message is None:
                        continue
                    if message['type'] == 'psubscribe':  # also after redis-py reconnected by itself
                        if subscribed_before:
                            self._resync_all()
                        subscribed_before = True
                        self.connected.set()
                        pause = self.RETRY_FIRST
                    elif message['type'] == 'pmessage':
                        self._received(message['channel'], message['data'])
            except asyncio.CancelledError:
                raise
            except Exception as error:
                if self.connected.is_set():
                    log.warning('lost Redis for live updates (%s); reconnecting', type(error).__name__)
                self.connected.clear()
            finally:
                with suppress(Exception):
                    await pubsub.aclose()
            await asyncio.sleep(pause)
            pause = min(pause * 2, self.RETRY_MAX)

    def _received(self, channel: bytes, data: bytes) -> None:
        topic = channel.decode(errors='replace').removeprefix(self._channel_prefix)
        if topic not in self._subscribers:
            return  # nobody here follows it: not even decoded
        try:
            origin, event, published_at = decode_stamped(data)
        except (ValueError, KeyError, TypeError):
            log.warning('ignored a malformed live update on %s', topic)
            return
        if origin != self.origin and getattr(event, 'topic', None) == topic:
            self._deliver_all(event, published_at)

    def _resync_all(self) -> None:
        self.resyncs += 1
        for topic in list(self._subscribers):
            self._deliver_all(Resync(topic))
