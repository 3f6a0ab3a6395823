"""/healthz, /readyz and /metrics of the app as `build` makes it (in this process, through its ASGI stack)."""

from __future__ import annotations

import asyncio
import dataclasses
import importlib
import importlib.util
import socket
import time
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
from fastapi import FastAPI
from nicegui import app
from nicegui.testing import User
from sqlalchemy import text

from casebook import metrics
from casebook.config import Settings
from casebook.db import Database, head_revision
from casebook.web import operations, runtime
from support import free_port
from tests.web.helpers import add, create_first_account, log_in, open_patient, send, should_see_message

TOKEN = 'metrics-token-for-the-tests-0123456789'
METRIC_NAMES = [
    'casebook_messages_written_total',
    'casebook_send_seconds_count',
    'casebook_open_tabs',
    'casebook_signed_in_sessions',
    'casebook_sign_ins_total{result="ok"}',
    'casebook_sign_ins_total{result="failed"}',
    'casebook_sign_ins_total{result="throttled"}',
    'casebook_db_errors_total',
    'casebook_event_loop_lag_seconds_count',
    'casebook_live_delivery_seconds_count',
    'process_cpu_seconds_total',
    'process_resident_memory_bytes',
]


@pytest.fixture
async def http(user: User) -> AsyncIterator[httpx.AsyncClient]:
    """A client without cookies, like a probe or Prometheus, to the app the `user` fixture started."""
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url='http://test') as client:
        yield client


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port that accepts connections and never says a word: a hung database server."""
    with socket.socket() as listener:
        listener.bind(('127.0.0.1', 0))
        listener.listen(8)
        yield listener.getsockname()[1]


async def _with_database(url: str) -> Database:
    """Swap the running app's database for one at `url` (the test puts the original back)."""
    database = Database(url)
    runtime.install(dataclasses.replace(runtime.current(), database=database))
    return database


async def test_healthz_answers_ok_without_making_a_session(http: httpx.AsyncClient) -> None:
    response = await http.get('/healthz')
    assert response.status_code == 200
    assert response.json() == {'status': 'ok'}
    assert 'set-cookie' not in response.headers  # no session, so no per-browser storage for every probe
    assert response.headers['cache-control'] == 'no-store'


async def test_readyz_is_ready_on_a_migrated_database(http: httpx.AsyncClient) -> None:
    response = await http.get('/readyz')
    assert (response.status_code, response.json()) == (200, {'status': 'ready'})
    assert 'set-cookie' not in response.headers


async def test_readyz_names_the_database_when_it_cannot_be_reached(http: httpx.AsyncClient) -> None:
    original = runtime.current()
    errors_before = metrics.value('casebook_db_errors_total')
    stopped = await _with_database(f'postgresql+asyncpg://postgres:pw-{TOKEN}@127.0.0.1:{free_port()}/casebook')
    try:
        response = await http.get('/readyz')
    finally:
        runtime.install(original)
        await stopped.dispose()
    assert response.status_code == 503
    assert response.json() == {'status': 'unavailable', 'failed': {'database': 'unreachable'}}
    assert metrics.value('casebook_db_errors_total') == errors_before + 1  # counted once, where it was raised
    assert (await http.get('/readyz')).status_code == 200


async def test_readyz_gives_up_on_a_hung_database_within_its_timeout(http: httpx.AsyncClient, silent_port: int) -> None:
    original = runtime.current()
    hung = await _with_database(f'postgresql+asyncpg://postgres@127.0.0.1:{silent_port}/casebook')
    started = time.monotonic()
    try:
        response = await http.get('/readyz')
    finally:
        runtime.install(original)
        await hung.dispose()
    assert time.monotonic() - started < operations.CHECK_TIMEOUT + 1.5
    assert (response.status_code, response.json()['failed']) == (503, {'database': 'timeout'})


async def test_readyz_names_migrations_that_are_not_at_the_head(http: httpx.AsyncClient) -> None:
    head = head_revision()
    database = runtime.current().database
    async with database.session() as session:
        await session.execute(text('UPDATE alembic_version SET version_num = :old'), {'old': '0001'})
        await session.commit()
    try:
        response = await http.get('/readyz')
    finally:
        async with database.session() as session:
            await session.execute(text('UPDATE alembic_version SET version_num = :head'), {'head': head})
            await session.commit()
    assert (response.status_code, response.json()) == (
        503,
        {'status': 'unavailable', 'failed': {'migrations': 'not at head'}},
    )
    assert (await http.get('/readyz')).status_code == 200


async def test_metrics_are_off_without_a_token(http: httpx.AsyncClient) -> None:
    response = await http.get('/metrics', headers={'Authorization': f'Bearer {TOKEN}'})
    assert response.status_code == 404
    assert 'casebook' not in response.text


# ----- with CASEBOOK_METRICS_TOKEN set ------------------------------------------------------------------------


