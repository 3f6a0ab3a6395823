"""Login throttling: per account and per client address, with a delay that doubles with each failure.

A few mistakes cost nothing; after that, each further failure doubles the wait before the next attempt
(up to a cap), so guessing a password online takes years while a clinician who mistyped waits seconds.
Addresses get more free attempts than accounts: a ward's computers often share one address. Failures are
forgotten after `WINDOW` without any, and an account's on a successful sign-in.

`LoginThrottle` counts in this process. `SharedThrottle` is what the login page uses: the same rules, also
counted in Redis when it is configured, so that several instances share the counts (an attacker gains
nothing by spreading guesses over instances). When Redis cannot be reached, the counts of this process
still apply: logins go on, throttled per instance.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)

WINDOW = 15 * 60.0  # seconds without a failure after which a key starts afresh
FREE_PER_ACCOUNT = 3
FREE_PER_ADDRESS = 10
FIRST_DELAY = 2.0  # seconds, after the free attempts; doubled by each further failure
MAX_DELAY = 15 * 60.0
MAX_KEYS = 100_000  # bounded memory under a flood of made-up usernames


@dataclass
class _Failures:
    count: int = 0
    last: float = 0.0
    blocked_until: float = 0.0


@dataclass
class LoginThrottle:
    clock: Callable[[], float] = time.monotonic
    _keys: dict[str, _Failures] = field(default_factory=dict)

    def wait_seconds(self, username: str, address: str) -> float:
        """How long this attempt must wait (0: go ahead); the longer of the account's and the address's."""
        now = self.clock()
        return max(self._remaining(_account(username), now), self._remaining(_address(address), now))

    def failed(self, username: str, address: str) -> None:
        now = self.clock()
        self._fail(_account(username), FREE_PER_ACCOUNT, now)
        self._fail(_address(address), FREE_PER_ADDRESS, now)

    def succeeded(self, username: str) -> None:
        self._keys.pop(_account(username), None)

    def _remaining(self, key: str, now: float) -> float:
        failures = self._keys.get(key)
        if failures is None:
            return 0.0
        if now - failures.last > WINDOW and now >= failures.blocked_until:
            del self._keys[key]
            return 0.0
        return max(0.0, failures.blocked_until - now)

    def _fail(self, key: str, free: int, now: float) -> None:
        failures = self._keys.get(key)
        if failures is None or (now - failures.last > WINDOW and now >= failures.blocked_until):
            if len(self._keys) >= MAX_KEYS:
                self._forget_oldest(now)
            failures = self._keys[key] = _Failures()
        failures.count += 1
        failures.last = now
        if failures.count > free:
            delay = min(MAX_DELAY, FIRST_DELAY * 2 ** (failures.count - free - 1))
            failures.blocked_until = now + delay

    def _forget_oldest(self, now: float) -> None:
        stale = [key for key, failures in self._keys.items() if now - failures.last > WINDOW]
        for key in stale or sorted(self._keys, key=lambda key: self._keys[key].last)[: len(self._keys) // 10]:
            del self._keys[key]


def _account(username: str) -> str:
    return 'account:' + (username or '').strip().lower()[:64]


def _address(address: str) -> str:
    return 'address:' + (address or '')[:64]


# One failure, atomically: count it, block when past the free attempts, forget the key after WINDOW without a
# failure (or when the block ends, if later). KEYS[1]: the key; ARGV: now, free, first delay, max delay, window.
_FAIL_SCRIPT = """
local count = redis.call('HINCRBY', KEYS[1], 'count', 1)
local now = tonumber(ARGV[1])
local free = tonumber(ARGV[2])
local blocked = tonumber(redis.call('HGET', KEYS[1], 'blocked_until') or '0')
if count > free then
  blocked = now + math.min(tonumber(ARGV[4]), tonumber(ARGV[3]) * 2 ^ (count - free - 1))
  redis.call('HSET', KEYS[1], 'blocked_until', tostring(blocked))
end
redis.call('PEXPIRE', KEYS[1], math.ceil(math.max(tonumber(ARGV[5]), blocked - now) * 1000))
return count
"""


class SharedThrottle:
    """The login page's throttle: this process's counts, and with Redis the counts of every instance."""

    def __init__(self, redis: Any = None, *, prefix: str = 'casebook:', wall_clock: Callable[[], float] = time.time):
        self.local = LoginThrottle()
        self._redis = redis  # a redis.asyncio client, or None
        self._prefix = f'{prefix}throttle:'
        self._now = wall_clock  # instances share wall-clock time, not monotonic time
        self._fail = redis.register_script(_FAIL_SCRIPT) if redis is not None else None

    async def wait_seconds(self, username: str, address: str) -> float:
        """With Redis, its shared counts decide; this process's own (always kept) only while Redis is away."""
        if self._redis is None:
            return self.local.wait_seconds(username, address)
        try:
            keys = [self._prefix + _account(username), self._prefix + _address(address)]
            async with self._redis.pipeline(transaction=False) as pipe:
                for key in keys:
                    pipe.hget(key, 'blocked_until')
                blocked = await pipe.execute()
        except Exception as error:
            log.warning('login throttle: Redis unavailable (%s), counting in this process only', type(error).__name__)
            return self.local.wait_seconds(username, address)
        now = self._now()
        return max([float(until) - now for until in blocked if until is not None] + [0.0])

    async def failed(self, username: str, address: str) -> None:
        self.local.failed(username, address)
        if self._fail is None:
            return
        now = self._now()
        try:
            for key, free in ((_account(username), FREE_PER_ACCOUNT), (_address(address), FREE_PER_ADDRESS)):
                await self._fail(keys=[self._prefix + key], args=[now, free, FIRST_DELAY, MAX_DELAY, WINDOW])
        except Exception as error:
            log.warning('login throttle: Redis unavailable (%s), counting in this process only', type(error).__name__)

    async def succeeded(self, username: str) -> None:
        self.local.succeeded(username)
        if self._redis is None:
            return
        try:
            await self._redis.delete(self._prefix + _account(username))
        except Exception as error:
            log.warning('login throttle: Redis unavailable (%s)', type(error).__name__)
