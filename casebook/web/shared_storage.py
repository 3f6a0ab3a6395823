"""NiceGUI's Redis-backed storage on a fixed number of Redis connections per instance, without an echo race.

With `NICEGUI_REDIS_URL`, each of NiceGUI's storage dicts (one per browser for `app.storage.user`, one per tab
for `app.storage.tab`) writes its whole JSON to Redis and PUBLISHes it on its key's `changes` channel after every
change; every instance holding that dict listens on the channel and makes its copy equal to what it hears.

Connections. NiceGUI's own `RedisPersistentDict` opens a client and a subscription of its own for every dict:
~3 connections per tab, and storage of a login page or of a reloaded page keeps its own until it is pruned
(2,170 connections for 300 tabs signing in through the form). Here every dict of a process shares one
`RedisStorage`: one client with a bounded pool (`POOL_SIZE` connections) for GET, SET, DELETE and PUBLISH, and
one pub/sub connection on which a dict's channel is SUBSCRIBEd while the dict is open (several dicts of one key
share it) and UNSUBSCRIBEd when the last of them is closed (NiceGUI closes tab storage with its tab and prunes
user storage of browsers without a page). Messages are handed to the dicts of their channel. The connections
are named (CLIENT SETNAME `casebook-storage`, `casebook-storage-listen`), opened on first use on the running
loop and closed at shutdown. When the pub/sub connection is lost, the listener reconnects with a growing pause,
subscribes again to every open dict's channel and then reads each dict back from Redis (a dict whose own write
failed meanwhile writes itself instead), so changes made elsewhere during the outage are not missed.

A dict subscribes before it loads: a change another instance publishes while the dict is loading is heard.

Echo. The instance that published hears its own message too. When the notebook changed again in between — the
page stored the browser's time zone (one publication), then the clinician opened a patient before that
publication came back — the echo of the older state would be applied over the newer one: the open patient
deleted again, in memory and, with the next write, in Redis (seen under the failover test). Each dict tags what
it publishes with an origin of its own and ignores messages carrying that origin; applying another instance's
change does not publish it back (that instance wrote it to Redis already). What is stored under the key is
unchanged (plain JSON, tab storage with NiceGUI's TTL), and an untagged message (NiceGUI's format) is still
applied. Installed by `install()` in place of NiceGUI's factory (`Storage._create_persistent_dict`, a private
hook: tests/redis/test_storage_echo.py checks it is still used).
"""

from __future__ import annotations

import asyncio
import json
import uuid
import weakref
from contextlib import suppress
from typing import Any

import redis as redis_sync
import redis.asyncio as redis
from nicegui import background_tasks, core
from nicegui.logging import log
from nicegui.persistence import PersistentDict, RedisPersistentDict
from nicegui.persistence.serialization import dumps
from nicegui.storage import GENERAL_ID, TAB_PREFIX, TTL_BUFFER_SECONDS, Storage
from redis.backoff import NoBackoff
from redis.retry import Retry

ORIGIN_LENGTH = 32  # uuid4().hex
POOL_SIZE = 4  # connections for GET/SET/PUBLISH; a command waits for a free one (at most POOL_WAIT seconds)
POOL_WAIT = 10.0
CLIENT_NAME = 'casebook-storage'
SUBSCRIBED_WITHIN = 2.0  # a dict waits this long for its subscription before it loads anyway
RETRY_FIRST, RETRY_MAX = 0.2, 5.0  # seconds between the listener's reconnection attempts, doubling
BATCH = 500  # channels per SUBSCRIBE, keys per MGET after a reconnection
CONNECTION_OPTIONS: dict[str, Any] = {'socket_connect_timeout': 5, 'socket_keepalive': True}


