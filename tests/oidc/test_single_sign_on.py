"""Single sign-on against a real OpenID provider (tests/oidc/provider.mjs), without a browser: an HTTP client goes
through the provider's development login form and Casebook's callback, served by the real `casebook serve`.

One provider and one Casebook for the module (each start costs seconds); the provider is restarted with other
settings (a clock that runs behind, rotated keys) or paused and stopped by the tests at the end.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import Iterator
from urllib.parse import parse_qs, urlencode, urlparse

import httpx
import pytest
from authlib.oauth2.rfc7636 import create_s256_code_challenge

from casebook.config import Settings
from casebook.web.oidc import Failed, SingleSignOn
from casebook.web.onetime import OneTimeStore
from tests.browser.conftest import Server
from tests.oidc_support import (
    CLIENT_ID,
    CLIENT_SECRET,
    OTHER_CLIENT_ID,
    OTHER_CLIENT_SECRET,
    OTHER_REDIRECT,
    Provider,
    Visitor,
    audit_rows,
    casebook_env,
    signing_key,
    skip_without_provider,
)

FIRST_KEY = signing_key('first')


@pytest.fixture(scope='module')
def provider(tmp_path_factory) -> Iterator[Provider]:
    skip_without_provider()
    folder = tmp_path_factory.mktemp('oidc')
    running = Provider(folder / 'provider.log', OIDC_KEYS=json.dumps([FIRST_KEY]))
    yield running
    running.stop()


@pytest.fixture(scope='module')
def casebook(tmp_path_factory, provider: Provider) -> Iterator[Server]:
    folder = tmp_path_factory.mktemp('casebook')
    server = Server(folder / 'data', folder / 'server.log')
    server.extra_env = casebook_env(
        provider,
        server.base_url,
        CASEBOOK_OIDC_TIMEOUT_SECONDS='1.5',
        CASEBOOK_OIDC_LEEWAY_SECONDS='5',
        # for password sign-ins only: a single sign-on leaves the second step to the provider
        CASEBOOK_REQUIRE_TWO_STEP='true',
    )
    provider.start(redirect_uris=[server.base_url + '/auth/oidc/callback'], logout_uris=[server.base_url + '/login'])
    server.start()
    server.casebook('user', 'add', 'ada', '--display-name', 'Ada (before the provider)', '--sso')
    server.casebook('user', 'add', 'disabled', '--display-name', 'Disabled', '--sso')
    with sqlite3.connect(server.data_dir / 'casebook.sqlite3') as db:
        db.execute("UPDATE clinicians SET disabled = 1 WHERE username = 'disabled'")
    try:
        yield server
    finally:
        server.stop()
    server.assert_log_clean()


@pytest.fixture
def visitor(casebook: Server) -> Iterator[Visitor]:
    browser = Visitor(casebook.base_url)
    yield browser
    browser.close()


def failed_with(visitor: Visitor, casebook: Server, response: httpx.Response, reason: str, sentence: str) -> None:
    """The callback's answer went to the login page, which says why once; the audit trail has the row."""
    assert response.status_code == 303 and response.headers['location'] == '/login', response.text
    assert sentence in visitor.login_page()
    assert sentence not in visitor.login_page()  # said once
    assert not visitor.signed_in()
    assert audit_rows(casebook.data_dir, 'sign-in-failed')[-1][1] == f'oidc: {reason}'


def test_signs_in_with_a_new_storage_id_and_the_providers_name(visitor: Visitor, casebook: Server) -> None:
    back = visitor.provider_login('ada')
    before = visitor.http.cookies.get('session', domain='127.0.0.1')
    response = visitor.callback(back)
    assert response.status_code == 303 and response.headers['location'] == '/'
    assert visitor.http.cookies.get('session', domain='127.0.0.1') != before  # the storage id was rotated
    page = visitor.get('/')
    assert page.status_code == 200 and 'Dr. Ada Lovelace' in page.text  # the display name follows the `name` claim
    assert audit_rows(casebook.data_dir, 'sign-in')[-1] == ('ada', 'oidc')


