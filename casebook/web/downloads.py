"""Export downloads: streamed, for the signed-in clinician's own conversations only."""

from __future__ import annotations

import logging
from contextlib import AsyncExitStack

from fastapi import Request
from fastapi.responses import PlainTextResponse, Response, StreamingResponse
from nicegui import app

from casebook.db import DATABASE_ERRORS
from casebook.services import audit, exchange
from casebook.services.errors import CasebookError, NotFound
from casebook.services.sessions import SignedIn
from casebook.web import auth, runtime
from casebook.web.attempt import record


def register() -> None:
    app.add_api_route('/export/{patient_id}/{fmt}', export, methods=['GET'], include_in_schema=False)


def unavailable() -> Response:
    return PlainTextResponse('The database could not be reached, so nothing was downloaded. Please try again.', 503)


log = logging.getLogger(__name__)


async def who_is_signed_in() -> SignedIn | Response:
    """The clinician this download is for, or the response that says why not (401, or 503 when the database
    could not be asked)."""
    try:
        signed = await auth.signed_in(auth.notebook().token)
    except DATABASE_ERRORS as error:
        log.warning('download refused: the database could not be reached (%s)', type(error).__name__)
        return unavailable()
    return signed if signed is not None else PlainTextResponse('Please log in again.', status_code=401)


async def export(request: Request, patient_id: str, fmt: str) -> Response:
    """`/export/PAT123/fhir`: the conversation as a file; 404 for anything not the clinician's own."""
    signed = await who_is_signed_in()
    if not isinstance(signed, SignedIn):
        return signed
    if fmt not in exchange.EXPORT_FORMATS:
        return PlainTextResponse('No such export format.', status_code=404)
    stack = AsyncExitStack()
    session = await stack.enter_async_context(runtime.current().database.session())
    try:
        chunks = await exchange.export_conversation(session, clinician=signed.clinician, fmt=fmt, patient_id=patient_id)
    except (NotFound, CasebookError):
        await stack.aclose()
        return PlainTextResponse('No such conversation.', status_code=404)
    except DATABASE_ERRORS as error:
        await stack.aclose()
        log.warning('export refused: the database could not be reached (%s)', type(error).__name__)
        return unavailable()
    clinician = signed.clinician
    address = request.client.host if request.client else ''
    if not await record(audit.Entry(audit.EXPORT, clinician.id, clinician.username, patient_id, address, fmt)):
        await stack.aclose()
        return unavailable()

    async def body():
        async with stack:  # the database session lives exactly as long as the stream
            async for chunk in chunks:
                yield chunk.encode()

    media_type, _ = exchange.EXPORT_FORMATS[fmt]
    filename = exchange.export_filename(patient_id, fmt)
    return StreamingResponse(
        body(),
        media_type=media_type,
        headers={
            'Content-Disposition': f'attachment; filename="{filename}"',
            'Cache-Control': 'no-store',
        },
    )
