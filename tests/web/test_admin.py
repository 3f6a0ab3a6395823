"""The admin page: who may use it (checked on every action), managing clinicians, the audit log."""

from __future__ import annotations

import asyncio

from nicegui import ui
from nicegui.testing import User
from nicegui.testing.user_interaction import UserInteraction
from sqlalchemy import select

from casebook.models import AuditEvent
from casebook.services import accounts, sessions
from casebook.web import runtime
from tests.conftest import PASSWORD
from tests.web.helpers import add, create_first_account, handlers_done, log_in, still_signed_in


async def actions() -> list[str]:
    async with runtime.current().database.session() as session:
        return list(await session.scalars(select(AuditEvent.action).order_by(AuditEvent.seq)))


async def session_of(username: str) -> str:
    async with runtime.current().database.session() as session:
        clinician = await accounts.find_by_username(session, username)
        return await sessions.start(session, clinician_id=clinician.id)


def buttons(user: User, label: str) -> list[ui.button]:
    """Buttons with this label in the order they were created (page order)."""
    return [e for e in user.client.elements.values() if isinstance(e, ui.button) and e.text == label]


async def test_non_admins_and_strangers_are_turned_away(user: User) -> None:
    await create_first_account(user)
    await add('bob', 'Dr. Bob')
    user.find(kind=ui.button, content='Log out').click()
    await user.should_see('Log in')
    assert (await user.http_client.get('/admin/audit.csv')).status_code == 401
    await log_in(user, 'bob')
    await user.should_see('User: Dr. Bob')
    await user.should_not_see('Admin')
    await user.open('/admin')
    await user.should_see('Only administrators can open this page.')
    await user.should_not_see('Add a clinician')
    response = await user.http_client.get('/admin/audit.csv')
    assert response.status_code == 403
    assert 'sign-in' not in response.text


async def test_an_admin_demoted_meanwhile_can_do_nothing_more(user: User) -> None:
    """Ada's admin page stays open after Carol takes her role away: every action on it is refused, none leaves a
    trace, and the audit log shows nothing it did not show before (each action is checked at the time it runs)."""
    await create_first_account(user)
    await add('bob', 'Dr. Bob')
    await add('carol', 'Dr. Carol', role='admin')
    await user.open('/admin')
    await user.should_see('Add a clinician')
    page = user.client
    table = user.find(kind=ui.table).elements.pop()
    shown_before = [row['action'] for row in table.rows]
    async with runtime.current().database.session() as session:  # Carol takes Ada's admin role away
        carol = await accounts.find_by_username(session, 'carol')
        ada = await accounts.find_by_username(session, 'ada')
        await accounts.change_role(session, admin=carol, clinician_id=ada.id, role='doctor')
        await session.commit()
    bob_token = await session_of('bob')
    trail_before = await actions()

    def on_page(kind: type, label: str, nth: int = 0) -> ui.element:
        """An element of Ada's stale admin page (the refusals navigate away from it; its elements stay)."""
        found = [
            e
            for e in page.elements.values()
            if isinstance(e, kind) and label in (getattr(e, 'text', None), e.props.get('label'))
        ]
        return found[nth]

    async def act(element: ui.element, how: str = 'click', value: object = None) -> None:
        user.client = page
        interaction = UserInteraction(user, {element}, None)
        if how == 'click':
            interaction.click()
        else:
            element.value = value  # a select's choice: on_change runs its handler
        await handlers_done('AdminPage')  # handled, whatever it did

    await act(on_page(ui.button, 'Disable'))  # the first Disable is Bob's (list order: ada, bob, carol)
    await act(on_page(ui.select, 'Role', nth=1), 'choose', 'admin')  # Bob made an admin
    await act(on_page(ui.button, 'Reset password', nth=1))  # would open the dialog for Bob
    await act(on_page(ui.button, 'Reset two-step sign-in', nth=1))  # likewise
    for label, text in (('Username', 'dave'), ('Display name', 'Dr. Dave'), ('Password', PASSWORD)):
        on_page(ui.input, label).value = text
    await act(on_page(ui.button, 'Add clinician'))
    on_page(ui.select, 'Action').value = 'admin-change-role'  # Carol's change, not shown to Ada before
    await act(on_page(ui.button, 'Show'))
    await act(on_page(ui.button, 'Older entries'))
    await act(on_page(ui.button, 'Download CSV'))

    assert not [e for e in page.elements.values() if isinstance(e, ui.dialog)], 'a dialog was opened'
    assert [row['action'] for row in table.rows] == shown_before
    assert await still_signed_in(bob_token)
    async with runtime.current().database.session() as session:
        assert await accounts.authenticate(session, username='bob', password=PASSWORD) is not None
        assert (await accounts.find_by_username(session, 'bob')).role == 'doctor'
        assert await accounts.find_by_username(session, 'dave') is None
    assert await actions() == trail_before
    user.client = page
    assert (await user.http_client.get('/admin/audit.csv')).status_code == 403


