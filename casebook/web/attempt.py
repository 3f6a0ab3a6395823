"""The shape of every handler that changes something: the work (one unit of work in a database thread, or a few
in a row), and the clinician told in words when it could not be done: never a 500, never a silent wait."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Final, TypeVar

from sqlalchemy.exc import SQLAlchemyError

from casebook.services.errors import CasebookError

T = TypeVar('T')
UNREACHABLE = 'The database could not be reached. Nothing was changed; please try again.'
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
    except (SQLAlchemyError, OSError) as error:
        log.warning('%s not done: the database could not be reached (%s)', what, type(error).__name__)
        tell(unreachable)
    return NOT_DONE
