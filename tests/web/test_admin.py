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
from tests.web.helpers import add, create_first_account, handlers_done, log_in


async def actions() -> list[str]:
    async with runtime.current().database.session() as session:
        return list(await session.scalars(select(AuditEvent.action).order_by(AuditEvent.seq)))


async def session_of(username: str) -> str:
    async with runtime.current().database.session() as session:
        clinician = await accounts.find_by_username(session, username)
        return await sessions.start(session, clinician_id=clinician.id)


async def alive(token: str) -> bool:
    rt = runtime.current()
    async with rt.database.session() as session:
        return await sessions.resolve(session, token, max_age=rt.session_max_age, touch=False) is not None


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
    await create_first_account(user)
    await add('bob', 'Dr. Bob')
    await add('carol', 'Dr. Carol', role='admin')
    await user.open('/admin')
    await user.should_see('Add a clinician')
    async with runtime.current().database.session() as session:  # Carol takes Ada's admin role away
        carol = await accounts.find_by_username(session, 'carol')
        ada = await accounts.find_by_username(session, 'ada')
        await accounts.change_role(session, admin=carol, clinician_id=ada.id, role='doctor')
        await session.commit()
    bob_token = await session_of('bob')
    user.find(kind=ui.button, content='Disable').click()  # Ada's page is still open: the first Disable is Bob's
    await handlers_done('AdminPage._show_clinicians.<locals>.<lambda>')  # handled, whatever it did
    assert await alive(bob_token)
    async with runtime.current().database.session() as session:
        assert await accounts.authenticate(session, username='bob', password=PASSWORD) is not None
    assert 'admin-disable' not in await actions()


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
    assert not await alive(bob_token)
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
    assert not await alive(bob_token)
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
