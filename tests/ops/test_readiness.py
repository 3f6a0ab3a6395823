"""/readyz of a served Casebook whose Redis (one of the test's own) goes away and comes back."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest

from tests.redis.conftest import PrivateRedis

READY_WITHIN = 15.0  # seconds: the instance's Redis client reconnects by itself on its next command


def _wait_for(served, status: int, seconds: float = READY_WITHIN) -> dict:
    deadline = time.monotonic() + seconds
    while True:
        got, body = served.ready()
        if got == status:
            return body
        if time.monotonic() > deadline:
            raise AssertionError(f'/readyz stayed {got} {body} instead of {status}:\n{served.output()[-3000:]}')
        time.sleep(0.1)


def test_readyz_turns_503_naming_redis_while_it_is_gone_and_200_when_it_is_back(served, tmp_path: Path) -> None:
    if shutil.which('redis-server') is None and not Path('/usr/bin/redis-server').exists():
        pytest.fail('redis-server not found: this test needs a Redis server of its own to stop', pytrace=False)
    redis = PrivateRedis(tmp_path)
    redis.start()
    try:
        instance = served({'CASEBOOK_REDIS_URL': redis.url})
        assert _wait_for(instance, 200) == {'status': 'ready'}

        redis.stop()
        started = time.monotonic()
        body = _wait_for(instance, 503)
        assert body == {'status': 'unavailable', 'failed': {'redis': 'unreachable'}}
        assert time.monotonic() - started < 5  # the first probe after the outage already says so
        assert str(redis.port) not in str(body)  # no URLs

        redis.start()  # the same port again
        assert _wait_for(instance, 200) == {'status': 'ready'}
    finally:
        redis.stop()
