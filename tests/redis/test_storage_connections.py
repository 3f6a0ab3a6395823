"""NiceGUI's storage in Redis holds a fixed number of connections per instance however many dicts are open,
follows exactly the channels of its open dicts, and survives losing Redis (real Redis, casebook/web/shared_storage.py).
"""

from __future__ import annotations

import asyncio
import gc
import json
import time
import uuid

import pytest
import redis.asyncio as redis

from casebook.web import shared_storage
from casebook.web.shared_storage import RedisStorage, SharedRedisDict
from tests.redis.conftest import PrivateRedis

WITHIN = 10.0
BOOKS = 200


async def until(condition, what: str) -> None:
    deadline = time.monotonic() + WITHIN
    while not await condition():
        if time.monotonic() > deadline:
            pytest.fail(f'not within {WITHIN} s: {what}')
        await asyncio.sleep(0.02)


async def connections(client: redis.Redis, store: RedisStorage) -> list[dict]:
    return [c for c in await client.client_list() if c.get('name') in (store.name, f'{store.name}-listen')]


async def channels(client: redis.Redis, prefix: str) -> set[bytes]:
    return set(await client.pubsub_channels(f'{prefix}*'))


async def opened(store: RedisStorage, prefix: str, ids: list[str]) -> list[SharedRedisDict]:
    books = [SharedRedisDict(store=store, id=id_, key_prefix=prefix) for id_ in ids]
    await asyncio.gather(*(book.initialize() for book in books))
    return books


async def test_many_dicts_share_a_few_connections_and_follow_exactly_their_channels(
    instances, redis_client, redis_prefix
) -> None:
    store = instances()
    books = await opened(store, redis_prefix, [f'user-{n}' for n in range(BOOKS // 2)])
    books += await opened(store, redis_prefix, [f'tab-{n}' for n in range(BOOKS // 2)])
    for n, book in enumerate(books):
        book['patient_id'] = f'PAT-{n}'  # each a write and a publication, all at once

    async def all_written() -> bool:
        stored = await redis_client.mget([book.key for book in books])
        return all(raw is not None and json.loads(raw) == dict(book) for raw, book in zip(stored, books, strict=True))

    await until(all_written, f'{BOOKS} dicts written')
    held = await connections(redis_client, store)
    assert 2 <= len(held) <= shared_storage.POOL_SIZE + 1, held  # the listener and at least one for commands
    assert sum(1 for c in held if int(c['sub']) > 0) == 1, held  # one subscribed connection ...
    assert await channels(redis_client, redis_prefix) == {book.channel.encode() for book in books}  # ... to all

    # a second dict of a key shares its channel; closing a dict unsubscribes once no dict of its key is open
    twin = (await opened(store, redis_prefix, ['user-0']))[0]
    await asyncio.gather(*(book.close() for book in books[: BOOKS // 2]))
    left = {book.channel.encode() for book in books[BOOKS // 2 :]} | {twin.channel.encode()}

    async def only_open_ones() -> bool:
        return await channels(redis_client, redis_prefix) == left

    await until(only_open_ones, 'closed dicts unsubscribed')
    await asyncio.gather(*(book.close() for book in [*books[BOOKS // 2 :], twin]))

    async def none() -> bool:
        return not await channels(redis_client, redis_prefix)

    await until(none, 'all unsubscribed')
    assert len(await connections(redis_client, store)) <= shared_storage.POOL_SIZE + 1


async def test_a_dict_that_is_dropped_without_being_closed_is_forgotten(instances, redis_client, redis_prefix) -> None:
    store = instances()
    book = (await opened(store, redis_prefix, [f'user-{uuid.uuid4()}']))[0]
    channel = book.channel
    assert store.channels() == {channel}
    del book  # NiceGUI's Storage.clear() drops its dicts so
    await asyncio.sleep(0.2)  # its write at loading is done
    gc.collect()  # a dict refers to itself (its change handler)
    assert store.channels() == set()
    await redis_client.publish(channel, '{"theme": "dark"}')  # heard once more: then unsubscribed

    async def unsubscribed() -> bool:
        return not await channels(redis_client, redis_prefix)

    await until(unsubscribed, 'the channel of a dropped dict unsubscribed')


async def test_changes_keep_arriving_after_redis_kills_the_connections(instances, redis_client, redis_prefix) -> None:
    here, there = instances(), instances()
    storage_id = f'user-{uuid.uuid4()}'
    mine = (await opened(here, redis_prefix, [storage_id]))[0]
    theirs = (await opened(there, redis_prefix, [storage_id]))[0]
    try:
        theirs['patient_id'] = 'PAT-1'

        async def arrived(book: SharedRedisDict, patient: str) -> bool:
            return book.get('patient_id') == patient

        await until(lambda: arrived(mine, 'PAT-1'), 'a change before the kill')
        killed = await connections(redis_client, here)
        assert any(int(c['sub']) > 0 for c in killed)
        for connection in killed:
            await redis_client.client_kill_filter(_id=connection['id'])
        theirs['patient_id'] = 'PAT-2'  # published while `here` has no subscription: read back once it has
        await until(lambda: arrived(mine, 'PAT-2'), 'the change made while the listener was away')
        assert here.reconnections >= 1
        theirs['patient_id'] = 'PAT-3'
        await until(lambda: arrived(mine, 'PAT-3'), 'a change after the reconnection')
        mine['patient_id'] = 'PAT-4'  # and this instance writes again
        await until(lambda: arrived(theirs, 'PAT-4'), "this instance's change after the kill")
        assert await channels(redis_client, redis_prefix) == {mine.channel.encode()}
        assert sum(1 for c in await connections(redis_client, here) if int(c['sub']) > 0) == 1
    finally:
        await mine.close()
        await theirs.close()


async def test_a_change_made_while_redis_was_away_is_written_when_it_is_back(
    instances, private_redis: PrivateRedis
) -> None:
    here, there = instances(private_redis.url), instances(private_redis.url)
    mine = (await opened(here, 'casebook-test:', ['user-1']))[0]
    theirs = (await opened(there, 'casebook-test:', ['user-1']))[0]
    check = redis.from_url(private_redis.url)
    try:
        private_redis.stop()
        mine['patient_id'] = 'PAT-5'  # its write fails

        async def failed() -> bool:
            return mine.unsaved

        await until(failed, 'the write failed')
        private_redis.start()  # empty: it kept nothing

        async def written() -> bool:
            try:
                raw = await check.get(mine.key)
            except (OSError, redis.RedisError):
                return False
            return raw is not None and json.loads(raw) == {'patient_id': 'PAT-5'}

        await until(written, 'the change written once Redis was back')

        async def arrived() -> bool:
            return theirs.get('patient_id') == 'PAT-5'

        await until(arrived, 'the change reached the other instance')

        async def saved() -> bool:  # set once the write's reply is back, which may come after the delivery
            return not mine.unsaved

        await until(saved, 'the write counted as done')
    finally:
        await check.aclose()
        await mine.close()
        await theirs.close()
