"""Take the README's screenshots from the running app: `.venv/bin/python scripts/screenshot.py`.

Starts Casebook on a throwaway data dir and a free port, walks the main journey in headless Chromium
(Debian's /usr/bin/chromium) and writes docs/workspace.png (desktop), docs/workspace-phone.png (a phone set to
dark mode), docs/search.png (a search across patients) and docs/admin.png (the admin's activity chart, after a
few failed sign-ins).
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from playwright.sync_api import sync_playwright

if __package__ in (None, ''):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from support import PASSWORD, ROOT, casebook_serve, launch_chromium

EARLIER = 'Paracetamol stopped: afebrile for 48 hours.'
NOTES = [
    'Mild fever for 3 days, 38.4 °C this morning. No rash.',
    'Paracetamol 1 g given at 09:10. Fluids encouraged.',
    'Reviewed at 14:00: temperature 37.6 °C, eating well.\nPlan: repeat bloods tomorrow.',
]


def main() -> None:
    with tempfile.TemporaryDirectory() as folder:
        data_dir = Path(folder) / 'data'
        with casebook_serve(data_dir, Path(folder) / 'serve.log') as server:
            base = server.base_url
            with sync_playwright() as playwright:
                browser = launch_chromium(playwright)
                page = browser.new_page(viewport={'width': 1280, 'height': 720})
                page.goto(base + '/')
                page.get_by_label('Username').fill('ada')
                page.get_by_label('Display name').fill('Dr. Ada Lovelace')
                page.get_by_label('Password').fill(PASSWORD)
                page.get_by_role('button', name='Create account').click()
                for patient in ('PAT077', 'PAT123'):
                    page.get_by_label('Patient ID').fill(patient)
                    page.get_by_role('button', name='Open patient').click()
                    page.get_by_text(f'Patient: {patient}').wait_for()
                    if patient == 'PAT077':
                        page.get_by_label('Type message here').fill(EARLIER)
                        page.get_by_role('button', name='Send').click()
                        page.get_by_text(EARLIER).wait_for()
                for note in NOTES:
                    page.get_by_label('Type message here').fill(note)
                    page.get_by_role('button', name='Send').click()
                    page.get_by_text(note.splitlines()[0]).wait_for()
                page.get_by_label('Type message here').fill('Unsent draft survives a reload')
                page.wait_for_timeout(500)
                page.screenshot(path=ROOT / 'docs' / 'workspace.png')
                phone = browser.new_page(
                    viewport={'width': 390, 'height': 844},
                    storage_state=page.context.storage_state(),
                    color_scheme='dark',  # the page follows the device until the clinician chooses
                )
                phone.goto(base + '/')
                phone.get_by_text(NOTES[0]).wait_for()
                phone.wait_for_timeout(500)
                phone.screenshot(path=ROOT / 'docs' / 'workspace-phone.png')
                page.get_by_label('Search notes').fill('parac')
                page.get_by_label('Search notes').press('Enter')
                page.get_by_role('region', name='Search results').locator('.casebook-hit').nth(1).wait_for()
                page.wait_for_timeout(300)
                page.screenshot(path=ROOT / 'docs' / 'search.png')
                page.keyboard.press('Escape')
                stranger = browser.new_page(viewport={'width': 1280, 'height': 720})
                for attempt in range(4):
                    stranger.goto(base + '/login')
                    stranger.get_by_label('Username').fill('ada')
                    stranger.get_by_label('Password').fill(f'guess {attempt}')
                    stranger.get_by_role('button', name='Log in').click()
                    stranger.get_by_text('Username or password is incorrect.').wait_for()
                page.goto(base + '/admin')
                page.get_by_text('Signed in now:').wait_for()
                page.wait_for_timeout(800)  # the chart draws itself
                page.screenshot(path=ROOT / 'docs' / 'admin.png')
                browser.close()
    print('wrote docs/workspace.png, docs/workspace-phone.png, docs/search.png and docs/admin.png')


if __name__ == '__main__':
    main()
