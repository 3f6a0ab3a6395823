"""Small pieces of page chrome shared by the screens."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from nicegui import ui


def heading(text: str, *, level: int = 1, classes: str = '') -> ui.label:
    """A real heading for screen readers (role and level), styled by classes."""
    return ui.label(text).props(f'role=heading aria-level={level}').classes(classes)


@contextmanager
def form_card(title: str, subtitle: str) -> Iterator[ui.label]:
    """The centred card of the account screens; yields the label that shows refusals."""
    with ui.column().classes('w-full items-center justify-center min-h-[80vh] p-4'):
        with ui.card().classes('w-full max-w-sm gap-3 p-6'):
            heading('Casebook', classes='text-2xl font-semibold')
            ui.label(title).classes('text-lg')
            ui.label(subtitle).classes('text-sm text-gray-700')
            error = ui.label('').props('role=alert aria-live=assertive').classes('text-red-800 text-sm')
            error.set_visibility(False)
            yield error


def show_error(label: ui.label, message: str) -> None:
    label.set_text(message)
    label.set_visibility(bool(message))


def duration(minutes: float) -> str:
    """`15 minutes`, `1 minute`, `30 seconds`: a timeout as a person would say it."""
    if minutes < 1:
        seconds = round(minutes * 60)
        return f'{seconds} second{"s" if seconds != 1 else ""}'
    return f'{minutes:g} minute{"s" if minutes != 1 else ""}'
