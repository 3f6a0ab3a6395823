"""Long histories in pages, live updates between tabs, and corrections, as user stories."""

from __future__ import annotations

import asyncio
import uuid

from nicegui import ui
from nicegui.testing import User
from nicegui.testing.user_interaction import UserInteraction

from casebook.services import accounts, conversations
from casebook.web import runtime
from casebook.web.message_list import MAX_SHOWN, MessageCard
from support import seed_messages
from tests.web.helpers import (
    create_first_account,
    handlers_done,
    open_patient,
    send,
    should_see_message,
    shown_messages,
)


async def seed(patient_id: str, count: int, username: str = 'ada') -> None:
    """Messages m0 … m{count-1} in the clinician's conversation, written through the service."""
    await seed_messages(runtime.current().database, username, patient_id, [f'm{n}' for n in range(count)])


async def scroll_to_top(user: User) -> None:
    count = len(shown_messages(user))
    UserInteraction(user, {user.client.layout}, None).trigger('casebook_near_top')
    for _ in range(100):
        await asyncio.sleep(0.02)
        if len(shown_messages(user)) != count:
            return


async def test_opening_shows_the_latest_page_and_scrolling_up_loads_older_in_order(user: User) -> None:
    await create_first_account(user)
    await seed('PAT1', 130)
    await open_patient(user, 'PAT1')
    assert shown_messages(user) == [f'm{n}' for n in range(80, 130)]
    await user.should_see('Load earlier messages')
    await user.should_not_see('Beginning of the conversation')
    await scroll_to_top(user)
    assert shown_messages(user) == [f'm{n}' for n in range(30, 130)]
    await scroll_to_top(user)
    assert shown_messages(user) == [f'm{n}' for n in range(130)]  # no gap, no duplicate
    await user.should_see('Beginning of the conversation')
    await scroll_to_top(user)
    assert len(shown_messages(user)) == 130


async def test_a_short_conversation_starts_at_its_beginning(user: User) -> None:
    await create_first_account(user)
    await seed('PAT1', 3)
    await open_patient(user, 'PAT1')
    await user.should_see('Beginning of the conversation')
    await user.should_not_see('Load earlier messages')


async def test_what_a_tab_holds_stays_bounded_however_far_it_scrolls(user: User) -> None:
    await create_first_account(user)
    await seed('PAT1', MAX_SHOWN + 120)
    await open_patient(user, 'PAT1')
    for _ in range(10):
        await scroll_to_top(user)
    shown = shown_messages(user)
    assert len(shown) == MAX_SHOWN
    assert shown == [f'm{n}' for n in range(MAX_SHOWN)]  # the oldest, contiguous; the newest were let go
    send(user, 'written while reading far back')
    await should_see_message(user, 'written while reading far back')
    shown = shown_messages(user)
    assert shown[-2:] == [f'm{MAX_SHOWN + 119}', 'written while reading far back']  # jumped to the newest


async def test_another_tab_of_the_same_clinician_shows_a_new_message(user: User, create_user) -> None:
    await create_first_account(user)
    await open_patient(user, 'PAT1')
    first_tab = user.client
    await user.open('/')  # a second tab on the same patient
    await user.should_see('Conversation about PAT1')
    send(user, 'from the second tab')
    await should_see_message(user, 'from the second tab')
    user.client = first_tab
    await should_see_message(user, 'from the second tab')
    assert shown_messages(user) == ['from the second tab']


async def test_a_tab_on_another_patient_is_not_disturbed(user: User) -> None:
    await create_first_account(user)
    await open_patient(user, 'PAT1')
    first_tab = user.client
    await user.open('/')
    await open_patient(user, 'PAT2')
    send(user, 'about two')
    await should_see_message(user, 'about two')
    await runtime.current().hub.delivered()  # every tab that was to hear of it has
    user.client = first_tab
    assert shown_messages(user) == []


async def open_actions(user: User, index: int) -> None:
    cards = [e for e in user.client.elements.values() if isinstance(e, MessageCard)]
    # the card's "Correct or mark" button sends the page-wide event with its message id
    UserInteraction(user, {user.client.layout}, None).trigger('casebook_actions', cards[index].message.id)
    await user.should_see('Correct or mark this message')


async def test_a_correction_is_a_new_message_and_the_original_stays(user: User) -> None:
    await create_first_account(user)
    await open_patient(user, 'PAT1')
    send(user, 'Temp 39.4')
    await should_see_message(user, 'Temp 39.4')
    await open_actions(user, 0)
    user.find(kind=ui.textarea).clear().type('Temp 38.4')
    user.find(kind=ui.button, content='Save correction').click()
    await should_see_message(user, 'Temp 38.4')
    assert shown_messages(user) == ['Temp 39.4', 'Temp 38.4']
    await user.should_see('Corrected below')
    await user.should_see('Correction')
    await user.open('/')  # as stored, not only as drawn
    assert shown_messages(user) == ['Temp 39.4', 'Temp 38.4']
    await user.should_see('Corrected below')


async def test_entered_in_error_is_kept_and_struck_through(user: User) -> None:
    await create_first_account(user)
    await open_patient(user, 'PAT1')
    send(user, 'Wrong patient!')
    await should_see_message(user, 'Wrong patient!')
    second_tab_of = user.client
    await user.open('/')
    await open_actions(user, 0)
    user.find(kind=ui.button, content='Mark as entered in error').click()
    await user.should_see('Entered in error')
    assert shown_messages(user) == ['Wrong patient!']
    card = next(e for e in user.client.elements.values() if isinstance(e, MessageCard))
    assert card.props['struck'] is True  # drawn struck through (the browser test checks the style)
    user.client = second_tab_of  # the other tab shows the mark too
    await user.should_see('Entered in error')


async def test_a_forged_actions_event_for_a_message_not_shown_here_does_nothing(user: User, create_user) -> None:
    await create_first_account(user)
    await open_patient(user, 'PAT1')
    send(user, 'mine')
    await should_see_message(user, 'mine')
    async with runtime.current().database.session() as session:  # another clinician's message
        bob = await accounts.add_clinician(session, username='bob', display_name='Bob', password='another long phrase')
        conversation = await conversations.open_conversation(session, clinician=bob, patient_id='PAT1')
        theirs, _ = await conversations.post_message(
            session, clinician=bob, conversation_id=conversation.id, client_id=str(uuid.uuid4()), text='secret'
        )
    for forged in (theirs.id, str(theirs.id), None, True, [theirs.id]):
        UserInteraction(user, {user.client.layout}, None).trigger('casebook_actions', forged)
    await handlers_done('MessageList._actions_clicked')  # each forged event handled, whatever it did
    await user.should_not_see('Correct or mark this message')
    await user.should_not_see('secret')
