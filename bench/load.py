"""Load generator: N signed-in websocket clients speaking NiceGUI's socket.io protocol to one `casebook serve`.

Each client is what a browser tab is to the server: it loads the workspace page over its own HTTP connection
(uvicorn closes a websocket that reuses the page load's keep-alive connection about 5 s later, so every
request here is on a fresh connection), reads its client id and element ids from the page, opens
`/_nicegui_ws/socket.io` as a websocket (engine.io v4 framing, implicit handshake as the page does), answers
pings and `run_javascript` requests, acknowledges messages every 3 s like nicegui.js, opens its patient with
the `Patient ID` input and `Open patient` button events, then every 5 s sets the composer's value
(`update:value`) and clicks `Send`. Send → ack is the time from emitting the click until the server's
`update` frame holding the new message's text reaches that client.

Signing in (`--sign-in`):
- `preset` (default): accounts and server-side sessions are created ahead of time with the services (one
  argon2 hash for all), and each client gets a session cookie signed with the server's storage secret whose
  `app.storage.user` file holds that session's token — exactly what a real login leaves behind. The login
  form is not what is measured, and 1,000 real logins would cost ~1,000 argon2 verifications (64 MiB each).
- `form`: each client loads /login, sends the `Username`/`Password` value events and clicks `Log in` over the
  socket, follows the server's navigation to `/`. Slower (argon2 on every login); used by the smoke run.

    .venv/bin/python bench/load.py --clients 100 250 500 1000 --duration 60
    .venv/bin/python bench/load.py --clients 10 --duration 10 --sign-in form     # smoke

The run stops by itself: ramp-up (bounded), `--duration` seconds of sends, a bounded drain, then the server.
"""

from __future__ import annotations

import argparse
import ast
import asyncio
import json
import random
import re
import resource
import secrets
import shutil
import sys
import time
import uuid
from base64 import b64encode
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

if __package__ in (None, ''):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aiohttp

from bench.common import (
    PASSWORD,
    RESULTS,
    casebook_server,
    load_average,
    log,
    machine,
    proc_cpu_seconds,
    proc_status,
    profile_summary,
    start_profile,
    summary,
    work_dir,
    write_result,
)

SEND_INTERVAL = 5.0
ACK_TIMEOUT = 30.0
CONNECT_TIMEOUT = 60.0
RAMP_CONCURRENCY = 8
QUERY_RE = re.compile(r'query: (\{.*?\}),\n')
ELEMENTS_RE = re.compile(r'parseElements\(String\.raw`(.*?)`\)', re.S)
UNESCAPE = [('&#36;', '$'), ('&#96;', '`'), ('&gt;', '>'), ('&lt;', '<'), ('&amp;', '&')]


# ----- accounts and sessions made ahead of time ---------------------------------------------------------------


@dataclass
class Account:
    index: int
    username: str
    cookie: str | None = None  # a signed session cookie whose storage holds a live session (preset sign-in)


