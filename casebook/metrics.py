"""Prometheus metrics of this process, in the default registry (with prometheus_client's process and GC metrics).

Only counts and durations: no label or value ever holds a username, patient ID or message text. The objects
are created once per process: importing this module again (NiceGUI's test fixtures drop and re-import the
app's modules between tests) finds the collectors already registered and uses those.
"""

from __future__ import annotations

import time

from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4

SIGN_IN_RESULTS = ('ok', 'failed', 'throttled')
# what became of a live update that came in from Redis: handed to subscribers here; published by this instance
# (already delivered here); nobody here follows its topic, or it was malformed or on another topic's channel
LIVE_RECEIVED_RESULTS = ('delivered', 'own', 'ignored')
# seconds; a send's budget is 15 ms to the screen and 150 ms (p99) to the ack under load
FAST_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4  # the classic text format, read by every Prometheus (names are plain)
disable_created_metrics()  # no `_created` twin of every counter and histogram: Prometheus does not need them


def _registered(kind: type, name: str, documentation: str, **options):
    """The collector `name` of this process: created and registered once, found again afterwards."""
    try:
        return kind(name, documentation, **options)
    except ValueError:  # already registered, by an earlier import of this module
        collectors = REGISTRY._names_to_collectors  # no public lookup by name in prometheus_client
        return collectors.get(name) or collectors[f'{name}_total']


MESSAGES_WRITTEN = _registered(Counter, 'casebook_messages_written', 'Messages (and corrections) committed.')
SEND_SECONDS = _registered(
    Histogram, 'casebook_send_seconds', 'From a send event arriving to its commit.', buckets=FAST_BUCKETS
)
OPEN_TABS = _registered(Gauge, 'casebook_open_tabs', 'Tabs (pages) connected to this process by websocket.')
SIGNED_IN_SESSIONS = _registered(
    Gauge, 'casebook_signed_in_sessions', 'Live sign-in sessions of all instances (from the database at scrape).'
)
SIGN_INS = _registered(Counter, 'casebook_sign_ins', 'Sign-in attempts by result.', labelnames=('result',))
DB_ERRORS = _registered(Counter, 'casebook_db_errors', 'Units of work and sessions that failed with a database error.')
LOOP_LAG = _registered(
    Histogram,
    'casebook_event_loop_lag_seconds',
    'How much later than asked a periodic sleep on the event loop woke up.',
    buckets=FAST_BUCKETS,
)
LIVE_DELIVERY = _registered(
    Histogram,
    'casebook_live_delivery_seconds',
    'From publishing a live update to a subscribing tab having handled it (across instances through Redis).',
    buckets=FAST_BUCKETS,
)
LIVE_RECEIVED = _registered(
    Counter,
    'casebook_live_received',
    'Live updates this instance received from Redis, by what became of them (delivered, own, ignored).',
    labelnames=('result',),
)
for _result in SIGN_IN_RESULTS:
    SIGN_INS.labels(_result)  # each result is exported from the start, as 0
for _result in LIVE_RECEIVED_RESULTS:
    LIVE_RECEIVED.labels(_result)


def sign_in(result: str) -> None:
    """Count one sign-in attempt: 'ok', 'failed' (wrong name, password or code) or 'throttled'."""
    if result not in SIGN_IN_RESULTS:
        raise ValueError(f'sign-in result must be one of {SIGN_IN_RESULTS}')
    SIGN_INS.labels(result).inc()


def message_written(started: float) -> None:
    """A message was committed; `started` is the `time.perf_counter()` when its event arrived."""
    SEND_SECONDS.observe(time.perf_counter() - started)
    MESSAGES_WRITTEN.inc()


def db_error() -> None:
    DB_ERRORS.inc()


def loop_lag(seconds: float) -> None:
    LOOP_LAG.observe(max(seconds, 0.0))


def live_delivered(published_at: float) -> None:
    """A live update reached a subscriber; `published_at` is the `time.time()` of its publication (wall clock,
    so that it means the same on another instance; a clock behind the publisher's counts as 0)."""
    LIVE_DELIVERY.observe(max(time.time() - published_at, 0.0))


def live_received(result: str) -> None:
    """A live update came in from Redis: 'delivered' to subscribers here, 'own' (published here) or 'ignored'."""
    if result not in LIVE_RECEIVED_RESULTS:
        raise ValueError(f'live update result must be one of {LIVE_RECEIVED_RESULTS}')
    LIVE_RECEIVED.labels(result).inc()


def set_open_tabs(count: int) -> None:
    OPEN_TABS.set(count)


def set_signed_in_sessions(count: float) -> None:
    SIGNED_IN_SESSIONS.set(count)


def exposition(registry: CollectorRegistry = REGISTRY) -> bytes:
    """The registry in Prometheus' text format."""
    return generate_latest(registry)


def value(name: str, labels: dict[str, str] | None = None) -> float:
    """A sample's current value (0 when absent)."""
    return REGISTRY.get_sample_value(name, labels) or 0.0
