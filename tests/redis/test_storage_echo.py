"""A browser's notebook in Redis (NiceGUI storage) keeps what was changed while its previous change was
on its way round through Redis, and instances do not bounce each other's changes back (real Redis)."""

from __future__ import annotations

import asyncio
import json
import time
import uuid

import pytest
import redis.asyncio as redis
from nicegui import app
from nicegui.persistence import RedisPersistentDict
from nicegui.storage import Storage

from casebook.web import shared_storage
from casebook.web.shared_storage import SharedRedisDict
from support import REDIS_URL

WITHIN = 5.0


async def until(condition, what: str) -> None:
    deadline = time.monotonic() + WITHIN
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f'not within {WITHIN} s: {what}')
        await asyncio.sleep(0.01)


async def stored(client: redis.Redis, book: SharedRedisDict) -> dict:
    raw = await client.get(book.key)
    return json.loads(raw) if raw else {}


async def settle(client: redis.Redis, book: SharedRedisDict) -> None:
    """Until what `book` holds is in Redis, then a little longer for messages still under way."""
    deadline = time.monotonic() + WITHIN
    while await stored(client, book) != dict(book):
        if time.monotonic() > deadline:
            pytest.fail(f'Redis never caught up: {await stored(client, book)} vs {dict(book)}')
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.3)


async def test_a_change_made_while_the_last_one_echoes_back_is_kept(
    nicegui_loop, instances, redis_client, redis_prefix
) -> None:
    book = SharedRedisDict(store=instances(), id=f'user-{uuid.uuid4()}', key_prefix=redis_prefix)
    await book.initialize()
    try:
        book['session'] = 'token'
        book['timezone'] = 'Europe/London'
        await settle(redis_client, book)
        echo = book.origin + json.dumps({'session': 'token', 'timezone': 'Europe/London'})
        # The clinician opens a patient, and before this change is written the listener is handed this
        # dict's own earlier publication (under load its delivery lags behind): it must not take the patient
        # away again, here nor, with the next write, in Redis. Handed over directly: the order is the point.
        book['patient_id'] = 'PAT-1'
        book.apply(echo.encode())
        await settle(redis_client, book)
        assert book.get('patient_id') == 'PAT-1'
        assert (await stored(redis_client, book)).get('patient_id') == 'PAT-1'
    finally:
        await book.close()


async def test_another_instances_changes_arrive_and_are_not_sent_back(
    nicegui_loop, instances, redis_client, redis_prefix
) -> None:
    storage_id = f'user-{uuid.uuid4()}'
    here = SharedRedisDict(store=instances(), id=storage_id, key_prefix=redis_prefix)
    there = SharedRedisDict(store=instances(), id=storage_id, key_prefix=redis_prefix)
    heard: list[bytes] = []
    listener = redis_client.pubsub()
    await listener.subscribe(here.key + 'changes')

    async def listen() -> None:
        async for message in listener.listen():
            if message['type'] == 'message':
                heard.append(message['data'])

    listening = asyncio.create_task(listen())
    await here.initialize()
    await there.initialize()
    try:
        here['patient_id'] = 'PAT-2'
        here['drafts'] = {'PAT-2': 'half a note'}
        await until(lambda: there.get('drafts') == {'PAT-2': 'half a note'}, 'the change reached the other instance')
        del here['drafts']
        await until(lambda: 'drafts' not in there, 'the deletion reached the other instance')
        await asyncio.sleep(0.3)
        assert dict(there) == {'patient_id': 'PAT-2'}
        # the change and, waited for apart from it, the deletion (the two assignments may leave as one write);
        # without them all() below would prove nothing
        assert len(heard) >= 2, f'the changes were not heard on the channel: {heard}'
        assert all(message.decode()[: shared_storage.ORIGIN_LENGTH] == here.origin for message in heard), (
            f'the other instance published what it was told: {heard}'
        )
        # and the other way round, NiceGUI's own untagged format included
        await redis_client.publish(here.key + 'changes', json.dumps({'patient_id': 'PAT-3'}))
        await until(lambda: here.get('patient_id') == 'PAT-3', 'an untagged change was applied')
        await until(lambda: there.get('patient_id') == 'PAT-3', 'an untagged change was applied')
    finally:
        listening.cancel()
        await listener.aclose()
        await here.close()
        await there.close()


