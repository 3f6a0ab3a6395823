"""The response headers, on a small ASGI app behind the same middleware the server uses."""

from __future__ import annotations

import httpx
import pytest
from starlette.applications import Starlette
from starlette.middleware.sessions import SessionMiddleware
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse
from starlette.routing import Route

from casebook.web.headers import SecurityHeadersMiddleware


def app(*, https: bool) -> Starlette:
    async def page(request):
        request.session['id'] = 'x'
        return HTMLResponse('<p>hi</p>', headers={'x-frame-options': 'SAMEORIGIN'})

    async def data(_request):
        return JSONResponse({'ok': True})

    async def moved(_request):
        return RedirectResponse('/', status_code=303)

    application = Starlette(routes=[Route('/', page), Route('/data', data), Route('/moved', moved)])
    application.add_middleware(SessionMiddleware, secret_key='test', same_site='lax', https_only=https)
    application.add_middleware(SecurityHeadersMiddleware, https=https)
    return application


@pytest.mark.parametrize('https', [False, True])
async def test_every_response_carries_the_headers(https: bool) -> None:
    transport = httpx.ASGITransport(app=app(https=https))
    async with httpx.AsyncClient(transport=transport, base_url='https://casebook.test') as client:
        page, data, moved = await client.get('/'), await client.get('/data'), await client.get('/moved')
    for response in (page, data, moved):
        assert response.headers['x-content-type-options'] == 'nosniff'
        assert response.headers['referrer-policy'] == 'no-referrer'
        assert response.headers['x-frame-options'] == 'DENY'  # ours replaces the page's own
        assert "frame-ancestors 'none'" in response.headers['content-security-policy']
        assert ('strict-transport-security' in response.headers) is https
    assert page.headers['cache-control'] == 'no-store'
    assert moved.headers['cache-control'] == 'no-store'
    cookie = page.headers['set-cookie'].lower()
    assert 'httponly' in cookie and 'samesite=lax' in cookie
    assert ('secure' in cookie) is https
