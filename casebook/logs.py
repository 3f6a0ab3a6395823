"""Log output of `casebook serve`: readable text (default) or one JSON object per line (`CASEBOOK_LOG_FORMAT=json`).

Every record, Casebook's, uvicorn's and NiceGUI's alike, goes through one handler on the root logger, which adds
the instance and, where there is one, the id of the HTTP request or of the tab whose event is being handled.
What the app logs never holds message text, passwords, tokens or search words: it logs what happened and the
kind of error, not the data (tests/ops/test_logs.py checks both formats against a served instance).
"""

from __future__ import annotations

import asyncio
import contextvars
import hashlib
import json
import logging
import re
import sys
from datetime import UTC, datetime

# Set per HTTP request by casebook.web.operations; a proxy's X-Request-ID is taken over when it looks like one.
request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar('casebook_request_id', default=None)
REQUEST_ID_SHAPE = re.compile(r'^[A-Za-z0-9._-]{8,64}$')
TEXT_FORMAT = '%(asctime)s %(levelname)s %(name)s [%(instance)s%(context)s] %(message)s'


class ContextFilter(logging.Filter):
    """Adds `instance`, `request_id` and `tab_id` (None when there is none) to every record it passes."""

    def __init__(self, instance: str) -> None:
        super().__init__()
        self.instance = instance

    def filter(self, record: logging.LogRecord) -> bool:
        record.instance = self.instance
        record.request_id = request_id.get()
        record.tab_id = current_tab_id()
        record.context = ''.join(
            f' {name}={value}' for name, value in (('request', record.request_id), ('tab', record.tab_id)) if value
        )
        return True


def current_tab_id() -> str | None:
    """A short digest of the NiceGUI client (tab) whose event the current task handles; None outside of one.

    Read without NiceGUI's `context.client`, which creates state when there is none. The client id itself is a
    secret of its page (casebook/web/server.py, guard_socket_events), so only a digest of it is logged.
    """
    slot_module = sys.modules.get('nicegui.slot')
    if slot_module is None:
        return None
    try:
        task = asyncio.current_task()
    except RuntimeError:  # not in an event loop's thread
        return None
    stack = slot_module.Slot.stacks.get(id(task)) if task is not None else None
    if not stack:
        return None
    try:
        client_id = stack[-1].parent.client.id
    except Exception:  # an element or client being torn down: no id, but never a failed log call
        return None
    return hashlib.sha256(str(client_id).encode()).hexdigest()[:12]


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (ISO 8601 UTC), level, logger, message, instance, request_id/tab_id."""

    def format(self, record: logging.LogRecord) -> str:
        moment = datetime.fromtimestamp(record.created, UTC)
        entry = {
            'time': moment.isoformat(timespec='milliseconds').replace('+00:00', 'Z'),
            'level': record.levelname,
            'logger': record.name,
            'message': record.getMessage(),
            'instance': getattr(record, 'instance', None),
        }
        for field in ('request_id', 'tab_id'):
            if getattr(record, field, None):
                entry[field] = getattr(record, field)
        if record.exc_info:
            entry['exception'] = self.formatException(record.exc_info)
        if record.stack_info:
            entry['stack'] = self.formatStack(record.stack_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


def configure(fmt: str, *, instance: str, level: int = logging.INFO) -> logging.Handler:
    """Route every log record through one stderr handler in `fmt` ('text' or 'json'); returns the handler.

    Call before uvicorn starts, and start uvicorn with `log_config=None` so that it keeps this set-up (its own
    default would give its loggers handlers of their own, in its own format).
    """
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(ContextFilter(instance))
    handler.setFormatter(JsonFormatter() if fmt == 'json' else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    for name in ('uvicorn', 'uvicorn.error', 'uvicorn.access', 'nicegui'):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
    logging.getLogger('alembic.runtime.plugins').setLevel(logging.WARNING)  # a line per plugin at every start
    logging.captureWarnings(True)  # Python's warnings become records in the same format, not bare stderr lines
    return handler
