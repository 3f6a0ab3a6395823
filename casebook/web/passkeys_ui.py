"""Passkeys on the page: the Profile dialog's `Passkeys` section (add, list, remove) and the login page's
`Sign in with a passkey` button (casebook.services.passkeys is the data side, passkeys.js the browser's).

Each ceremony's challenge is made on the server and kept only in the handler that asked for it (a local variable
while the browser's prompt is open); the browser's answer is checked against it, never against anything the
browser sends back. The relying party comes from CASEBOOK_PUBLIC_URL, or else from the Host of this page's request
(http://localhost:PORT only: see passkeys.relying_party); a page opened under another address is told where
passkeys work instead of offering a prompt that cannot succeed.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from datetime import datetime
from pathlib import Path

from nicegui import ui
from sqlalchemy import select
from sqlalchemy.orm import Session

from casebook import metrics
from casebook.models import Clinician
from casebook.services import accounts, passkeys
from casebook.services.errors import InvalidInput
from casebook.services.sessions import SignedIn
from casebook.web import auth, runtime
from casebook.web.attempt import NotDone, attempt
from casebook.web.components import heading

# Sent with a page's first ceremony rather than as a <script> in the page: the Profile dialog is built after the page
# was (NiceGUI inserts later <script>s as inert HTML), and the login page needs it only when the button is used.
PASSKEYS_JS = (Path(__file__).parent / 'passkeys.js').read_text(encoding='utf-8')
PROMPT_SECONDS = passkeys.TIMEOUT_MS / 1000 + 5  # the browser's prompt times out first, and says so
NOT_USED = 'No passkey was used.'
NOT_ACCEPTED = passkeys.NOT_ACCEPTED
MARKER = '(passkey)'  # who a refused passkey sign-in is recorded under: the passkey named nobody we know
UNSUPPORTED = 'This browser cannot use passkeys here. Use a recent browser, over HTTPS (or at localhost).'


def _browser_says(error: str, rp: passkeys.RelyingParty, otherwise: str) -> str:
    """What the browser's refusal (passkeys.js names it) means to a clinician; anything not named here: the prompt
    was cancelled or timed out, `otherwise`."""
    if error == 'NotSupportedError':
        return UNSUPPORTED
    if error == 'SecurityError':  # CASEBOOK_PUBLIC_URL names another host than the one this page was opened at
        return f'The browser refused: passkeys here work only at {rp.origin}. Open Casebook at that address.'
    return otherwise


def _utc(moment: datetime) -> str:
    return moment.strftime('%Y-%m-%d %H:%M UTC')


def _request_host() -> str:
    return ui.context.client.request.headers.get('host', '')


async def _ask_browser(kind: str, options: str) -> dict | str:
    """The browser's answer to `casebookPasskey.create|get(options)`: a credential as JSON text, or a dict with
    `error` when the browser refused (the prompt cancelled or timed out included)."""
    try:
        helper = f'(window.casebookPasskey || eval({json.dumps(PASSKEYS_JS)}))'  # the script's value: the helper
        answer = await ui.run_javascript(f'{helper}.{kind}({json.dumps(options)})', timeout=PROMPT_SECONDS)
    except TimeoutError:
        return {'error': 'NotAllowedError'}
    if not isinstance(answer, str):
        return {'error': 'NotAllowedError'}
    try:
        parsed = json.loads(answer)
    except ValueError:
        return {'error': 'NotAllowedError'}
    if isinstance(parsed, dict) and 'error' in parsed:
        return {'error': str(parsed.get('error'))}
    return answer


# ------------------------------------------------------------------------------------------------- Profile


def passkey_section(
    signed: Callable[[], SignedIn],
    *,
    address: str,
    still_signed_in: Callable[[], Awaitable[bool]],
    format_time: Callable[[datetime], str] = _utc,
) -> None:
    """The clinician's passkeys (inside the profile dialog): the list with name, when added and last used, each
    removable (confirmed); `Add a passkey` under the name typed in `Passkey name` (blank: `Passkey N`)."""
    rt = runtime.current()
    host = _request_host()
    heading('Passkeys', level=3, classes='text-base font-semibold mt-2')
    ui.label(
        'Sign in with this device’s fingerprint, face or PIN instead of a username and password. '
        'A passkey stays on your device; Casebook keeps only its public key.'
    ).classes('text-xs text-gray-700')
    listing = ui.column().props('role=list aria-label="Your passkeys"').classes('w-full gap-1')
    none = ui.label('No passkeys yet.').classes('text-sm text-gray-700')  # outside the list: only items in it
    none.set_visibility(False)
    name = ui.input('Passkey name', placeholder='For example: Ward laptop').props('maxlength=80').classes('w-full')
    result = ui.label().props('role=status').classes('text-sm')

    def tell(text: str) -> None:
        result.classes(replace='text-sm text-red-800').set_text(text)

    def told(text: str) -> None:
        result.classes(replace='text-sm text-green-800').set_text(text)

    async def fill() -> None:
        me = signed().clinician
        found = await attempt(
            lambda: rt.database.run(lambda session: passkeys.list_for(session, me.id)), tell, what='passkey list'
        )
        if isinstance(found, NotDone):
            return
        listing.clear()
        none.set_visibility(not found)
        with listing:
            for item in found:
                used = f'last used {format_time(item.last_used_at)}' if item.last_used_at else 'never used'
                with ui.row().classes('w-full items-center gap-2 border rounded px-3 py-1').props('role=listitem'):
                    with ui.column().classes('gap-0 grow'):
                        ui.label(item.name).classes('font-medium')
                        ui.label(f'added {format_time(item.created_at)}, {used}').classes('text-xs text-gray-700')
                    ui.button(icon='delete', on_click=lambda i=item: confirm_removal(i)).props(
                        f'flat round dense aria-label="{_attribute(f"Remove {item.name}")}" '
                        f'title="{_attribute(f"Remove {item.name}")}"'
                    )

    async def add() -> None:
        if not await still_signed_in():
            return
        me = signed().clinician
        try:
            rp = passkeys.relying_party(rt.settings.public_url, host)
        except InvalidInput as refusal:
            tell(refusal.message)
            return
        typed = name.value or ''

        def ask(session: Session) -> tuple[str, bytes]:
            passkeys.name_for(session, me.id, typed)  # a name refused is said before the device makes a passkey
            return passkeys.registration_options(session, me.id, rp)

        made = await attempt(lambda: rt.database.run(ask), tell, what='passkey options')
        if isinstance(made, NotDone):
            return
        options, challenge = made
        told('Follow your browser’s prompt to make the passkey…')
        answer = await _ask_browser('create', options)
        if isinstance(answer, dict):
            if answer['error'] == 'InvalidStateError':
                tell('This device already holds one of your passkeys: it is in the list.')
            else:
                tell(_browser_says(answer['error'], rp, 'No passkey was added.'))
            return
        if not await still_signed_in():
            return
        added = await attempt(
            lambda: rt.database.run(
                lambda session: passkeys.finish_registration(
                    session, me.id, answer, challenge=challenge, rp=rp, name=typed, address=address
                )
            ),
            tell,
            what='passkey registration',
        )
        if isinstance(added, NotDone):
            return
        name.value = ''
        told(f'Passkey “{added.name}” added. You can sign in with it next time.')
        await fill()

    async def confirm_removal(item: passkeys.PasskeyInfo) -> None:
        with (
            ui.dialog().props(f'aria-label="{_attribute(f"Remove passkey {item.name}")}"') as dialog,
            ui.card().props('role=alertdialog'),
        ):
            heading(f'Remove the passkey “{item.name}”?', level=2, classes='text-lg font-semibold')
            ui.label('You will no longer be able to sign in with it. The device may keep it until you delete it there.')
            with ui.row().classes('w-full justify-end'):
                ui.button('Cancel', on_click=dialog.close).props('flat')
                ui.button('Remove', on_click=lambda: dialog.submit(True)).props('color=negative')
        dialog.on('hide', dialog.delete)
        if not await dialog:
            return
        if not await still_signed_in():
            return
        me = signed().clinician
        removed = await attempt(
            lambda: rt.database.run(lambda session: passkeys.remove(session, me.id, item.id, address=address)),
            tell,
            what='passkey removal',
        )
        if not isinstance(removed, NotDone):
            told(f'Passkey “{item.name}” removed.')
        await fill()

    ui.button('Add a passkey', on_click=add).props('outline')
    ui.timer(0, fill, once=True)


def _attribute(text: str) -> str:
    """Text for a double-quoted prop value: NiceGUI splits props at spaces outside quotes; a quote would end it."""
    return text.replace('"', '”')


# ------------------------------------------------------------------------------------------------- sign-in


def passkey_sign_in(
    on_clinician: Callable[[accounts.ClinicianInfo], Awaitable[object]],
    tell: Callable[[str], object],
    *,
    address: str,
    clinician_id: int | None = None,
) -> ui.button:
    """The login page's `Sign in with a passkey` (any of this site's passkeys the browser holds, no username), or,
    with `clinician_id`, `Use a passkey` as the second step of a password sign-in (that clinician's only).

    Accepted: the clinician is loaded and `on_clinician` awaited (it starts the session). Refused: counted like a
    wrong password (throttle and a `sign-in-failed` audit row, detail `passkey`) and `tell`: NOT_ACCEPTED, or where
    passkeys work when the page is at another address. A prompt the clinician cancelled records nothing."""
    rt = runtime.current()
    host = _request_host()
    busy = False

    async def use() -> None:
        nonlocal busy
        if busy:
            return
        busy = True
        button.disable()
        try:
            await _use()
        finally:
            busy = False
            button.enable()

    async def whose() -> tuple[str, str, list[str] | None] | NotDone:
        """(recorded as, throttled as, the passkeys allowed). Without a clinician: MARKER, throttled per address
        (one address's failures never hold back everyone's passkeys), any passkey. With one (the second step of a
        password sign-in): their username, the same count as their wrong passwords, their passkeys only."""
        if clinician_id is None:
            return MARKER, f'{MARKER} {address}', None

        def read(session: Session) -> tuple[str, str, list[str] | None]:
            username = session.scalar(select(Clinician.username).where(Clinician.id == clinician_id)) or MARKER
            return username, username, passkeys.credential_ids(session, clinician_id)

        return await attempt(lambda: rt.database.run(read), tell, what='passkey sign-in')

    async def _use() -> None:
        tell('')
        try:
            rp = passkeys.relying_party(rt.settings.public_url, host)
        except InvalidInput as refusal:
            tell(refusal.message)
            return
        who = await whose()
        if isinstance(who, NotDone):
            return
        attempted, throttled_as, ids = who
        if ids == []:  # an empty allow list would let the browser offer any passkey of this site
            tell('You have no passkey here yet: add one on your Profile after signing in.')
            return
        if await auth.throttled(attempted, address, tell, key=throttled_as, detail='passkey'):
            return
        options, challenge = passkeys.authentication_options(rp, credential_ids=ids)
        answer = await _ask_browser('get', options)
        if isinstance(answer, dict):
            tell(_browser_says(answer['error'], rp, NOT_USED))
            return

        def unit(session: Session) -> accounts.ClinicianInfo | None:
            found = passkeys.finish_authentication(
                session, answer, challenge=challenge, rp=rp, clinician_id=clinician_id
            )
            clinician = session.get(Clinician, found) if found is not None else None
            return accounts.to_info(clinician) if clinician is not None else None

        # another address: InvalidInput, told by `attempt` and not counted (no signature was even checked)
        clinician = await attempt(lambda: rt.database.run(unit), tell, what='passkey sign-in')
        if isinstance(clinician, NotDone):
            return
        if clinician is None:
            await auth.refused(attempted, address, key=throttled_as, detail='passkey')
            tell(NOT_ACCEPTED)
            return
        await rt.throttle.succeeded(throttled_as)
        if await on_clinician(clinician) is not False:
            metrics.sign_in('ok')

    label = 'Sign in with a passkey' if clinician_id is None else 'Use a passkey'
    button = ui.button(label, icon='key', on_click=use).props('outline').classes('w-full')
    return button
