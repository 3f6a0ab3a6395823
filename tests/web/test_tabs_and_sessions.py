"""Several tabs of one browser, ended sessions and slow saves: no note lost, duplicated or shown to the wrong person."""

from __future__ import annotations

import asyncio

from nicegui import ui
from nicegui.testing import User

from casebook.services import sessions
from casebook.web import runtime
from tests.web.helpers import (
    add,
    create_first_account,
    handlers_done,
    log_in,
    notebook_storage,
    open_patient,
    send,
    should_see_message,
    shown_messages,
)
from tests.web.test_history_and_live import scroll_to_top, seed
from tests.web.test_journey import composer, stored_texts


async def test_a_forgotten_tab_cannot_write_into_the_next_clinicians_notebook(user: User) -> None:
    await create_first_account(user)
    await add('bob', 'Dr. Bob')
    await open_patient(user, 'PAT1')
    adas_tab = user.client
    await user.open('/')
    user.find(kind=ui.button, content='Log out').click()
    await user.should_see('Your notebook is private to you.')
    await log_in(user, 'bob')
    await user.should_see('User: Dr. Bob')
    bobs_tab = user.client
    user.client = adas_tab  # Ada's forgotten tab: someone types and sends in it
    send(user, 'ada private note about PAT1')
    await handlers_done('Composer.send')  # the send has been handled, whatever it did
    # and the forgotten tab was sent away: to the login page, which finds Bob signed in in this browser and shows
    # his own workspace (wait for it: the simulated browser follows the navigation in a task of its own)
    await user.should_see('User: Dr. Bob')
    user.client = bobs_tab
    await open_patient(user, 'PAT1')
    assert composer(user).value == ''
    assert 'ada' not in repr(dict(notebook_storage(user)))
    assert await stored_texts() == []


async def test_an_ended_session_loads_nothing_more(user: User) -> None:
    await create_first_account(user)
    await seed('PAT1', 130)
    await open_patient(user, 'PAT1')
    async with runtime.current().database.session() as session:
        await sessions.end(session, notebook_storage(user)['session'])  # ended elsewhere (logout, disabled account)
    await scroll_to_top(user)
    await user.should_see('Your notebook is private to you.')  # sent to the login page, not shown older notes


async def test_messages_from_two_tabs_show_in_the_order_they_were_stored(user: User) -> None:
    await create_first_account(user)
    await open_patient(user, 'PAT1')
    first_tab = user.client
    await user.open('/')
    for n in range(6):
        send(user, f'second tab {n}')
        await should_see_message(user, f'second tab {n}')
        user.client, other = first_tab, user.client
        send(user, f'first tab {n}')
        await should_see_message(user, f'first tab {n}')
        user.client = other
    await asyncio.sleep(0.3)
    stored = await stored_texts()
    assert len(stored) == 12
    assert shown_messages(user) == stored
    user.client = first_tab
    assert shown_messages(user) == stored