async def _prepare(
    data_dir: Path,
    count: int,
    secret: str,
    preset: bool,
    *,
    database_url: str | None = None,
    write_storage: Callable[[str, dict], Awaitable[None]] | None = None,
    role: str = 'doctor',
) -> list[Account]:
    """`count` clinicians of `role` (and with `preset` a live session each, with the browser storage a login
    leaves): in the data dir's SQLite and storage files, or in `database_url` with `write_storage(id, storage)`."""
    import itsdangerous

    from casebook.config import Settings
    from casebook.db import Database
    from casebook.models import Clinician
    from casebook.services import accounts, sessions
    from casebook.web import notebook

    settings = Settings(data_dir=data_dir, storage_secret=secret, database_url=database_url)
    settings.prepare_data_dir()
    database = Database(settings.effective_database_url)
    await database.migrate()
    password_hash = await accounts.hash_password(PASSWORD)  # one argon2 hash for all: they share the password
    result = []
    try:
        async with database.session() as session:
            await accounts.add_clinician(
                session, username='load-admin', display_name='Load Admin', password=PASSWORD, role='admin'
            )
            clinicians = [
                Clinician(
                    username=f'load-{i:04d}',
                    display_name=f'Dr Load {i}',
                    role=role,
                    password_hash=password_hash,
                    disabled=False,
                )
                for i in range(count)
            ]
            session.add_all(clinicians)
            await session.commit()
            signer = itsdangerous.TimestampSigner(secret)
            for index, clinician in enumerate(clinicians):
                account = Account(index, clinician.username)
                if preset:
                    token = await sessions.start(
                        session, clinician_id=clinician.id, user_agent='bench/load.py', address='127.0.0.1'
                    )
                    storage_id = str(uuid.uuid4())
                    storage = {notebook.SESSION: token, notebook.CLINICIAN: clinician.id}
                    if write_storage is not None:
                        await write_storage(storage_id, storage)
                    else:
                        path = settings.storage_path / f'storage-user-{storage_id}.json'
                        path.write_text(json.dumps(storage), encoding='utf-8')
                    payload = b64encode(json.dumps({'id': storage_id}).encode('utf-8'))
                    account.cookie = signer.sign(payload).decode('utf-8')
                result.append(account)
    finally:
        await database.dispose()
    return result


# ----- one client ---------------------------------------------------------------------------------------------


class Refused(Exception):
    """The server did not do what a browser would have seen it do."""


@dataclass
class Page:
    client_id: str
    next_message_id: int
    elements: dict[str, dict]

    @classmethod
    def parse(cls, html: str) -> Page:
        query_match, elements_match = QUERY_RE.search(html), ELEMENTS_RE.search(html)
        if not query_match or not elements_match:
            raise Refused('not a NiceGUI page')
        query = ast.literal_eval(query_match.group(1))  # a Python dict literal in the template
        raw = elements_match.group(1)
        for escaped, plain in UNESCAPE:
            raw = raw.replace(escaped, plain)
        return cls(query['client_id'], int(query['next_message_id']), json.loads(raw))

    def input(self, label: str) -> tuple[int, str]:
        """The element id and the `update:value` listener id of the input with this label."""
        for element_id, element in self.elements.items():
            if element.get('props', {}).get('label') == label:
                return int(element_id), _listener(element, 'update:value')
        raise Refused(f'no input labelled {label!r}')

    def button(self, text: str) -> tuple[int, str]:
        for element_id, element in self.elements.items():
            if element.get('tag') == 'q-btn' and text in (element.get('text'), element.get('props', {}).get('label')):
                return int(element_id), _listener(element, 'click')
        raise Refused(f'no button {text!r}')


def _listener(element: dict, event_type: str) -> str:
    for event in element.get('events', []):
        if event['type'] == event_type:
            return event['listener_id']
    raise Refused(f'no {event_type} listener')


@dataclass
class Stats:
    latencies_ms: list[float] = field(default_factory=list)
    timeline: list[tuple[float, float]] = field(default_factory=list)  # (when the click was sent, latency)
    errors: dict[str, int] = field(default_factory=dict)
    error_examples: list[str] = field(default_factory=list)
    sent: int = 0

    def error(self, kind: str, detail: str = '') -> None:
        self.errors[kind] = self.errors.get(kind, 0) + 1
        if len(self.error_examples) < 20:
            self.error_examples.append(f'{kind}: {detail}'[:300])


def tab_session(connect_timeout: float | None = None) -> aiohttp.ClientSession:
    """HTTP for simulated tabs: a new connection for every request (see the module's docstring) and no shared
    cookie jar (each Client sends its own cookies); `connect_timeout` also lifts aiohttp's 5-minute total limit."""
    connector = aiohttp.TCPConnector(limit=0, force_close=True)
    if connect_timeout is None:
        return aiohttp.ClientSession(connector=connector, cookie_jar=aiohttp.DummyCookieJar())
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=connect_timeout)
    return aiohttp.ClientSession(connector=connector, cookie_jar=aiohttp.DummyCookieJar(), timeout=timeout)