class RedisStorage:
    """What all storage dicts of one instance share: a command client and one pub/sub connection."""

    def __init__(self, url: str, *, name: str = CLIENT_NAME) -> None:
        """`name`: the connections' names in Redis (CLIENT LIST), the listener's with `-listen`."""
        self.url = url
        self.name = name
        self._books: dict[str, weakref.WeakValueDictionary[int, SharedRedisDict]] = {}  # channel → open dicts
        self._subscribed: dict[str, asyncio.Future] = {}  # channel → done once Redis confirmed the subscription
        self._loop: asyncio.AbstractEventLoop | None = None
        self._client: redis.Redis | None = None
        self._pubsub: Any = None  # the listener's, while connected
        self._sent: set[str] = set()  # channels SUBSCRIBEd on the current pub/sub connection
        self._lock: asyncio.Lock | None = None  # one SUBSCRIBE/UNSUBSCRIBE at a time, in the order decided
        self._listener: asyncio.Task | None = None
        self.connected: asyncio.Event | None = None
        self.reconnections = 0
        self._lost = False  # the listener lost Redis and has not got it back yet: dicts do not wait for it
        self.closed = False

    # --- the connections, made on the running loop ---

    def _ready(self) -> None:
        loop = asyncio.get_running_loop()
        if self._loop is not loop:  # first use, or a new loop (tests): what belonged to the old one is dropped
            self._loop = loop
            pool = redis.BlockingConnectionPool.from_url(
                self.url,
                max_connections=POOL_SIZE,
                timeout=POOL_WAIT,
                client_name=self.name,
                health_check_interval=10,
                retry_on_timeout=True,
                **CONNECTION_OPTIONS,
            )
            self._client = redis.Redis(connection_pool=pool)
            self._pubsub, self._sent, self._listener, self._lost = None, set(), None, False
            self._lock, self.connected = asyncio.Lock(), asyncio.Event()
            self._subscribed = {channel: loop.create_future() for channel in self._books}
        if self._listener is None and not self.closed:
            self._listener = asyncio.create_task(self._listen(), name='casebook-storage-listen')

    @property
    def client(self) -> redis.Redis:
        self._ready()
        assert self._client is not None
        return self._client

    async def close(self) -> None:
        """Stop listening and close the connections (at shutdown; commands after it would connect again)."""
        self.closed = True
        if self._loop is not asyncio.get_running_loop():
            return  # nothing was opened on this loop
        if self._listener is not None:
            self._listener.cancel()
            with suppress(asyncio.CancelledError):
                await self._listener
            self._listener = None
        if self._client is not None:
            await self._client.connection_pool.disconnect()

    # --- following a dict's channel ---

    async def follow(self, book: SharedRedisDict) -> None:
        """Hand `book` what is published on its channel from now on (subscribed when this returns, unless Redis
        does not answer within SUBSCRIBED_WITHIN seconds: then from when it does)."""
        self._ready()
        self._add(book)
        await self._sync(book.channel)
        if not self._lost:  # connected, or connecting for the first time: its subscription is on its way
            with suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._subscribed[book.channel]), SUBSCRIBED_WITHIN)

    def follow_later(self, book: SharedRedisDict) -> None:
        """`follow` without waiting: subscribed once the loop runs (at start-up) or the listener is connected."""
        self._add(book)
        if core.is_loop_running():
            background_tasks.create(self.follow(book), name=f'redis-follow-{book.key}')
        else:
            core.app.on_startup(lambda: self.follow(book))

    def _add(self, book: SharedRedisDict) -> None:
        books = self._books.setdefault(book.channel, weakref.WeakValueDictionary())
        books[id(book)] = book
        if book.channel not in self._subscribed and self._loop is not None:
            self._subscribed[book.channel] = self._loop.create_future()

    async def unfollow(self, book: SharedRedisDict) -> None:
        books = self._books.get(book.channel)
        if books is None or books.pop(id(book), None) is None:
            return
        if not books:
            del self._books[book.channel]
            self._subscribed.pop(book.channel, None)
            if self._loop is asyncio.get_running_loop() and not self.closed:
                await self._sync(book.channel)

    def channels(self) -> set[str]:
        """Channels with an open dict here (a dict that was dropped without being closed no longer counts)."""
        return {channel for channel, books in self._books.items() if books}

    async def _sync(self, channel: str) -> None:
        """SUBSCRIBE or UNSUBSCRIBE `channel` so that the connection follows it exactly while a dict is open."""
        assert self._lock is not None
        async with self._lock:
            wanted, sent = bool(self._books.get(channel)), channel in self._sent
            if not wanted:  # closed, or dropped without being closed (a weak reference)
                self._books.pop(channel, None)
                self._subscribed.pop(channel, None)
            if self._pubsub is None:
                return  # not connected: the listener subscribes to all open dicts' channels when it is
            try:
                if wanted and not sent:
                    self._sent.add(channel)
                    await self._pubsub.execute_command('SUBSCRIBE', channel)
                elif sent and not wanted:
                    self._sent.discard(channel)
                    await self._pubsub.execute_command('UNSUBSCRIBE', channel)
            except (OSError, redis.RedisError) as error:
                log.warning('storage subscription to %s not changed (%s)', channel, type(error).__name__)

    # --- the listener ---

    async def _listen(self) -> None:
        assert self._lock is not None and self.connected is not None
        pool = redis.ConnectionPool.from_url(
            self.url,
            max_connections=1,
            client_name=f'{self.name}-listen',
            health_check_interval=0,  # a PING would be read here while the listener reads: no second reader
            retry=Retry(NoBackoff(), 0),  # a lost connection ends this round; the next one subscribes again
            **CONNECTION_OPTIONS,
        )
        pause, connected_before = RETRY_FIRST, False
        try:
            while True:
                pubsub = redis.Redis(connection_pool=pool).pubsub()
                try:
                    await pubsub.connect()
                    async with self._lock:
                        channels = sorted(self.channels())
                        for start in range(0, len(channels), BATCH):
                            await pubsub.execute_command('SUBSCRIBE', *channels[start : start + BATCH])
                        self._pubsub, self._sent = pubsub, set(channels)
                    self.connected.set()
                    self._lost = False
                    if connected_before:
                        self.reconnections += 1
                        log.warning('storage listener connected to Redis again: reading %d dicts', len(channels))
                        background_tasks.create(self._reread(channels), name='casebook-storage-reread')
                    connected_before, pause = True, RETRY_FIRST
                    while True:
                        message = await pubsub.get_message(timeout=None)
                        if message is not None:
                            self._received(message)
                except (OSError, redis.RedisError) as error:
                    if self.connected.is_set():
                        log.warning('storage listener lost Redis (%s); reconnecting', type(error).__name__)
                except Exception:  # not Redis: listening goes on all the same, on a new connection
                    log.exception('storage listener failed; reconnecting')
                finally:
                    self.connected.clear()
                    self._lost = True
                    self._pubsub = None
                    with suppress(Exception):
                        await pubsub.aclose()
                await asyncio.sleep(pause)
                pause = min(pause * 2, RETRY_MAX)
        finally:
            with suppress(Exception):
                await pool.disconnect()

    def _received(self, message: dict) -> None:
        kind = message['type']
        channel = message['channel']
        channel = channel.decode() if isinstance(channel, bytes) else channel
        if kind == 'subscribe':
            if (confirmed := self._subscribed.get(channel)) is not None and not confirmed.done():
                confirmed.set_result(None)
        elif kind == 'message':
            books = list(self._books.get(channel, {}).values())
            if not books and channel in self._sent:  # its dicts were dropped without being closed
                background_tasks.create(self._sync(channel), name=f'redis-unfollow-{channel}')
            for book in books:
                try:
                    book.apply(message['data'])
                except ValueError:
                    log.warning('ignored an unreadable storage change on %s', channel)

    async def _reread(self, channels: list[str]) -> None:
        """After a reconnection: what was published meanwhile was not heard; take what Redis holds now."""
        for start in range(0, len(channels), BATCH):
            batch = [list(self._books.get(channel, {}).values()) for channel in channels[start : start + BATCH]]
            batch = [books for books in batch if books]
            if not batch:
                continue
            try:
                stored = await self.client.mget([books[0].key for books in batch])
            except (OSError, redis.RedisError) as error:
                log.warning('storage not read again after the reconnection (%s)', type(error).__name__)
                return
            for books, data in zip(batch, stored, strict=True):
                for book in books:
                    if book.unsaved:
                        book.publish()  # its own change did not reach Redis: it is the newer one
                    elif data is not None:
                        with suppress(ValueError):
                            book.apply(data)


