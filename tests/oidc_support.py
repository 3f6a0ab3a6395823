"""A real OpenID provider for the single sign-on tests (tests/oidc/provider.mjs: panva's oidc-provider under node),
and a small HTTP-only visitor that goes through its development login form the way a browser would.

`Provider` is started on a port chosen beforehand, so that Casebook (which must know the issuer) and the provider
(which must know Casebook's redirect URI) can each be told the other's address before either starts.
"""

from __future__ import annotations

import itertools
import os
import re
import signal
import sqlite3
import subprocess
import time
from html import unescape
from pathlib import Path
from urllib.parse import urljoin

import httpx
import pytest

from bench.common import terminate
from support import free_port

NODE = Path('/usr/bin/node')
HERE = Path(__file__).parent / 'oidc'
SCRIPT = HERE / 'provider.mjs'
MODULES = HERE / 'node_modules' / 'oidc-provider'
CLIENT_ID, CLIENT_SECRET = 'casebook', 'casebook-test-secret-0123456789'
OTHER_CLIENT_ID, OTHER_CLIENT_SECRET = 'other-app', 'other-app-test-secret-0123456789'
OTHER_REDIRECT = 'http://127.0.0.1/other-app/callback'
STARTUP_TIMEOUT = 20.0


def skip_without_provider() -> None:
    if not NODE.exists() or not MODULES.exists():
        pytest.skip(
            f'THE OPENID PROVIDER IS MISSING ({NODE} or {MODULES} not found), so the single sign-on tests did NOT '
            'run. `make test` installs it (`make oidc`: npm ci in tests/oidc).'
        )


class Provider:
    """`node tests/oidc/provider.mjs` on 127.0.0.1:`port`, its output in `log_path`."""

    def __init__(self, log_path: Path, *, port: int | None = None, **env: str) -> None:
        self.port = port or free_port()
        self.issuer = f'http://127.0.0.1:{self.port}'
        self.log_path = log_path
        self.env = env
        self.process: subprocess.Popen[bytes] | None = None
        self._uris: tuple[list[str], list[str]] | None = None

    def start(self, *, redirect_uris: list[str], logout_uris: list[str] = ()) -> Provider:
        skip_without_provider()
        self._uris = (list(redirect_uris), list(logout_uris))
        env = {
            **os.environ,
            **self.env,
            'OIDC_PORT': str(self.port),
            'OIDC_REDIRECT_URIS': ' '.join(redirect_uris),
            'OIDC_LOGOUT_URIS': ' '.join(logout_uris),
        }
        with open(self.log_path, 'ab') as log:
            self.process = subprocess.Popen(
                [str(NODE), str(SCRIPT)], cwd=HERE, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=log
            )
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while not self.answers():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                pytest.fail(f'the OpenID provider did not start:\n{self.log_path.read_text()}', pytrace=False)
            time.sleep(0.05)
        return self

    def answers(self) -> bool:
        try:
            return httpx.get(f'{self.issuer}/.well-known/openid-configuration', timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def stop(self) -> None:
        if self.process is not None:
            self.process.send_signal(signal.SIGCONT)  # a paused provider cannot stop
            terminate(self.process, 5)
            self.process = None

    def restart(self, **env: str) -> None:
        """Stopped and started again on the same port with these settings (its sessions and codes forgotten)."""
        assert self._uris is not None
        self.stop()
        self.env = env
        self.start(redirect_uris=self._uris[0], logout_uris=self._uris[1])

    def pause(self) -> None:
        """Still listening, answering nothing: a provider that is too slow."""
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)


def signing_key(kid: str) -> dict:
    """A private RSA key as a JWK, for `OIDC_KEYS`."""
    from joserfc.jwk import RSAKey

    return RSAKey.generate_key(2048, parameters={'kid': kid, 'alg': 'RS256', 'use': 'sig'}, private=True).as_dict(
        private=True
    )


def casebook_env(provider: Provider, casebook_url: str, **more: str) -> dict[str, str]:
    return {
        'CASEBOOK_PUBLIC_URL': casebook_url,
        'CASEBOOK_OIDC_ISSUER': provider.issuer,
        'CASEBOOK_OIDC_CLIENT_ID': CLIENT_ID,
        'CASEBOOK_OIDC_CLIENT_SECRET': CLIENT_SECRET,
        'CASEBOOK_OIDC_NAME': 'Hospital account',
        **more,
    }


FORM = re.compile(r'<form[^>]*action="([^"]+)"[^>]*method="post"', re.IGNORECASE)


class Visitor:
    """An HTTP client with cookies that follows redirects itself and signs in at the provider's development form."""

    addresses = itertools.count(1)

    def __init__(self, casebook_url: str) -> None:
        self.casebook_url = casebook_url
        # an address of its own, as Casebook (behind its proxy on 127.0.0.1) sees it: the failures one test
        # provokes on purpose count towards that address's sign-in throttle only
        n = next(Visitor.addresses)
        self.address = f'10.77.{n // 250}.{n % 250 + 1}'
        self.http = httpx.Client(follow_redirects=False, timeout=15, headers={'X-Forwarded-For': self.address})

    def close(self) -> None:
        self.http.close()

    def get(self, url: str) -> httpx.Response:
        return self.http.get(urljoin(self.casebook_url, url))

    def provider_login(self, login: str, *, until: str = '/auth/oidc/callback') -> str:
        """From Casebook's login page to the provider, signed in there as `login`: the URL the provider sends the
        browser back to (Casebook's callback with a code and the state), not yet visited."""
        for cookie in [c for c in self.http.cookies.jar if c.name != 'session']:
            self.http.cookies.delete(cookie.name, cookie.domain, cookie.path)  # the provider's: someone else signs in
        assert self.get('/login').status_code == 200
        url = self.get('/auth/oidc/start').headers['location']
        return self.follow(url, login=login, until=until)

    def follow(self, url: str, *, login: str = '', until: str = '/auth/oidc/callback') -> str:
        for _ in range(20):
            if until in url:
                return url
            response = self.http.get(url)
            if response.is_redirect:
                url = urljoin(url, response.headers['location'])
                continue
            form = FORM.search(response.text)
            assert response.status_code == 200 and form is not None, f'{url}: {response.status_code} {response.text}'
            action = urljoin(url, unescape(form.group(1)))
            fields = {'prompt': 'login', 'login': login, 'password': 'any password'}
            if 'name="login"' not in response.text:
                fields = {'prompt': 'consent'}
            response = self.http.post(action, data=fields)
            assert response.is_redirect, f'{action}: {response.status_code} {response.text}'
            url = urljoin(action, response.headers['location'])
        raise AssertionError(f'never reached {until}; last at {url}')

    def callback(self, url: str) -> httpx.Response:
        return self.http.get(url)

    def signed_in(self) -> bool:
        return self.get('/').status_code == 200

    def login_page(self) -> str:
        response = self.get('/login')
        assert response.status_code == 200
        return response.text


def audit_rows(data_dir: Path, action: str) -> list[tuple[str, str]]:
    """(actor, detail) of the audit rows with this action, oldest first, read straight from the SQLite database."""
    with sqlite3.connect(data_dir / 'casebook.sqlite3') as db:
        rows = db.execute('SELECT actor, detail FROM audit_events WHERE action = ? ORDER BY seq', (action,))
        return list(rows)
