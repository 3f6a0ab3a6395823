"""Login throttling: per account and per client address, with a delay that doubles with each failure.

A few mistakes cost nothing; after that, each further failure doubles the wait before the next attempt
(up to a cap), so guessing a password online takes years while a clinician who mistyped waits seconds.
Addresses get more free attempts than accounts: a ward's computers often share one address. Failures are
forgotten after `WINDOW` without any, and an account's on a successful sign-in. Counts live in this
process (one instance); scale-out shares them through Redis.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

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
