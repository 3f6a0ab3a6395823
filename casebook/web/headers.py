"""Response headers for every page: no caching of patient data, no framing, no referrer leaks."""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

BASE_HEADERS = [
    (b'x-content-type-options', b'nosniff'),
    (b'referrer-policy', b'no-referrer'),
    (b'x-frame-options', b'DENY'),
]


class SecurityHeadersMiddleware:
    """Adds the headers to every HTTP response; pages (HTML) are also marked no-store."""

    def __init__(self, app: ASGIApp, *, https: bool = False) -> None:
        self.app = app
        self.extra = [(b'strict-transport-security', b'max-age=31536000; includeSubDomains')] if https else []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope['type'] != 'http':
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message['type'] == 'http.response.start':
                headers = [
                    (k, v)
                    for k, v in message.get('headers', [])
                    if k.lower() not in {b'x-content-type-options', b'referrer-policy', b'x-frame-options'}
                ]
                headers += BASE_HEADERS + self.extra
                content_type = next((v for k, v in headers if k.lower() == b'content-type'), b'')
                if content_type.startswith(b'text/html') or message.get('status') in {302, 303, 307}:
                    headers = [(k, v) for k, v in headers if k.lower() != b'cache-control']
                    headers.append((b'cache-control', b'no-store'))
                message['headers'] = headers
            await send(message)

        await self.app(scope, receive, send_with_headers)
