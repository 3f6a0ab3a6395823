"""The shape of every handler that changes something: the work (one unit of work in a database thread, or a few
in a row), and the clinician told in words when it could not be done: never a 500, never a silent wait."""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Final, TypeVar

from nicegui import ui

from casebook.db import DATABASE_ERRORS
from casebook.services import audit
from casebook.services.errors import CasebookError
from casebook.web import runtime

T = TypeVar('T')
UNREACHABLE = 'The database could not be reached. Nothing was changed; please try again.'
PAGE_UNREACHABLE = (
    'Casebook cannot reach its database just now, so this page cannot be shown. Nothing written before is lost. '
    'Please try again in a moment.'
)
log = logging.getLogger(__name__)


class NotDone:
    """What `attempt` returns when the work was refused or the database could not do it (the user was told)."""

    def __repr__(self) -> str:
        return 'NOT_DONE'


NOT_DONE: Final = NotDone()


async def attempt(
    work: Callable[[], Awaitable[T]], tell: Callable[[str], object], *, what: str, unreachable: str = UNREACHABLE
) -> T | NotDone:
    """`await work()`; on a refusal (bad input, a rule) `tell` its message, when the database failed `tell`
    `unreachable` and log `what` was not done (never the data itself). Then NOT_DONE."""
    try:
        return await work()
    except CasebookError as refusal:
        tell(refusal.message)
    except DATABASE_ERRORS as error:
        log.warning('%s not done: the database could not be reached (%s)', what, type(error).__name__)
        tell(unreachable)
    return NOT_DONE


async def record(entry: audit.Entry) -> bool:
    """One audit row on its own, as a unit of work; False (and logged) when the database could not take it."""
    try:
        await runtime.current().database.run(lambda session: audit.record_now_sync(session, entry))
    except DATABASE_ERRORS as error:
        log.warning(
            'audit row %s not written: the database could not be reached (%s)', entry.action, type(error).__name__
        )
        return False
    return True


def database_page(build: Callable[..., Awaitable[T]]) -> Callable[..., Awaitable[T | None]]:
    """A page that asks the database before it shows anything: when the database cannot be reached, the page says
    so, with a way to try again, instead of NiceGUI's 500."""

    @functools.wraps(build)
    async def page(*args: Any, **kwargs: Any) -> T | None:
        try:
            return await build(*args, **kwargs)
        except DATABASE_ERRORS as error:
            client = ui.context.client
            log.warning(
                'page %s not shown: the database could not be reached (%s)', client.page.path, type(error).__name__
            )
            client.content.clear()  # whatever was built before the failure
            with client.content, ui.column().classes('w-full items-center p-8 gap-4'):
                ui.label('Casebook').props('role=heading aria-level=1').classes('text-2xl font-semibold')
                ui.label(PAGE_UNREACHABLE).props('role=alert').classes('max-w-md text-center')
                ui.link('Try again', client.page.path)
            return None

    return page