class Client:
    """One tab: a page load and a socket.io websocket, speaking the frames nicegui.js speaks."""

    def __init__(self, http: aiohttp.ClientSession, base_url: str, account: Account, stats: Stats) -> None:
        self.http = http
        self.base_url = base_url
        self.account = account
        self.stats = stats
        self.cookie = account.cookie
        self.route: str | None = None  # nginx's sticky-session cookie (deploy/nginx.conf), when behind it
        self.page: Page | None = None
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self.next_message_id = 0
        self.acked_message_id = -1
        self.waiting: dict[str, asyncio.Future] = {}  # text → future resolved when a frame holding it arrives
        self.navigations: asyncio.Queue[str] = asyncio.Queue()
        self.tasks: list[asyncio.Task] = []
        self.closed = False

    @property
    def patient_id(self) -> str:
        return f'LOAD-{self.account.index:04d}'

    # --- HTTP and socket ---

    def _cookies(self) -> dict[str, str]:
        """The cookies a browser would send: the session, and behind deploy/nginx.conf its route cookie."""
        cookies = [f'session={self.cookie}'] if self.cookie else []
        if self.route:
            cookies.append(f'casebook_route={self.route}')
        return {'Cookie': '; '.join(cookies)} if cookies else {}

    async def load(self, path: str) -> Page:
        async with self.http.get(self.base_url + path, headers=self._cookies(), allow_redirects=False) as response:
            if (cookie := response.cookies.get('session')) is not None:
                self.cookie = cookie.value
            if (route := response.cookies.get('casebook_route')) is not None:
                self.route = route.value
            if response.status in (302, 303, 307):
                return await self.load(response.headers['Location'])
            if response.status != 200:
                raise Refused(f'GET {path}: HTTP {response.status}')
            self.page = Page.parse(await response.text())
            self.next_message_id = self.page.next_message_id
            return self.page

    async def connect(self) -> None:
        assert self.page is not None
        query = {
            'client_id': self.page.client_id,
            'next_message_id': str(self.page.next_message_id),
            'implicit_handshake': 'true',
            'document_id': str(uuid.uuid4()),
            'tab_id': str(uuid.uuid4()),
            'EIO': '4',
            'transport': 'websocket',
        }
        url = self.base_url.replace('http://', 'ws://') + '/_nicegui_ws/socket.io/'
        self.ws = await self.http.ws_connect(url, params=query, headers=self._cookies(), max_msg_size=0)
        opening = await self.ws.receive_str(timeout=CONNECT_TIMEOUT)
        if not opening.startswith('0'):
            raise Refused(f'engine.io open expected, got {opening[:80]!r}')
        await self.ws.send_str('40')
        # NiceGUI's connect handler may already send updates (say, the recent list changed while the tab was away)
        # before socket.io's own "connected" packet: read them as the tab would
        early: list[str] = []
        while not (connected := await self.ws.receive_str(timeout=CONNECT_TIMEOUT)).startswith('40'):
            if not connected.startswith('42'):
                raise Refused(f'socket.io connect refused: {connected[:120]!r}')
            early.append(connected)
        for frame in early:
            await self._handle(frame)
        self.tasks = [asyncio.create_task(self._read()), asyncio.create_task(self._ack_every_3_seconds())]

    async def close(self) -> None:
        self.closed = True
        for task in self.tasks:
            task.cancel()
        if self.ws is not None and not self.ws.closed:
            await self.ws.close()

    async def emit(self, event: str, data: dict) -> None:
        assert self.ws is not None
        await self.ws.send_str('42' + json.dumps([event, data]))

    async def _read(self) -> None:
        assert self.ws is not None
        async for frame in self.ws:
            if frame.type == aiohttp.WSMsgType.TEXT:  # the iterator ends on close and error; aiohttp answers pings
                await self._handle(frame.data)
        if not self.closed:
            self.stats.error('disconnected', f'{self.account.username}: socket closed by the server')
            for future in self.waiting.values():
                if not future.done():
                    future.set_exception(Refused('disconnected'))

    async def _handle(self, text: str) -> None:
        """One engine.io frame from the server."""
        if text == '2':
            await self.ws.send_str('3')  # engine.io ping → pong
            return
        if not text.startswith('42'):
            return
        for wanted, future in list(self.waiting.items()):
            if wanted in text and not future.done():
                future.set_result(time.perf_counter())
        try:
            event, data = json.loads(text[2:])[:2]
        except (ValueError, TypeError):
            return
        if isinstance(data, dict) and isinstance(data.get('_id'), int):
            self.next_message_id = data['_id'] + 1
        if event == 'run_javascript' and data.get('request_id'):
            await self.emit(
                'javascript_response',
                {'request_id': data['request_id'], 'client_id': self.page.client_id, 'result': 'UTC'},
            )
        elif event == 'notify' and data.get('type') in ('negative', 'warning'):
            self.stats.error('notify', str(data.get('message')))
        elif event == 'open':
            self.navigations.put_nowait(data.get('path', ''))

    async def _ack_every_3_seconds(self) -> None:
        while True:
            await asyncio.sleep(3)
            if self.next_message_id > self.acked_message_id:
                await self.emit('ack', {'client_id': self.page.client_id, 'next_message_id': self.next_message_id})
                self.acked_message_id = self.next_message_id

    # --- what a user does ---

    async def set_value(self, label: str, value: str) -> None:
        element_id, listener_id = self.page.input(label)
        await self.emit(
            'event',
            {
                'id': element_id,
                'client_id': self.page.client_id,
                'listener_id': listener_id,
                'args': [json.dumps(value)],
            },
        )

    async def click(self, text: str) -> None:
        element_id, listener_id = self.page.button(text)
        await self.emit(
            'event', {'id': element_id, 'client_id': self.page.client_id, 'listener_id': listener_id, 'args': []}
        )

    def expect(self, text: str) -> asyncio.Future:
        future = asyncio.get_running_loop().create_future()
        self.waiting[text] = future
        return future

    async def wait(self, text: str, future: asyncio.Future, seconds: float) -> float:
        try:
            return await asyncio.wait_for(future, seconds)
        finally:
            self.waiting.pop(text, None)

    async def log_in_with_form(self) -> None:
        await self.load('/login')
        await self.connect()
        await self.set_value('Username', self.account.username)
        await self.set_value('Password', PASSWORD)
        await self.click('Log in')
        await self.follow(await asyncio.wait_for(self.navigations.get(), CONNECT_TIMEOUT))

    async def follow(self, path: str) -> Page:
        """The server sent this tab elsewhere (`ui.navigate`): leave the page and load that one, as a browser does."""
        await self.close()
        self.closed = False
        return await self.load(path or '/')

    async def start(self, form: bool) -> None:
        if form:
            await self.log_in_with_form()
        else:
            await self.load('/')
        if self.page is None or not any(
            e.get('props', {}).get('label') == 'Type message here' for e in self.page.elements.values()
        ):
            raise Refused('not signed in: no workspace')
        await self.connect()
        await self.open_patient()

    async def open_patient(self) -> None:
        """Open this client's patient, unless the page shows it open already (after a reload)."""
        header = f'Patient: {self.patient_id}'
        if header in json.dumps(self.page.elements):
            return
        future = self.expect(header)
        await self.set_value('Patient ID', self.patient_id)
        await self.click('Open patient')
        await self.wait(header, future, CONNECT_TIMEOUT)

    async def send(self, sequence: int) -> float:
        """Milliseconds from the click on Send until an update holding the text reached this client."""
        text = f'load {self.account.index} {sequence} {secrets.token_hex(6)}'
        future = self.expect(text)
        await self.set_value('Type message here', text)
        started = time.perf_counter()
        await self.click('Send')
        self.stats.sent += 1
        arrived = await self.wait(text, future, ACK_TIMEOUT)
        return (arrived - started) * 1000


