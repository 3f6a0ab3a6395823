"""Export downloads: streamed, for the signed-in clinician's own conversations only."""

from __future__ import annotations

from contextlib import AsyncExitStack

from fastapi import Request
from fastapi.responses import PlainTextResponse, Response, StreamingResponse
from nicegui import app

from casebook.services import audit, exchange
from casebook.services.errors import CasebookError, NotFound
from casebook.web import auth, runtime


def register() -> None:
    app.add_api_route('/export/{patient_id}/{fmt}', export, methods=['GET'], include_in_schema=False)


async def export(request: Request, patient_id: str, fmt: str) -> Response:
    """`/export/PAT123/fhir`: the conversation as a file; 404 for anything not the clinician's own."""
    signed = await auth.signed_in(auth.notebook().token)
    if signed is None:
        return PlainTextResponse('Please log in again.', status_code=401)
    if fmt not in exchange.EXPORT_FORMATS:
        return PlainTextResponse('No such export format.', status_code=404)
    stack = AsyncExitStack()
    session = await stack.enter_async_context(runtime.current().database.session())
    try:
        chunks = await exchange.export_conversation(session, clinician=signed.clinician, fmt=fmt, patient_id=patient_id)
    except (NotFound, CasebookError):
        await stack.aclose()
        return PlainTextResponse('No such conversation.', status_code=404)
    clinician = signed.clinician
    address = request.client.host if request.client else ''
    async with runtime.current().database.session() as audit_session:
        entry = audit.Entry(audit.EXPORT, clinician.id, clinician.username, patient_id, address, fmt)
        await audit.record_now(audit_session, entry)

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
