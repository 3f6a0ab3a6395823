"""Single sign-on with the hospital's identity provider (OpenID Connect, authorization code flow with PKCE).

`Sign in with <name>` on the login page leads to `START_PATH`, which keeps a fresh `state`, `nonce` and PKCE
verifier on the server (bound to this browser's storage identifier, usable once, for `FLOW_SECONDS`) and sends the
browser to the provider. The provider sends it back to `CALLBACK_PATH` with a code; Casebook exchanges the code (with
its client secret and the verifier), verifies the ID token (signature against the provider's published keys, fetched
again once for an unknown key id; `iss`, `aud`, `exp`, `iat`, `nonce`: joserfc, the JOSE library of Authlib's
author), matches the account by the configured claim and starts a session exactly as a password sign-in does
(`auth.start_session`: a new server session, a new storage identifier). Every failure lands on the login page with a
one-line reason (kept server-side in the notebook, never taken from the request) and a `sign-in-failed` audit row.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import httpx
from authlib.common.security import generate_token
from authlib.oauth2.rfc7636 import create_s256_code_challenge
from fastapi import Request
from fastapi.responses import RedirectResponse
from joserfc import errors as jose_errors
from joserfc import jwt
from joserfc.jwk import KeySet
from nicegui import app, ui

from casebook import metrics
from casebook.config import Settings
from casebook.db import DATABASE_ERRORS
from casebook.services import audit, sso
from casebook.web import auth, runtime
from casebook.web.attempt import record
from casebook.web.onetime import OneTimeStore

START_PATH = '/auth/oidc/start'
CALLBACK_PATH = '/auth/oidc/callback'
FLOW_SECONDS = 600  # from the button to the provider's answer
RETRY_DISCOVERY_SECONDS = 30  # a provider unreachable at start is asked again at most this often
SIGNING_ALGORITHMS = ['RS256', 'RS384', 'RS512', 'PS256', 'PS384', 'PS512', 'ES256', 'ES384', 'ES512', 'EdDSA']
log = logging.getLogger(__name__)

# Why a single sign-on failed: the code is kept in the notebook (and in the audit row), the sentence is shown.
REASONS = {
    'state': 'Single sign-on failed: the sign-in link was used already, expired or came from another browser.',
    'denied': 'Single sign-on failed: the identity provider did not sign you in.',
    'unavailable': 'Single sign-on failed: the identity provider could not be reached. Please try again.',
    'timeout': 'Single sign-on failed: the identity provider did not answer in time. Please try again.',
    'code': 'Single sign-on failed: the identity provider refused the sign-in code (used already or expired).',
    'expired': 'Single sign-on failed: the identity token has expired (is this computer’s clock right?).',
    'audience': 'Single sign-on failed: the identity token was issued for another application.',
    'signature': 'Single sign-on failed: the identity token’s signature does not verify.',
    'token': 'Single sign-on failed: the identity token is not valid.',
    'username': 'Single sign-on failed: the identity provider sent no usable username.',
    'unknown-account': 'Single sign-on failed: there is no Casebook account for you; ask an administrator.',
    'disabled': 'Single sign-on failed: your Casebook account is disabled.',
    'database': 'Single sign-on failed: the database is busy. Please try again.',
    'throttled': 'Single sign-on: too many failed sign-ins from this address. Please wait a little and try again.',
}
# Failures that say something about the one signing in (a forged or replayed answer, an unknown or disabled
# account) count towards the login throttle, per address, like wrong passwords; the provider being away does not.
COUNTED = frozenset(
    {'state', 'code', 'expired', 'audience', 'signature', 'token', 'username', 'unknown-account', 'disabled'}
)
ACTOR = '(single sign-on)'  # the audit trail's name for a sign-on not yet tied to an account


class Failed(Exception):
    """A single sign-on that cannot go on; `reason` is a key of REASONS."""

    def __init__(self, reason: str, username: str = '') -> None:
        super().__init__(reason)
        self.reason = reason
        self.username = username


@dataclass(frozen=True)
class Discovery:
    issuer: str
    authorization_endpoint: str
    token_endpoint: str
    jwks_uri: str
    end_session_endpoint: str | None


@dataclass(frozen=True)
class Flow:
    """One sign-in under way: what the callback must find again."""

    nonce: str
    verifier: str
    browser_id: str


class SingleSignOn:
    """The configured identity provider: its discovery document and keys, fetched at start and kept."""

    def __init__(self, settings: Settings, store: OneTimeStore) -> None:
        self.settings = settings
        self.store = store
        self.issuer = (settings.oidc_issuer or '').rstrip('/')
        self.discovery: Discovery | None = None
        self.problem: str | None = None  # why the provider cannot be used now (shown on the login page)
        self._keys: KeySet | None = None
        self._next_discovery = 0.0

    @property
    def redirect_uri(self) -> str:
        return self.settings.base_url + CALLBACK_PATH

    def _client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(timeout=self.settings.oidc_timeout_seconds, follow_redirects=False)

    async def discover(self) -> Discovery | None:
        """The provider's endpoints (fetched once; after a failure, again at most every RETRY_DISCOVERY_SECONDS)."""
        if self.discovery is not None or time.monotonic() < self._next_discovery:
            return self.discovery
        self._next_discovery = time.monotonic() + RETRY_DISCOVERY_SECONDS
        url = f'{self.issuer}/.well-known/openid-configuration'
        try:
            if not self.settings.oidc_client_id or self.settings.oidc_client_secret is None:
                raise ValueError('CASEBOOK_OIDC_CLIENT_ID and CASEBOOK_OIDC_CLIENT_SECRET must be set')
            async with self._client() as client:
                response = await client.get(url)
            if response.status_code != 200:
                raise ValueError(f'{url} answered HTTP {response.status_code}')
            document = response.json()
            if not isinstance(document, dict):
                raise ValueError(f'{url} is not a discovery document')
            if str(document.get('issuer', '')).rstrip('/') != self.issuer:
                raise ValueError(f'the discovery document names issuer {str(document.get("issuer"))[:100]!r}')
            missing = [k for k in ('authorization_endpoint', 'token_endpoint', 'jwks_uri') if not document.get(k)]
            if missing:
                raise ValueError(f'the discovery document has no {", ".join(missing)}')
            self.discovery = Discovery(
                issuer=str(document['issuer']),
                authorization_endpoint=str(document['authorization_endpoint']),
                token_endpoint=str(document['token_endpoint']),
                jwks_uri=str(document['jwks_uri']),
                end_session_endpoint=document.get('end_session_endpoint') or None,
            )
        except (httpx.HTTPError, ValueError) as error:
            detail = str(error) or type(error).__name__
            self.problem = f'Single sign-on is not available: {self.issuer} ({detail[:200]}).'
            log.warning('%s Password sign-in still works unless CASEBOOK_OIDC_ONLY is set.', self.problem)
            return None
        self.problem = None
        log.info('single sign-on with %s', self.issuer)
        return self.discovery

    async def keys(self, *, again: bool = False) -> KeySet:
        """The provider's signing keys, kept; `again`: fetched anew (a key id we do not know: the keys rotated)."""
        if self._keys is None or again:
            assert self.discovery is not None
            async with self._client() as client:
                response = await client.get(self.discovery.jwks_uri)
            if response.status_code != 200:
                raise Failed('unavailable')
            self._keys = KeySet.import_key_set(response.json())
        return self._keys

    # ----- the flow --------------------------------------------------------------------------------------

    async def start(self, request: Request) -> RedirectResponse:
        if await _throttled(request):
            return await _failed(request, Failed('throttled'))
        found = await self.discover()
        browser_id = request.session.get('id')
        if found is None or not browser_id:
            return await _failed(request, Failed('unavailable'))
        state, nonce, verifier = secrets.token_urlsafe(32), secrets.token_urlsafe(32), generate_token(64)
        await self.store.put(
            f'flow:{state}', {'nonce': nonce, 'verifier': verifier, 'browser_id': browser_id}, FLOW_SECONDS
        )
        query = urlencode(
            {
                'response_type': 'code',
                'client_id': self.settings.oidc_client_id,
                'redirect_uri': self.redirect_uri,
                'scope': 'openid profile email',
                'state': state,
                'nonce': nonce,
                'code_challenge': create_s256_code_challenge(verifier),
                'code_challenge_method': 'S256',
            }
        )
        separator = '&' if '?' in found.authorization_endpoint else '?'
        return RedirectResponse(f'{found.authorization_endpoint}{separator}{query}', status_code=303)

    async def callback(self, request: Request) -> RedirectResponse:
        params = request.query_params
        if await _throttled(request):
            return await _failed(request, Failed('throttled'))
        try:
            stored = await self.store.take(f'flow:{params.get("state", "")}')
            if stored is None or stored.get('browser_id') != request.session.get('id'):
                raise Failed('state')  # unknown, used once already, expired, or another browser's
            flow = Flow(**stored)
            if params.get('error') or not params.get('code'):
                raise Failed('denied')
            claims, id_token = await self._exchange(params['code'], flow)
            username, name = self._who(claims)
        except Failed as failure:
            return await _failed(request, failure)
        return await _signed_in(request, username, name, id_token, create=self.settings.oidc_create_accounts)

    async def _exchange(self, code: str, flow: Flow) -> tuple[dict, str]:
        """The code traded for tokens (once: the provider refuses it a second time); the ID token's claims."""
        found = self.discovery
        if found is None:
            raise Failed('unavailable')
        secret = self.settings.oidc_client_secret
        try:
            async with self._client() as client:
                response = await client.post(
                    found.token_endpoint,
                    data={
                        'grant_type': 'authorization_code',
                        'code': code,
                        'redirect_uri': self.redirect_uri,
                        'code_verifier': flow.verifier,
                    },
                    auth=(self.settings.oidc_client_id or '', secret.get_secret_value() if secret else ''),
                    headers={'Accept': 'application/json'},
                )
            if response.status_code != 200:
                raise Failed('code')
            body = response.json()
            id_token = body.get('id_token') if isinstance(body, dict) else None
            if not isinstance(id_token, str):
                raise Failed('token')
            return await self.verify(id_token, nonce=flow.nonce), id_token
        except httpx.TimeoutException as error:
            raise Failed('timeout') from error
        except (httpx.HTTPError, ValueError) as error:
            raise Failed('unavailable') from error

    async def verify(self, id_token: str, *, nonce: str) -> dict:
        """The ID token's claims once its signature, issuer, audience, times and nonce are right; else Failed."""
        try:
            try:
                token = jwt.decode(id_token, await self.keys(), algorithms=SIGNING_ALGORITHMS)
            except jose_errors.InvalidKeyIdError:
                token = jwt.decode(id_token, await self.keys(again=True), algorithms=SIGNING_ALGORITHMS)
            client_id = self.settings.oidc_client_id or ''
            jwt.JWTClaimsRegistry(
                leeway=self.settings.oidc_leeway_seconds,
                iss={'essential': True, 'value': self.discovery.issuer if self.discovery else self.issuer},
                aud={'essential': True, 'value': client_id},
                exp={'essential': True},
                iat={'essential': True},
                sub={'essential': True},
                nonce={'essential': True, 'value': nonce},
            ).validate(token.claims)
            audience = token.claims.get('aud')
            if isinstance(audience, list) and len(audience) > 1 and token.claims.get('azp') != client_id:
                raise Failed('audience')
            if token.claims.get('iat', 0) > time.time() + self.settings.oidc_leeway_seconds:
                raise Failed('token')  # issued in the future
        except jose_errors.ExpiredTokenError as error:
            raise Failed('expired') from error
        except jose_errors.InvalidClaimError as error:
            raise Failed('audience' if error.claim == 'aud' else 'token') from error
        except (jose_errors.BadSignatureError, jose_errors.InvalidKeyIdError) as error:
            raise Failed('signature') from error
        except (jose_errors.JoseError, ValueError, TypeError) as error:
            raise Failed('token') from error
        return token.claims

    def _who(self, claims: dict) -> tuple[str, str]:
        username = claims.get(self.settings.oidc_username_claim)
        name = claims.get('name')
        if not isinstance(username, str) or not username:
            raise Failed('username')
        return username, name if isinstance(name, str) else ''

    async def end_session_url(self, session_token: str | None) -> str | None:
        """Where Log out sends the browser: the provider's end-session page when this session came from it."""
        if session_token is None or self.discovery is None or not self.discovery.end_session_endpoint:
            return None
        kept = await self.store.take(f'id-token:{_digest(session_token)}')
        if kept is None:
            return None  # a password sign-in, or another instance kept it in its memory
        query = urlencode(
            {
                'id_token_hint': kept['id_token'],
                'post_logout_redirect_uri': self.settings.base_url + '/login',
                'client_id': self.settings.oidc_client_id,
            }
        )
        endpoint = self.discovery.end_session_endpoint
        return f'{endpoint}{"&" if "?" in endpoint else "?"}{query}'


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


