"""The login page's `Sign in with a passkey` in NiceGUI's simulated browser. The browser's WebAuthn answers come
from the software authenticator of tests/services/test_passkeys.py, as the JSON text passkeys.js sends: a real
signature over the challenge the page's handler made, verified by py_webauthn."""

from __future__ import annotations

import json
import re
from collections.abc import Callable

import pytest
from nicegui import ui
from nicegui.testing import User
from sqlalchemy import select

from casebook.models import AuditEvent, Clinician
from casebook.web import runtime
from casebook.web.passkeys_ui import passkey_sign_in
from tests.conftest import add_clinician
from tests.services.test_passkeys import RP, Authenticator, b64, register
from tests.web.helpers import create_first_account, handlers_done, log_in

Browser = Callable[[str, str], str]  # (create|get, the options as JSON) -> what passkeys.js resolves to
CANCELLED = json.dumps({'error': 'NotAllowedError', 'message': 'The operation either timed out or was not allowed.'})


@pytest.fixture
def public_url(monkeypatch: pytest.MonkeyPatch) -> None:
    """Passkeys for http://localhost:8080 (the simulated browser's Host is no name a passkey could be for); listed
    before `user` so the app is built with it."""
    monkeypatch.setenv('CASEBOOK_PUBLIC_URL', RP.origin)


def browser(user: User) -> list[Browser]:
    """The simulated browser's next WebAuthn answers, one per prompt, in order."""
    answers: list[Browser] = []

    def answer(match: re.Match) -> str:
        return answers.pop(0)(match.group(1), json.loads(match.group(2)))

    user.javascript_rules[re.compile(r'.*\.(get|create)\(("(?:[^"\\]|\\.)*")\)$', re.S)] = answer
    return answers


async def ada_with_a_passkey_signed_out(user: User) -> Authenticator:
    """The first account, ada, with a passkey `Phone` on this authenticator, at the login page."""
    await create_first_account(user)
    database = runtime.current().database
    ada = await database.run(lambda s: s.scalar(select(Clinician.id).where(Clinician.username == 'ada')))
    phone = Authenticator()
    await register(database, ada, phone, 'Phone')
    user.find(kind=ui.button, content='Log out').click()
    await user.should_see('Your notebook is private to you.')
    return phone


async def use_a_passkey(user: User) -> None:
    user.find(kind=ui.button, content='Sign in with a passkey').click()
    await handlers_done('passkey_sign_in.<locals>.use')


async def audit_rows() -> list[tuple[str, str, str]]:
    async with runtime.current().database.session() as session:
        rows = await session.execute(select(AuditEvent.action, AuditEvent.actor, AuditEvent.detail))
        return [tuple(row) for row in rows]


async def test_a_passkey_signs_in_refusals_count_like_wrong_passwords_and_a_cancelled_prompt_does_not(
    public_url, user: User
) -> None:
    phone = await ada_with_a_passkey_signed_out(user)
    answers = browser(user)
    before = await audit_rows()

    answers.append(lambda kind, options: CANCELLED)
    await use_a_passkey(user)
    await user.should_see('No passkey was used.')
    assert await audit_rows() == before  # nothing happened: nothing recorded, nothing counted

    answers.append(lambda kind, options: phone.get(options) if kind == 'get' else 'not asked to create')
    await use_a_passkey(user)
    await user.should_see('User: Dr. Ada | Patient: (not set)')
    assert (await audit_rows())[-1][:2] == ('sign-in', 'ada')
    user.find(kind=ui.button, content='Log out').click()
    await user.should_see('Log in')

    stranger = Authenticator()  # a passkey for this address that this Casebook never registered
    for _ in range(4):
        answers.append(lambda kind, options: stranger.get(options))
        await use_a_passkey(user)
        await user.should_see('That passkey was not accepted.')
    await use_a_passkey(user)  # the fifth within seconds: held back before the browser is even asked
    await user.should_see('Too many attempts. Please wait')
    assert answers == []
    rows = (await audit_rows())[len(before) :]
    failed = [row for row in rows if row[0] == 'sign-in-failed']
    assert failed == [('sign-in-failed', '(passkey)', 'passkey')] * 4
    assert rows[-1] == ('sign-in-throttled', '(passkey)', 'passkey')


