"""casebook_live_delivery_seconds across instances: the publishing instance stamps the event, the receiving one
measures from that stamp (real Redis, two hubs as two instances have them)."""

from __future__ import annotations

import asyncio
import json
import time

from casebook import metrics
from casebook.live import ConversationEvent, Resync, conversation_topic, decode_stamped, encode
from support import REDIS_URL
from tests.redis.test_shared import Inbox, message, started, stopped

DELAY = 0.25  # seconds the receiving tab takes to handle the event


def test_an_event_carries_when_it_was_published() -> None:
    event = ConversationEvent('message', 7, message(), clinician_id=3)
    assert decode_stamped(encode(event, 'me', 1_700_000_000.5)) == ('me', event, 1_700_000_000.5)
    assert decode_stamped(encode(event, 'me'))[2] is None  # from an instance that does not stamp yet
    assert 'at' not in json.loads(encode(event, 'me'))


async def test_delivery_on_another_instance_is_measured_from_the_publication(redis_client, redis_prefix) -> None:
    first, second = await started(REDIS_URL, redis_prefix), await started(REDIS_URL, redis_prefix)
    try:
        inbox = Inbox()

        async def slow_tab(event) -> None:
            await asyncio.sleep(DELAY)
            await inbox(event)

        topic = conversation_topic(3, 7)
        second.subscribe(topic, slow_tab)  # the only subscriber: on the other instance
        assert await inbox.next() == Resync(topic)  # Redis confirmed the subscription
        count = metrics.value('casebook_live_delivery_seconds_count')
        total = metrics.value('casebook_live_delivery_seconds_sum')
        published = time.monotonic()
        await first.publish(ConversationEvent('message', 7, message(), clinician_id=3))
        await inbox.next()
        await asyncio.sleep(0.05)  # the measurement is taken just after the subscriber returns
        elapsed = time.monotonic() - published
        assert metrics.value('casebook_live_delivery_seconds_count') == count + 1
        measured = metrics.value('casebook_live_delivery_seconds_sum') - total
        assert DELAY <= measured <= elapsed + 0.01  # publication → the tab on the other instance has handled it
    finally:
        await stopped(first, second)


async def test_the_stamp_of_the_publishing_instance_is_what_counts(redis_client, redis_prefix) -> None:
    hub = await started(REDIS_URL, redis_prefix)
    try:
        inbox = Inbox()
        topic = conversation_topic(3, 7)
        hub.subscribe(topic, inbox)
        assert await inbox.next() == Resync(topic)
        count = metrics.value('casebook_live_delivery_seconds_count')
        total = metrics.value('casebook_live_delivery_seconds_sum')
        sent = time.monotonic()
        stamped = encode(
            ConversationEvent('message', 7, message(), clinician_id=3), 'another-instance', time.time() - 1.0
        )
        await redis_client.publish(hub.channel(topic), stamped)  # published 1 s ago, elsewhere
        await inbox.next()
        await asyncio.sleep(0.05)
        assert metrics.value('casebook_live_delivery_seconds_count') == count + 1
        measured = metrics.value('casebook_live_delivery_seconds_sum') - total
        assert 1.0 <= measured <= 1.0 + (time.monotonic() - sent)
    finally:
        await stopped(hub)
