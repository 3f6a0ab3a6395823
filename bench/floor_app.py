"""The floor: a trivial NiceGUI page whose Send appends one label, measured like Casebook (SPEC §4's ~4 ms).

`/?shown=N` starts with N labels on the page (Casebook shows the newest 50 of a conversation), so the
floor is known both for an empty column and for one holding what Casebook holds.

    .venv/bin/python bench/floor_app.py --port 8082
"""

from __future__ import annotations

import argparse


def build() -> None:
    from nicegui import ui

    @ui.page('/')
    def index(shown: int = 0) -> None:
        def send() -> None:
            if text := (composer.value or '').strip():
                with column:
                    ui.label(text)
                composer.value = ''

        with ui.column() as column:
            for index in range(min(shown, 5000)):
                ui.label(f'Floor note #{index:07d}')
        composer = ui.input('Type message here')
        ui.button('Send', on_click=send)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--host', default='127.0.0.1')
    parser.add_argument('--port', type=int, default=8082)
    args = parser.parse_args()
    from nicegui import ui

    build()
    ui.run(host=args.host, port=args.port, reload=False, show=False, show_welcome_message=False)


if __name__ in {'__main__', '__mp_main__'}:
    main()
