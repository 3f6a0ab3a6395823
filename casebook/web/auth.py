"""Who is signed in, for pages and for every event: checked against the server-side session each time."""

from __future__ import annotations

from nicegui import app, ui

from casebook.services import accounts, sessions
from casebook.services.sessions import SignedIn
from casebook.web import runtime
from casebook.web.notebook import Notebook


def notebook() -> Notebook:
    return Notebook(app.storage.user)


async def signed_in(token: str | None) -> SignedIn | None:
    """The live session behind a token, or None (unknown, ended, expired, account disabled)."""
    if token is None:
        return None
    rt = runtime.current()
    max_age = rt.session_max_age
    return await rt.database.run(lambda session: sessions.resolve_sync(session, token, max_age=max_age))


async def current() -> SignedIn | None:
    """The clinician signed in in this browser, or None; a dead session is forgotten."""
    book = notebook()
    found = await signed_in(book.token)
    if found is None and book.token is not None:
        book.sign_out()
    return found


async def needs_first_account() -> bool:
    async with runtime.current().database.session() as session:
        return await accounts.needs_first_account(session)


async def sign_in(clinician: accounts.ClinicianInfo) -> None:
    """Start a fresh server-side session for this browser (never reusing one from before sign-in)."""
    client = ui.context.client
    async with runtime.current().database.session() as session:
        token = await sessions.start(
            session,
            clinician_id=clinician.id,
            address=client.ip,
            user_agent=client.request.headers.get('user-agent', ''),
        )
    notebook().sign_in(token=token, clinician_id=clinician.id)


async def sign_out(token: str | None) -> None:
    async with runtime.current().database.session() as session:
        await sessions.end(session, token, reason='logout')
    book = notebook()
    if book.token == token:
        book.sign_out()
