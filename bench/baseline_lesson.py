"""The lesson's design (seed/lesson-32-session-management.md), done faithfully but runnable on NiceGUI 3.

Only what NiceGUI 3 forces is changed: the UI is built in an `@ui.page` function (the lesson touches
`app.storage.user` at import time, which NiceGUI 3 refuses), and Enter is `.on('keydown.enter', …)` because
`ui.input` has no `on_submit`. Everything else is the lesson's: the whole conversation is a list in
`app.storage.user` (rewritten to disk on every change), and every send clears the chat column and redraws
every message. It is the baseline `bench/browser_timing.py` measures Casebook against, in the same run.

    NICEGUI_STORAGE_PATH=DIR .venv/bin/python bench/baseline_lesson.py --storage-secret S --port 8081

`seed_storage()` writes a browser's storage file with N messages and returns the signed session cookie
that makes a browser that browser, so a benchmark can start at 20,000 messages without sending them.
"""

from __future__ import annotations

import argparse
import json
import uuid
from base64 import b64encode
from pathlib import Path

SENDER = 'doctor'


def message_text(index: int, total: int) -> str:
    return f'Lesson note #{index:07d} of {total}: patient has mild fever for 3 days.'


def seed_storage(storage_path: Path, secret: str, messages: int) -> dict[str, str]:
    """Write one browser's `app.storage.user` file holding `messages` messages; its signed `session` cookie."""
    import itsdangerous  # Starlette's SessionMiddleware signs the cookie with it

    session_id = str(uuid.uuid4())
    storage = {
        'user_name': 'Dr Bench Marker',
        'patient_id': f'LESSON-{messages}',
        'conversation': [{'sender': SENDER, 'text': message_text(i, messages)} for i in range(messages)],
    }
    storage_path.mkdir(parents=True, exist_ok=True)
    (storage_path / f'storage-user-{session_id}.json').write_text(json.dumps(storage), encoding='utf-8')
    payload = b64encode(json.dumps({'id': session_id}).encode('utf-8'))
    return {'name': 'session', 'value': itsdangerous.TimestampSigner(secret).sign(payload).decode('utf-8')}


def build() -> None:
    """The lesson's page, as an @ui.page function."""
    from nicegui import app, ui

    def init_session():
        """Make sure the storage has the keys we need."""
        app.storage.user.setdefault('user_name', '')
        app.storage.user.setdefault('patient_id', '')
        app.storage.user.setdefault('conversation', [])

    @ui.page('/')
    def index():
        def save_header():
            """Save user and patient info into session storage."""
            app.storage.user['user_name'] = name_input.value
            app.storage.user['patient_id'] = patient_input.value
            header_label.set_text(f'User: {app.storage.user["user_name"]} | Patient: {app.storage.user["patient_id"]}')

        def refresh_conversation():
            """Redraw the chat area from stored conversation."""
            chat_column.clear()
            for item in app.storage.user.get('conversation', []):
                sender = item['sender'].capitalize()
                text = item['text']
                with chat_column:
                    ui.label(f'{sender}: {text}')

        def send_message():
            """Add a new message to the conversation."""
            text = message_input.value.strip()
            if not text:
                return  # do nothing if empty
            conversation = app.storage.user.setdefault('conversation', [])
            conversation.append({'sender': SENDER, 'text': text})
            message_input.value = ''
            refresh_conversation()

        init_session()
        header_label = ui.label('User: (not set) | Patient: (not set)')
        with ui.row():
            name_input = ui.input('Your name')
            patient_input = ui.input('Patient ID')
            ui.button('Save Session Info', on_click=save_header)
        ui.separator()
        ui.label('Conversation for this user & patient:')
        with ui.column() as chat_column:
            pass  # will be filled by refresh_conversation()
        with ui.row():
            message_input = ui.input('Type message here')
            message_input.on('keydown.enter', send_message)  # NiceGUI 3: ui.input has no on_submit
            ui.button('Send', on_click=send_message)
        refresh_conversation()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--host', default='127.0.0.1')
    parser.add_argument('--port', type=int, default=8081)
    parser.add_argument('--storage-secret', required=True)
    args = parser.parse_args()
    from nicegui import ui

    build()
    ui.run(
        host=args.host,
        port=args.port,
        storage_secret=args.storage_secret,
        reload=False,
        show=False,
        show_welcome_message=False,
        uvicorn_logging_level='warning',
    )


if __name__ in {'__main__', '__mp_main__'}:
    main()