def test_a_state_is_accepted_once_and_only_as_issued(visitor: Visitor, casebook: Server) -> None:
    back = visitor.provider_login('ada')
    url = urlparse(back)
    query = {key: values[0] for key, values in parse_qs(url.query).items()}
    tampered = url._replace(query=urlencode({**query, 'state': query['state'][:-2] + 'xx'})).geturl()
    failed_with(visitor, casebook, visitor.callback(tampered), 'state', 'the sign-in link was used already')
    missing = url._replace(query=urlencode({'code': query['code']})).geturl()
    failed_with(visitor, casebook, visitor.callback(missing), 'state', 'the sign-in link was used already')
    # the state a tampered request named was not used up: the real answer still signs in, once
    assert visitor.callback(back).headers['location'] == '/'
    assert visitor.get('/').status_code == 200
    stranger = httpx.get(back, follow_redirects=False)  # no cookie at all
    assert stranger.status_code == 303 and stranger.headers['location'] == '/login'
    other = Visitor(casebook.base_url)
    try:  # the same answer replayed (from another browser, or again): refused
        assert other.get('/login').status_code == 200
        failed_with(other, casebook, other.callback(back), 'state', 'the sign-in link was used already')
    finally:
        other.close()


def test_forged_answers_from_one_address_are_throttled_there_only(visitor: Visitor, casebook: Server) -> None:
    """Forged callbacks count like wrong passwords, per address: a few are free, then that address waits, and
    says so; a clinician at another address signs in as ever."""
    assert visitor.get('/login').status_code == 200
    refused = 0
    for attempt in range(6):
        forged = visitor.get('/auth/oidc/callback?' + urlencode({'code': 'made-up', 'state': f'forged-{attempt}'}))
        assert forged.headers['location'] == '/login'
        page = visitor.login_page()
        if 'too many failed sign-ins from this address' in page:
            break
        assert 'the sign-in link was used already' in page
        refused += 1
    else:
        raise AssertionError('six forged answers from one address and it was never slowed down')
    assert 1 <= refused <= 4
    start = visitor.get('/auth/oidc/start')  # the way to the provider is closed for now too
    assert start.headers['location'] == '/login' and 'too many failed sign-ins' in visitor.login_page()
    assert ('(single sign-on)', 'oidc') in audit_rows(casebook.data_dir, 'sign-in-throttled')
    elsewhere = Visitor(casebook.base_url)
    try:
        assert elsewhere.callback(elsewhere.provider_login('ada')).headers['location'] == '/'
    finally:
        elsewhere.close()


def test_a_refusal_by_the_provider_is_said(visitor: Visitor, casebook: Server) -> None:
    """The clinician cancelled at the provider: it answers with an error and the state, no code."""
    assert visitor.get('/login').status_code == 200
    state = parse_qs(urlparse(visitor.get('/auth/oidc/start').headers['location']).query)['state'][0]
    refused = visitor.get('/auth/oidc/callback?' + urlencode({'error': 'access_denied', 'state': state}))
    failed_with(visitor, casebook, refused, 'denied', 'the identity provider did not sign you in')


def test_no_account_or_a_disabled_one_is_refused(visitor: Visitor, casebook: Server) -> None:
    response = visitor.callback(visitor.provider_login('grace'))
    failed_with(visitor, casebook, response, 'unknown-account', 'there is no Casebook account for you')
    assert audit_rows(casebook.data_dir, 'sign-in-failed')[-1][0] == 'grace'
    response = visitor.callback(visitor.provider_login('disabled'))
    failed_with(visitor, casebook, response, 'disabled', 'your Casebook account is disabled')


def test_a_code_used_once_is_refused_by_the_provider(visitor: Visitor, casebook: Server, provider: Provider) -> None:
    """The provider's side of 'a code once': the code of a finished sign-in, traded again with Casebook's secret."""
    back = visitor.provider_login('ada')
    code = parse_qs(urlparse(back).query)['code'][0]
    assert visitor.callback(back).headers['location'] == '/'
    token = httpx.post(
        f'{provider.issuer}/token',
        data={
            'grant_type': 'authorization_code',
            'code': code,
            'redirect_uri': f'{casebook.base_url}/auth/oidc/callback',
        },
        auth=(CLIENT_ID, CLIENT_SECRET),
    )
    assert token.status_code == 400 and token.json()['error'] == 'invalid_grant'


