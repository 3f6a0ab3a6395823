"""Entry point for NiceGUI's test fixtures (pytest `main_file`); `casebook serve` is the real one."""

from nicegui import ui

from casebook.config import load_settings
from casebook.web.server import build, run_options

settings = load_settings()
build(settings)
ui.run(**run_options(settings))
