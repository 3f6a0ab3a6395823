"""Two-step sign-in on the page: setting up an authenticator app (on the Profile, and at sign-in when it is
required), the second step of a password sign-in, and turning it off.

Between the password and the second step nothing is signed in: the clinician, the password's rehash and the
deadline live in this page's handlers on the server (a `Pending`), no session exists yet and the browser's
notebook holds no token, so the workspace, every websocket event of a workspace and every download still see a
signed-out browser. The session, and the new storage identifier of `auth.sign_in`, begin only after the second
step. A pending sign-in expires after `PENDING_SECONDS`; a reload forgets it.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from nicegui import ui

from casebook import metrics
from casebook.services import accounts, audit, two_step
from casebook.services.sessions import SignedIn
from casebook.web import auth, runtime
from casebook.web.attempt import NotDone, attempt, record
from casebook.web.components import heading
from casebook.web.passkeys_ui import passkey_sign_in

PENDING_SECONDS = 5 * 60
TOO_SLOW = 'More than 5 minutes passed since you typed your password. Please log in again.'
TELL_CLASSES = 'text-sm text-red-800'


def _key() -> bytes:
    return two_step.key_of(runtime.current().settings)


def _plural(count: int, word: str) -> str:
    return f'{count} {word}{"s" if count != 1 else ""}'


# ----- pieces shared by the Profile and the sign-in -----------------------------------------------------------


class SetUp:
    """Setting up an authenticator app, built where it is created: `Set up two-step sign-in` shows a QR code and the
    `Secret key`; a current `Code` and `Turn on two-step sign-in` switch it on, and `done` gets the recovery codes.
    `ready` is asked before each step (the session, or the pending sign-in, still valid)."""

    def __init__(
        self,
        clinician_id: int,
        *,
        address: str,
        ready: Callable[[], Awaitable[bool]],
        done: Callable[[list[str]], Awaitable[object]],
    ) -> None:
        self.clinician_id, self.address, self.ready, self.done = clinician_id, address, ready, done
        self.box = ui.column().classes('w-full gap-2')
        self.error = ui.label().props('role=alert').classes(TELL_CLASSES)

    def button(self) -> ui.button:
        return ui.button('Set up two-step sign-in', icon='phonelink_lock', on_click=self.start).props('outline')

    async def start(self) -> None:
        if not await self.ready():
            return
        clinician_id, key = self.clinician_id, _key()
        setup = await attempt(
            lambda: runtime.current().database.run(lambda s: two_step.begin_setup(s, clinician_id, key=key)),
            self.error.set_text,
            what='two-step set-up',
        )
        if isinstance(setup, NotDone):
            return
        self.error.set_text('')
        self.box.clear()
        with self.box:
            ui.label(
                '1. In an authenticator app on your phone (such as Google Authenticator, Microsoft Authenticator or '
                'FreeOTP), add an account by scanning this code:'
            ).classes('text-sm')
            qr = ui.element('img').classes('self-center border rounded')
            qr.props['src'] = setup.qr_data_uri()  # a picture made here, never markup from anyone
            qr.props['alt'] = 'QR code for your authenticator app (the same key is written below)'
            ui.label('Or type this key into the app by hand:').classes('text-sm')
            with ui.column().classes('gap-0'):
                ui.label('Secret key').classes('text-xs text-gray-700')
                ui.label(setup.secret).props('aria-label="Secret key"').classes(
                    'font-mono text-base break-all select-all'
                )
            ui.label('2. Type the 6-digit code the app now shows for Casebook:').classes('text-sm')
            self.code = (
                ui.input('Code')
                .props('autocomplete=one-time-code inputmode=numeric maxlength=12')
                .classes('w-full max-w-xs')
            )
            self.code.on('keydown.enter', self.confirm)
            ui.button('Turn on two-step sign-in', on_click=self.confirm)

    async def confirm(self) -> None:
        if not await self.ready():
            return
        clinician_id, key, address, typed = self.clinician_id, _key(), self.address, self.code.value
        codes = await attempt(
            lambda: runtime.current().database.run(
                lambda s: two_step.confirm_setup(s, clinician_id, typed or '', key=key, address=address)
            ),
            self.error.set_text,
            what='turning on two-step sign-in',
        )
        if isinstance(codes, NotDone):
            self.code.value = ''
            return
        self.error.set_text('')
        self.box.clear()
        with self.box:
            await self.done(codes)


def show_recovery_codes(codes: list[str], username: str) -> None:
    """The recovery codes, once: one per line in the region `Recovery codes`, with a download as text."""
    ui.label(
        'Your recovery codes: each lets you sign in once if you lose your phone. Download or write them down now '
        'and keep them somewhere safe: they are not shown again.'
    ).classes('text-sm font-medium')
    listing = '\n'.join(codes)
    ui.label(listing).props('role=region aria-label="Recovery codes"').classes(
        'whitespace-pre font-mono text-base border rounded px-3 py-2 select-all'
    )
    text = (
        f'Casebook recovery codes for {username}\n'
        'Each code signs you in once, in place of a code from your authenticator app.\n\n'
        f'{listing}\n'
    )
    ui.button(
        'Download recovery codes',
        icon='download',
        on_click=lambda: ui.download.content(text, 'casebook-recovery-codes.txt', 'text/plain'),
    ).props('outline')


# ----- the Profile ---------------------------------------------------------------------------------------------


def two_step_section(
    signed: Callable[[], SignedIn], *, address: str, still_signed_in: Callable[[], Awaitable[bool]]
) -> Callable[[], Awaitable[None]]:
    """Two-step sign-in in the profile dialog: on or off, set up, new recovery codes, turned off with the password
    and a current code. Returns what shows the current state (awaited once the dialog is open)."""
    heading('Two-step sign-in', level=3, classes='text-base font-semibold mt-2')
    box = ui.column().classes('w-full gap-2')
    database = runtime.current().database

    async def show() -> None:
        clinician_id = signed().clinician.id
        box.clear()
        with box:
            error = ui.label().props('role=alert').classes(TELL_CLASSES)
        state = await attempt(
            lambda: database.run(
                lambda s: (two_step.is_on(s, clinician_id), two_step.recovery_codes_left(s, clinician_id))
            ),
            error.set_text,
            what='reading two-step sign-in',
        )
        if isinstance(state, NotDone):
            return
        on, left = state
        with box:
            if on:
                ui.label(
                    'On: after your password, signing in asks for a code from your authenticator app. '
                    f'{_plural(left, "unused recovery code")} left.'
                ).classes('text-sm').props('data-testid=two-step-state')
                with ui.row().classes('gap-2'):
                    ui.button('New recovery codes', on_click=new_codes).props('outline')
                    ui.button('Turn off two-step sign-in', on_click=ask_off).props('flat color=negative no-caps')
            else:
                ui.label(
                    'Off: your password alone signs you in. Turned on, signing in also asks for a code from an '
                    'authenticator app on your phone.'
                ).classes('text-sm').props('data-testid=two-step-state')
                SetUp(clinician_id, address=address, ready=still_signed_in, done=turned_on).button()

    async def turned_on(codes: list[str]) -> None:
        ui.label('Two-step sign-in is on.').props('role=status').classes('text-sm text-green-800 font-medium')
        show_recovery_codes(codes, signed().clinician.username)
        ui.button('Done', on_click=show).props('flat')

    async def new_codes() -> None:
        if not await still_signed_in():
            return
        clinician_id = signed().clinician.id
        codes = await attempt(
            lambda: database.run(lambda s: two_step.new_recovery_codes(s, clinician_id, address=address)),
            ui.notify,
            what='new recovery codes',
        )
        if isinstance(codes, NotDone):
            return
        box.clear()
        with box:
            ui.label('New recovery codes made: the old ones no longer work.').props('role=status').classes('text-sm')
            show_recovery_codes(codes, signed().clinician.username)
            ui.button('Done', on_click=show).props('flat')

    async def ask_off() -> None:
        box.clear()
        with box:
            ui.label('To turn two-step sign-in off, type your password and a current code from your app.').classes(
                'text-sm'
            )
            password = ui.input('Password', password=True).props('autocomplete=current-password').classes('w-full')
            code = ui.input('Code').props('autocomplete=one-time-code inputmode=numeric').classes('w-full max-w-xs')
            error = ui.label().props('role=alert').classes(TELL_CLASSES)

            async def turn_off() -> None:
                if not await still_signed_in():
                    return
                me = signed().clinician
                done = await _turn_off(me, password.value, code.value, address=address, tell=error.set_text)
                password.value = code.value = ''
                if done:
                    await show()
                    with box:
                        ui.label('Two-step sign-in is off.').props('role=status').classes('text-sm')

            code.on('keydown.enter', turn_off)
            with ui.row().classes('gap-2'):
                ui.button('Cancel', on_click=show).props('flat')
                ui.button('Turn off', on_click=turn_off).props('color=negative')

    return show


async def _turn_off(me: accounts.ClinicianInfo, password: str, code: str, *, address: str, tell) -> bool:
    """Off only with the password and a current code (or a recovery code); a wrong one counts towards the sign-in
    throttle and is audited, and is told in one wording whichever was wrong."""
    rt = runtime.current()
    if await auth.throttled(me.username, address, tell):
        return False
    verified = await attempt(
        lambda: accounts.verify_credentials(rt.database.run, username=me.username, password=password or ''),
        tell,
        what='turning off two-step sign-in',
    )
    if isinstance(verified, NotDone):
        return False
    key = _key()
    accepted = verified is not None and verified.clinician.id == me.id
    if accepted:
        checked = await attempt(
            lambda: rt.database.run(lambda s: two_step.verify(s, me.id, code or '', key=key, address=address)),
            tell,
            what='turning off two-step sign-in',
        )
        if isinstance(checked, NotDone):
            return False
        accepted = checked.accepted
    if not accepted:
        await rt.throttle.failed(me.username, address)
        await record(audit.Entry(audit.CODE_REFUSED, me.id, me.username, None, address, 'turning two-step off'))
        tell('The password or the code is not right. Nothing was changed.')
        return False
    done = await attempt(
        lambda: rt.database.run(lambda s: two_step.turn_off(s, me.id, address=address)),
        tell,
        what='turning off two-step sign-in',
    )
    return not isinstance(done, NotDone)


# ----- the sign-in ---------------------------------------------------------------------------------------------


@dataclass
class Pending:
    """A password sign-in waiting for its second step (or, when it is required, for its set-up): on the server
    only, in the login page's handlers."""

    clinician: accounts.ClinicianInfo
    rehash: tuple[str, str] | None
    attempted: str  # the username as throttled and audited
    address: str
    deadline: float = field(default_factory=lambda: time.monotonic() + PENDING_SECONDS)

    @property
    def expired(self) -> bool:
        return time.monotonic() > self.deadline

    def extend(self) -> None:
        self.deadline = time.monotonic() + PENDING_SECONDS


