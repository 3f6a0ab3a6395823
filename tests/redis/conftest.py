"""Real Redis for the tests of what instances share: the local server, or one started here to be stopped.

- `redis_url` + `redis_prefix`: the machine's Redis (127.0.0.1:6379) with a key prefix of this test's own;
  its keys are deleted afterwards.
- `private_redis`: a `redis-server` of this test's own on a free port, which the test may stop and start
  again (Redis "going away for a moment") without touching anyone else's.
- `instances`: `instances(url)` is one more instance's NiceGUI storage connections (shared_storage.RedisStorage),
  named for this test (CLIENT LIST); NiceGUI's storage writes run on the test's loop (`nicegui_loop`).
"""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import redis.asyncio as redis
from nicegui import core

from casebook.web.shared_storage import RedisStorage
from support import REDIS_URL, free_port


@pytest.fixture
def redis_prefix() -> str:
    return f'casebook-test-{uuid.uuid4().hex[:12]}:'


@pytest.fixture
async def redis_client(redis_prefix: str) -> AsyncIterator[redis.Redis]:
    client = redis.from_url(REDIS_URL)
    try:
        await client.ping()
    except (OSError, redis.RedisError) as error:
        pytest.fail(f'REDIS IS NOT REACHABLE at {REDIS_URL} ({error}): start it, see README', pytrace=False)
    yield client
    keys = [key async for key in client.scan_iter(match=f'{redis_prefix}*')]
    if keys:
        await client.delete(*keys)
    await client.aclose()


@pytest.fixture
async def nicegui_loop(monkeypatch):
    """NiceGUI schedules storage writes on its own loop: here, the test's."""
    monkeypatch.setattr(core, 'loop', asyncio.get_running_loop())


@pytest.fixture
async def instances(nicegui_loop):
    """`instances(url)`: one instance's storage connections more, under a name of this test's own; closed afterwards."""
    made: list[RedisStorage] = []

    def make(url: str = REDIS_URL) -> RedisStorage:
        made.append(RedisStorage(url, name=f'casebook-test-{uuid.uuid4().hex[:12]}'))
        return made[-1]

    yield make
    for store in made:
        await store.close()


class PrivateRedis:
    """A redis-server that keeps nothing on disk, on 127.0.0.1 and a port of its own."""

    def __init__(self, directory: Path) -> None:
        self.port = free_port()
        self.url = f'redis://127.0.0.1:{self.port}/0'
        self.directory = directory
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        binary = shutil.which('redis-server') or '/usr/bin/redis-server'
        command = [binary, '--port', str(self.port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no']
        self.process = subprocess.Popen(
            command, cwd=self.directory, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with socket.socket() as sock:
                if sock.connect_ex(('127.0.0.1', self.port)) == 0:
                    return
            time.sleep(0.02)
        self.stop()
        pytest.fail(f'redis-server did not start on port {self.port}', pytrace=False)

    def stop(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait(timeout=10)
            self.process = None


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    if shutil.which('redis-server') is None and not Path('/usr/bin/redis-server').exists():
        pytest.fail('redis-server not found: the outage tests need their own Redis server', pytrace=False)
    server = PrivateRedis(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()
