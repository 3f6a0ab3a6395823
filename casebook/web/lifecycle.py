"""Graceful stop of `casebook serve` on SIGTERM or SIGINT (Ctrl-C): nothing acknowledged lost, no draft lost, exit 0.

Left to themselves (uvicorn 0.54 under NiceGUI 3.18), a SIGTERM closes the listening socket and every websocket
(close code 1012) at once, so a send whose commit was under way could no longer be acknowledged; NiceGUI's shutdown
then cancels the event handlers still running, and closes its Redis storage connections before it cancels the
writes still pending (a draft not yet written by then would be lost); and uvicorn finally raises the signal again
under the default handler, so the process died of it (exit status 143). Here, once the server runs, SIGTERM and
SIGINT start `_stop` instead:

1. stop listening (behind nginx, new page loads and reconnecting sockets go to the other instances);
2. refuse new sends (the tab is told; its text stays in the box and in its draft) and wait for those in flight,
   so each is committed and acknowledged, or clearly not acknowledged;
3. wait until those acknowledgements have left for the browsers;
4. write every pending draft, and wait until NiceGUI's storage (files or Redis) has it;
5. hand over to uvicorn's own shutdown: it closes every websocket with 1012, which makes each tab reconnect (behind
   nginx to another instance, where the page reloads, as after a failover), then NiceGUI's shutdown handlers run
   and the database is disposed;
6. exit 0 straight away, without tearing the interpreter down (with hundreds of tabs that alone took seconds).

The whole stop is bounded: a watchdog ends the process with status 0 HARD_DEADLINE seconds after the signal,
logging what was still under way (a database that does not answer must not keep a stopping process alive).
An abandoned send was not acknowledged; its text and send id stay in the tab's draft, so sending it again
(on another instance) stores it once, whether or not the abandoned commit landed.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

from nicegui import Client, app, background_tasks, core, ui

from casebook.web import runtime

log = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
HARD_DEADLINE = 9.5  # seconds from the signal to the forced exit; orchestrators commonly SIGKILL at 10
SENDS_WITHIN = 5.0  # seconds for sends in flight (SQLite waits up to 5 s for its write lock)
ACKS_WITHIN = 1.0  # for their acknowledgements to leave
DRAFTS_WITHIN = 1.5  # for drafts to reach the storage files or Redis
CLOSE_WITHIN = 1.5  # for uvicorn to close the connections (its timeout_graceful_shutdown)
RESTARTING = 'Not saved: the server is restarting. Your text is still in the box; send it again in a moment.'

T = TypeVar('T')


@dataclass
class _State:
    signal_name: str = ''
    started: float | None = None  # time.monotonic() of the signal
    serving: bool = False  # the signals are ours (NiceGUI has started)
    in_flight: int = 0
    waited: int = 0  # sends in flight when the stop began
    abandoned: int = 0  # … and still running when their time was up
    refused: int = 0  # sends that arrived after the stop began
    tabs: int = 0  # connected tabs told to reconnect


_state = _State()
_on_stop: list[Callable[[], Any]] = []
_task: asyncio.Task | None = None
_sends_done: asyncio.Event | None = None  # set when the last send in flight finishes, once a stop waits for it


def stopping() -> bool:
    """The process is stopping (a readiness check can say so)."""
    return _state.started is not None


def on_stop(handler: Callable[[], Any]) -> None:
    """Call `handler` (e.g. write pending drafts) once the sends in flight are done, before the tabs are told."""
    if handler not in _on_stop:  # the app is built again in tests
        _on_stop.append(handler)


def finish_before_stop(post: Callable[..., Awaitable[T | None]]) -> Callable[..., Awaitable[T | None]]:
    """For the send path: a stop waits for the call to finish; after the stop began, it is refused (returns None)."""

    @functools.wraps(post)
    async def tracked(*args: Any, **kwargs: Any) -> T | None:
        if stopping():
            _state.refused += 1
            ui.notify(RESTARTING, type='warning', multi_line=True)
            return None
        _state.in_flight += 1
        try:
            return await post(*args, **kwargs)
        finally:
            _state.in_flight -= 1
            if not _state.in_flight and _sends_done is not None:
                _sends_done.set()

    return tracked


@contextlib.contextmanager
def graceful_stop() -> Iterator[None]:
    """Around `ui.run`: SIGTERM/SIGINT stop the server as above, and the process exits 0."""
    originals = {sig: signal.signal(sig, _outside_serving) for sig in STOP_SIGNALS}
    app.on_startup(_take_signals)
    app.on_shutdown(_last_drafts_written)  # after the workspace's draft flush: drafts written as the tabs disconnect
    try:
        yield
    finally:
        for sig, handler in originals.items():
            signal.signal(sig, handler)
        if stopping():
            failure = sys.exc_info()[1]
            if failure is not None and not isinstance(failure, SystemExit):
                log.error('the stop ran into an error', exc_info=failure)  # still exits 0: what could be done, was
            _log_end('stopped')
            # Everything is written and closed; tearing the interpreter down would free the open tabs' objects one
            # by one: 4-6 s with 300 tabs on a busy machine, where the watchdog can no longer run.
            _exit_now()


def _outside_serving(signum: int, _frame: object) -> None:
    """Before NiceGUI starts there is nothing to drain: exit at once. After uvicorn has finished it raises a signal it
    caught once more (with its handlers gone, this one runs): the stop is done by then, nothing to do."""
    if not _state.serving:
        raise SystemExit(0)


def _take_signals() -> None:
    """NiceGUI has started, under uvicorn (`ui.run`): its signal handlers are replaced by ours."""
    from nicegui.server import Server

    server = Server.instance
    server.config.timeout_graceful_shutdown = CLOSE_WITHIN
    loop = asyncio.get_running_loop()
    _state.serving = True

    def handler(signum: int, _frame: object) -> None:
        loop.call_soon_threadsafe(_begin, server, signum)

    for sig in STOP_SIGNALS:
        signal.signal(sig, handler)


def _begin(server: Any, signum: int) -> None:
    global _task
    if stopping():
        return  # a second Ctrl-C: the stop is under way and bounded
    _state.started = time.monotonic()
    _state.signal_name = signal.Signals(signum).name
    watchdog = threading.Timer(HARD_DEADLINE, _give_up)
    watchdog.daemon = True
    watchdog.start()
    _task = asyncio.get_running_loop().create_task(_stop(server), name='graceful stop')


async def _stop(server: Any) -> None:
    _state.tabs = _connected_tabs()
    log.info(
        'stopping on %s: no new connections; %d tabs open, %d sends in flight',
        _state.signal_name,
        _state.tabs,
        _state.in_flight,
    )
    try:
        for listener in getattr(server, 'servers', []):  # none yet if the signal came during start-up
            listener.close()
        await _sends_finished()
        await _acks_sent()
        for handler in _on_stop:
            try:
                handler()  # synchronous: nothing comes between the last draft and the tabs being told
            except Exception:
                log.exception('stopping: %s failed', getattr(handler, '__name__', handler))
        await _storage_written(DRAFTS_WITHIN)
        _state.tabs = _connected_tabs()
    finally:
        server.should_exit = True  # uvicorn's shutdown: websockets closed with 1012, NiceGUI's handlers, the database


async def _sends_finished() -> None:
    global _sends_done
    _state.waited = _state.in_flight
    _sends_done = asyncio.Event()
    if _state.in_flight:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(_sends_done.wait(), SENDS_WITHIN)
    _state.abandoned = _state.in_flight
    if _state.abandoned:  # the database is stuck or slow: what has not started yet will not start
        runtime.current().database.cancel_queued()


async def _acks_sent() -> None:
    """Until what the finished sends showed has been handed to the sockets (NiceGUI's outboxes, then engine.io's
    queues): uvicorn closes a websocket without waiting for either."""
    deadline = time.monotonic() + ACKS_WITHIN
    while _unsent() and time.monotonic() < deadline:  # noqa: ASYNC110 (neither offers an event to wait for)
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.05)  # the last packets taken from the queues are on their way into the transports


def _unsent() -> int:
    clients = [c for c in list(Client.instances.values()) if c.has_socket_connection]
    waiting = sum(1 for c in clients if c.outbox.updates or c.outbox.messages)
    return waiting + sum(s.queue.qsize() for s in list(core.sio.eio.sockets.values()))


async def _storage_written(within: float) -> None:
    """Until NiceGUI's pending storage writes are done: they run as its 'lazy' tasks (one per storage file or Redis
    key), and at shutdown it closes its Redis connections first and then cancels whatever is still running."""
    deadline = time.monotonic() + within
    while pending := [task for task in background_tasks.lazy_tasks_running.values() if not task.done()]:
        left = deadline - time.monotonic()
        if left <= 0:
            log.warning('stopping: %d storage writes not finished', len(pending))
            return
        await asyncio.wait(pending, timeout=left)
        await asyncio.sleep(0)  # a write queued behind a finished one starts from its done callback


async def _last_drafts_written() -> None:
    await _storage_written(DRAFTS_WITHIN)  # (NiceGUI passes the app to a shutdown handler that takes an argument)


def _connected_tabs() -> int:
    return sum(1 for client in list(Client.instances.values()) if client.has_socket_connection)


def _log_end(outcome: str) -> None:
    seconds = time.monotonic() - (_state.started or time.monotonic())
    log.info(
        '%s in %.2f s: %d tabs told to reconnect; %d sends waited for (%d abandoned), %d refused',
        outcome,
        seconds,
        _state.tabs,
        _state.waited,
        _state.abandoned,
        _state.refused,
    )


def _give_up() -> None:
    """In the watchdog's thread: the stop overran its deadline (a database that does not answer, a stuck thread)."""
    busy = Counter(thread.name.rstrip('_0123456789') for thread in threading.enumerate() if not thread.daemon)
    busy.pop(threading.main_thread().name, None)
    still = ', '.join(f'{count} {name}' for name, count in sorted(busy.items())) or 'nothing named'
    _log_end(f'exit forced (threads still busy: {still})')
    _exit_now()


def _exit_now() -> None:
    """Exit 0 at once, with what was logged written out. A database unit of work still under way in its thread (one
    given up on: its tab was not told it is saved) ends with the process; its transaction is rolled back."""
    logging.shutdown()
    if logging.lastResort is not None:
        logging.lastResort.flush()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
