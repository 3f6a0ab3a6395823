"""What an open tab costs the server while nothing happens in it (issue 17: lighter tabs).

An idle tab should cost nothing but its memory. Measured (bench/load.py, 500 idle tabs, py-spy), most of what
it did cost came from two timers of NiceGUI's, both per tab:

- its outbox loop woke every second (`asyncio.wait_for` with a 1 s timeout, a task created and cancelled each
  time) to look for updates that are signalled to it anyway: ~44 % of the busy samples;
- engine.io pinged every 4 s (NiceGUI derives the interval from its 3 s reconnect timeout), beside uvicorn's
  own websocket ping every 20 s: ~35 % of them.

`install()` makes the outbox wait for its signal alone, and pings every `PING_INTERVAL` seconds at one level
(engine.io's, which NiceGUI and the browser act on). A connection that died without closing (a laptop
closed, a network gone) is noticed within `PING_INTERVAL + PING_TIMEOUT` seconds, by either end.
"""

from __future__ import annotations

import asyncio
import hashlib
import inspect

import nicegui
from nicegui import core
from nicegui.dependencies import JsComponent
from nicegui.outbox import Deleted, Outbox, deleted

PING_INTERVAL = 20.0  # seconds between engine.io pings: socket.io's own default is 25 (deploy/nginx.conf relies on it)
PING_TIMEOUT = 20.0  # seconds a ping may wait for its answer; engine.io also walks its sockets once in this time

# NiceGUI's Outbox.loop that `_quiet_loop` repeats but for the wait. Another version's loop may differ: then
# nothing is replaced (and tests/web/test_idle_tabs.py says so), until the copy below is checked against it.
REPLACED_LOOP = {'3.18.0': 'efb7d8934c322314ea07ef57f5558569fca7194e93c755c7bc7c8d36dca16d1a'}


def loop_fingerprint() -> str:
    return hashlib.sha256(inspect.getsource(_original_loop).encode()).hexdigest()


_original_loop = Outbox.loop


def install() -> bool:
    """Quiet outboxes (for the NiceGUI version checked) and the keep-alive intervals; True when the outbox is
    replaced. Before any client is created; `keepalive` runs at start-up, after NiceGUI has set its own."""
    if keepalive not in core.app._startup_handlers:  # build() runs again in tests
        core.app.on_startup(keepalive)
    if Outbox.loop is _quiet_loop:
        return True
    if REPLACED_LOOP.get(nicegui.__version__) != loop_fingerprint():
        return False
    Outbox.loop = _quiet_loop  # type: ignore[method-assign]
    return True


def uvicorn_options() -> dict:
    """No websocket-level ping from uvicorn: engine.io's pings (`keepalive`) already find dead connections."""
    return {'ws_ping_interval': None, 'ws_ping_timeout': None}


def keepalive() -> None:
    core.sio.eio.ping_interval = PING_INTERVAL
    core.sio.eio.ping_timeout = PING_TIMEOUT


async def _quiet_loop(self: Outbox) -> None:
    """NiceGUI 3.18.0's `Outbox.loop`, but waiting for its event without a timeout.

    Every enqueue sets the event, and so does `Outbox.stop` (to end the loop), so the 1 s timeout only ever
    woke an idle tab to find nothing to do.
    """
    self._enqueue_event = asyncio.Event()
    self._enqueue_event.set()

    while not self._should_stop:
        try:
            if not self._enqueue_event.is_set():
                await self._enqueue_event.wait()
                continue  # `_should_stop` may have been set meanwhile

            client = self.client
            if not client or not client.has_socket_connection:
                await asyncio.sleep(0.1)
                continue

            self._enqueue_event.clear()

            coros = []
            if self.updates:
                data = {
                    element_id: None if element is deleted else element._to_dict()  # type: ignore[union-attr]
                    for element_id, element in self.updates.items()
                }
                js_components = [
                    component
                    for element in self.updates.values()
                    if not isinstance(element, Deleted)
                    and isinstance((component := element.component), JsComponent)
                    and component.name not in self._loaded_components
                ]
                if js_components:
                    coros.append(
                        self._emit(
                            (
                                client.id,
                                'load_js_components',
                                {'components': [{'key': c.key, 'tag': c.tag} for c in js_components]},
                            )
                        )
                    )
                    self._loaded_components.update(c.name for c in js_components)
                coros.append(self._emit((client.id, 'update', data)))
                self.updates.clear()

            if self.messages:
                for message in self.messages:
                    coros.append(self._emit(message))
                self.messages.clear()

            for coro in coros:
                try:
                    await coro
                except Exception as e:  # as in NiceGUI: one failed emit does not end the loop
                    core.app.handle_exception(e)
        except asyncio.CancelledError:
            break
        except Exception as e:
            core.app.handle_exception(e)
            await asyncio.sleep(0.1)
