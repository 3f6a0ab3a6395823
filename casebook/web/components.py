"""Small pieces of page chrome shared by the screens."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from nicegui import ui

from casebook.web import auth


def heading(text: str, *, level: int = 1, classes: str = '') -> ui.label:
    """A real heading for screen readers (role and level), styled by classes."""
    return ui.label(text).props(f'role=heading aria-level={level}').classes(classes)


@contextmanager
def form_card(title: str, subtitle: str) -> Iterator[ui.label]:
    """The centred card of the account screens; yields the label that shows refusals."""
    theme(auth.notebook())
    with ui.column().classes('w-full items-center justify-center min-h-[80vh] p-4'):
        with ui.card().classes('w-full max-w-sm gap-3 p-6'):
            heading('Casebook', classes='text-2xl font-semibold')
            ui.label(title).classes('text-lg')
            ui.label(subtitle).classes('text-sm text-gray-700')
            error = ui.label('').props('role=alert aria-live=assertive').classes('text-red-800 text-sm')
            error.set_visibility(False)
            yield error


THEME_NEXT = {'auto': 'dark', 'dark': 'light', 'light': 'auto'}
THEME_ICON = {'auto': 'brightness_auto', 'dark': 'dark_mode', 'light': 'light_mode'}
THEME_SAID = {'auto': 'as the device', 'dark': 'dark', 'light': 'light'}


DARK = {'auto': None, 'dark': True, 'light': False}  # None: Quasar follows the device (prefers-color-scheme)


def theme(book) -> ui.dark_mode:
    """Light or dark as chosen in this browser's notebook; as the device is set until someone chooses."""
    return ui.dark_mode(DARK[book.theme])


def theme_switch(book) -> ui.dark_mode:
    """`theme`, and a header button that goes auto → dark → light → auto, remembered in the notebook."""
    dark = theme(book)

    def label(theme: str) -> str:
        return f'Theme: {THEME_SAID[theme]} (switch to {THEME_SAID[THEME_NEXT[theme]]})'

    def switch() -> None:
        book.theme = THEME_NEXT[book.theme]
        dark.set_value(DARK[book.theme])
        button.props(f'icon={THEME_ICON[book.theme]} aria-label="{label(book.theme)}" title="{label(book.theme)}"')

    button = ui.button(icon=THEME_ICON[book.theme], on_click=switch).props(
        f'flat round color=white aria-label="{label(book.theme)}" title="{label(book.theme)}"'
    )
    return dark


def show_error(label: ui.label, message: str) -> None:
    label.set_text(message)
    label.set_visibility(bool(message))


def duration(minutes: float) -> str:
    """`15 minutes`, `1 minute`, `30 seconds`: a timeout as a person would say it."""
    if minutes < 1:
        seconds = round(minutes * 60)
        return f'{seconds} second{"s" if seconds != 1 else ""}'
    return f'{minutes:g} minute{"s" if minutes != 1 else ""}'
