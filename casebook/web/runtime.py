"""What the pages share in one process: the settings and the database, set once by `server.build`."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from casebook.config import Settings
from casebook.db import Database
from casebook.live import LocalHub


@dataclass
class Runtime:
    settings: Settings
    database: Database
    hub: LocalHub

    @property
    def session_max_age(self) -> timedelta:
        return timedelta(hours=self.settings.session_max_hours)


_current: Runtime | None = None


def install(runtime: Runtime) -> None:
    global _current
    _current = runtime


def current() -> Runtime:
    if _current is None:
        raise RuntimeError('casebook.web.server.build() has not run')
    return _current
