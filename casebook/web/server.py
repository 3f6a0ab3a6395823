"""Wires the web app: database start-up, headers, pages; `serve` runs it."""

from __future__ import annotations

import gc
import logging
import sys
from pathlib import Path

from nicegui import app, ui

from casebook.config import Settings
from casebook.db import Database, migrate_blocking
from casebook.live import LocalHub, RedisHub
from casebook.services.throttle import SharedThrottle
from casebook.web import auth, downloads, idle_tabs, lifecycle, oidc, operations, runtime
from casebook.web.headers import SecurityHeadersMiddleware
from casebook.web.pages import accounts, admin, workspace

SESSION_COOKIE_DAYS = 30
LIVE_CONNECTIONS = 4  # Redis connections of the live hub, login throttling and tickets (one instance)
log = logging.getLogger(__name__)


def guard_socket_events() -> None:
    """Only the socket that joined a page may send that page's events.

    NiceGUI routes a browser event (and a JavaScript answer) by the client id written in the message,
    whatever socket it came in on; a page's client id is a secret of that page, but a leaked or logged one
    would let any other connection click that clinician's buttons. The handshake puts each socket in a room
    named after its page's client id, so an event naming another client is dropped here.
    """
    from nicegui import nicegui as engine

    def joined(sid: str, client_id: object) -> bool:
        # the room's members directly (sio.rooms(sid) would walk every room: one per open tab)
        members = engine.sio.manager.rooms.get('/', {}).get(client_id) if isinstance(client_id, str) else None
        return members is not None and sid in members

    def guarded(original):
        def handler(sid: str, msg: object) -> None:
            if not isinstance(msg, dict) or not joined(sid, msg.get('client_id')):
                log.warning('dropped a socket message naming a page this socket did not join')
                return
            original(sid, msg)

        return handler

    engine.sio.on('event', guarded(engine._on_event))
    engine.sio.on('javascript_response', guarded(engine._on_javascript_response))


STYLESHEET = Path(__file__).parent / 'casebook.css'


def build(settings: Settings) -> None:
    """Register everything on NiceGUI's app; callable again in tests (pages are registered anew)."""
    settings.prepare_data_dir()
    migrate_blocking(settings.effective_database_url)  # before the first request can arrive
    database = Database.from_settings(settings)
    runtime.install(_shared_parts(settings, database))
    oidc.install(settings, runtime.current().tickets.redis)
    app.on_shutdown(database.dispose)
    operations.install(app, settings)  # /healthz, /readyz, /metrics: outside the session and storage middleware
    app.add_middleware(SecurityHeadersMiddleware, https=settings.https)
    guard_socket_events()
    idle_tabs.install()
    app.colors(primary='#1d4ed8')  # Quasar's default blue is below WCAG AA contrast with white text
    # Quasar's loading bar would show on every request the page makes, as a progress bar without a name
    # (axe: serious); a chat's requests are short, and the page says itself what it is waiting for
    app.config.quasar_config['loadingBar'] = {**app.config.quasar_config.get('loadingBar', {}), 'skipHijack': True}
    ui.add_css(STYLESHEET, shared=True)
    auth.register()
    accounts.register()
    downloads.register()
    workspace.register()
    admin.register()


def _shared_parts(settings: Settings, database: Database) -> runtime.Runtime:
    """One instance: everything in this process. With Redis: NiceGUI's storage (set up by `casebook serve`
    before NiceGUI is imported), live updates, login throttling and login tickets are shared through it."""
    if not settings.redis_url:
        return runtime.Runtime(settings=settings, database=database, hub=LocalHub(), tickets=auth.Tickets())
    from nicegui.storage import Storage

    if Storage.redis_url != settings.redis_url:
        raise RuntimeError('CASEBOOK_REDIS_URL is set but NiceGUI storage is not in Redis: start with `casebook serve`')
    from casebook.web import shared_storage

    shared_storage.install()  # before the first browser's storage is created
    import redis.asyncio as redis

    # at most LIVE_CONNECTIONS connections whatever the load (its listener holds one; a command waits for a free
    # one), named so that CLIENT LIST tells them from NiceGUI storage's (casebook-storage, shared_storage.py)
    pool = redis.BlockingConnectionPool.from_url(
        settings.redis_url,
        max_connections=LIVE_CONNECTIONS,
        timeout=5,
        socket_connect_timeout=2,
        socket_timeout=5,
        health_check_interval=10,
        client_name='casebook-live',
    )
    client = redis.Redis.from_pool(pool)  # closing the client closes the pool
    prefix = settings.redis_key_prefix
    hub = RedisHub(client, prefix=prefix)
    app.on_startup(hub.start)
    app.on_shutdown(hub.stop)
    app.on_shutdown(client.aclose)  # after the hub's workers have stopped using it
    return runtime.Runtime(
        settings=settings,
        database=database,
        hub=hub,
        tickets=auth.Tickets(client, prefix=prefix),
        throttle=SharedThrottle(client, prefix=prefix),
    )


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
    log.info('serving on http://%s:%s', host, port)
    # log_config=None: uvicorn keeps the logging `casebook serve` set up (casebook/logs.py) instead of its own.
    # Warnings and up only, and no access log: request paths name patients (/export/<patient id>/…), and uvicorn
    # logs each websocket at INFO with its URL, which holds the page's client id (a secret: guard_socket_events).
    with lifecycle.graceful_stop():  # SIGTERM/SIGINT: finish sends, write drafts, move the tabs, exit 0
        ui.run(
            host=host,
            port=port,
            uvicorn_logging_level='warning',
            log_config=None,
            access_log=False,
            **idle_tabs.uvicorn_options(),
            **run_options(settings),
        )