async def _signed_in(request: Request, username: str, name: str, id_token: str, *, create: bool) -> RedirectResponse:
    rt = runtime.current()
    address = request.client.host if request.client else ''
    agent = request.headers.get('user-agent', '')
    try:
        result = await rt.database.run(
            lambda session: sso.sign_in_sync(
                session, username=username, name=name, create=create, address=address, user_agent=agent
            )
        )
    except DATABASE_ERRORS:
        return await _failed(request, Failed('database', username))
    if isinstance(result, str):
        return await _failed(request, Failed(result, username))
    token, clinician_id = result
    sign_on = current()
    if sign_on is not None:
        max_age = rt.settings.session_max_hours * 3600
        await sign_on.store.put(f'id-token:{_digest(token)}', {'id_token': id_token}, max_age)
    metrics.sign_in('ok')
    await rt.throttle.succeeded(_throttle_key(_address(request)))
    return await auth.start_session(request, token=token, clinician_id=clinician_id)


def _address(request: Request) -> str:
    return request.client.host if request.client else ''


def _throttle_key(address: str) -> str:
    """Single sign-on failures are counted per address (the throttle's per-account count keyed by it): whoever
    forges answers from one address slows down there, not everyone's single sign-on."""
    return f'{ACTOR} {address}'


async def _throttled(request: Request) -> bool:
    address = _address(request)
    return await runtime.current().throttle.wait_seconds(_throttle_key(address), address) > 0


