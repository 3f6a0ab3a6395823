"""Short-lived values taken once (login tickets, single sign-on state): in Redis when configured, so that any instance
can take what another one put; in this process otherwise, and whenever Redis cannot be reached."""

from __future__ import annotations

import json
import logging
import time
from typing import Any

log = logging.getLogger(__name__)
KEY_MAX = 128


class OneTimeStore:
    """JSON-able dicts by key, each kept `seconds` at most and gone once taken."""

    def __init__(self, redis: Any = None, *, prefix: str, what: str) -> None:
        self.redis = redis
        self._prefix = prefix
        self._what = what  # for the log: 'login ticket', 'single sign-on state'
        self._local: dict[str, tuple[dict, float]] = {}

    async def put(self, key: str, value: dict, seconds: int) -> None:
        if self.redis is not None:
            try:
                await self.redis.set(self._prefix + key, json.dumps(value), ex=seconds)
                return
            except Exception as error:
                log.warning('%s kept in this process: Redis unavailable (%s)', self._what, type(error).__name__)
        now = time.monotonic()
        for stale in [k for k, (_, expires) in self._local.items() if expires < now]:
            del self._local[stale]
        self._local[key] = (value, now + seconds)

    async def take(self, key: str) -> dict | None:
        """The value, once: it is gone afterwards. None when unknown, taken or expired."""
        if not key or len(key) > KEY_MAX:
            return None
        local = self._local.pop(key, None)
        if local is not None:
            return local[0] if local[1] >= time.monotonic() else None
        if self.redis is None:
            return None
        try:
            stored = await self.redis.getdel(self._prefix + key)
        except Exception as error:
            log.warning('%s not read: Redis unavailable (%s)', self._what, type(error).__name__)
            return None
        return json.loads(stored) if stored is not None else None
