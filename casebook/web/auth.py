"""Who is signed in, for pages and for every event: checked against the server-side session each time.

Signing in happens in two steps so that the browser gets a new storage identifier (a new cookie) at login:
the login form's event starts the server-side session and hands the browser a one-time ticket, and the
browser then fetches `/login/finish?ticket=…`, an ordinary HTTP request that can set a cookie. There the
notebook moves to a fresh identifier and the old one is emptied, so an identifier planted in the browser
before login (session fixation) leads to nothing.
"""

from __future__ import annotations

import logging
import math
import secrets
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from fastapi import Request
from fastapi.responses import RedirectResponse
from nicegui import app, ui
from nicegui.persistence.persistent_dict import PersistentDict
from nicegui.persistence.redis_persistent_dict import RedisPersistentDict
from nicegui.persistence.serialization import dumps

from casebook import metrics
from casebook.live import SessionsEnded
from casebook.services import accounts, audit, sessions
from casebook.services.sessions import SignedIn
from casebook.web import runtime
from casebook.web.attempt import NotDone, attempt, record
from casebook.web.notebook import Notebook
from casebook.web.onetime import OneTimeStore

TICKET_SECONDS = 30
SIGN_IN_NOT_SAVED = 'Could not sign you in just now: the database is busy. Please try again.'
FINISH_PATH = '/login/finish'
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Ticket:
    token: str
    clinician_id: int
    browser_id: str  # the storage identifier of the browser that logged in: only it may finish


class Tickets:
    """One-time login tickets, valid `TICKET_SECONDS`: in Redis when configured, so that any instance can
    finish a login another one started; in this process otherwise, and whenever Redis cannot be reached."""

    def __init__(self, redis: Any = None, *, prefix: str = 'casebook:') -> None:
        self._store = OneTimeStore(redis, prefix=f'{prefix}ticket:', what='login ticket')

    @property
    def redis(self) -> Any:
        """The Redis client behind these tickets (None: this process only); single sign-on keeps its state there too."""
        return self._store.redis

    async def issue(self, ticket: Ticket) -> str:
        key = secrets.token_urlsafe(32)
        await self._store.put(key, asdict(ticket), TICKET_SECONDS)
        return key

    async def redeem(self, key: str) -> Ticket | None:
        """The ticket, once: it is gone afterwards. None when unknown, used or expired."""
        fields = await self._store.take(key) if key and len(key) <= 64 else None
        if fields is None:
            return None
        return Ticket(str(fields['token']), int(fields['clinician_id']), str(fields['browser_id']))


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
    """True until the first account exists; asked by every page, so the database is asked only until then."""
    rt = runtime.current()
    if rt.installed:
        return False
    async with rt.database.session() as session:
        rt.installed = not await accounts.needs_first_account(session)
    return not rt.installed


async def throttled(
    attempted: str, address: str, tell: Callable[[str], object], *, key: str | None = None, detail: str = ''
) -> bool:
    """True while this account (counted under `key`, else `attempted`) or this address must wait after too many
    failed sign-ins: the attempt is counted and audited and the one signing in told how long, whether or not the
    audit row could be written. Every way of signing in asks this first (password, code, passkey)."""
    wait = await runtime.current().throttle.wait_seconds(key or attempted, address)
    if wait <= 0:
        return False
    metrics.sign_in('throttled')
    await record(audit.Entry(audit.SIGN_IN_THROTTLED, None, attempted, None, address, detail))
    tell(f'Too many attempts. Please wait {math.ceil(wait)} seconds and try again.')
    return True


async def refused(
    attempted: str, address: str, *, key: str | None = None, actor_id: int | None = None, detail: str = ''
) -> None:
    """A failed sign-in (wrong password, code or passkey): counted towards the throttle (under `key`, else
    `attempted`, and the address) and audited. Telling the one signing in is the caller's part."""
    metrics.sign_in('failed')
    await runtime.current().throttle.failed(key or attempted, address)
    await record(audit.Entry(audit.SIGN_IN_FAILED, actor_id, attempted, None, address, detail))


async def sign_in(
    clinician: accounts.ClinicianInfo,
    tell: Callable[[str], object],
    rehash: tuple[str, str] | None = None,
    *,
    method: str = 'password',
) -> bool:
    """Start a fresh server-side session (one unit of work) and send the browser to pick it up under a new storage
    identifier; False (and the clinician told, `tell`) when the database could not take it."""
    client = ui.context.client
    rt = runtime.current()
    address, agent = client.ip or '', client.request.headers.get('user-agent', '')
    token = await attempt(
        lambda: rt.database.run(
            lambda session: sessions.start_sync(
                session,
                clinician_id=clinician.id,
                address=address,
                user_agent=agent,
                username=clinician.username,
                rehash=rehash,
                method=method,
            )
        ),
        tell,
        what='sign-in',
        unreachable=SIGN_IN_NOT_SAVED,
    )
    if isinstance(token, NotDone):
        return False
    ticket = await rt.tickets.issue(Ticket(token, clinician.id, client.request.session['id']))
    ui.navigate.to(f'{FINISH_PATH}?ticket={ticket}')
    return True


async def finish_sign_in(request: Request, ticket: str = '') -> RedirectResponse:
    """Second step of signing in: a new storage identifier for this browser, holding the new session."""
    found = await runtime.current().tickets.redeem(ticket)
    if found is None or found.browser_id != request.session.get('id'):
        return RedirectResponse('/login', status_code=303)
    return await start_session(request, token=found.token, clinician_id=found.clinician_id)


async def start_session(request: Request, *, token: str, clinician_id: int) -> RedirectResponse:
    """In an HTTP request (so that a cookie can be set): a new storage identifier for this browser, holding the new
    session `token`; the old identifier's notebook is emptied (session fixation leads to nothing). To the workspace."""
    old = app.storage.user
    new_id = str(uuid.uuid4())
    # NiceGUI creates a browser's storage when its first request arrives; this one must exist before the
    # cookie naming it is sent, so it is created here the same way (a private NiceGUI call).
    await app.storage._create_user_storage(new_id)
    fresh = Notebook(app.storage._users[new_id])
    fresh.take_over(Notebook(old), token=token, clinician_id=clinician_id)
    old.clear()
    await _stored(app.storage._users[new_id])
    request.session['id'] = new_id  # the session middleware signs and sends the new cookie
    return RedirectResponse('/', status_code=303)


async def _stored(storage: PersistentDict) -> None:
    """With Redis, wait until the new notebook is in Redis: the browser's next request, sent as soon as this
    response arrives, may reach another instance (NiceGUI itself writes a change in the background)."""
    if isinstance(storage, RedisPersistentDict):
        try:
            await storage.redis_client.set(storage.key, dumps(storage, storage.key))
        except Exception as error:  # this instance still has it; another one would show the login page
            log.warning('new notebook not yet in Redis (%s)', type(error).__name__)


async def sign_out(token: str | None, *, clinician_id: int, reason: str = 'manual', address: str = '') -> None:
    """End the session on the server and, at once, in every tab that uses it."""
    rt = runtime.current()
    ended = await rt.database.run(lambda session: sessions.end_sync(session, token, reason=reason, address=address))
    book = notebook()
    if book.token == token:
        book.sign_out()
    if ended is not None:
        await announce_ended(clinician_id, frozenset({ended}), reason)


async def announce_ended(clinician_id: int, session_ids: frozenset[str] | None, reason: str) -> None:
    """Tell every open tab of these sessions that they ended (they go to the login page)."""
    if session_ids is None or session_ids:
        await runtime.current().hub.publish(SessionsEnded(clinician_id, session_ids, reason))
