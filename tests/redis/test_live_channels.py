"""Live updates go only where they are needed: an instance subscribes to a clinician's channel while it holds a
subscriber of any of that clinician's topics, and only then receives their events (real Redis, hubs as
instances have them)."""

from __future__ import annotations

import asyncio
import os
import sys

import redis.asyncio as redis

from casebook.live import (
    ConversationEvent,
    Resync,
    SessionsEnded,
    channel,
    clinician_topic,
    conversation_topic,
    encode,
)
from support import REDIS_URL
from tests.redis.conftest import PrivateRedis
from tests.redis.test_shared import WITHIN, Inbox, message, received, started, stopped


def total_received() -> float:
    return sum(received(result) for result in ('delivered', 'own', 'ignored'))


async def channels(client: redis.Redis, prefix: str) -> set[str]:
    """The clinicians' live channels Redis has subscribers for, under this prefix."""
    names = await client.pubsub_channels(f'{prefix}live:clinician:*')
    return {name.decode() for name in names}


async def until(condition, within: float = WITHIN) -> None:
    deadline = asyncio.get_running_loop().time() + within
    while not await condition():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError('not within the time allowed')
        await asyncio.sleep(0.02)


async def test_an_instance_receives_only_the_clinicians_it_holds_a_tab_of(redis_client, redis_prefix) -> None:
    first, second = await started(REDIS_URL, redis_prefix), await started(REDIS_URL, redis_prefix)
    try:
        sessions, probe = Inbox(), Inbox()
        stop_sessions = second.subscribe(clinician_topic(3), sessions)
        second.subscribe(clinician_topic(5), probe)
        assert await sessions.next() == Resync(clinician_topic(3))
        assert await probe.next() == Resync(clinician_topic(5))
        assert await channels(redis_client, redis_prefix) == {channel(redis_prefix, f'clinician:{n}') for n in (3, 5)}

        before = total_received()
        elsewhere = ConversationEvent('message', 7, message(), clinician_id=4)  # nobody follows clinician 4
        await first.publish(elsewhere)
        ended = SessionsEnded(3, None, 'manual')
        await first.publish(ended)
        assert await sessions.next() == ended
        assert total_received() - before == 1  # clinician 4's event reached no instance at all

        stop_sessions()  # the last subscriber of clinician 3 here: the channel goes
        await until(lambda: _without(redis_client, redis_prefix, 3))
        before = total_received()
        await first.publish(SessionsEnded(3, None, 'manual'))
        await first.publish(ended_5 := SessionsEnded(5, None, 'manual'))  # published after it, on a channel kept
        assert await probe.next() == ended_5
        assert total_received() - before == 1  # the probe; clinician 3's event no longer comes here
        assert sessions.events == []
    finally:
        await stopped(first, second)


async def _without(client: redis.Redis, prefix: str, clinician_id: int) -> bool:
    return channel(prefix, clinician_topic(clinician_id)) not in await channels(client, prefix)


async def test_a_topic_is_resynced_once_redis_confirms_its_clinicians_channel(redis_client, redis_prefix) -> None:
    first, second = await started(REDIS_URL, redis_prefix), await started(REDIS_URL, redis_prefix)
    try:
        sessions, reading, later = Inbox(), Inbox(), Inbox()
        second.subscribe(clinician_topic(3), sessions)
        second.subscribe(conversation_topic(3, 7), reading)  # before the confirmation: both may have missed one
        assert await sessions.next() == Resync(clinician_topic(3))
        assert await reading.next() == Resync(conversation_topic(3, 7))

        second.subscribe(conversation_topic(3, 8), later)  # after it: the channel is there, nothing to read again
        event = ConversationEvent('message', 8, message(conversation_id=8), clinician_id=3)
        await first.publish(event)
        assert await later.next() == event
        await second.delivered()
        assert sessions.events == reading.events == later.events == []
    finally:
        await stopped(first, second)


async def test_after_its_connection_is_killed_an_instance_subscribes_again_and_resyncs(
    private_redis: PrivateRedis,
) -> None:
    prefix = 'killed:'
    hub = await started(private_redis.url, prefix)
    client = redis.from_url(private_redis.url)
    try:
        sessions, reading = Inbox(), Inbox()
        hub.subscribe(clinician_topic(3), sessions)
        hub.subscribe(conversation_topic(4, 7), reading)
        assert await sessions.next() == Resync(clinician_topic(3))
        assert await reading.next() == Resync(conversation_topic(4, 7))
        resyncs = hub.resyncs

        assert await client.client_kill_filter(_type='pubsub') == 1  # this Redis has no other subscriber
        assert await sessions.next(within=15) == Resync(clinician_topic(3))
        assert await reading.next(within=15) == Resync(conversation_topic(4, 7))
        assert hub.resyncs == resyncs + 1
        assert await channels(client, prefix) == {channel(prefix, f'clinician:{n}') for n in (3, 4)}

        ended = SessionsEnded(3, None, 'manual')
        await client.publish(hub.channel(ended.topic), encode(ended, 'another-instance'))
        assert await sessions.next() == ended
    finally:
        await client.aclose()
        await stopped(hub)


async def test_the_command_lines_reset_reaches_the_clinicians_tabs(redis_client, redis_prefix) -> None:
    hub = await started(REDIS_URL, redis_prefix)
    try:
        sessions = Inbox()
        hub.subscribe(clinician_topic(3), sessions)
        assert await sessions.next() == Resync(clinician_topic(3))
        # what `casebook user reset-two-step` does once the sessions have ended, in a process of its own
        told = await asyncio.create_subprocess_exec(
            sys.executable,
            '-c',
            'from casebook.cli import _tell_open_tabs; from casebook.config import Settings; '
            '_tell_open_tabs(Settings(), 3)',
            env={**os.environ, 'CASEBOOK_REDIS_URL': REDIS_URL, 'CASEBOOK_REDIS_KEY_PREFIX': redis_prefix},
            stdout=asyncio.subprocess.PIPE,
        )
        out, _ = await asyncio.wait_for(told.communicate(), 60)
        assert b'their open tabs were told' in out
        assert await sessions.next() == SessionsEnded(3, None, 'two-step-reset')
    finally:
        await stopped(hub)