def test_a_token_for_another_application_or_with_a_bad_signature_is_refused(
    visitor: Visitor, provider: Provider, casebook: Server
) -> None:
    """A real ID token of the provider's other client, checked by Casebook's verifier (configured as the served one)."""
    nonce = 'n-0123456789abcdef'
    verifier = 'v' * 64

    query = urlencode(
        {
            'response_type': 'code',
            'client_id': OTHER_CLIENT_ID,
            'redirect_uri': OTHER_REDIRECT,
            'scope': 'openid profile',
            'state': 's-0123456789',
            'nonce': nonce,
            'code_challenge': create_s256_code_challenge(verifier),
            'code_challenge_method': 'S256',
        }
    )
    back = visitor.follow(f'{provider.issuer}/auth?{query}', login='ada', until=OTHER_REDIRECT)
    code = parse_qs(urlparse(back).query)['code'][0]
    tokens = httpx.post(
        f'{provider.issuer}/token',
        data={
            'grant_type': 'authorization_code',
            'code': code,
            'redirect_uri': OTHER_REDIRECT,
            'code_verifier': verifier,
        },
        auth=(OTHER_CLIENT_ID, OTHER_CLIENT_SECRET),
    ).json()
    settings = Settings(**{k.removeprefix('CASEBOOK_').lower(): v for k, v in casebook.extra_env.items()})
    head, body, signature = tokens['id_token'].split('.')
    forged = '.'.join([head, body, signature[:10] + ('A' if signature[10] != 'A' else 'B') + signature[11:]])

    async def reasons() -> list[str]:
        checker = SingleSignOn(settings, OneTimeStore(prefix='test:', what='test'))
        assert await checker.discover() is not None
        found = []
        for token in (tokens['id_token'], forged):
            with pytest.raises(Failed) as refused:
                await checker.verify(token, nonce=nonce)
            found.append(refused.value.reason)
        return found

    assert asyncio.run(reasons()) == ['audience', 'signature']


def test_rotated_keys_are_fetched_again(visitor: Visitor, casebook: Server, provider: Provider) -> None:
    """The provider signs with a new key Casebook has not seen: Casebook fetches the keys once more and signs in."""
    provider.restart(OIDC_KEYS=json.dumps([signing_key('rotated'), FIRST_KEY]))
    assert visitor.callback(visitor.provider_login('ada')).headers['location'] == '/'
    assert visitor.signed_in()


def test_an_expired_token_is_refused(visitor: Visitor, casebook: Server, provider: Provider) -> None:
    """The provider's clock 10 minutes behind: its ID tokens (60 s) have expired when Casebook gets them."""
    provider.restart(OIDC_KEYS=json.dumps([FIRST_KEY]), OIDC_CLOCK_SKEW='600')
    response = visitor.callback(visitor.provider_login('ada'))
    failed_with(visitor, casebook, response, 'expired', 'the identity token has expired')


def test_a_slow_or_stopped_provider_ends_on_the_login_page(
    visitor: Visitor, casebook: Server, provider: Provider
) -> None:
    provider.restart(OIDC_KEYS=json.dumps([FIRST_KEY]))
    back = visitor.provider_login('ada')
    provider.pause()
    try:
        failed_with(visitor, casebook, visitor.callback(back), 'timeout', 'did not answer in time')
    finally:
        provider.resume()
    back = visitor.provider_login('ada')
    provider.stop()
    failed_with(visitor, casebook, visitor.callback(back), 'unavailable', 'could not be reached')


def test_a_first_sign_in_creates_an_account_only_when_allowed(visitor: Visitor, casebook: Server, provider: Provider):
    provider.restart(OIDC_KEYS=json.dumps([FIRST_KEY]))
    refused = visitor.callback(visitor.provider_login('newcomer'))
    failed_with(visitor, casebook, refused, 'unknown-account', 'no Casebook account')
    casebook.stop()
    casebook.extra_env['CASEBOOK_OIDC_CREATE_ACCOUNTS'] = 'true'
    casebook.start()
    assert visitor.callback(visitor.provider_login('newcomer')).headers['location'] == '/'
    assert 'Dr. New Comer' in visitor.get('/').text
    assert ('newcomer', 'doctor (single sign-on)') in audit_rows(casebook.data_dir, 'account-created')
