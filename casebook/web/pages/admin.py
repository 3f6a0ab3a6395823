"""The admin page: clinicians (add, disable, reset password, change role) and the audit log.

Only admins reach it, and every action re-checks that the one clicking is (still) a signed-in admin: a
clinician who is not gets the login page or a refusal, whatever event their browser sends.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime, time, timedelta
from typing import TypeVar
from urllib.parse import urlencode
from zoneinfo import ZoneInfo

from fastapi import Request
from fastapi.responses import PlainTextResponse, RedirectResponse, Response, StreamingResponse
from nicegui import app, ui
from sqlalchemy.orm import Session

from casebook.db import DATABASE_ERRORS
from casebook.services import accounts, audit, sessions, two_step
from casebook.services.errors import CasebookError
from casebook.services.sessions import SignedIn
from casebook.web import auth, downloads, runtime
from casebook.web.attempt import UNREACHABLE, NotDone, attempt, database_page, record
from casebook.web.components import heading, theme_switch

log = logging.getLogger(__name__)
T = TypeVar('T')
PAGE = 100
ACTIVITY_DAYS = 30


def register() -> None:
    ui.page('/admin', title='Admin · Casebook')(database_page(admin_page))
    app.add_api_route('/admin/audit.csv', audit_csv, methods=['GET'], include_in_schema=False)


async def admin_page() -> RedirectResponse | None:
    signed = await auth.current()
    if signed is None:
        return RedirectResponse('/login', status_code=303)
    if not signed.clinician.is_admin:
        with ui.column().classes('w-full max-w-xl mx-auto p-6 gap-3'):
            heading('Admin', classes='text-2xl font-semibold')
            ui.label('Only administrators can open this page.').props('role=alert')
            ui.link('Back to your notebook', '/')
        return None
    page = AdminPage(signed, auth.notebook().token or '')
    await page.build()
    return None


class AdminPage:
    def __init__(self, signed: SignedIn, token: str) -> None:
        self.signed = signed
        self.token = token
        self.client = ui.context.client
        self.zone = ZoneInfo(auth.notebook().timezone or 'UTC')
        self.oldest: tuple[datetime, int] | None = None  # (at, seq) of the last row shown: where "older" goes on

    @property
    def address(self) -> str:
        return self.client.ip or ''

    async def build(self) -> None:
        with ui.header(elevated=True).classes('items-center gap-4 px-4 py-2'):
            heading('Casebook admin', classes='text-xl font-semibold')
            ui.label(f'User: {self.signed.clinician.display_name}').classes('text-base')
            ui.space()
            theme_switch(auth.notebook())
            ui.button('Back to notebook', on_click=lambda: ui.navigate.to('/')).props('flat color=white no-caps')
        with ui.column().classes('w-full max-w-6xl mx-auto gap-6 p-4'):
            heading('Activity', level=2, classes='text-lg font-semibold')
            self.activity = ui.column().classes('w-full gap-2')
            heading('Clinicians', level=2, classes='text-lg font-semibold')
            self.notice = ui.label().props('role=status').classes('text-sm')
            self.clinicians = ui.column().classes('w-full gap-2')
            self._add_form()
            ui.separator()
            heading('Audit log', level=2, classes='text-lg font-semibold')
            self._audit_filters()
            # the table scrolls sideways on a narrow screen inside a region the keyboard can reach and scroll
            region = ui.element('div').classes('casebook-scroll-region w-full overflow-x-auto')
            region.props('tabindex=0 role=region aria-label="Audit log entries"')
            with region:
                self.audit_table = ui.table(
                    columns=[
                        {'name': 'seq', 'label': '#', 'field': 'seq', 'align': 'right'},
                        {'name': 'at', 'label': 'Time', 'field': 'at', 'align': 'left'},
                        {'name': 'action', 'label': 'Action', 'field': 'action', 'align': 'left'},
                        {'name': 'actor', 'label': 'Who', 'field': 'actor', 'align': 'left'},
                        {'name': 'patient', 'label': 'Patient', 'field': 'patient', 'align': 'left'},
                        {'name': 'address', 'label': 'Address', 'field': 'address', 'align': 'left'},
                        {'name': 'detail', 'label': 'Detail', 'field': 'detail', 'align': 'left'},
                    ],
                    rows=[],
                    row_key='seq',
                    pagination=0,
                ).classes('w-full')
            with ui.row().classes('gap-2'):
                self.older = ui.button('Older entries', on_click=self._older).props('flat no-caps')
        await self._show_activity()
        await self._show_clinicians()
        await self._show_audit(checked=True)

    async def _still_admin(self) -> bool:
        """Every action: still signed in, and still an admin."""
        try:
            signed = await auth.signed_in(self.token)
        except DATABASE_ERRORS:
            ui.notify(UNREACHABLE, type='negative')
            return False
        if signed is None or signed.clinician.id != self.signed.clinician.id:
            ui.navigate.to('/login')
            return False
        if not signed.clinician.is_admin:
            ui.notify('Only administrators can do this.', type='negative')
            ui.navigate.to('/')
            return False
        self.signed = signed
        return True

    # ----- activity ----------------------------------------------------------------------------------

    async def _show_activity(self) -> None:
        """Clinicians signed in now, and a chart of the last 30 days: a spike of failed sign-ins is seen at once."""
        rt = runtime.current()
        try:
            async with rt.database.session() as session:
                now = await sessions.count_signed_in(session, limits=rt.limits)
                days = await audit.daily_counts(session, days=ACTIVITY_DAYS, zone=self.zone)
        except DATABASE_ERRORS:
            self.notice.set_text(UNREACHABLE)
            return
        series = {
            audit.MESSAGE_WRITTEN: ('Messages written', '#2563eb'),
            audit.SIGN_IN: ('Sign-ins', '#059669'),
            audit.SIGN_IN_FAILED: ('Failed sign-ins', '#dc2626'),
        }
        totals = {action: sum(counts[action] for _, counts in days) for action in series}
        worst_day, worst = max(days, key=lambda item: item[1][audit.SIGN_IN_FAILED])
        summary = (
            f'Last {ACTIVITY_DAYS} days: {totals[audit.MESSAGE_WRITTEN]} messages written, '
            f'{totals[audit.SIGN_IN]} sign-ins, {totals[audit.SIGN_IN_FAILED]} failed sign-ins'
            + (f' (most on {worst_day:%-d %b}: {worst[audit.SIGN_IN_FAILED]})' if worst[audit.SIGN_IN_FAILED] else '')
            + '.'
        )
        self.activity.clear()
        with self.activity:
            ui.label(f'Signed in now: {now} clinician{"" if now == 1 else "s"}').classes('text-base font-medium')
            ui.label(summary).classes('text-sm').mark('activity-summary')
            muted = '#6b7280'  # readable on the light and the dark page (3:1 and more, as graphics need)
            ui.echart(
                {
                    # what a screen reader hears (ECharts puts it on the chart as its aria-label)
                    'aria': {'enabled': True, 'label': {'description': summary}},
                    'animation': False,
                    'tooltip': {'trigger': 'axis'},
                    'legend': {'top': 0, 'textStyle': {'color': muted}},
                    'grid': {'left': 40, 'right': 16, 'top': 40, 'bottom': 30},
                    'xAxis': {
                        'type': 'category',
                        'data': [f'{day:%-d %b}' for day, _ in days],
                        'axisLabel': {'color': muted},
                    },
                    'yAxis': {'type': 'value', 'minInterval': 1, 'axisLabel': {'color': muted}},
                    'series': [
                        {
                            'name': name,
                            'type': 'line' if action == audit.MESSAGE_WRITTEN else 'bar',
                            'data': [counts[action] for _, counts in days],
                            'itemStyle': {'color': colour},
                        }
                        for action, (name, colour) in series.items()
                    ],
                }
            ).classes('w-full h-64').props(f'role=img aria-label="{summary}"')

    # ----- clinicians ---------------------------------------------------------------------------------

    async def _show_clinicians(self) -> None:
        try:
            async with runtime.current().database.session() as session:
                rows = await accounts.list_clinicians(session)
        except DATABASE_ERRORS:
            self.notice.set_text(UNREACHABLE)
            return
        self.clinicians.clear()
        with self.clinicians:
            for row in rows:
                with ui.row().classes('w-full items-center gap-3 border rounded px-3 py-2').props('role=group'):
                    with ui.column().classes('gap-0 grow min-w-40'):
                        ui.label(row.display_name).classes('font-medium')
                        status = ' · disabled' if row.disabled else ''
                        ui.label(f'{row.username}{status}').classes('text-sm text-gray-700')
                    ui.select(
                        list(accounts.ROLES),
                        value=row.role,
                        label='Role',
                        on_change=lambda event, r=row: self._change_role(r, event.value),
                    ).props(f'dense outlined aria-label="Role of {row.username}"').classes('w-32')
                    if row.id != self.signed.clinician.id:
                        label = 'Enable' if row.disabled else 'Disable'
                        ui.button(label, on_click=lambda r=row: self._set_disabled(r, not r.disabled)).props(
                            'outline dense' + ('' if row.disabled else ' color=negative')
                        )
                    ui.button('Reset password', on_click=lambda r=row: self._reset_password(r)).props('flat dense')
                    ui.button('Reset two-step sign-in', on_click=lambda r=row: self._reset_two_step(r)).props(
                        f'flat dense no-caps aria-label="Reset two-step sign-in of {row.username}"'
                    )

    def _add_form(self) -> None:
        with ui.card().classes('w-full max-w-2xl'):
            heading('Add a clinician', level=3, classes='text-base font-semibold')
            with ui.row().classes('w-full gap-2 items-start'):
                username = ui.input('Username').props('autocomplete=off').classes('grow')
                name = ui.input('Display name').classes('grow')
                role = ui.select(list(accounts.ROLES), value='doctor', label='Role').classes('w-32')
            password = ui.input('Password', password=True, password_toggle_button=True).props(
                'autocomplete=new-password'
            )
            password.classes('w-full')
            error = ui.label().props('role=alert').classes('text-sm text-red-800')

            async def add() -> None:
                if not await self._still_admin():
                    return
                added = await attempt(
                    lambda: accounts.add_clinician(
                        runtime.current().database.run,
                        username=username.value,
                        display_name=name.value,
                        password=password.value,
                        role=role.value,
                        audited=lambda new: self._entry(audit.ADMIN_ADD, f'{new.username} as {new.role}'),
                    ),
                    error.set_text,
                    what='adding a clinician',
                )
                if isinstance(added, NotDone):
                    return
                error.set_text('')
                username.value = name.value = password.value = ''
                self.notice.set_text(f'Added {added.username}.')
                await self._show_clinicians()

            ui.button('Add clinician', on_click=add)

    def _entry(self, action: str, detail: str) -> audit.Entry:
        me = self.signed.clinician
        return audit.Entry(action, me.id, me.username, None, self.address, detail)

    async def _change(self, change: Callable[[Session], T], action: str, detail: str, tell=None) -> T | NotDone:
        """One admin action as one unit of work with its audit row; the admin told when it could not be done."""
        entry = self._entry(action, detail)

        def work(session: Session) -> T:
            audit.record_sync(session, entry)  # before what the action causes (logoffs): the trail reads in order
            result = change(session)
            session.commit()
            return result

        return await attempt(
            lambda: runtime.current().database.run(work), tell or self.notice.set_text, what=f'admin action {action}'
        )

    async def _set_disabled(self, row: accounts.ClinicianRow, disabled: bool) -> None:
        if not await self._still_admin():
            return
        admin, address = self.signed.clinician, self.address

        def change(session: Session) -> tuple[accounts.ClinicianRow, frozenset[str]]:
            changed = accounts.set_disabled_sync(session, admin=admin, clinician_id=row.id, disabled=disabled)
            ended = (
                sessions.end_all_sync(session, clinician_id=row.id, reason='disabled', address=address)
                if disabled
                else frozenset()
            )
            return changed, ended

        done = await self._change(change, audit.ADMIN_DISABLE if disabled else audit.ADMIN_ENABLE, row.username)
        if isinstance(done, NotDone):
            return
        changed, ended = done
        if disabled:
            await auth.announce_ended(row.id, None, 'disabled')  # every open tab of theirs leaves at once
        what = 'disabled' if changed.disabled else 'enabled'
        ended_text = f'; {len(ended)} session{"s" if len(ended) != 1 else ""} ended' if disabled else ''
        self.notice.set_text(f'{row.username} {what}{ended_text}.')
        await self._show_clinicians()

    async def _change_role(self, row: accounts.ClinicianRow, role: str) -> None:
        if role == row.role or not await self._still_admin():
            return
        admin = self.signed.clinician
        done = await self._change(
            lambda session: accounts.change_role_sync(session, admin=admin, clinician_id=row.id, role=role),
            audit.ADMIN_CHANGE_ROLE,
            f'{row.username}: {row.role} -> {role}',
        )
        if not isinstance(done, NotDone):
            self.notice.set_text(f'{row.username} is now {role}.')
        await self._show_clinicians()

    async def _reset_password(self, row: accounts.ClinicianRow) -> None:
        if not await self._still_admin():
            return
        with ui.dialog() as dialog, ui.card().classes('w-full max-w-md'):
            dialog.props['aria-label'] = f'Reset the password of {row.username}'
            heading(f'Reset the password of {row.username}', level=2, classes='text-lg font-semibold')
            ui.label('Their sessions end; tell them the new password in person.').classes('text-sm text-gray-700')
            password = ui.input('New password', password=True, password_toggle_button=True).classes('w-full')
            error = ui.label().props('role=alert').classes('text-sm text-red-800')

            async def save() -> None:
                if not await self._still_admin():
                    return
                rt, address = runtime.current(), self.address
                new_hash = await attempt(
                    lambda: accounts.new_password_hash(rt.database.run, clinician_id=row.id, new=password.value),
                    error.set_text,
                    what='password reset',
                )
                if isinstance(new_hash, NotDone):
                    return

                def change(session: Session) -> frozenset[str]:
                    accounts.set_password_hash_sync(session, clinician_id=row.id, password_hash=new_hash)
                    return sessions.end_all_sync(
                        session, clinician_id=row.id, reason='password-changed', address=address
                    )

                ended = await self._change(change, audit.ADMIN_RESET_PASSWORD, row.username, tell=error.set_text)
                if isinstance(ended, NotDone):
                    return
                await auth.announce_ended(row.id, ended, 'password-changed')
                self.notice.set_text(f'Password of {row.username} reset.')
                dialog.close()

            with ui.row().classes('w-full justify-end'):
                ui.button('Cancel', on_click=dialog.close).props('flat')
                ui.button('Reset password', on_click=save)
        dialog.on('hide', dialog.delete)
        dialog.open()

    async def _reset_two_step(self, row: accounts.ClinicianRow) -> None:
        """Take away a clinician's authenticator app, recovery codes and passkeys (a lost phone), confirmed first;
        every session of theirs ends at once."""
        if not await self._still_admin():
            return
        with ui.dialog() as dialog, ui.card().classes('w-full max-w-md'):
            dialog.props['aria-label'] = f'Reset two-step sign-in of {row.username}'
            heading(f'Reset two-step sign-in of {row.username}?', level=2, classes='text-lg font-semibold')
            ui.label(
                'Their authenticator app, recovery codes and passkeys stop working and their sessions end. They '
                'sign in with their password next, and set up two-step sign-in again (at once when it is required).'
            ).classes('text-sm text-gray-700')
            error = ui.label().props('role=alert').classes('text-sm text-red-800')

            async def reset() -> None:
                if not await self._still_admin():
                    return
                admin, address = self.signed.clinician, self.address
                done = await attempt(
                    lambda: runtime.current().database.run(
                        lambda s: two_step.reset(s, row.id, by=(admin.id, admin.username), address=address)
                    ),
                    error.set_text,
                    what='two-step reset',
                )
                if isinstance(done, NotDone):
                    return
                await auth.announce_ended(row.id, None, 'two-step-reset')  # every open tab of theirs leaves at once
                self.notice.set_text(f'Two-step sign-in of {row.username} reset: {done.summary()}.')
                dialog.close()

            with ui.row().classes('w-full justify-end'):
                ui.button('Cancel', on_click=dialog.close).props('flat')
                ui.button('Reset', on_click=reset).props('color=negative')
        dialog.on('hide', dialog.delete)
        dialog.open()

    # ----- audit log ----------------------------------------------------------------------------------

    def _audit_filters(self) -> None:
        with ui.row().classes('w-full items-end gap-2'):
            self.f_action = ui.select(['(any)', *audit.ACTIONS], value='(any)', label='Action').classes('w-56')
            self.f_actor = ui.input('Username').classes('w-40')
            self.f_patient = ui.input('Patient ID').classes('w-40')
            self.f_since = ui.input('From (YYYY-MM-DD)').classes('w-40')
            self.f_until = ui.input('To (YYYY-MM-DD)').classes('w-40')
            ui.button('Show', on_click=self._show_audit)
            self.download = ui.button('Download CSV', icon='download', on_click=self._download).props('outline')
        self.filter_error = ui.label().props('role=alert').classes('text-sm text-red-800')

    def _filters(self) -> dict | None:
        def day(raw: str, field: str) -> datetime | None:
            raw = (raw or '').strip()
            if not raw:
                return None
            try:
                date = datetime.strptime(raw, '%Y-%m-%d').date()
            except ValueError:
                raise CasebookError(f'{field}: a date like 2026-12-31.') from None
            return datetime.combine(date, time(), tzinfo=self.zone).astimezone(UTC)

        try:
            since = day(self.f_since.value, 'From')
            until = day(self.f_until.value, 'To')
        except CasebookError as refusal:
            self.filter_error.set_text(refusal.message)
            return None
        self.filter_error.set_text('')
        return {
            'action': None if self.f_action.value == '(any)' else self.f_action.value,
            'actor': (self.f_actor.value or '').strip() or None,
            'patient_id': (self.f_patient.value or '').strip() or None,
            'since': since,
            'until': until + timedelta(days=1) if until else None,
        }

    async def _show_audit(self, *, older: bool = False, checked: bool = False) -> None:
        """`checked`: the page was just built for an admin; every other call checks that they still are one."""
        if not checked and not await self._still_admin():
            return
        filters = self._filters()
        if filters is None:
            return
        try:
            async with runtime.current().database.session() as session:
                rows = await audit.list_events(session, before=self.oldest if older else None, limit=PAGE, **filters)
        except DATABASE_ERRORS:
            self.filter_error.set_text(UNREACHABLE)
            return
        shown = [self._row(row) for row in rows]
        self.audit_table.rows = (self.audit_table.rows if older else []) + shown
        self.audit_table.update()
        if rows:
            self.oldest = (rows[-1].at, rows[-1].seq)
        self.older.set_visibility(len(rows) == PAGE)

    async def _older(self) -> None:
        await self._show_audit(older=True)

    def _row(self, row: audit.Row) -> dict:
        return {
            'seq': row.seq,
            'at': row.at.astimezone(self.zone).strftime('%Y-%m-%d %H:%M:%S'),
            'action': row.action,
            'actor': row.actor,
            'patient': row.patient_id or '',
            'address': row.address,
            'detail': row.detail,
        }

    async def _download(self) -> None:
        if not await self._still_admin():
            return
        filters = self._filters()
        if filters is None:
            return
        query = {
            key: value.isoformat() if isinstance(value, datetime) else value
            for key, value in filters.items()
            if value is not None
        }
        ui.download.from_url('/admin/audit.csv' + (f'?{urlencode(query)}' if query else ''))


async def audit_csv(
    request: Request,
    action: str | None = None,
    actor: str | None = None,
    patient_id: str | None = None,
    since: str | None = None,
    until: str | None = None,
) -> Response:
    """The audit log as CSV, for admins only; the download itself is audited."""
    signed = await downloads.who_is_signed_in()
    if not isinstance(signed, SignedIn):
        return signed
    if not signed.clinician.is_admin:
        return PlainTextResponse('Only administrators can download the audit log.', status_code=403)
    try:
        filters = {
            'action': action if action in audit.ACTIONS else None,
            'actor': actor,
            'patient_id': patient_id,
            'since': datetime.fromisoformat(since) if since else None,
            'until': datetime.fromisoformat(until) if until else None,
        }
    except ValueError:
        return PlainTextResponse('Bad date.', status_code=400)
    rt = runtime.current()
    me = signed.clinician
    address = request.client.host if request.client else ''
    detail = ', '.join(f'{key}={value}' for key, value in filters.items() if value is not None)[:200]
    if not await record(audit.Entry(audit.ADMIN_AUDIT_EXPORT, me.id, me.username, None, address, detail)):
        return downloads.unavailable()

    async def body():
        async with rt.database.session() as session:
            async for chunk in audit.export_csv(session, **filters):
                yield chunk.encode()

    stamp = datetime.now(UTC).strftime('%Y%m%d-%H%M%S')
    return StreamingResponse(
        body(),
        media_type='text/csv; charset=utf-8',
        headers={
            'Content-Disposition': f'attachment; filename="casebook-audit-{stamp}.csv"',
            'Cache-Control': 'no-store',
        },
    )
