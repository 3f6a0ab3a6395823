"""Export downloads: streamed, for the signed-in clinician's own conversations only."""

from __future__ import annotations

import logging
from contextlib import AsyncExitStack

from fastapi import Request
from fastapi.responses import PlainTextResponse, Response, StreamingResponse
from nicegui import app
from sqlalchemy.exc import SQLAlchemyError

from casebook.services import audit, exchange
from casebook.services.errors import CasebookError, NotFound
from casebook.services.sessions import SignedIn
from casebook.web import auth, runtime


def register() -> None:
    app.add_api_route('/export/{patient_id}/{fmt}', export, methods=['GET'], include_in_schema=False)


UNAVAILABLE = PlainTextResponse(
    'The database could not be reached, so nothing was downloaded. Please try again.', status_code=503
)
log = logging.getLogger(__name__)


async def who_is_signed_in() -> SignedIn | Response:
    """The clinician this download is for, or the response that says why not (401, or 503 when the database
    could not be asked)."""
    try:
        signed = await auth.signed_in(auth.notebook().token)
    except (SQLAlchemyError, OSError) as error:
        log.warning('download refused: the database could not be reached (%s)', type(error).__name__)
        return UNAVAILABLE
    return signed if signed is not None else PlainTextResponse('Please log in again.', status_code=401)


async def recorded(entry: audit.Entry) -> bool:
    """The download's audit row, written before anything is sent (one unit of work); False when it could not be."""
    try:
        await runtime.current().database.run(lambda session: audit.record_now_sync(session, entry))
    except (SQLAlchemyError, OSError) as error:
        log.warning('download refused: its audit row could not be written (%s)', type(error).__name__)
        return False
    return True


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
    except (SQLAlchemyError, OSError) as error:
        await stack.aclose()
        log.warning('export refused: the database could not be reached (%s)', type(error).__name__)
        return UNAVAILABLE
    clinician = signed.clinician
    address = request.client.host if request.client else ''
    if not await recorded(audit.Entry(audit.EXPORT, clinician.id, clinician.username, patient_id, address, fmt)):
        await stack.aclose()
        return UNAVAILABLE

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