async def test_an_unreadable_message_is_ignored_and_listening_goes_on(
    nicegui_loop, instances, redis_client, redis_prefix
) -> None:
    book = SharedRedisDict(store=instances(), id=f'user-{uuid.uuid4()}', key_prefix=redis_prefix)
    await book.initialize()  # subscribed when it returns
    try:
        await redis_client.publish(book.key + 'changes', 'x' * 32 + '{not json')
        await redis_client.publish(book.key + 'changes', 'y' * 32 + json.dumps({'theme': 'dark'}))
        await until(lambda: book.get('theme') == 'dark', 'the listener survived the unreadable message')
    finally:
        await book.close()


async def test_nicegui_creates_user_storage_through_the_installed_factory(
    nicegui_loop, monkeypatch, redis_client, redis_prefix
) -> None:
    """`install` replaces a private NiceGUI hook: this fails if NiceGUI stops creating storage through it."""
    monkeypatch.setattr(Storage, 'redis_url', REDIS_URL)
    monkeypatch.setattr(Storage, 'redis_key_prefix', redis_prefix)
    monkeypatch.setattr(Storage, '_create_persistent_dict', Storage._create_persistent_dict)  # restored afterwards
    monkeypatch.setattr(shared_storage, '_shared', None)  # this test's own connections
    monkeypatch.setattr(app, '_shutdown_handlers', list(app._shutdown_handlers))
    shared_storage.install()
    session_id = str(uuid.uuid4())
    await redis_client.set(f'{redis_prefix}user-{session_id}', json.dumps({'patient_id': 'PAT-4'}))
    await app.storage._create_user_storage(session_id)
    book = app.storage._users.pop(session_id)
    try:
        assert isinstance(book, SharedRedisDict)
        assert dict(book) == {'patient_id': 'PAT-4'}
        assert book.store is shared_storage.shared()
    finally:
        await book.close()
        await shared_storage.shared().close()


async def test_install_replaces_the_general_storage_nicegui_made_at_import(
    nicegui_loop, monkeypatch, redis_client, redis_prefix
) -> None:
    """NiceGUI creates and loads its general storage when imported, before `install`: it would keep a client and a
    subscription of its own. `install` puts one on the shared connections in its place, holding what was loaded."""
    monkeypatch.setattr(Storage, 'redis_url', REDIS_URL)
    monkeypatch.setattr(Storage, 'redis_key_prefix', redis_prefix)
    monkeypatch.setattr(Storage, '_create_persistent_dict', Storage._create_persistent_dict)
    monkeypatch.setattr(shared_storage, '_shared', None)
    monkeypatch.setattr(app, '_shutdown_handlers', list(app._shutdown_handlers))
    monkeypatch.setattr(app, '_startup_handlers', list(app._startup_handlers))
    await redis_client.set(f'{redis_prefix}general', json.dumps({'notice': 'maintenance at 6'}))
    original = RedisPersistentDict(url=REDIS_URL, id='general', key_prefix=redis_prefix)
    await original.initialize()
    monkeypatch.setattr(app.storage, '_general', original)
    shared_storage.install()
    general = app.storage.general
    try:
        assert isinstance(general, SharedRedisDict)
        assert general.store is shared_storage.shared()
        assert dict(general) == {'notice': 'maintenance at 6'}
        assert original.close in app._startup_handlers  # NiceGUI's is closed when the app starts
        await general.store.follow(general)  # (at start-up)
        await redis_client.publish(general.channel, json.dumps({'notice': 'none'}))
        await until(lambda: general.get('notice') == 'none', 'a change to the general storage arrived')
    finally:
        await original.close()
        await general.close()
        await shared_storage.shared().close()
