"""Response headers for every page: no caching of patient data, no framing, no referrer leaks, and a
Content-Security-Policy.

The policy allows only this origin for scripts, styles, images, fonts and connections, nothing to frame
the app, no plugins, and forms and <base> only to this origin. NiceGUI needs two concessions for scripts:
'unsafe-inline' (its page template starts the app with inline scripts, without nonces) and 'unsafe-eval'
(Vue compiles NiceGUI's slot templates at run time, and NiceGUI evaluates `:prop` expressions and
`run_javascript` code). Casebook never puts text a user typed into HTML or script: message text is a
text node, so the policy is a second line of defence, not the first.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

CONTENT_SECURITY_POLICY = '; '.join(
    [
        "default-src 'self'",
        "script-src 'self' 'unsafe-inline' 'unsafe-eval'",
        "style-src 'self' 'unsafe-inline'",
        "img-src 'self' data: blob:",
        "font-src 'self' data:",
        "connect-src 'self'",
        "worker-src 'self' blob:",
        "object-src 'none'",
        "base-uri 'self'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    ]
)
BASE_HEADERS = [
    (b'x-content-type-options', b'nosniff'),
    (b'referrer-policy', b'no-referrer'),
    (b'x-frame-options', b'DENY'),
    (b'content-security-policy', CONTENT_SECURITY_POLICY.encode()),
]
REPLACED = {name for name, _ in BASE_HEADERS}


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
                headers = [(k, v) for k, v in message.get('headers', []) if k.lower() not in REPLACED]
                headers += BASE_HEADERS + self.extra
                content_type = next((v for k, v in headers if k.lower() == b'content-type'), b'')
                if content_type.startswith(b'text/html') or message.get('status') in {302, 303, 307}:
                    headers = [(k, v) for k, v in headers if k.lower() != b'cache-control']
                    headers.append((b'cache-control', b'no-store'))
                message['headers'] = headers
            await send(message)

        await self.app(scope, receive, send_with_headers)
