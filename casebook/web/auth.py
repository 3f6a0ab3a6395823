"""Who is signed in, for pages and for every event: checked against the server-side session each time.

Signing in happens in two steps so that the browser gets a new storage identifier (a new cookie) at login:
the login form's event starts the server-side session and hands the browser a one-time ticket, and the
browser then fetches `/login/finish?ticket=…`, an ordinary HTTP request that can set a cookie. There the
notebook moves to a fresh identifier and the old one is emptied, so an identifier planted in the browser
before login (session fixation) leads to nothing.
"""

from __future__ import annotations

import secrets
import time
import uuid
from dataclasses import dataclass

from fastapi import Request
from fastapi.responses import RedirectResponse
from nicegui import app, ui

from casebook.live import SessionsEnded
from casebook.services import accounts, sessions
from casebook.services.sessions import SignedIn
from casebook.web import runtime
from casebook.web.notebook import Notebook

TICKET_SECONDS = 30
FINISH_PATH = '/login/finish'


@dataclass(frozen=True)
class _Ticket:
    token: str
    clinician_id: int
    browser_id: str  # the storage identifier of the browser that logged in: only it may finish
    expires: float


_tickets: dict[str, _Ticket] = {}


def register() -> None:
    app.add_api_route(FINISH_PATH, finish_sign_in, methods=['GET'], include_in_schema=False)


def notebook() -> Notebook:
    return Notebook(app.storage.user)


async def signed_in(token: str | None, *, touch: bool = True) -> SignedIn | None:
    """The live session behind a token, or None (unknown, ended, expired, idle too long, account disabled)."""
    if token is None:
        return None
    rt = runtime.current()
    limits = rt.limits
    return await rt.database.run(
        lambda session: sessions.resolve_sync(session, token, max_age=limits.max_age, idle=limits.idle, touch=touch)
    )


async def current() -> SignedIn | None:
    """The clinician signed in in this browser, or None; a dead session is forgotten (and why it ended is
    kept for the login page to say)."""
    book = notebook()
    found = await signed_in(book.token)
    if found is None and book.token is not None:
        async with runtime.current().database.session() as session:
            reason = await sessions.end_reason(session, book.token)
        book.sign_out(reason=reason)
    return found


async def needs_first_account() -> bool:
    async with runtime.current().database.session() as session:
        return await accounts.needs_first_account(session)


async def sign_in(clinician: accounts.ClinicianInfo) -> None:
    """Start a fresh server-side session and send the browser to pick it up under a new storage identifier."""
    client = ui.context.client
    async with runtime.current().database.session() as session:
        token = await sessions.start(
            session,
            clinician_id=clinician.id,
            address=client.ip or '',
            user_agent=client.request.headers.get('user-agent', ''),
            username=clinician.username,
        )
    now = time.monotonic()
    for stale in [key for key, ticket in _tickets.items() if ticket.expires < now]:
        del _tickets[stale]
    ticket = secrets.token_urlsafe(32)
    _tickets[ticket] = _Ticket(token, clinician.id, client.request.session['id'], now + TICKET_SECONDS)
    ui.navigate.to(f'{FINISH_PATH}?ticket={ticket}')


async def finish_sign_in(request: Request, ticket: str = '') -> RedirectResponse:
    """Second step of signing in: a new storage identifier for this browser, holding the new session."""
    found = _tickets.pop(ticket, None)
    old_id = request.session.get('id')
    if found is None or found.expires < time.monotonic() or found.browser_id != old_id:
        return RedirectResponse('/login', status_code=303)
    old = app.storage.user
    new_id = str(uuid.uuid4())
    # NiceGUI creates a browser's storage when its first request arrives; this one must exist before the
    # cookie naming it is sent, so it is created here the same way (a private NiceGUI call).
    await app.storage._create_user_storage(new_id)
    fresh = Notebook(app.storage._users[new_id])
    fresh.take_over(Notebook(old), token=found.token, clinician_id=found.clinician_id)
    old.clear()
    request.session['id'] = new_id  # the session middleware signs and sends the new cookie
    return RedirectResponse('/', status_code=303)


async def sign_out(token: str | None, *, clinician_id: int, reason: str = 'manual', address: str = '') -> None:
    """End the session on the server and, at once, in every tab that uses it."""
    rt = runtime.current()
    async with rt.database.session() as session:
        ended = await sessions.end(session, token, reason=reason, address=address)
    book = notebook()
    if book.token == token:
        book.sign_out()
    if ended is not None:
        await announce_ended(clinician_id, frozenset({ended}), reason)


async def announce_ended(clinician_id: int, session_ids: frozenset[str] | None, reason: str) -> None:
    """Tell every open tab of these sessions that they ended (they go to the login page)."""
    if session_ids is None or session_ids:
        await runtime.current().hub.publish(SessionsEnded(clinician_id, session_ids, reason))