async def _failed(request: Request, failure: Failed) -> RedirectResponse:
    address = _address(request)
    actor = failure.username[:64] if failure.username else ACTOR
    if failure.reason == 'throttled':
        metrics.sign_in('throttled')
        await record(audit.Entry(audit.SIGN_IN_THROTTLED, None, actor, None, address, 'oidc'))
    else:
        metrics.sign_in('failed')
        if failure.reason in COUNTED:
            await runtime.current().throttle.failed(_throttle_key(address), address)
        await record(audit.Entry(audit.SIGN_IN_FAILED, None, actor, None, address, f'oidc: {failure.reason}'))
    auth.notebook().single_sign_on_failed(failure.reason)
    return RedirectResponse('/login', status_code=303)


# ----- wiring ------------------------------------------------------------------------------------------------

_current: SingleSignOn | None = None


def current() -> SingleSignOn | None:
    return _current


def install(settings: Settings, redis: Any = None) -> None:
    """Called by `server.build`: single sign-on on when CASEBOOK_OIDC_ISSUER is set (its provider asked at start)."""
    global _current
    if not settings.oidc_issuer:
        _current = None
        return
    store = OneTimeStore(redis, prefix=f'{settings.redis_key_prefix}oidc:', what='single sign-on state')
    _current = SingleSignOn(settings, store)
    app.on_startup(_current.discover)
    app.add_api_route(START_PATH, _start, methods=['GET'], include_in_schema=False)
    app.add_api_route(CALLBACK_PATH, _callback, methods=['GET'], include_in_schema=False)


