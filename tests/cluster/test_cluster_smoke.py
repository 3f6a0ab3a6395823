"""deploy/cluster brings up two instances behind nginx, and a real browser signs in through it."""

from __future__ import annotations

import http.client
from urllib.parse import urlsplit

import pytest
from playwright.sync_api import expect


def _get(url: str, path: str) -> http.client.HTTPResponse:
    address = urlsplit(url)
    connection = http.client.HTTPConnection(address.hostname, address.port, timeout=10)
    connection.request('GET', path)
    response = connection.getresponse()
    response.read()
    connection.close()
    return response


def test_nginx_serves_the_login_page_and_both_instances_answer(cluster):
    running = cluster(instances=2)
    running.add_clinician('alice', 'Dr Alice')

    response = _get(running.url, '/login')
    assert response.status == 200
    assert response.getheader('Server') == 'nginx'  # through the proxy, not straight to an instance
    assert 'casebook_route=' in (response.getheader('Set-Cookie') or '')  # the sticky cookie is handed out

    for url in running.instance_urls:
        assert _get(url, '/login').status == 200
    running.assert_logs_clean()


@pytest.mark.browser
def test_a_browser_reaches_the_login_page_through_nginx_without_a_reload(cluster, new_visitor):
    """The page and its websocket reach the same instance from the first visit on (deploy/nginx.conf's cookie)."""
    running = cluster(instances=2)
    running.add_clinician('alice', 'Dr Alice')

    visitor = new_visitor(running.url)
    reloads: list[str] = []
    visitor.page.on('console', lambda message: reloads.append(message.text) if 'reloading' in message.text else None)
    visitor.goto('/login')
    expect(visitor.page.get_by_role('button', name='Log in')).to_be_visible()
    visitor.page.wait_for_function('window.did_handshake === true && window.socket.connected')
    assert not reloads, f'the page reloaded itself: its websocket reached another instance ({reloads})'
    visitor.assert_clean()
    running.assert_logs_clean()
