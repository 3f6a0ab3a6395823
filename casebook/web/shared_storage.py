"""NiceGUI's Redis-backed storage, without one race that loses a browser's notebook entries.

With `NICEGUI_REDIS_URL`, each of NiceGUI's storage dicts (one per browser for `app.storage.user`) writes
its whole JSON to Redis and PUBLISHes it on a channel after every change; every instance holding that dict
listens on the channel and makes its copy equal to what it hears. The instance that published hears its own
message too. When the notebook changed again in between — the page stored the browser's time zone (one
publication), then the clinician opened a patient before that publication came back — the echo of the older
state is applied over the newer one: the open patient is deleted again, in memory and, with the next write,
in Redis. Seen under the failover test: 1 or 2 of 16 simulated tabs came back from a killed instance with
"Patient: (not set)" although they had opened one seconds before (9 of 10 runs clean, so a race).

Here each dict tags what it publishes with an origin of its own and ignores messages carrying that origin;
applying another instance's change does not publish it back (that instance wrote it to Redis already).
What is stored under the key is unchanged (plain JSON), so NiceGUI's own loading reads it as before, and an
untagged message (NiceGUI's format) is still applied. Installed by `install()` in place of NiceGUI's factory
(`Storage._create_persistent_dict`, a private hook: tests/redis/test_storage_echo.py checks it is still used).
"""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

from nicegui import background_tasks, core
from nicegui.logging import log
from nicegui.persistence import PersistentDict, RedisPersistentDict
from nicegui.persistence.serialization import dumps
from nicegui.storage import TAB_PREFIX, TTL_BUFFER_SECONDS, Storage

ORIGIN_LENGTH = 32  # uuid4().hex


class OwnEchoFreeRedisDict(RedisPersistentDict):
    """A RedisPersistentDict that does not apply its own publications to itself."""

    def __init__(self, **kwargs: Any) -> None:
        self.origin = uuid.uuid4().hex
        self._applying = False  # applying another instance's change: nothing to publish
        super().__init__(**kwargs)

    def publish(self) -> None:
        if self._applying:
            return

        async def backup() -> None:
            if not await self.redis_client.exists(self.key) and not self:
                return
            data = dumps(self, self.key)
            pipeline = self.redis_client.pipeline()
            pipeline.set(self.key, data, ex=self.ttl)
            pipeline.publish(self.key + 'changes', self.origin + data)
            await pipeline.execute()

        background_tasks.create_lazy_or_defer(backup(), name=f'redis-{self.key}')

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

    def _start_listening(self) -> None:
        async def listen() -> None:
            try:
                await self.pubsub.subscribe(self.key + 'changes')
                async for message in self.pubsub.listen():
                    if message['type'] == 'message':
                        try:
                            self.apply(message['data'])
                        except ValueError:
                            log.warning('ignored an unreadable storage change on %schanges', self.key)
                    elif message['type'] in ('unsubscribe', 'punsubscribe') and message.get('data') == 0:
                        break
            except asyncio.CancelledError:
                pass  # close()
            except Exception:
                log.exception('storage listener for %s stopped', self.key)
            finally:
                if self.pubsub.subscribed:
                    await self.pubsub.unsubscribe()

        def start() -> None:
            self._listener_task = background_tasks.create(listen(), name=f'redis-listen-{self.key}')

        if core.is_loop_running():
            start()
        else:
            core.app.on_startup(start)


def _create_persistent_dict(id: str) -> PersistentDict:  # NiceGUI's signature
    ttl = int(core.app.storage.max_tab_storage_age + TTL_BUFFER_SECONDS) if id.startswith(TAB_PREFIX) else None
    return OwnEchoFreeRedisDict(url=Storage.redis_url, id=id, key_prefix=Storage.redis_key_prefix, ttl=ttl)


def install() -> None:
    """Make NiceGUI create its Redis storage dicts as OwnEchoFreeRedisDict (call with NICEGUI_REDIS_URL set)."""
    if not Storage.redis_url:
        raise RuntimeError('NiceGUI storage is not in Redis')
    Storage._create_persistent_dict = staticmethod(_create_persistent_dict)  # type: ignore[method-assign]