# ----- one run ------------------------------------------------------------------------------------------------


async def _client_life(
    client: Client,
    form: bool,
    ramp: asyncio.Semaphore,
    ready: asyncio.Event,
    go: asyncio.Event,
    stop_at: list[float],
    stats: Stats,
    interval: float | None = SEND_INTERVAL,
) -> bool:
    try:
        async with ramp:
            await asyncio.wait_for(client.start(form), CONNECT_TIMEOUT * 2)
    except Exception as error:  # counted, never fatal to the run
        stats.error('connect', f'{client.account.username}: {type(error).__name__} {error}')
        await client.close()
        return False
    ready.set()
    await go.wait()
    if interval is None:  # idle: connected, sending nothing
        return True
    await asyncio.sleep(random.uniform(0, interval))  # spread the clients over the interval
    sequence = 0
    next_at = time.monotonic()
    while time.monotonic() < stop_at[0]:
        try:
            sent_at = time.perf_counter()
            latency = await client.send(sequence)
            stats.latencies_ms.append(latency)
            stats.timeline.append((sent_at, latency))
        except TimeoutError:
            stats.error('timeout', f'{client.account.username}: no ack within {ACK_TIMEOUT:.0f} s')
        except Exception as error:
            stats.error('send', f'{client.account.username}: {type(error).__name__} {error}')
            if client.ws is None or client.ws.closed:
                break
        sequence += 1
        next_at += interval
        await asyncio.sleep(max(0.0, next_at - time.monotonic()))
    return True


