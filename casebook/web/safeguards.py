"""The session safeguards a workspace tab carries: automatic logoff, the Sessions view, changing the password.

Automatic logoff is decided on the server: a session whose last activity is older than the idle timeout is
ended by the next check of it (any event, or this tab's periodic check), whatever the browser does. The
tab only warns a minute before and offers to stay signed in.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import TypeVar

from nicegui import ui
from sqlalchemy.orm import Session

from casebook.db import DATABASE_ERRORS
from casebook.models import utcnow
from casebook.services import accounts, audit, sessions
from casebook.services.sessions import SignedIn
from casebook.web import auth, runtime
from casebook.web.attempt import UNREACHABLE, NotDone, attempt
from casebook.web.components import duration, heading

WARNING_LEAD = timedelta(seconds=60)  # the warning shows this long before the logoff
CHECK_AT_MOST_EVERY = timedelta(seconds=60)  # far from the deadline; nearer, the next check lands on it
T = TypeVar('T')


class IdleWatch:
    """Checks this tab's session now and then; warns before the idle logoff; leaves when the session ends."""

    def __init__(self, token: str, on_ended: Callable[[], None]) -> None:
        self.token = token
        self.on_ended = on_ended
        self.idle = runtime.current().idle_timeout
        self.lead = min(WARNING_LEAD, self.idle / 2)
        self.active = False  # typed since the last check: that is activity too
        self.checking = False
        with (
            ui.dialog().props('persistent aria-label="Still there?"') as self.dialog,
            ui.card().classes('max-w-md').props('role=alertdialog'),
        ):
            heading('Still there?', level=2, classes='text-lg font-semibold')
            idle = duration(self.idle.total_seconds() / 60)
            ui.label(
                f'To keep patients’ notes private, Casebook logs you off after {idle} without activity. '
                'You will be logged off in less than a minute.'
            )
            with ui.row().classes('w-full justify-end'):
                ui.button('Stay signed in', on_click=self.stay).props('autofocus')
        self.longest = min(CHECK_AT_MOST_EVERY, self.idle / 4)
        self.timer = ui.timer(self.longest.total_seconds(), self.check)

    def activity(self) -> None:
        self.active = True

    async def stay(self) -> None:
        self.active = True
        await self.check()

    async def check(self) -> None:
        if self.checking:
            return
        self.checking = True
        try:
            touch, self.active = self.active, False
            try:
                signed = await auth.signed_in(self.token, touch=touch)
            except DATABASE_ERRORS:
                return  # the next check tries again; the server decides either way
            if signed is None:
                self.dialog.close()
                self.on_ended()
                return
            self.seen(signed)
        finally:
            self.checking = False

    def seen(self, signed: SignedIn) -> None:
        """The session as just read: show or hide the warning, and time the next check.

        Checks are rare while the deadline is far (one a minute per tab at most) and land on the moment the
        warning is due, then on the deadline itself: a few hundred open tabs cost a few reads a second.
        """
        if signed.last_seen_at is None:
            return
        remaining = self.idle - (utcnow() - signed.last_seen_at)
        if remaining <= self.lead:
            self.dialog.open()
            wait = remaining
        else:
            self.dialog.close()
            wait = remaining - self.lead
        seconds = min(self.longest, max(wait, timedelta(seconds=1))).total_seconds() + 0.5
        if abs(self.timer.interval - seconds) > 0.25:
            self.timer.interval = seconds


def describe_device(user_agent: str) -> str:
    """A short, readable device name from a user agent (shown as text, never as HTML)."""
    agent = user_agent or ''
    browser = next(
        (
            name
            for key, name in (('Edg/', 'Edge'), ('Firefox/', 'Firefox'), ('Chrome/', 'Chrome'), ('Safari/', 'Safari'))
            if key in agent
        ),
        'Browser',
    )
    system = next(
        (
            name
            for key, name in (
                ('Windows', 'Windows'),
                ('Android', 'Android'),
                ('iPhone', 'iPhone'),
                ('iPad', 'iPad'),
                ('Mac OS', 'macOS'),
                ('Linux', 'Linux'),
            )
            if key in agent
        ),
        'unknown system',
    )
    return f'{browser} on {system}' if agent else 'Unknown device'