async def finish(pending: Pending, tell: Callable[[str], object], method: str) -> None:
    """The sign-in proven whole: the throttle forgets this account's failures and the session begins."""
    await runtime.current().throttle.succeeded(pending.attempted)
    if await auth.sign_in(pending.clinician, tell, pending.rehash, method=method):
        metrics.sign_in('ok')


def second_step(
    pending: Pending, factors: two_step.Factors, *, tell: Callable[[str], object], restart: Callable[[str], None]
) -> None:
    """The second page of a password sign-in: `Code` and `Verify`, or `Use a recovery code`."""
    heading('Two-step sign-in', level=2, classes='text-base font-semibold')
    rt = runtime.current()
    hint = ui.label('Type the 6-digit code your authenticator app shows for Casebook.').classes('text-sm')
    code = (
        ui.input('Code').props('autocomplete=one-time-code inputmode=numeric maxlength=12 autofocus').classes('w-full')
    )
    recovery = ui.input('Recovery code').props('autocomplete=off spellcheck=false').classes('w-full')
    recovery.set_visibility(False)

    async def verify() -> None:
        if pending.expired:
            restart(TOO_SLOW)
            return
        box = recovery if recovery.visible else code
        typed = box.value if isinstance(box.value, str) else ''
        if await auth.throttled(pending.attempted, pending.address, tell):
            return
        clinician_id, key, address = pending.clinician.id, _key(), pending.address
        checked = await attempt(
            lambda: rt.database.run(lambda s: two_step.verify(s, clinician_id, typed, key=key, address=address)),
            tell,
            what='sign-in',
            unreachable=auth.SIGN_IN_NOT_SAVED,
        )
        if isinstance(checked, NotDone):
            return
        if not checked.accepted:
            kind = 'recovery code' if box is recovery else 'code'
            await auth.refused(pending.attempted, address, actor_id=clinician_id, detail=f'{kind} refused')
            box.value = ''
            tell(checked.message)
            return
        await finish(pending, tell, 'password+code' if checked.kind == 'code' else 'password+recovery-code')

    def use_recovery() -> None:
        using = not recovery.visible
        verify_button.set_visibility(True)
        recovery.set_visibility(using)
        code.set_visibility(not using)
        hint.set_text(
            'Type one of your recovery codes (each works once).'
            if using
            else 'Type the 6-digit code your authenticator app shows for Casebook.'
        )
        switch.set_text('Use a code from the app' if using else 'Use a recovery code')
        (recovery if using else code).run_method('focus')

    code.on('keydown.enter', verify)
    recovery.on('keydown.enter', verify)
    if not factors.app:  # passkeys only: the app's code cannot be asked for
        code.set_visibility(False)
        hint.set_text('Use your passkey to finish signing in.')
    verify_button = ui.button('Verify', on_click=verify).classes('w-full')
    verify_button.set_visibility(factors.app)
    switch = ui.button('Use a recovery code', on_click=use_recovery).props('flat no-caps')
    switch.set_visibility(factors.app)
    if factors.passkeys:

        async def with_passkey(clinician: accounts.ClinicianInfo) -> bool:
            """The session begins (passkey_sign_in has counted the success: throttle and metric)."""
            if pending.expired:
                restart(TOO_SLOW)
                return False
            return await auth.sign_in(pending.clinician, tell, pending.rehash, method='password+passkey')

        passkey_sign_in(with_passkey, tell, address=pending.address, clinician_id=pending.clinician.id)
    ui.button('Start again', on_click=lambda: restart('')).props('flat no-caps')
    if factors.app:
        code.run_method('focus')  # shown after the page loaded: `autofocus` alone would not move the focus


def required_setup(pending: Pending, *, tell: Callable[[str], object], restart: Callable[[str], None]) -> None:
    """CASEBOOK_REQUIRE_TWO_STEP and a clinician without a second step: set up an authenticator app before
    anything else; the session begins once it is on and the recovery codes were shown."""
    heading('Set up two-step sign-in', level=2, classes='text-base font-semibold')
    ui.label(
        'This Casebook requires a second step at sign-in. Set up an authenticator app now to continue; it takes '
        'about a minute.'
    ).classes('text-sm')

    async def ready() -> bool:
        if pending.expired:
            restart(TOO_SLOW)
            return False
        pending.extend()  # each step of the set-up gives another five minutes
        return True

    async def done(codes: list[str]) -> None:
        show_recovery_codes(codes, pending.clinician.username)

        async def go_on() -> None:
            if pending.expired:
                restart(TOO_SLOW)
                return
            await finish(pending, tell, 'password+code')

        ui.button('Continue', on_click=go_on).classes('w-full')

    SetUp(pending.clinician.id, address=pending.address, ready=ready, done=done).button()
    ui.button('Start again', on_click=lambda: restart('')).props('flat no-caps')