@pytest.fixture
def metrics_token(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv('CASEBOOK_METRICS_TOKEN', TOKEN)
    return TOKEN


@pytest.fixture
def user(metrics_token_if_asked, user: User) -> User:
    return user


@pytest.fixture
def metrics_token_if_asked(request: pytest.FixtureRequest) -> None:
    """Set the token before the app is built, for the tests that ask for it."""
    if 'metrics_token' in request.fixturenames:
        request.getfixturevalue('metrics_token')


async def test_metrics_need_the_right_bearer_token(metrics_token: str, http: httpx.AsyncClient) -> None:
    wrong = [None, '', f'Bearer {TOKEN[:-1]}', f'Bearer {TOKEN}x', f'Basic {TOKEN}', f'Bearer{TOKEN}', TOKEN]
    for authorization in wrong:
        headers = {} if authorization is None else {'Authorization': authorization}
        response = await http.get('/metrics', headers=headers)
        assert response.status_code == 401, authorization
        assert response.headers['www-authenticate'] == 'Bearer'
        assert 'casebook_' not in response.text
    assert (await http.get('/metrics', headers={'Authorization': f'bearer {TOKEN}'})).status_code == 200


async def test_metrics_count_sends_and_never_name_anyone(
    metrics_token: str, user: User, http: httpx.AsyncClient
) -> None:
    before = metrics.value('casebook_messages_written_total')
    sends_before = metrics.value('casebook_send_seconds_count')
    await create_first_account(user, 'zeldauser', 'Dr. Zelda Quill')
    await open_patient(user, 'PATXQ-9931')
    for text_ in ('Paracetamol quokka 500 mg', 'Temperature marmot 38.9'):
        send(user, text_)
        await should_see_message(user, text_)

    response = await http.get('/metrics', headers={'Authorization': f'Bearer {metrics_token}'})
    assert response.status_code == 200
    assert response.headers['content-type'].startswith('text/plain; version=0.0.4')
    body = response.text
    for name in METRIC_NAMES:
        assert f'\n{name} ' in body, f'{name} missing from /metrics'
    assert metrics.value('casebook_messages_written_total') == before + 2
    assert metrics.value('casebook_send_seconds_count') == sends_before + 2
    assert metrics.value('casebook_signed_in_sessions') == 1
    assert metrics.value('casebook_open_tabs') >= 1
    for secret in ('zeldauser', 'Zelda', 'PATXQ', 'quokka', 'marmot', 'Paracetamol', TOKEN):
        assert secret not in body


async def test_a_retried_send_is_not_counted_twice(metrics_token: str, user: User) -> None:
    await create_first_account(user)
    await open_patient(user, 'PAT1')
    # the page module the app registered (NiceGUI's fixtures drop page modules from sys.modules after each test)
    tabs = importlib.import_module('casebook.web.server').workspace.OPEN_TABS
    (tab,) = [tab for tab in tabs if tab.client is user.client]
    before = metrics.value('casebook_messages_written_total')
    with tab.client:
        assert await tab._post(tab.conversation, tab.send_id, 'once') is not None
        assert await tab._post(tab.conversation, tab.send_id, 'once') is not None  # a reconnect's retry
    assert metrics.value('casebook_messages_written_total') == before + 1


async def test_live_delivery_and_loop_lag_are_measured(metrics_token: str, user: User) -> None:
    await create_first_account(user)
    await open_patient(user, 'PAT1')
    delivered = metrics.value('casebook_live_delivery_seconds_count')
    lag_count = metrics.value('casebook_event_loop_lag_seconds_count')
    send(user, 'to every tab following PAT1')  # this tab follows the conversation too
    await should_see_message(user, 'to every tab following PAT1')
    await asyncio.sleep(operations.LAG_INTERVAL * 2.5)
    assert metrics.value('casebook_live_delivery_seconds_count') > delivered
    assert metrics.value('casebook_event_loop_lag_seconds_count') > lag_count


async def test_sign_ins_are_counted_by_how_they_ended(user: User, create_user) -> None:
    def count(result: str) -> float:
        return metrics.value('casebook_sign_ins_total', {'result': result})

    await create_first_account(user)  # a new account signs in without the login form: not counted
    await add('bob')
    before = {result: count(result) for result in metrics.SIGN_IN_RESULTS}
    bob = create_user()
    await log_in(bob, 'bob', 'not the password at all')
    await bob.should_see('Username or password is incorrect.')
    await log_in(bob, 'bob')
    await bob.should_see('User: Bob | Patient: (not set)')
    assert {result: count(result) - before[result] for result in metrics.SIGN_IN_RESULTS} == {
        'ok': 1,
        'failed': 1,
        'throttled': 0,
    }


# ----- the module itself ----------------------------------------------------------------------------------------


def test_sign_in_counts_by_result_and_refuses_other_labels() -> None:
    before = metrics.value('casebook_sign_ins_total', {'result': 'throttled'})
    metrics.sign_in('throttled')
    assert metrics.value('casebook_sign_ins_total', {'result': 'throttled'}) == before + 1
    with pytest.raises(ValueError, match='sign-in result'):
        metrics.sign_in('ada')  # a username as a label would be exported to everyone who scrapes


def test_importing_the_metrics_again_registers_nothing_twice() -> None:
    # a second copy of the module, as after NiceGUI's fixtures dropped the app's modules between tests
    spec = importlib.util.spec_from_file_location('casebook_metrics_again', metrics.__file__)
    again = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(again)
    assert (again.MESSAGES_WRITTEN, again.SEND_SECONDS, again.SIGN_INS) == (
        metrics.MESSAGES_WRITTEN,
        metrics.SEND_SECONDS,
        metrics.SIGN_INS,
    )
    assert metrics.exposition().count(b'# TYPE casebook_messages_written_total counter') == 1


def test_a_short_metrics_token_is_refused_at_start() -> None:
    with pytest.raises(ValueError, match='at least 16 characters'):
        operations.install(FastAPI(), Settings(metrics_token='short'))
