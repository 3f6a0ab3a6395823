"""What operators and their tools talk to: GET /healthz, /readyz and /metrics, and request ids for the logs.

The three endpoints are answered by an ASGI layer outside all of NiceGUI's middleware (`install`), so a probe or
a scrape every second gets no session cookie, creates no per-browser storage (in Redis: a connection each), is
not audited and is not logged. /readyz bounds each check by CHECK_TIMEOUT, so a hung dependency is a 503, not a
hanging probe.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import math
import time
import uuid
from collections.abc import Awaitable, Callable

from fastapi import FastAPI
from nicegui import app
from nicegui.client import Client
from sqlalchemy import text
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from casebook import logs, metrics
from casebook.config import Settings
from casebook.db import Database, head_revision
from casebook.live import RedisHub
from casebook.services import sessions
from casebook.web import runtime

log = logging.getLogger(__name__)

CHECK_TIMEOUT = 2.0  # seconds per readiness check, and for the database count behind a scrape
LAG_INTERVAL = 0.5  # seconds between two measurements of the event loop's lag
MIN_TOKEN_LENGTH = 16  # a guessable token would expose what the metrics say about the clinic's activity
HEADERS = {'cache-control': 'no-store', 'x-content-type-options': 'nosniff'}


# ----- health -------------------------------------------------------------------------------------------


async def healthz(_scope: Scope) -> Response:
    """The process serves: its event loop answers."""
    return JSONResponse({'status': 'ok'}, headers=HEADERS)


async def readyz(_scope: Scope) -> Response:
    """Ready for traffic: database answering and at the newest migration, Redis answering (when configured)."""
    failed = await readiness(runtime.current())
    _log_change(failed)
    if failed:
        return JSONResponse({'status': 'unavailable', 'failed': failed}, status_code=503, headers=HEADERS)
    return JSONResponse({'status': 'ready'}, headers=HEADERS)


async def readiness(rt: runtime.Runtime) -> dict[str, str]:
    """What is not ready, by part ('database', 'migrations', 'redis') with a one-word reason; empty when ready."""
    checks: list[Awaitable[dict[str, str]]] = [_check_database(rt.database)]
    if isinstance(rt.hub, RedisHub):
        checks.append(_check_redis(rt.hub.redis))
    failed: dict[str, str] = {}
    for result in await asyncio.gather(*checks):
        failed.update(result)
    return failed


async def _check_database(database: Database) -> dict[str, str]:
    try:
        version = await asyncio.wait_for(_schema_version(database), CHECK_TIMEOUT)
    except TimeoutError:
        return {'database': 'timeout'}
    except Exception:  # refused, unknown database, authentication…: the reason is for the server's own logs
        return {'database': 'unreachable'}
    if version is None:
        return {'migrations': 'missing'}
    return {} if version == head_revision() else {'migrations': 'not at head'}


async def _schema_version(database: Database) -> str | None:
    """Alembic's recorded revision; None when the database answers but has no (single) revision recorded."""
    async with database.session() as session:
        await session.execute(text('SELECT 1'))  # raises when the database does not answer
        try:
            versions = (await session.execute(text('SELECT version_num FROM alembic_version'))).scalars().all()
        except Exception:  # no alembic_version table: never migrated
            return None
    return versions[0] if len(versions) == 1 else None


async def _check_redis(client) -> dict[str, str]:
    try:
        await asyncio.wait_for(client.ping(), CHECK_TIMEOUT)
    except TimeoutError:
        return {'redis': 'timeout'}
    except Exception:
        return {'redis': 'unreachable'}
    return {}


_last_failed: dict[str, str] = {}


def _log_change(failed: dict[str, str]) -> None:
    """Log when readiness changes, not on every probe."""
    global _last_failed
    if failed != _last_failed:
        if failed:
            log.warning('not ready: %s', ', '.join(f'{part} {reason}' for part, reason in sorted(failed.items())))
        else:
            log.info('ready')
        _last_failed = failed


# ----- metrics -------------------------------------------------------------------------------------------