class SharedRedisDict(RedisPersistentDict):
    """NiceGUI's Redis storage dict on its instance's `RedisStorage`; it ignores its own publications."""

    def __init__(self, *, store: RedisStorage, id: str, key_prefix: str = 'nicegui:', ttl: int | None = None) -> None:
        # not RedisPersistentDict.__init__: that opens a client and a subscription of the dict's own
        self.store = store
        self.url = store.url
        self.key_prefix = key_prefix
        self.key = key_prefix + id
        self.channel = self.key + 'changes'
        self.ttl = ttl
        self.origin = uuid.uuid4().hex
        self.unsaved = False  # the last write did not reach Redis
        self._applying = False  # applying another instance's change: nothing to publish
        self._listener_task = None
        PersistentDict.__init__(self, data={}, on_change=self.publish)

    @property
    def redis_client(self) -> redis.Redis:  # type: ignore[override]  # NiceGUI's clear() and auth.py use it
        return self.store.client

    async def initialize(self) -> None:
        """Subscribe, then load what Redis holds (so that nothing published in between is missed)."""
        try:
            await self.store.follow(self)
            data = await self.redis_client.get(self.key)
            self.update(json.loads(data) if data else {})
        except Exception:
            log.warning(f'Could not load data from Redis with key {self.key}')

    def initialize_sync(self) -> None:
        """Load with a short-lived connection of its own (no loop yet: start-up); subscribed once the loop runs."""
        try:
            with redis_sync.from_url(self.url, **CONNECTION_OPTIONS) as client:
                data = client.get(self.key)
            self.update(json.loads(data) if data else {})
        except Exception:
            log.warning(f'Could not load data from Redis with key {self.key}')
        self.store.follow_later(self)

    def _start_listening(self) -> None:
        raise NotImplementedError('the instance listens for all dicts: RedisStorage.follow')

    async def close(self) -> None:
        """No more changes from other instances (the shared connections stay open for the others)."""
        await self.store.unfollow(self)

    def publish(self) -> None:
        if self._applying:
            return

        async def backup() -> None:
            try:
                if not self and not await self.redis_client.exists(self.key):
                    return
                data = dumps(self, self.key)
                pipeline = self.redis_client.pipeline()
                pipeline.set(self.key, data, ex=self.ttl)
                pipeline.publish(self.channel, self.origin + data)
                await pipeline.execute()
                self.unsaved = False
            except (OSError, redis.RedisError) as error:
                self.unsaved = True  # written when the listener is connected again
                log.warning('storage %s not written to Redis (%s)', self.key, type(error).__name__)

        background_tasks.create_lazy_or_defer(backup(), name=f'redis-{self.key}')

    def clear(self) -> None:
        PersistentDict.clear(self)  # as NiceGUI's, with the client taken when the deletion runs (on the loop)

        async def delete() -> None:
            await self.redis_client.delete(self.key)

        background_tasks.create_lazy_or_defer(delete(), name=f'redis-delete-{self.key}')

    def apply(self, message: bytes | str) -> None:
        """Take over what another instance published; this dict's own echo is ignored."""
        text = message.decode('utf-8') if isinstance(message, bytes) else message
        if not text.startswith('{'):  # tagged: origin, then the JSON
            if text[:ORIGIN_LENGTH] == self.origin:
                return
            text = text[ORIGIN_LENGTH:]
        data = json.loads(text)
        if data == self:
            return
        self._applying = True
        try:
            for key in set(self) - data.keys():
                del self[key]  # one by one: clear() would delete the key in Redis
            self.update(data)
        finally:
            self._applying = False


