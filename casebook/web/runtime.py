"""What the pages share in one process: settings, database, live hub, throttle and login tickets; set once by
`server.build` (with Redis behind the hub, throttle and tickets when `CASEBOOK_REDIS_URL` is set)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING

from casebook.config import Settings
from casebook.db import Database
from casebook.live import LocalHub
from casebook.services.sessions import Limits
from casebook.services.throttle import SharedThrottle

if TYPE_CHECKING:
    from casebook.web.auth import Tickets


@dataclass
class Runtime:
    settings: Settings
    database: Database
    hub: LocalHub
    tickets: Tickets
    throttle: SharedThrottle = field(default_factory=SharedThrottle)
    installed: bool = False  # the first account exists (never undone: accounts are disabled, not deleted)

    @property
    def session_max_age(self) -> timedelta:
        return timedelta(hours=self.settings.session_max_hours)

    @property
    def idle_timeout(self) -> timedelta:
        return timedelta(minutes=self.settings.idle_timeout_minutes)

    @property
    def limits(self) -> Limits:
        return Limits(self.session_max_age, self.idle_timeout)


_current: Runtime | None = None


def install(runtime: Runtime) -> None:
    global _current
    _current = runtime


def current() -> Runtime:
    if _current is None:
        raise RuntimeError('casebook.web.server.build() has not run')
    return _current