async def metrics_endpoint(scope: Scope) -> Response:
    """Prometheus' text format, only with `Authorization: Bearer <CASEBOOK_METRICS_TOKEN>`; 404 when not set."""
    token = runtime.current().settings.metrics_token
    if token is None:
        return PlainTextResponse('Not Found', status_code=404, headers=HEADERS)
    if not _bearer_matches(scope, token.get_secret_value()):
        headers = {**HEADERS, 'www-authenticate': 'Bearer'}
        return PlainTextResponse('Unauthorized', status_code=401, headers=headers)
    await _refresh_gauges(runtime.current())
    return Response(metrics.exposition(), media_type=metrics.CONTENT_TYPE, headers=HEADERS)


def _bearer_matches(scope: Scope, token: str) -> bool:
    given = b''
    for name, value in scope.get('headers', []):
        if name == b'authorization':
            given = value
    scheme, _, credentials = given.partition(b' ')
    # compare_digest takes as long whatever the first differing character: the token cannot be guessed piecewise
    return scheme.lower() == b'bearer' and hmac.compare_digest(credentials.strip(), token.encode())


async def _refresh_gauges(rt: runtime.Runtime) -> None:
    """The gauges read at scrape time: this process's connected tabs, and the live sessions in the database."""
    metrics.set_open_tabs(sum(1 for client in list(Client.instances.values()) if client.has_socket_connection))
    limits = rt.limits
    try:
        count = await asyncio.wait_for(
            rt.database.run(lambda session: sessions.count_live_sync(session, limits=limits)), CHECK_TIMEOUT
        )
    except Exception:  # the database is away: say "unknown" rather than repeat an old figure
        count = math.nan
    metrics.set_signed_in_sessions(count)


# ----- the layer outside NiceGUI ---------------------------------------------------------------------------

ENDPOINTS: dict[str, Callable[[Scope], Awaitable[Response]]] = {
    '/healthz': healthz,
    '/readyz': readyz,
    '/metrics': metrics_endpoint,
}


class OperationsLayer:
    """Answers ENDPOINTS itself; passes everything else on, with a request id set for the logs."""

    def __init__(self, inner: ASGIApp) -> None:
        self.inner = inner

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope['type'] != 'http':
            await self.inner(scope, receive, send)
            return
        reset = logs.request_id.set(_request_id(scope))
        try:
            endpoint = ENDPOINTS.get(scope['path'])
            if endpoint is None:
                await self.inner(scope, receive, send)
            elif scope['method'] != 'GET':
                await PlainTextResponse('Method Not Allowed', 405, headers={**HEADERS, 'allow': 'GET'})(
                    scope, receive, send
                )
            else:
                await (await endpoint(scope))(scope, receive, send)
        finally:
            logs.request_id.reset(reset)


def _request_id(scope: Scope) -> str:
    """The proxy's X-Request-ID (deploy/nginx.conf sends nginx's $request_id) when well-formed, else a new one."""
    for name, value in scope.get('headers', []):
        if name == b'x-request-id':
            given = value.decode('latin-1')
            if logs.REQUEST_ID_SHAPE.match(given):
                return given
    return uuid.uuid4().hex[:16]


class LoopLagProbe:
    """Sleeps LAG_INTERVAL again and again; how much later than that it wakes is the event loop's lag."""

    def __init__(self) -> None:
        self.task: asyncio.Task | None = None

    async def start(self) -> None:
        self.task = asyncio.create_task(self._measure(), name='casebook-loop-lag')

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            self.task = None

    @staticmethod
    async def _measure() -> None:
        while True:
            before = time.perf_counter()
            await asyncio.sleep(LAG_INTERVAL)
            metrics.loop_lag(time.perf_counter() - before - LAG_INTERVAL)


def install(fastapi_app: FastAPI, settings: Settings) -> None:
    """Put OperationsLayer outside every middleware of the app, and start the lag probe with the app.

    NiceGUI adds its session and storage middleware in `ui.run`, after anything added here, and Starlette puts
    the last added outermost; so the layer wraps the stack Starlette builds instead of being one of its entries.
    """
    token = settings.metrics_token
    if token is not None and len(token.get_secret_value()) < MIN_TOKEN_LENGTH:
        raise ValueError(f'CASEBOOK_METRICS_TOKEN must be at least {MIN_TOKEN_LENGTH} characters')
    build_stack = type(fastapi_app).build_middleware_stack
    fastapi_app.build_middleware_stack = lambda: OperationsLayer(build_stack(fastapi_app))  # type: ignore[method-assign]
    probe = LoopLagProbe()
    app.on_startup(probe.start)
    app.on_shutdown(probe.stop)