async def _start(request: Request) -> RedirectResponse:
    if _current is None:
        return RedirectResponse('/login', status_code=303)
    return await _current.start(request)


async def _callback(request: Request) -> RedirectResponse:
    if _current is None:
        return RedirectResponse('/login', status_code=303)
    return await _current.callback(request)


def password_allowed(settings: Settings, username: str) -> bool:
    """With CASEBOOK_OIDC_ONLY, only the break-glass account may sign in with a password."""
    if not (settings.oidc_issuer and settings.oidc_only):
        return True
    return bool(settings.break_glass_user) and username == settings.break_glass_user.strip().lower()


async def end_session_url(session_token: str | None) -> str | None:
    return await _current.end_session_url(session_token) if _current is not None else None


async def login_section() -> None:
    """On the login page: `Sign in with <name>`, the reason the last single sign-on failed, and a warning when the
    provider cannot be used."""
    if _current is None:
        return
    failed = auth.notebook().take_single_sign_on_failure()
    if failed is not None:
        ui.label(REASONS.get(failed, REASONS['token'])).props('role=alert').classes(
            'w-full rounded bg-red-50 text-red-900 border border-red-300 px-3 py-2 text-sm'
        )
    if await _current.discover() is None:
        ui.label(_current.problem or 'Single sign-on is not available.').props('role=status').classes(
            'w-full rounded bg-amber-50 text-amber-900 border border-amber-300 px-3 py-2 text-sm'
        )
        return
    ui.button(f'Sign in with {_current.settings.oidc_name}', on_click=lambda: ui.navigate.to(START_PATH)).props(
        'outline'
    ).classes('w-full')
