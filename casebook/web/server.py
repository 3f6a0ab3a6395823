"""Wires the web app: database start-up, headers, pages; `serve` runs it."""

from __future__ import annotations

import gc
import sys

from nicegui import app, ui

from casebook.config import Settings
from casebook.db import Database, migrate_blocking
from casebook.live import LocalHub
from casebook.web import auth, downloads, runtime
from casebook.web.headers import SecurityHeadersMiddleware
from casebook.web.pages import accounts, admin, workspace

SESSION_COOKIE_DAYS = 30


def build(settings: Settings) -> None:
    """Register everything on NiceGUI's app; callable again in tests (pages are registered anew)."""
    settings.prepare_data_dir()
    migrate_blocking(settings.effective_database_url)  # before the first request can arrive
    database = Database(settings.effective_database_url)
    runtime.install(runtime.Runtime(settings=settings, database=database, hub=LocalHub()))
    app.on_shutdown(database.dispose)
    app.add_middleware(SecurityHeadersMiddleware, https=settings.https)
    app.colors(primary='#1d4ed8')  # Quasar's default blue is below WCAG AA contrast with white text
    auth.register()
    accounts.register()
    downloads.register()
    workspace.register()
    admin.register()


def run_options(settings: Settings) -> dict:
    return {
        'title': 'Casebook',
        'language': 'en-US',
        'storage_secret': settings.secret,
        'session_middleware_kwargs': {
            'same_site': 'lax',
            'https_only': settings.https,
            'max_age': SESSION_COOKIE_DAYS * 24 * 3600,
        },
        'reload': False,
        'show': False,
        'show_welcome_message': False,
        'favicon': '🩺',
    }


def tune_garbage_collector() -> None:
    """Full collections of the oldest generation 100x less often, and start-up's objects frozen out of them.

    Every open tab keeps its page's elements in Python; with hundreds of tabs a full collection walks
    close to a million objects and pauses the event loop for ~0.5 s every few seconds, which was the
    whole p99 of a send under load (bench/load.py: p99 208 ms -> 25 ms at 100 clients).
    """
    gc.collect()
    gc.freeze()
    first, second, _ = gc.get_threshold()
    gc.set_threshold(first, second, 1000)


def tune_thread_switching() -> None:
    """Hand the interpreter to a waiting thread after 1 ms instead of 5 ms.

    The database threads run Python (SQLAlchemy) beside the event loop; when both want the interpreter,
    the loop could wait up to the switch interval for each turn. bench/load.py at 500 clients: p99 send→ack
    136 and 113 ms with the default, 78 ms with 1 ms, at the same CPU.
    """
    sys.setswitchinterval(0.001)


def serve(settings: Settings, *, host: str, port: int) -> None:
    build(settings)
    tune_garbage_collector()
    tune_thread_switching()
    ui.run(host=host, port=port, uvicorn_logging_level='warning', **run_options(settings))