async def test_the_profile_adds_lists_and_removes_passkeys_and_says_why_not(public_url, user: User) -> None:
    await create_first_account(user)
    answers = browser(user)
    laptop = Authenticator()

    async def add(name: str, answer: Browser | None) -> None:
        if answer is not None:
            answers.append(answer)
        user.find(kind=ui.input, content='Passkey name').clear().type(name)
        user.find(kind=ui.button, content='Add a passkey').click()
        await handlers_done('passkey_section.<locals>.add')

    user.find(kind=ui.button, content='Profile').click()
    await user.should_see('Passkeys')
    await user.should_see('No passkeys yet.')
    await add('Ward laptop', lambda kind, options: laptop.create(options) if kind == 'create' else 'not asked to get')
    await user.should_see('Passkey “Ward laptop” added.')
    await user.should_see('never used')

    await add('ward LAPTOP', None)  # refused before the browser is asked: no passkey made on the device in vain
    await user.should_see('Passkey name: you already have a passkey called "ward LAPTOP". Choose another name.')
    await add('Phone', lambda kind, options: CANCELLED)
    await user.should_see('No passkey was added.')
    await add('Again', lambda kind, options: json.dumps({'error': 'InvalidStateError', 'message': 'excluded'}))
    await user.should_see('This device already holds one of your passkeys: it is in the list.')
    assert answers == []

    user.find(kind=ui.button, content='delete').click()  # the one passkey's `Remove Ward laptop`
    await user.should_see('Remove the passkey “Ward laptop”?')
    user.find(kind=ui.button, content='Remove').click()
    await user.should_see('Passkey “Ward laptop” removed.')
    await user.should_see('No passkeys yet.')
    rows = [row for row in await audit_rows() if row[0].startswith('passkey-')]
    assert rows == [('passkey-added', 'ada', 'Ward laptop'), ('passkey-removed', 'ada', 'Ward laptop')]


async def test_the_second_step_of_a_password_sign_in_takes_only_that_clinicians_passkeys(
    public_url, user: User
) -> None:
    """`Use a passkey` (passkey_sign_in with clinician_id), on a page of its own here: the two-step sign-in's
    login page is where it is used."""
    await create_first_account(user)
    database = runtime.current().database
    await add_clinician(database, 'bob')
    await add_clinician(database, 'cy')
    ids = dict(await database.run(lambda s: s.execute(select(Clinician.username, Clinician.id)).all()))
    ada_phone, bob_phone = Authenticator(), Authenticator()
    await register(database, ids['ada'], ada_phone)
    await register(database, ids['bob'], bob_phone)
    signed: list[str] = []

    async def on_clinician(clinician) -> None:
        signed.append(clinician.username)

    def second_step(username: str) -> None:
        told = ui.label().props('role=alert')
        passkey_sign_in(on_clinician, told.set_text, address='10.0.0.7', clinician_id=ids[username])

    ui.page('/test-second-step/{username}')(second_step)
    answers = browser(user)
    before = len(await audit_rows())

    await user.open('/test-second-step/cy')  # no passkey: the browser is not asked to offer just any
    user.find(kind=ui.button, content='Use a passkey').click()
    await user.should_see('You have no passkey here yet')

    await user.open('/test-second-step/ada')

    def bobs_passkey_anyway(kind: str, options: str) -> str:
        allowed = json.loads(options)['allowCredentials']
        assert [item['id'] for item in allowed] == [b64(ada_phone.credential_id)]  # what a browser would offer
        return bob_phone.get(json.dumps(json.loads(options) | {'allowCredentials': []}))  # a forged answer

    answers.append(bobs_passkey_anyway)
    user.find(kind=ui.button, content='Use a passkey').click()
    await user.should_see('That passkey was not accepted.')
    answers.append(lambda kind, options: ada_phone.get(options))
    user.find(kind=ui.button, content='Use a passkey').click()
    await handlers_done('passkey_sign_in.<locals>.use')
    assert signed == ['ada'] and answers == []
    assert (await audit_rows())[before:] == [('sign-in-failed', 'ada', 'passkey')]


async def test_a_password_sign_in_of_a_clinician_with_a_passkey_ends_with_it(public_url, user: User) -> None:
    """The login page's second step for a clinician whose second factor is a passkey: no session before it."""
    phone = await ada_with_a_passkey_signed_out(user)
    await log_in(user, 'ada')
    await user.should_see('Use your passkey to finish signing in.')
    page = await user.http_client.get('/', follow_redirects=False)
    assert page.headers['location'] == '/login'
    answers = browser(user)
    answers.append(lambda kind, options: phone.get(options))
    user.find(kind=ui.button, content='Use a passkey').click()
    await user.should_see('User: Dr. Ada | Patient: (not set)')
    assert (await audit_rows())[-1] == ('sign-in', 'ada', 'password+passkey')
