"""First run, login and (when open) registration."""

from __future__ import annotations

import logging

from fastapi.responses import RedirectResponse
from nicegui import ui

from casebook.services import accounts, audit, two_step
from casebook.services.errors import CasebookError
from casebook.web import auth, oidc, runtime
from casebook.web.attempt import NotDone, attempt, database_page
from casebook.web.components import duration, form_card, show_error
from casebook.web.passkeys_ui import passkey_sign_in
from casebook.web.two_step_ui import Pending, finish, required_setup, second_step

log = logging.getLogger(__name__)


def register() -> None:
    ui.page('/setup', title='Set up Casebook')(database_page(setup_page))
    ui.page('/login', title='Log in · Casebook')(database_page(login_page))
    ui.page('/register', title='Create account · Casebook')(database_page(register_page))


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
            address = ui.context.client.ip or ''

            def audited(clinician: accounts.ClinicianInfo) -> audit.Entry:
                return audit.Entry(
                    audit.ACCOUNT_CREATED, clinician.id, clinician.username, None, address, clinician.role
                )

            clinician = await attempt(
                lambda: create(
                    runtime.current().database.run,
                    username=username.value,
                    display_name=display_name.value,
                    password=password.value,
                    audited=audited,
                ),
                lambda message: show_error(error, message),
                what='new account',
            )
            if not isinstance(clinician, NotDone):
                await auth.sign_in(clinician, lambda message: show_error(error, message))

        password.on('keydown.enter', submit)
        ui.button('Create account', on_click=submit).classes('w-full')


async def login_page() -> RedirectResponse | None:
    if await auth.needs_first_account():
        return RedirectResponse('/setup', status_code=303)
    if await auth.current() is not None:
        return RedirectResponse('/', status_code=303)
    ended = auth.notebook().take_ended_reason()
    with form_card('Log in', 'Your notebook is private to you.') as error:
        if ended is not None:
            ui.label(_ended_message(ended)).props('role=status').classes(
                'w-full rounded bg-amber-50 text-amber-900 border border-amber-300 px-3 py-2 text-sm'
            )
        first = ui.column().classes('w-full gap-3')
        second = ui.column().classes('w-full gap-3')  # the second step, or the set-up required first
        second.set_visibility(False)
        with first:
            username = ui.input('Username').props('autocomplete=username autofocus').classes('w-full')
            password = (
                ui.input('Password', password=True, password_toggle_button=True)
                .props('autocomplete=current-password')
                .classes('w-full')
            )

        def tell(message: str) -> None:
            show_error(error, message)

        def restart(message: str) -> None:
            """Back to the password: the pending sign-in is forgotten."""
            second.clear()
            second.set_visibility(False)
            first.set_visibility(True)
            password.value = ''
            tell(message)

        async def submit() -> None:
            rt = runtime.current()
            address = ui.context.client.ip or ''
            name = username.value if isinstance(username.value, str) else ''
            attempted = _attempted_username(name)
            if await auth.throttled(attempted, address, tell):
                return
            verified = await attempt(
                lambda: accounts.verify_credentials(rt.database.run, username=name, password=password.value),
                tell,
                what='sign-in',
                unreachable=auth.SIGN_IN_NOT_SAVED,
            )
            if isinstance(verified, NotDone):
                return
            if verified is None or not oidc.password_allowed(rt.settings, verified.clinician.username):
                await auth.refused(attempted, address)
                password.value = ''
                tell('Username or password is incorrect.')
                return
            clinician_id = verified.clinician.id
            factors = await attempt(
                lambda: rt.database.run(lambda s: two_step.factors(s, clinician_id)),
                tell,
                what='sign-in',
                unreachable=auth.SIGN_IN_NOT_SAVED,
            )
            if isinstance(factors, NotDone):
                return
            pending = Pending(verified.clinician, verified.rehash, attempted, address)
            if factors.any or rt.settings.require_two_step:
                tell('')
                first.set_visibility(False)
                second.set_visibility(True)
                with second:
                    if factors.any:
                        second_step(pending, factors, tell=tell, restart=restart)
                    else:
                        required_setup(pending, tell=tell, restart=restart)
                return
            await finish(pending, tell, 'password')

        username.on('keydown.enter', lambda: password.run_method('focus'))
        password.on('keydown.enter', submit)
        with first:
            ui.button('Log in', on_click=submit).classes('w-full')
            passkey_sign_in(lambda c: auth.sign_in(c, tell, method='passkey'), tell, address=ui.context.client.ip or '')
            if runtime.current().settings.open_registration:
                ui.link('Create an account', '/register').classes('text-sm')
            await oidc.login_section()
    return None


def _attempted_username(raw: str) -> str:
    """What a failed sign-in is recorded and throttled under: the username as typed when it could be one,
    never anything else (a password typed into the wrong box must not reach the audit trail)."""
    try:
        return accounts.normalize_username(raw)
    except CasebookError:
        return '(not a username)'


def _ended_message(reason: str) -> str:
    idle = duration(runtime.current().settings.idle_timeout_minutes)
    hours = runtime.current().settings.session_max_hours
    return {
        'idle': f'You were logged off after {idle} without activity. Please log in again.',
        'expired': f'Your session reached its {hours}-hour limit. Please log in again.',
        'ended-elsewhere': 'Your session was ended from another of your sessions. Please log in again.',
        'password-changed': 'Your password was changed in another session. Please log in with the new one.',
        'disabled': 'Your account was disabled by an administrator.',
        'two-step-reset': 'An administrator reset your two-step sign-in. Please log in again.',
    }.get(reason, 'Please log in again.')
