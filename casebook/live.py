"""Fan-out of changes to every open tab they concern.

The database is the record; this only tells open pages that something new is there: a new or changed
message (carried along, so no tab has to query for it), or sessions that ended (logout, idle, a disabled
account), so every tab of those sessions leaves at once. Events go to a topic: one per clinician
(`clinician:ID`) and one per conversation, named under its clinician (`clinician:ID/conversation:ID`), so
that every topic says whose it is. `LocalHub` delivers within one process; `RedisHub` (with
`CASEBOOK_REDIS_URL`) also carries events, through Redis pub/sub, to the other instances that hold a tab of
that clinician. Both have the same two methods: `publish` sends an event to every subscriber of its topic on
any instance, `subscribe` listens on this instance.

Redis may drop events (a broken connection, Redis restarting), and an instance hears a clinician's events
only from the moment Redis confirms its subscription; nothing is lost by that, since the database is the
record, but a tab may have missed an update. Whenever that can have happened, subscribers of the affected
topics get a `Resync`, and read again what they show.
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
from dataclasses import asdict, dataclass, field
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
    clinician_id: int = field(kw_only=True)  # whose conversation: where the event goes

    @property
    def topic(self) -> str:
        return conversation_topic(self.clinician_id, self.conversation_id)


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


def conversation_topic(clinician_id: int, conversation_id: int) -> str:
    return f'{clinician_topic(clinician_id)}/conversation:{conversation_id}'


def clinician_topic(clinician_id: int) -> str:
    return f'clinician:{clinician_id}'


def channel(prefix: str, topic: str) -> str:
    """The Redis channel that carries a topic's events between instances, under Casebook's Redis key prefix:
    one per clinician (`{prefix}live:clinician:ID`), for their own topic and their conversations' (the part
    of a topic before its first `/`)."""
    return f'{prefix}live:{topic.partition("/")[0]}'


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
        body: dict[str, Any] = {
            'kind': event.kind,
            'clinician_id': event.clinician_id,
            'conversation_id': event.conversation_id,
            'message': message,
        }
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
        conversation_id, clinician_id = int(body['conversation_id']), int(body['clinician_id'])
        event: Event = ConversationEvent(kind, conversation_id, MessageInfo(**fields), clinician_id=clinician_id)
    elif kind == 'ended':
        ids = body['session_ids']
        event = SessionsEnded(int(body['clinician_id']), None if ids is None else frozenset(ids), str(body['reason']))
    elif kind == 'resync':
        event = Resync(str(body['topic']))
    else:
        raise ValueError(f'unknown event kind {kind!r}')
    at = body.get('at')
    return str(body['origin']), event, float(at) if isinstance(at, int | float) else None


class RedisHub(LocalHub):
    """`LocalHub` plus Redis pub/sub: events reach the subscribers on every instance that has any.

    An event is handed to this instance's subscribers at once (Redis is not in the way of a tab on the same
    instance) and queued for Redis, published in order by one task on its clinician's channel (`channel`);
    the publishing request never waits for Redis.

    Each instance listens on one pub/sub connection, subscribed to the channel of every clinician it holds a
    tab of (any local subscriber of any of their topics) and to a channel of its own, which keeps the
    connection subscribed while it holds no tab and tells that it is connected. `subscribe` stays synchronous:
    the first local subscriber of a clinician's topics, or the last one going, only marks the channel as
    wanted or not; the listener task sends SUBSCRIBE/UNSUBSCRIBE for the difference. So an event reaches
    the instances that hold a tab of its clinician (and its own, which ignores it) instead of every instance.

    Until Redis confirms a subscription, events of that clinician published elsewhere pass this instance by:
    a page that reads a conversation and subscribes could miss one. So whenever a clinician's channel becomes
    subscribed (at first, and again after a reconnection), every local subscriber of that clinician's topics
    gets a `Resync` and reads again what it shows; after that, nothing is missed while the channel stays.

    When Redis goes away, local delivery goes on; events for other instances are dropped (logged) and both
    sides recover by themselves: the listener reconnects with a growing pause and subscribes every wanted
    channel again (each confirmation resyncs that clinician's topics, as above); the publisher, once Redis
    takes events again, publishes a `Resync` for each topic whose events it dropped.
    """

    QUEUE_LIMIT = 10_000  # events waiting for Redis; beyond this the oldest are dropped (and resynced)
    RETRY_FIRST, RETRY_MAX = 0.2, 5.0  # seconds between reconnection attempts, doubling

    def __init__(self, redis: Any, *, prefix: str) -> None:
        """`redis`: the redis.asyncio client the instance shares (its owner closes it)."""
        super().__init__()
        self.redis = redis
        self._prefix = prefix
        self.origin = uuid.uuid4().hex  # this instance
        self._own_channel = channel(prefix, f'instance:{self.origin}')
        self._outbox: asyncio.Queue[tuple[str, str]] = asyncio.Queue()  # (topic, encoded event)
        self._dropped: set[str] = set()  # topics whose events did not reach Redis: resynced when it is back
        self._wanted: dict[str, set[str]] = {}  # channel -> the topics followed here that it carries
        self._asked: set[str] = set()  # channels subscribed (or being subscribed) on the listener's connection
        self._changed = asyncio.Event()  # `_wanted` changed: the listener sends the difference to Redis
        self._workers: list[asyncio.Task] = []
        self.connected = asyncio.Event()  # the listener is subscribed (tests and the health check wait on it)
        self.resyncs = 0  # how often the listener re-subscribed after losing Redis

    def channel(self, topic: str) -> str:
        return channel(self._prefix, topic)

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

    def subscribe(self, topic: str, subscriber: Subscriber) -> Callable[[], None]:
        unsubscribe = super().subscribe(topic, subscriber)
        carrier = self.channel(topic)
        topics = self._wanted.setdefault(carrier, set())
        if not topics:
            self._changed.set()  # the first topic of this clinician here: subscribe to their channel
        topics.add(topic)

        def stop() -> None:
            unsubscribe()
            topics = self._wanted.get(carrier)
            if topics is not None and topic in topics and topic not in self._subscribers:
                topics.discard(topic)
                if not topics:
                    del self._wanted[carrier]
                    self._changed.set()  # the last one: unsubscribe

        return stop

    async def publish(self, event: Event) -> None:
        published_at = time.time()
        self._deliver_all(event, published_at)
        if self._outbox.qsize() >= self.QUEUE_LIMIT:
            topic, _ = self._outbox.get_nowait()
            self._dropped.add(topic)
        self._outbox.put_nowait((event.topic, encode(event, self.origin, published_at)))

    # The publisher: one task, so events leave in the order they happened.

    async def _publish_queued(self) -> None:
        pause = self.RETRY_FIRST
        while True:
            try:
                topic, payload = await asyncio.wait_for(self._outbox.get(), timeout=pause if self._dropped else None)
            except TimeoutError:
                topic = payload = None  # nothing new, but resyncs are owed
            try:
                if self._dropped:
                    for dropped in sorted(self._dropped):
                        await self.redis.publish(self.channel(dropped), encode(Resync(dropped), self.origin))
                        self._dropped.discard(dropped)
                    log.warning('live updates reach other instances again')
                if topic is not None:
                    await self.redis.publish(self.channel(topic), payload)
                pause = self.RETRY_FIRST
            except Exception as error:  # Redis unreachable or failing: the database already holds the change
                if not self._dropped:
                    log.warning('live update not sent to other instances (%s); will resync', type(error).__name__)
                if topic is not None:
                    self._dropped.add(topic)
                pause = min(pause * 2, self.RETRY_MAX)

    # The listener: one connection, subscribed to the channels of the clinicians this instance holds tabs of.

    async def _listen(self) -> None:
        pause = self.RETRY_FIRST
        subscribed_before = False
        while True:
            pubsub = self.redis.pubsub()
            self._asked = set()
            reader: asyncio.Future | None = None
            changed: asyncio.Future | None = None
            try:
                await pubsub.subscribe(self._own_channel)
                self._changed.set()  # a new connection: subscribe to every wanted channel
                while True:
                    if self._changed.is_set():
                        self._changed.clear()
                        await self._follow(pubsub)
                    # Reading waits for the next message; subscribing is only writing, so it goes on meanwhile.
                    reader = reader or asyncio.ensure_future(pubsub.get_message(timeout=None))
                    changed = changed or asyncio.ensure_future(self._changed.wait())
                    await asyncio.wait((reader, changed), return_when=asyncio.FIRST_COMPLETED)
                    if changed.done():
                        changed = None
                    if not reader.done():
                        continue
                    message, reader = reader.result(), None
                    if message is None:
                        continue
                    kind = message['type']
                    if kind == 'message':
                        self._received(message['channel'], message['data'])
                    elif kind == 'subscribe' and _text(message['channel']) == self._own_channel:
                        if subscribed_before:  # also after redis-py reconnected by itself
                            self.resyncs += 1
                        subscribed_before = True
                        self.connected.set()
                        pause = self.RETRY_FIRST
                    elif kind == 'subscribe':
                        self._confirmed(_text(message['channel']))
            except asyncio.CancelledError:
                raise
            except Exception as error:
                if self.connected.is_set():
                    log.warning('lost Redis for live updates (%s); reconnecting', type(error).__name__)
                self.connected.clear()
            finally:
                for waiting in (reader, changed):
                    if waiting is not None and not waiting.cancel() and not waiting.cancelled():
                        waiting.exception()  # done: already seen, or the connection is replaced anyway
                with suppress(Exception):
                    await pubsub.aclose()
            await asyncio.sleep(pause)
            pause = min(pause * 2, self.RETRY_MAX)

    async def _follow(self, pubsub: Any) -> None:
        """Subscribe to the channels now wanted and unsubscribe from those no longer wanted."""
        new = [carrier for carrier in self._wanted if carrier not in self._asked]
        gone = [carrier for carrier in self._asked if carrier not in self._wanted]
        if new:
            self._asked.update(new)
            await pubsub.subscribe(*new)
        if gone:
            self._asked.difference_update(gone)
            await pubsub.unsubscribe(*gone)

    def _confirmed(self, carrier: str) -> None:
        """Redis now sends this channel's events here: whatever its topics' subscribers read before may have
        missed one."""
        if carrier not in self._asked:  # re-subscribed by redis-py after a reconnection, though since dropped
            self._asked.add(carrier)
            self._changed.set()
        for topic in list(self._wanted.get(carrier, ())):
            self._deliver_all(Resync(topic))

    def _received(self, carrier: bytes, data: bytes) -> None:
        try:
            origin, event, published_at = decode_stamped(data)
        except (ValueError, KeyError, TypeError):
            log.warning('ignored a malformed live update')
            metrics.live_received('ignored')
            return
        if origin == self.origin:
            metrics.live_received('own')  # delivered here when it was published
        elif self.channel(event.topic) != _text(carrier) or event.topic not in self._subscribers:
            metrics.live_received('ignored')  # on another clinician's channel, or nobody here follows it now
        else:
            metrics.live_received('delivered')
            self._deliver_all(event, published_at)


def _text(name: bytes | str) -> str:
    return name.decode(errors='replace') if isinstance(name, bytes) else name
