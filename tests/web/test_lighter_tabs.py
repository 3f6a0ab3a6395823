"""Lighter tabs (issue 17): an idle tab costs little (casebook/web/idle_tabs.py), a send sends little."""

from __future__ import annotations

import asyncio
import json
import sqlite3

import nicegui
from nicegui import core
from nicegui.outbox import Outbox
from nicegui.testing import User

from casebook.web import idle_tabs, runtime
from casebook.web.message_list import MessageCard
from casebook.web.notebook import Notebook
from casebook.web.pages.composer import DRAFT_DELAY
from tests.web.helpers import create_first_account, notebook_storage, open_patient, send, should_see_message


def test_the_outbox_loop_replaced_is_the_one_installed() -> None:
    """The copy in idle_tabs repeats NiceGUI's loop of one version; another version's is left alone, and this
    fails until the copy has been compared with it and its fingerprint recorded."""
    assert idle_tabs.REPLACED_LOOP.get(nicegui.__version__) == idle_tabs.loop_fingerprint()
    assert idle_tabs.install()
    assert Outbox.loop is idle_tabs._quiet_loop


def test_uvicorn_does_not_ping_beside_engine_io() -> None:
    assert idle_tabs.uvicorn_options() == {'ws_ping_interval': None, 'ws_ping_timeout': None}


async def test_start_up_sets_the_pings_and_an_idle_outbox_sleeps_until_there_is_something(user: User) -> None:
    await create_first_account(user)
    assert core.sio.eio.ping_interval == idle_tabs.PING_INTERVAL
    assert core.sio.eio.ping_timeout == idle_tabs.PING_TIMEOUT
    await open_patient(user, 'P-1')
    outbox = user.client.outbox
    task = next(t for t in asyncio.all_tasks() if t.get_name() == f'outbox loop {user.client.id}')
    await asyncio.sleep(0.05)
    assert not outbox._enqueue_event.is_set()
    waiting = _awaited(task)
    assert [c.cr_code.co_name for c in waiting] == ['_quiet_loop', 'wait']
    await asyncio.sleep(1.2)  # NiceGUI's own loop would have timed out and waited anew by now
    assert _awaited(task)[-1] is waiting[-1]  # the same wait, never woken
    send(user, 'still delivered')
    await user.should_see('still delivered')


async def test_a_stopped_outbox_ends_its_loop(user: User) -> None:
    await create_first_account(user)
    outbox = user.client.outbox
    task = next(t for t in asyncio.all_tasks() if t.get_name() == f'outbox loop {user.client.id}')
    await asyncio.sleep(0.05)
    outbox.stop()
    await asyncio.wait_for(task, 1)
    assert task.done() and not task.cancelled()


def _awaited(task: asyncio.Task) -> list:
    """The chain of coroutines the task is suspended in, outermost first."""
    chain, coroutine = [], task.get_coro()
    while coroutine is not None and hasattr(coroutine, 'cr_code'):
        chain.append(coroutine)
        coroutine = coroutine.cr_await
    return chain


async def test_a_send_scrolls_in_the_cards_own_update_and_only_once(user: User) -> None:
    await create_first_account(user)
    await open_patient(user, 'P-1')
    outbox = user.client.outbox
    emitted: list[tuple[str, dict]] = []
    emit = outbox._emit

    async def recording(message):
        emitted.append((message[1], json.loads(json.dumps(message[2], default=str))))  # as it went out
        await emit(message)

    outbox._emit = recording
    send(user, 'a note')
    await should_see_message(user, 'a note')
    send(user, 'another note')
    await should_see_message(user, 'another note')
    await asyncio.sleep(0.1)
    logs = [element for element in user.client.elements.values() if element.props.get('role') == 'log']
    cards = [card for log in logs for card in log.default_slot.children if isinstance(card, MessageCard)]
    first = next(c for c in cards if c.text == 'a note')
    drawn = [data[str(first.id)]['props'] for kind, data in emitted if kind == 'update' and str(first.id) in data]
    assert drawn[0].get('scroll') == 'newest'  # the card's first drawing scrolls the page to it
    assert all('scroll' not in props for props in drawn[1:])  # no later one does (its date divider, say)
    assert not [data for kind, data in emitted if kind == 'run_javascript' and 'toNewest' in data.get('code', '')]
    assert 'scroll' not in first._to_dict()['props']  # nor a reload's


async def test_a_send_slower_than_the_draft_pause_writes_no_draft_and_a_failed_one_keeps_it(user: User) -> None:
    await create_first_account(user)
    await open_patient(user, 'PAT1')
    book = Notebook(notebook_storage(user))
    blocker = sqlite3.connect(runtime.current().settings.data_dir / 'casebook.sqlite3', timeout=0)
    blocker.execute('BEGIN EXCLUSIVE')  # the send waits for the write lock (up to the 5 s busy timeout)
    try:
        send(user, 'a slow note')
        await asyncio.sleep(DRAFT_DELAY * 1.6)  # past the pause in typing: a draft would have been written
        assert book.draft('PAT1') == ''  # the text being sent is not written as a draft meanwhile
    finally:
        blocker.rollback()
    await should_see_message(user, 'a slow note')
    await asyncio.sleep(DRAFT_DELAY * 1.2)
    assert book.draft('PAT1') == ''

    blocker.execute('BEGIN EXCLUSIVE')  # now longer than the busy timeout: the send fails
    try:
        send(user, 'written during the outage')
        await user.should_see('Not saved', retries=120)
        assert book.draft('PAT1') == 'written during the outage'  # kept at once, for a reload or another tab
    finally:
        blocker.rollback()
        blocker.close()
