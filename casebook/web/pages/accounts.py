"""First run, login and (when open) registration."""

from __future__ import annotations

from fastapi.responses import RedirectResponse
from nicegui import ui

from casebook.services import accounts
from casebook.services.errors import CasebookError
from casebook.web import auth, runtime
from casebook.web.components import form_card, show_error


def register() -> None:
    ui.page('/setup', title='Set up Casebook')(setup_page)
    ui.page('/login', title='Log in · Casebook')(login_page)
    ui.page('/register', title='Create account · Casebook')(register_page)


async def setup_page() -> RedirectResponse | None:
    """The very first visitor creates the first account, an admin."""
    if not await auth.needs_first_account():
        return RedirectResponse('/login', status_code=303)
    _account_form(
        title='Create the first account',
        subtitle='This account will be the administrator. Others are added by an administrator afterwards.',
        create=lambda s, **kw: accounts.create_first_account(s, **kw),
    )
    return None


async def register_page() -> RedirectResponse | None:
    if await auth.needs_first_account():
        return RedirectResponse('/setup', status_code=303)
    if not runtime.current().settings.open_registration:
        return RedirectResponse('/login', status_code=303)
    _account_form(
        title='Create your account',
        subtitle='You will write as a doctor; an administrator can change your role.',
        create=lambda s, **kw: accounts.add_clinician(s, role='doctor', **kw),
    )
    return None


def _account_form(*, title: str, subtitle: str, create) -> None:
    with form_card(title, subtitle) as error:
        username = ui.input('Username').props('autocomplete=username autofocus').classes('w-full')
        display_name = ui.input('Display name').props('autocomplete=name').classes('w-full')
        password = (
            ui.input('Password', password=True, password_toggle_button=True)
            .props('autocomplete=new-password')
            .classes('w-full')
        )
        ui.label(
            f'At least {accounts.PASSWORD_MIN} characters; a phrase of several words is easy to remember.'
        ).classes('text-xs text-gray-700')

        async def submit() -> None:
            try:
                async with runtime.current().database.session() as session:
                    clinician = await create(
                        session, username=username.value, display_name=display_name.value, password=password.value
                    )
            except CasebookError as refusal:
                show_error(error, refusal.message)
                return
            await auth.sign_in(clinician)
            ui.navigate.to('/')

        password.on('keydown.enter', submit)
        ui.button('Create account', on_click=submit).classes('w-full')


async def login_page() -> RedirectResponse | None:
    if await auth.needs_first_account():
        return RedirectResponse('/setup', status_code=303)
    if await auth.current() is not None:
        return RedirectResponse('/', status_code=303)
    with form_card('Log in', 'Your notebook is private to you.') as error:
        username = ui.input('Username').props('autocomplete=username autofocus').classes('w-full')
        password = (
            ui.input('Password', password=True, password_toggle_button=True)
            .props('autocomplete=current-password')
            .classes('w-full')
        )

        async def submit() -> None:
            async with runtime.current().database.session() as session:
                clinician = await accounts.authenticate(session, username=username.value, password=password.value)
            if clinician is None:
                password.value = ''
                show_error(error, 'Username or password is incorrect.')
                return
            await auth.sign_in(clinician)
            ui.navigate.to('/')

        username.on('keydown.enter', lambda: password.run_method('focus'))
        password.on('keydown.enter', submit)
        ui.button('Log in', on_click=submit).classes('w-full')
        if runtime.current().settings.open_registration:
            ui.link('Create an account', '/register').classes('text-sm')
    return None