async def show_sessions(
    signed: SignedIn, *, address: str, format_time: Callable, still_signed_in: Callable[[], Awaitable[bool]]
) -> None:
    """The clinician's live sessions, with a way to end any or all of the others."""
    rt = runtime.current()
    clinician = signed.clinician
    with ui.dialog().props('aria-label="Your sessions"') as dialog, ui.card().classes('w-full max-w-xl'):
        heading('Your sessions', level=2, classes='text-lg font-semibold')
        ui.label('Every browser where you are signed in. End any you do not recognise or no longer use.').classes(
            'text-sm text-gray-700'
        )
        listing = ui.column().classes('w-full gap-2')
        message = ui.label().props('role=status').classes('text-sm')

        async def end(ids: list[str]) -> None:
            if not await still_signed_in():
                dialog.close()
                return
            ended = await attempt(
                lambda: rt.database.run(
                    lambda session: _committed(
                        session,
                        sessions.end_own_sync(
                            session,
                            clinician_id=clinician.id,
                            session_ids=ids,
                            reason='ended-elsewhere',
                            address=address,
                        ),
                    )
                ),
                message.set_text,
                what='ending sessions',
            )
            if isinstance(ended, NotDone):
                return
            await auth.announce_ended(clinician.id, ended, 'ended-elsewhere')
            message.set_text(f'Ended {len(ended)} session{"s" if len(ended) != 1 else ""}.')
            await fill()

        async def fill() -> None:
            try:
                async with rt.database.session() as session:
                    live = await sessions.list_active(session, clinician_id=clinician.id, limits=rt.limits)
            except DATABASE_ERRORS:
                message.set_text(UNREACHABLE)
                return
            listing.clear()
            others = [item.id for item in live if item.id != signed.session_id]
            with listing:
                for item in live:
                    with ui.row().classes('w-full items-center gap-2 border rounded px-3 py-2').props('role=group'):
                        with ui.column().classes('gap-0 grow'):
                            this = ' (this browser)' if item.id == signed.session_id else ''
                            ui.label(describe_device(item.user_agent) + this).classes('font-medium')
                            ui.label(
                                f'{item.address or "unknown address"} · last active {format_time(item.last_seen_at)}'
                                f' · signed in {format_time(item.created_at)}'
                            ).classes('text-xs text-gray-700')
                        if item.id != signed.session_id:
                            ui.button('End', on_click=lambda sid=item.id: end([sid])).props('outline dense')
                if others:
                    ui.button('End all other sessions', on_click=lambda: end(others)).props('color=negative')
                else:
                    ui.label('No other sessions.').classes('text-sm text-gray-700')

        with ui.row().classes('w-full justify-end'):
            ui.button('Close', on_click=dialog.close).props('flat')
        await fill()
    dialog.on('hide', dialog.delete)
    dialog.open()


def _committed(session: Session, result: T) -> T:
    session.commit()
    return result


def password_form(
    signed: Callable[[], SignedIn], *, address: str, still_signed_in: Callable[[], Awaitable[bool]]
) -> None:
    """Change one's own password (inside the profile dialog); every other session of the clinician ends."""
    rt = runtime.current()
    heading('Change password', level=3, classes='text-base font-semibold mt-2')
    current = ui.input('Current password', password=True).props('autocomplete=current-password').classes('w-full')
    new = (
        ui.input('New password', password=True, password_toggle_button=True)
        .props('autocomplete=new-password')
        .classes('w-full')
    )
    ui.label(f'At least {accounts.PASSWORD_MIN} characters; a phrase of several words is easy to remember.').classes(
        'text-xs text-gray-700'
    )
    result = ui.label().props('role=alert').classes('text-sm')

    async def change() -> None:
        if not await still_signed_in():
            return
        me = signed()

        def tell(text: str) -> None:
            result.classes(replace='text-sm text-red-800').set_text(text)

        def then(session: Session) -> frozenset[str]:
            entry = audit.Entry(audit.PASSWORD_CHANGED, me.clinician.id, me.clinician.username, None, address)
            audit.record_sync(session, entry)
            return sessions.end_all_sync(
                session, clinician_id=me.clinician.id, reason='password-changed', address=address, keep=me.session_id
            )

        ended = await attempt(
            lambda: accounts.change_password(
                rt.database.run, clinician_id=me.clinician.id, current=current.value, new=new.value, then=then
            ),
            tell,
            what='password change',
        )
        if isinstance(ended, NotDone):
            return
        current.value = new.value = ''
        await auth.announce_ended(me.clinician.id, ended, 'password-changed')
        others = f' and {len(ended)} other session{"s" if len(ended) != 1 else ""} ended' if ended else ''
        result.classes(replace='text-sm text-green-800').set_text(f'Password changed{others}.')

    ui.button('Change password', on_click=change).props('outline')