_shared: RedisStorage | None = None


def shared() -> RedisStorage:
    """This process's storage connections (for `Storage.redis_url`)."""
    global _shared
    assert Storage.redis_url
    if _shared is None or _shared.url != Storage.redis_url:
        _shared = RedisStorage(Storage.redis_url)
    return _shared


def _create_persistent_dict(id: str) -> PersistentDict:  # NiceGUI's signature
    ttl = int(core.app.storage.max_tab_storage_age + TTL_BUFFER_SECONDS) if id.startswith(TAB_PREFIX) else None
    return SharedRedisDict(store=shared(), id=id, key_prefix=Storage.redis_key_prefix, ttl=ttl)


def install() -> None:
    """Make NiceGUI create its Redis storage dicts as SharedRedisDict (call with NICEGUI_REDIS_URL set), before the
    first browser's storage is created. NiceGUI created and loaded the general storage when it was imported: it is
    replaced by one of ours, and NiceGUI's is closed at start-up (its listener would hold a connection)."""
    if not Storage.redis_url:
        raise RuntimeError('NiceGUI storage is not in Redis')
    Storage._create_persistent_dict = staticmethod(_create_persistent_dict)  # type: ignore[method-assign]
    storage = core.app.storage
    if isinstance(storage._general, RedisPersistentDict) and not isinstance(storage._general, SharedRedisDict):
        original = storage._general
        general = _create_persistent_dict(GENERAL_ID)
        assert isinstance(general, SharedRedisDict)
        general._applying = True  # what it holds is in Redis already
        try:
            general.update(original)
        finally:
            general._applying = False
        general.store.follow_later(general)
        storage._general = general
        core.app.on_startup(original.close)
    core.app.on_shutdown(shared().close)