async def _ramped(clients: list[Client], stats: Stats, started: float) -> None:
    """Until every client is connected or has failed to (bounded)."""
    while time.perf_counter() - started < CONNECT_TIMEOUT * 10:
        connected = sum(c.ws is not None and not c.ws.closed and c.page is not None for c in clients)
        if connected + stats.errors.get('connect', 0) >= len(clients):
            return
        await asyncio.sleep(0.5)


async def run_once(
    count: int,
    *,
    duration: float,
    form: bool,
    profile: bool = False,
    gc_threshold2: int | None = None,
    interval: float = SEND_INTERVAL,
    idle_seconds: float = 10.0,
    name: str = 'load',
) -> dict:
    secret = secrets.token_urlsafe(32)
    data_dir = work_dir(f'load-{count}') / 'data'
    log(f'load: preparing {count} accounts ({"form" if form else "preset"} sign-in)')
    accounts = await _prepare(data_dir, count, secret, preset=not form)
    server = casebook_server(
        data_dir, RESULTS / 'logs' / f'load-{count}.log', gc_threshold2=gc_threshold2, CASEBOOK_STORAGE_SECRET=secret
    )
    stats = Stats()
    result: dict = {
        'server_gc_threshold2': gc_threshold2 or 'default (10)',
        'clients': count,
        'duration_s': duration,
        'sign_in': 'form' if form else 'preset',
        'send_interval_s': interval or None,
        'idle_seconds': idle_seconds,
    }
    with server:
        async with tab_session(CONNECT_TIMEOUT) as http:
            clients = [Client(http, server.base_url, account, stats) for account in accounts]
            ramp, ready, go = asyncio.Semaphore(RAMP_CONCURRENCY), asyncio.Event(), asyncio.Event()
            stop_at = [float('inf')]
            ramp_started = time.perf_counter()
            lives = [
                asyncio.create_task(_client_life(c, form, ramp, ready, go, stop_at, stats, interval or None))
                for c in clients
            ]
            await _ramped(clients, stats, ramp_started)
            await asyncio.sleep(1)
            connected = sum(c.ws is not None and not c.ws.closed for c in clients)
            result['connected'] = connected
            result['ramp_s'] = round(time.perf_counter() - ramp_started, 1)
            log(f'load: {connected}/{count} connected in {result["ramp_s"]} s; sending for {duration:.0f} s')
            result['memory_mib_connected_idle'] = proc_status(server.pid)
            await asyncio.sleep(3)
            idle_profile = RESULTS / f'profile-{name}-{count}-idle.txt'
            spy = start_profile(server.pid, idle_seconds, idle_profile) if profile else None
            idle_cpu, idle_started = proc_cpu_seconds(server.pid), time.perf_counter()
            idle_main = proc_cpu_seconds(server.pid, main_thread=True)
            await asyncio.sleep(idle_seconds)
            idle_elapsed = time.perf_counter() - idle_started
            idle_cpu = proc_cpu_seconds(server.pid) - idle_cpu
            idle_main = proc_cpu_seconds(server.pid, main_thread=True) - idle_main
            result['server_cpu_percent_idle_main_thread'] = round(idle_main / idle_elapsed * 100, 2)
            result['server_cpu_percent_idle'] = round(idle_cpu / idle_elapsed * 100, 2)
            result['server_cpu_percent_idle_per_tab'] = round(idle_cpu / idle_elapsed * 100 / max(1, connected), 5)
            if spy is not None:
                spy.wait(timeout=60)
                result['profile_idle'] = profile_summary(idle_profile, max(1, connected))
            stats.latencies_ms.clear()
            stats.timeline.clear()
            cpu_before, usage_before = proc_cpu_seconds(server.pid), resource.getrusage(resource.RUSAGE_SELF)
            main_before = proc_cpu_seconds(server.pid, main_thread=True)
            load_before = load_average()
            started = time.perf_counter()
            result['_started'] = started
            stop_at[0] = time.monotonic() + duration
            go.set()
            send_profile = RESULTS / f'profile-{name}-{count}.txt'
            spy = start_profile(server.pid, duration, send_profile) if profile else None
            rss_samples = []
            while time.monotonic() < stop_at[0]:
                await asyncio.sleep(1)
                rss_samples.append(proc_status(server.pid)['VmRSS'])
            await asyncio.wait(lives, timeout=ACK_TIMEOUT + SEND_INTERVAL + 5)
            elapsed = time.perf_counter() - started
            cpu_after, usage_after = proc_cpu_seconds(server.pid), resource.getrusage(resource.RUSAGE_SELF)
            main_after = proc_cpu_seconds(server.pid, main_thread=True)
            result['load_average'] = {'before': load_before, 'after': load_average()}
            result['server_cpu_percent_of_one_core'] = round((cpu_after - cpu_before) / elapsed * 100, 1)
            result['server_cpu_seconds'] = round(cpu_after - cpu_before, 2)
            result['server_cpu_ms_per_send_beyond_idle'] = (
                round((cpu_after - cpu_before - idle_cpu / idle_elapsed * elapsed) * 1000 / stats.sent, 2)
                if stats.sent
                else None
            )
            result['server_cpu_ms_per_send_beyond_idle_main_thread'] = (
                round((main_after - main_before - idle_main / idle_elapsed * elapsed) * 1000 / stats.sent, 2)
                if stats.sent
                else None
            )
            generator_cpu = sum(getattr(usage_after, f) - getattr(usage_before, f) for f in ('ru_utime', 'ru_stime'))
            result['generator_cpu_percent_of_one_core'] = round(generator_cpu / elapsed * 100, 1)
            result['memory_mib'] = {**proc_status(server.pid), 'VmRSS_max_during_run': max(rss_samples or [0])}
            if spy is not None:
                spy.wait(timeout=60)
                result['profile'] = profile_summary(send_profile, max(1, stats.sent))
            for task in lives:
                task.cancel()
            await asyncio.gather(*(c.close() for c in clients), return_exceptions=True)
    result['sends'] = stats.sent
    result['acks'] = len(stats.latencies_ms)
    result['send_to_ack_ms'] = summary(stats.latencies_ms)
    result['errors'] = stats.errors
    result['error_count'] = sum(stats.errors.values())
    result['error_examples'] = stats.error_examples
    result['slowest_seconds'] = _slowest_seconds(stats.timeline, result.pop('_started', 0.0))
    result['server_log_errors'] = server.errors_in_log()[:20]
    shutil.rmtree(data_dir.parent, ignore_errors=True)
    latency = result['send_to_ack_ms']
    log(
        f'load {count}: p50 {latency.get("median")} ms, p99 {latency.get("p99")} ms, errors {result["error_count"]}, '
        f'server CPU {result["server_cpu_percent_of_one_core"]}% of a core'
    )
    return result


