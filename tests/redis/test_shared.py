"""What instances share through Redis, against a real Redis: live updates, login throttling, login tickets."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime

import pytest
import redis.asyncio as redis

from casebook import metrics
from casebook.live import ConversationEvent, RedisHub, Resync, SessionsEnded, conversation_topic, decode, encode
from casebook.services import throttle
from casebook.services.conversations import MessageInfo
from casebook.web.auth import TICKET_SECONDS, Ticket, Tickets
from support import REDIS_URL
from tests.redis.conftest import PrivateRedis

WITHIN = 5.0  # seconds a test waits for something that normally takes milliseconds


def message(text: str = 'BP 120/80 <b>ok</b> "quoted" é', *, conversation_id: int = 7, id_: int = 1) -> MessageInfo:
    return MessageInfo(
        id=id_,
        conversation_id=conversation_id,
        client_id='0b9d1c9e-8a3e-4c55-9a7f-3f8a4e2d1c00',
        author_name='Ada',
        sender_role='doctor',
        text=text,
        sent_at=datetime(2026, 12, 2, 9, 30, 15, 123456, tzinfo=UTC),
        amends_id=None,
    )


class Inbox:
    def __init__(self) -> None:
        self.events: list = []
        self.arrived = asyncio.Event()

    async def __call__(self, event) -> None:
        self.events.append(event)
        self.arrived.set()

    async def next(self, within: float = WITHIN):
        deadline = time.monotonic() + within
        while not self.events:
            self.arrived.clear()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError('no event arrived')
            try:
                await asyncio.wait_for(self.arrived.wait(), remaining)
            except TimeoutError:
                raise AssertionError(f'no event arrived within {within} s') from None
        return self.events.pop(0)


def received(result: str) -> float:
    """Live updates received from Redis so far by the hubs of this process, by what became of them."""
    return metrics.value('casebook_live_received_total', {'result': result})


async def started(url: str, prefix: str) -> RedisHub:
    """A hub as an instance has one, with a Redis client of its own (as `casebook serve` makes it)."""
    hub = RedisHub(redis.from_url(url, socket_connect_timeout=2, socket_timeout=5), prefix=prefix)
    await hub.start()
    await asyncio.wait_for(hub.connected.wait(), WITHIN)
    return hub


async def stopped(*hubs: RedisHub) -> None:
    for hub in hubs:
        await hub.stop()
        await hub.redis.aclose()


def test_events_survive_the_trip_through_json() -> None:
    for event in (
        ConversationEvent('message', 7, message(), clinician_id=3),
        ConversationEvent('marked', 7, MessageInfo(**{**message().__dict__, 'entered_in_error': True}), clinician_id=3),
        SessionsEnded(3, frozenset({'a', 'b'}), 'disabled'),
        SessionsEnded(3, None, 'password-changed'),
        Resync('clinician:3'),
    ):
        origin, back = decode(encode(event, 'me'))
        assert (origin, back) == ('me', event)


async def test_an_event_reaches_the_other_instance_once_and_this_one_once(redis_client, redis_prefix) -> None:
    first, second = await started(REDIS_URL, redis_prefix), await started(REDIS_URL, redis_prefix)
    try:
        here, there, elsewhere = Inbox(), Inbox(), Inbox()
        topic = conversation_topic(3, 7)
        first.subscribe(topic, here)
        second.subscribe(topic, there)
        second.subscribe(conversation_topic(3, 8), elsewhere)
        # Once Redis sends that clinician's events to the instance, its tabs read again what they show
        assert (await here.next(), await there.next(), await elsewhere.next()) == (Resync(topic),) * 2 + (
            Resync(conversation_topic(3, 8)),
        )
        event = ConversationEvent('message', 7, message(), clinician_id=3)
        started_at = time.monotonic()
        await first.publish(event)
        assert await there.next() == event
        assert time.monotonic() - started_at < 1.0
        assert await here.next() == event
        await asyncio.sleep(0.2)  # long enough for a duplicate from Redis to have arrived
        assert here.events == [] and there.events == [] and elsewhere.events == []
    finally:
        await stopped(first, second)


async def test_logoff_reaches_the_other_instance(redis_client, redis_prefix) -> None:
    first, second = await started(REDIS_URL, redis_prefix), await started(REDIS_URL, redis_prefix)
    try:
        inbox = Inbox()
        second.subscribe('clinician:3', inbox)
        assert await inbox.next() == Resync('clinician:3')
        ended = SessionsEnded(3, frozenset({'s1'}), 'manual')
        await first.publish(ended)
        assert await inbox.next() == ended
    finally:
        await stopped(first, second)


async def test_a_malformed_or_mislabelled_event_is_ignored(redis_client, redis_prefix) -> None:
    hub = await started(REDIS_URL, redis_prefix)
    try:
        inbox = Inbox()
        topic = conversation_topic(3, 7)
        hub.subscribe(topic, inbox)
        assert await inbox.next() == Resync(topic)
        ignored, delivered = received('ignored'), received('delivered')
        await redis_client.publish(hub.channel(topic), b'{"not": "an event"')
        mislabelled = encode(ConversationEvent('message', 7, message(), clinician_id=4), 'someone')
        await redis_client.publish(hub.channel(topic), mislabelled)  # clinician 4's event on 3's channel
        good = ConversationEvent('message', 7, message(id_=2), clinician_id=3)
        await redis_client.publish(hub.channel(topic), encode(good, 'someone'))
        assert await inbox.next() == good
        assert inbox.events == []
        assert (received('ignored') - ignored, received('delivered') - delivered) == (2, 1)
    finally:
        await stopped(hub)


async def test_redis_going_away_loses_nothing_and_live_updates_resume(private_redis: PrivateRedis) -> None:
    prefix = 'outage:'
    first, second = await started(private_redis.url, prefix), await started(private_redis.url, prefix)
    try:
        topic = conversation_topic(3, 7)
        here, there = Inbox(), Inbox()
        first.subscribe(topic, here)
        second.subscribe(topic, there)
        assert (await here.next(), await there.next()) == (Resync(topic), Resync(topic))

        private_redis.stop()
        during = ConversationEvent('message', 7, message('written while Redis was down'), clinician_id=3)
        await first.publish(during)  # returns at once: the sender never waits for Redis
        assert await here.next() == during  # the same instance still sees it
        await asyncio.sleep(0.5)
        assert there.events == []

        private_redis.start()
        # The other instance re-subscribes and is told to read again what it shows (the database has it) ...
        assert await there.next(within=15) == Resync(topic)
        # ... and live updates flow again.
        after = ConversationEvent('message', 7, message('after Redis came back', id_=3), clinician_id=3)
        await first.publish(after)
        seen = [await there.next(within=10)]
        while seen[-1] != after:
            seen.append(await there.next(within=10))
        assert all(event in (after, Resync(topic)) for event in seen)
        assert second.resyncs >= 1
    finally:
        await stopped(first, second)


async def test_throttle_counts_are_shared_between_instances(redis_client, redis_prefix) -> None:
    one = throttle.SharedThrottle(redis_client, prefix=redis_prefix)
    other = throttle.SharedThrottle(redis_client, prefix=redis_prefix)
    for _ in range(throttle.FREE_PER_ACCOUNT):
        assert await other.wait_seconds('ada', '10.0.0.1') == 0
        await one.failed('ada', '10.0.0.1')
    assert await other.wait_seconds('ada', '10.0.0.2') == 0  # the free attempts are free everywhere
    await one.failed('ada', '10.0.0.1')
    assert await other.wait_seconds('ada', '10.0.0.2') == pytest.approx(throttle.FIRST_DELAY, abs=0.5)
    await other.failed('ada', '10.0.0.2')
    assert await one.wait_seconds('ada', '10.0.0.3') == pytest.approx(throttle.FIRST_DELAY * 2, abs=0.5)
    key = f'{redis_prefix}throttle:account:ada'
    assert 0 < await redis_client.pttl(key) <= throttle.WINDOW * 1000  # forgotten by Redis itself
    await other.succeeded('ada')
    assert await one.wait_seconds('ada', '10.0.0.3') == 0


async def test_throttle_goes_on_in_process_without_redis(private_redis: PrivateRedis) -> None:
    client = redis.from_url(private_redis.url, socket_connect_timeout=1, socket_timeout=1)
    guard = throttle.SharedThrottle(client, prefix='t:')
    try:
        private_redis.stop()
        for _ in range(throttle.FREE_PER_ACCOUNT + 1):
            await guard.failed('ada', '10.0.0.1')
        assert await guard.wait_seconds('ada', '10.0.0.1') == pytest.approx(throttle.FIRST_DELAY, abs=0.5)
    finally:
        await client.aclose()


async def test_a_ticket_is_redeemed_once_on_any_instance(redis_client, redis_prefix) -> None:
    issuing, finishing = Tickets(redis_client, prefix=redis_prefix), Tickets(redis_client, prefix=redis_prefix)
    ticket = Ticket('t' * 43, 5, 'browser-1')
    key = await issuing.issue(ticket)
    assert 0 < await redis_client.ttl(f'{redis_prefix}ticket:{key}') <= TICKET_SECONDS
    assert await finishing.redeem(key) == ticket
    assert await finishing.redeem(key) is None
    assert await issuing.redeem(key) is None
    assert await finishing.redeem('') is None and await finishing.redeem('x' * 500) is None


async def test_tickets_work_in_process_while_redis_is_away(private_redis: PrivateRedis) -> None:
    client = redis.from_url(private_redis.url, socket_connect_timeout=1, socket_timeout=1)
    tickets = Tickets(client, prefix='t:')
    try:
        private_redis.stop()
        ticket = Ticket('t' * 43, 5, 'browser-1')
        key = await tickets.issue(ticket)
        assert await tickets.redeem(key) == ticket
        assert await tickets.redeem(key) is None
    finally:
        await client.aclose()