async def test_add_disable_reset_and_change_role(user: User) -> None:
    await create_first_account(user)
    await user.open('/admin')
    await user.should_see('Add a clinician')
    user.find('Username').type('bob')
    user.find('Display name').type('Dr. Bob')
    user.find('Password').type('password12345')
    user.find(kind=ui.button, content='Add clinician').click()
    await user.should_see('commonly used passwords')
    user.find(kind=ui.input, content='Password').clear().type(PASSWORD)
    user.find(kind=ui.button, content='Add clinician').click()
    await user.should_see('Added bob.')
    bob_token = await session_of('bob')
    user.find(kind=ui.button, content='Disable').click()
    await user.should_see('bob disabled; 1 session ended.')
    assert not await still_signed_in(bob_token)
    async with runtime.current().database.session() as session:
        assert await accounts.authenticate(session, username='bob', password=PASSWORD) is None
    user.find(kind=ui.button, content='Enable').click()
    await user.should_see('bob enabled.')
    bob_token = await session_of('bob')
    rows_buttons = buttons(user, 'Reset password')  # one per clinician, in list order: ada, bob
    UserInteraction(user, {rows_buttons[1]}, None).click()
    await user.should_see('Reset the password of bob')
    user.find('New password').type('a phrase for the night shift')
    in_dialog = [button for button in buttons(user, 'Reset password') if button not in rows_buttons]
    UserInteraction(user, set(in_dialog), None).click()
    await user.should_see('Password of bob reset.')
    assert not await still_signed_in(bob_token)
    async with runtime.current().database.session() as session:
        assert await accounts.authenticate(session, username='bob', password='a phrase for the night shift') is not None
    assert ['admin-add-clinician', 'admin-disable', 'admin-enable', 'admin-reset-password'] == [
        action for action in await actions() if action.startswith('admin-')
    ]


async def test_the_audit_log_is_shown_filtered_and_downloaded(user: User) -> None:
    await create_first_account(user)
    await add('bob', 'Dr. Bob')
    user.find(kind=ui.button, content='Log out').click()
    await user.should_see('Log in')
    await log_in(user, 'bob', 'wrong password here')
    await user.should_see('Username or password is incorrect.')
    await log_in(user, 'ada')
    await user.should_see('User: Dr. Ada')
    await user.open('/admin')
    await user.should_see('Audit log')
    table = user.find(kind=ui.table).elements.pop()
    assert [row['action'] for row in table.rows][:3] == ['sign-in', 'sign-in-failed', 'logoff']
    user.find(kind=ui.select, content='Action').elements.pop().value = 'sign-in-failed'
    user.find(kind=ui.button, content='Show').click()
    await asyncio.sleep(0.3)
    assert [(row['action'], row['actor']) for row in table.rows] == [('sign-in-failed', 'bob')]
    response = await user.http_client.get('/admin/audit.csv', params={'action': 'sign-in-failed'})
    assert response.status_code == 200
    assert response.headers['content-type'].startswith('text/csv')
    lines = response.text.splitlines()
    assert lines[0].startswith('seq,at,action,actor')
    assert len(lines) == 2 and ',sign-in-failed,,bob,' in lines[1]
    assert (await actions())[-1] == 'admin-audit-export'