def _slowest_seconds(timeline: list[tuple[float, float]], started: float, top: int = 10) -> list[dict]:
    """The seconds of the run with the slowest sends: pauses that hit every client at once show up here."""
    seconds: dict[int, list[float]] = {}
    for sent_at, latency in timeline:
        seconds.setdefault(int(sent_at - started), []).append(latency)
    ranked = sorted(seconds.items(), key=lambda item: -max(item[1]))[:top]
    return [
        {
            'second': second,
            'sends': len(values),
            'max_ms': round(max(values), 1),
            'over_150_ms': sum(v > 150 for v in values),
        }
        for second, values in sorted(ranked)
    ]


def run(counts: list[int], **options) -> dict:
    results = {'machine': machine(), 'started': time.strftime('%Y-%m-%dT%H:%M:%S%z'), 'runs': []}
    for count in counts:
        results['runs'].append(asyncio.run(run_once(count, **options)))
    results['finished'] = time.strftime('%Y-%m-%dT%H:%M:%S%z')
    return results


def table(results: dict) -> str:
    lines = [
        '| clients | sign-in | connected | sends | acks | p50 ms | p99 ms | max ms | errors | server CPU % of a core '
        '(idle) '
        '| generator CPU % | RSS MiB idle → end (max) | load avg before → after |',
        '|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|',
    ]
    for run_ in results['runs']:
        latency = run_['send_to_ack_ms']
        idle, memory = run_.get('memory_mib_connected_idle', {}), run_.get('memory_mib', {})
        load = run_.get('load_average', {})
        lines.append(
            f'| {run_["clients"]} | {run_["sign_in"]} | {run_.get("connected")} | {run_["sends"]} | {run_["acks"]} '
            f'| {latency.get("median")} | {latency.get("p99")} | {latency.get("max")} | {run_["error_count"]} '
            f'| {run_.get("server_cpu_percent_of_one_core")} ({run_.get("server_cpu_percent_idle")}) '
            f'| {run_.get("generator_cpu_percent_of_one_core")} '
            f'| {idle.get("VmRSS")} → {memory.get("VmRSS")} ({memory.get("VmRSS_max_during_run")}) '
            f'| {load.get("before", ["?"])[0]} → {load.get("after", ["?"])[0]} |'
        )
    return '\n'.join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--clients', type=int, nargs='+', default=[100, 250, 500, 1000])
    parser.add_argument('--duration', type=float, default=60, help='seconds of sending per run (default 60)')
    parser.add_argument('--sign-in', choices=['preset', 'form'], default='preset')
    parser.add_argument('--profile', action='store_true', help='record the server with py-spy while sending')
    parser.add_argument(
        '--server-gc-threshold2',
        type=int,
        metavar='N',
        help="experiment: start the server with CPython's generation-2 GC threshold raised to N (default 10)",
    )
    parser.add_argument(
        '--send-interval',
        type=float,
        default=SEND_INTERVAL,
        metavar='S',
        help=f"seconds between one client's sends (default {SEND_INTERVAL:.0f}); 0: the tabs stay idle",
    )
    parser.add_argument(
        '--idle-seconds',
        type=float,
        default=10.0,
        metavar='S',
        help='seconds of the idle measurement (all tabs connected, none sending) before the sends (default 10)',
    )
    parser.add_argument('--name', default='load', help='results file bench/results/NAME.json')
    args = parser.parse_args()
    results = run(
        args.clients,
        duration=args.duration,
        form=args.sign_in == 'form',
        profile=args.profile,
        gc_threshold2=args.server_gc_threshold2,
        interval=args.send_interval,
        idle_seconds=args.idle_seconds,
        name=args.name,
    )
    path = write_result(args.name, results)
    print(table(results))
    print(f'\nresults: {path}')


if __name__ == '__main__':
    main()
