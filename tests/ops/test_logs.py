"""Log output: `CASEBOOK_LOG_FORMAT=json` gives one JSON object per line with the agreed fields, and neither format
ever holds message text, a password, a token or a search word."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import secrets
import socket
from datetime import datetime

import aiohttp
import httpx
import pytest
from nicegui import ui
from nicegui.testing import User
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from bench.load import Account, Client, Stats
from casebook import logs
from casebook.web.operations import OperationsLayer
from support import PASSWORD

TOKEN = f'log-test-token-{secrets.token_hex(8)}'
FIELDS = {'time', 'level', 'logger', 'message', 'instance'}
WAIT = 30.0


async def _signed_in_tab(base_url: str, http: aiohttp.ClientSession, wrong_password: str) -> Client:
    """A tab that first fails to sign in, then signs in and opens a patient (bench/load.py's websocket client)."""
    tab = Client(http, base_url, Account(7, 'logtester'), Stats())
    await tab.load('/login')
    await tab.connect()
    await tab.set_value('Username', 'logtester')
    await tab.set_value('Password', wrong_password)
    refused = tab.expect('Username or password is incorrect.')
    await tab.click('Log in')
    await tab.wait('Username or password is incorrect.', refused, WAIT)
    await tab.set_value('Password', PASSWORD)
    await tab.click('Log in')
    await tab.follow(await asyncio.wait_for(tab.navigations.get(), WAIT))
    await tab.connect()
    opened = tab.expect(f'Patient: {tab.patient_id}')
    await tab.set_value('Patient ID', tab.patient_id)
    await tab.click('Open patient')
    await tab.wait(f'Patient: {tab.patient_id}', opened, WAIT)
    return tab


async def _send(tab: Client, text: str) -> None:
    shown = tab.expect(text)
    await tab.set_value('Type message here', text)
    await tab.click('Send')
    await tab.wait(text, shown, WAIT)


async def test_json_logs_are_one_object_a_line_and_hold_no_secrets(served) -> None:
    instance = served({'CASEBOOK_LOG_FORMAT': 'json', 'CASEBOOK_METRICS_TOKEN': TOKEN})
    instance.add_clinician('logtester', 'Dr Log Tester')
    wrong_password = f'wrong-{secrets.token_hex(6)}-password'
    texts = [f'Zyxwort note {secrets.token_hex(6)}', 'Allergic to penicillin — quokka']
    async with aiohttp.ClientSession() as http:
        tab = await _signed_in_tab(instance.base_url, http, wrong_password)
        for text in texts:
            await _send(tab, text)
        # a forged event: this socket names a page it never joined (logged as a warning, and dropped)
        await tab.emit('event', {'id': 1, 'client_id': 'someone-elses-page', 'listener_id': 'x', 'args': [texts[0]]})
        await tab.close()
    _send_garbage(instance.port)  # uvicorn warns about it: its loggers write in the same format
    assert instance.get('/metrics', {'Authorization': f'Bearer {TOKEN[:-1]}'})[0] == 401
    assert instance.get('/metrics', {'Authorization': f'Bearer {TOKEN}'})[0] == 200
    await asyncio.sleep(0.3)  # the forged event's warning
    instance.stop()  # shutdown logs too

    lines = [line for line in instance.output().splitlines() if line.strip()]
    records = []
    for line in lines:
        record = json.loads(line)  # every line, stdout and stderr alike
        assert FIELDS <= record.keys(), line
        assert datetime.fromisoformat(record['time'].replace('Z', '+00:00')).utcoffset().total_seconds() == 0
        assert record['instance'] == f'{socket.gethostname()}:{instance.port}'
        records.append(record)
    by_logger = {(record['logger'], record['message']) for record in records}
    assert ('casebook.web.server', 'dropped a socket message naming a page this socket did not join') in by_logger
    assert ('casebook.web.server', f'serving on http://127.0.0.1:{instance.port}') in by_logger
    assert ('uvicorn.error', 'Invalid HTTP request received.') in by_logger
    # nor the page's client id, which would let another connection act for that tab
    for secret in (*texts, 'Zyxwort', 'quokka', PASSWORD, wrong_password, TOKEN, tab.page.client_id):
        assert secret not in instance.output()


def _send_garbage(port: int) -> None:
    with socket.create_connection(('127.0.0.1', port), timeout=5) as connection:
        connection.sendall(b'NOT HTTP AT ALL\r\n\r\n')
        connection.recv(1024)


# ----- request and tab ids, in this process -------------------------------------------------------------------


@pytest.fixture
def captured() -> io.StringIO:
    """Records of the root logger as `casebook serve` formats them with CASEBOOK_LOG_FORMAT=json."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(logs.ContextFilter('test:1'))
    handler.setFormatter(logs.JsonFormatter())
    root = logging.getLogger()
    root.addHandler(handler)
    yield stream
    root.removeHandler(handler)


def _records(stream: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


async def test_a_tab_event_is_logged_with_a_digest_of_its_tab(user: User, captured: io.StringIO) -> None:
    probe = logging.getLogger('casebook.test.probe')

    @ui.page('/log-probe')
    def page() -> None:
        ui.button('Log something', on_click=lambda: probe.warning('clicked'))

    await user.open('/log-probe')
    user.find('Log something').click()
    (record,) = [record for record in _records(captured) if record['logger'] == 'casebook.test.probe']
    assert len(record['tab_id']) == 12
    assert user.client.id not in json.dumps(record)  # the page's client id is a secret of that page
    probe.warning('outside any tab')
    assert 'tab_id' not in _records(captured)[-1]


async def test_a_request_is_logged_with_its_request_id(captured: io.StringIO) -> None:
    def endpoint(_request) -> PlainTextResponse:
        logging.getLogger('casebook.test.request').warning('inside a request')
        return PlainTextResponse('ok')

    layered = OperationsLayer(Starlette(routes=[Route('/x', endpoint)]))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(layered), base_url='http://test') as client:
        await client.get('/x', headers={'X-Request-ID': 'nginx-0123456789abcdef'})
        await client.get('/x', headers={'X-Request-ID': 'bad id with spaces'})
    first, second = [r for r in _records(captured) if r['logger'] == 'casebook.test.request']
    assert first['request_id'] == 'nginx-0123456789abcdef'  # the proxy's id, to follow a request through both logs
    assert len(second['request_id']) == 16 and ' ' not in second['request_id']


def test_text_lines_carry_the_same_context() -> None:
    record = logging.LogRecord('casebook.x', logging.WARNING, __file__, 1, 'message not saved: %s', ('Timeout',), None)
    logs.ContextFilter('host:8080').filter(record)
    line = logging.Formatter(logs.TEXT_FORMAT).format(record)
    assert line.endswith('WARNING casebook.x [host:8080] message not saved: Timeout')
