"""axe-core on every page, at a desktop, a tablet and a phone width: no serious or critical violations, and
nothing that makes the page scroll sideways.

axe-core comes from the npm registry (`make axe` installs the version pinned in tests/browser/axe/package.json)
and is injected into the real page served by `casebook serve`, after the page has drawn what it shows. The
pages: the first-run page, login, the workspace with a patient open and messages in it, and the admin page.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pyotp
import pytest

from support import PASSWORD
from tests.browser_support import Visitor, expect

AXE = Path(__file__).parent / 'axe' / 'node_modules' / 'axe-core' / 'axe.min.js'
WIDTHS = {'desktop': (1280, 800), 'tablet': (768, 1024), 'phone': (390, 844)}
BLOCKING = ('serious', 'critical')
MIN_TARGET_PX = 44  # WCAG 2.5.5: what a finger can hit


@pytest.fixture(autouse=True)
def _axe_installed() -> None:
    if not AXE.exists():
        pytest.fail(f'{AXE} is missing: run `make axe` (npm installs the pinned axe-core)', pytrace=False)


def violations(visitor: Visitor) -> list[str]:
    """axe's serious and critical findings on the page as it is now, one readable line per element."""
    page = visitor.page
    page.add_script_tag(path=str(AXE))
    result = page.evaluate(
        """async () => {
            const r = await axe.run(document, {resultTypes: ['violations']});
            return r.violations.map(v => ({id: v.id, impact: v.impact, help: v.help,
                                           nodes: v.nodes.map(n => [n.target.join(' '), n.failureSummary])}));
        }"""
    )
    found = []
    for violation in result:
        if violation['impact'] in BLOCKING:
            for target, summary in violation['nodes']:
                found.append(f'{violation["impact"]} {violation["id"]} ({violation["help"]}) at {target}: {summary}')
    return found


def overflow(visitor: Visitor) -> dict:
    """How far the page is wider than the window, and the widest elements that stick out on the right."""
    return visitor.page.evaluate(
        """() => {
            const width = document.documentElement.clientWidth;
            const out = [...document.querySelectorAll('body *')]
                .filter(e => e.getBoundingClientRect().right > width + 1 && e.getClientRects().length)
                .filter(e => !e.closest('.q-drawer--left.q-layout--prevent-focus, [aria-hidden=true]'))
                .slice(0, 5)
                .map(e => e.tagName + '.' + e.className + ' ' + Math.round(e.getBoundingClientRect().right));
            return {scroll: document.documentElement.scrollWidth - width, out};
        }"""
    )


def small_targets(visitor: Visitor) -> list[str]:
    """Visible buttons, links, inputs and list items smaller than 44 x 44 CSS pixels."""
    return visitor.page.evaluate(
        """(min) => [...document.querySelectorAll(
                'button, a[href], input, textarea, [role=button], .q-item--clickable')]
            .filter(e => e.getClientRects().length && getComputedStyle(e).visibility !== 'hidden')
            .map(e => [e, (e.closest('.q-field') || e).getBoundingClientRect()])
            .filter(([e, r]) => r.width > 0 && r.right > 0 && r.left < document.documentElement.clientWidth)
            .filter(([e, r]) => r.width < min - 0.5 || r.height < min - 0.5)
            .map(([e, r]) => {
                const name = (e.getAttribute('aria-label') || e.innerText || e.value || '').trim().slice(0, 30);
                return `${e.tagName} "${name}" ${Math.round(r.width)}x${Math.round(r.height)}`;
            })""",
        MIN_TARGET_PX,
    )


def unreadable_inputs(visitor: Visitor) -> list[str]:
    """What is typed in a box must be readable (4.5:1 against what is behind it): axe does not measure the text
    inside inputs, and a dark-mode input on a light bar would hide what the clinician types."""
    return visitor.page.evaluate(
        """() => {
            const rgb = (c) => (c.match(/[\\d.]+/g) || []).map(Number);
            const lum = ([r, g, b]) => [r, g, b].map(v => { v /= 255;
                return v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4; })
                .reduce((sum, v, i) => sum + v * [0.2126, 0.7152, 0.0722][i], 0);
            const behind = (e) => { for (; e; e = e.parentElement) {
                const c = rgb(getComputedStyle(e).backgroundColor); if (c.length === 3 || c[3] > 0) return c; }
                return [255, 255, 255]; };
            return [...document.querySelectorAll('input:not([type=hidden]), textarea')]
                .filter(e => e.getClientRects().length)
                .map(e => { const a = lum(rgb(getComputedStyle(e).color)), b = lum(behind(e));
                            const ratio = (Math.max(a, b) + 0.05) / (Math.min(a, b) + 0.05);
                            return [e.getAttribute('aria-label') || e.name, ratio]; })
                .filter(([, ratio]) => ratio < 4.5)
                .map(([name, ratio]) => `text typed in "${name}" has contrast ${ratio.toFixed(2)}`);
        }"""
    )


def at_width(visitor: Visitor, width: str) -> None:
    w, h = WIDTHS[width]
    visitor.page.set_viewport_size({'width': w, 'height': h})
    visitor.page.wait_for_timeout(300)  # Quasar lays the page out again (drawer, header wrap)


def check(visitor: Visitor, name: str, widths: tuple[str, ...] = tuple(WIDTHS)) -> dict[str, list[str]]:
    found = {}
    for width in widths:
        at_width(visitor, width)
        # colours are read once transitions end (a notification fading in, a field's label moving up)
        visitor.page.wait_for_function("() => document.getAnimations().every(a => a.playState !== 'running')")
        problems = violations(visitor)
        sideways = overflow(visitor)
        if sideways['scroll'] > 0:
            problems.append(f'the page scrolls sideways by {sideways["scroll"]} px: {sideways["out"]}')
        problems += [f'smaller than {MIN_TARGET_PX} px: {target}' for target in small_targets(visitor)]
        problems += unreadable_inputs(visitor)
        top = visitor.page.get_by_role('heading', level=1).all_inner_texts()
        if len(top) != 1:
            problems.append(f'{len(top)} top-level headings (one wanted): {top}')
        if problems:
            found[f'{name} at {width}'] = problems
    return found


@pytest.mark.parametrize('scheme', ['light', 'dark'])
def test_every_page_at_every_width_has_no_serious_violations(new_visitor, add_clinician, scheme: str) -> None:
    """In the device's light and dark setting (which the pages follow until a clinician chooses): axe's colour
    contrast rule (WCAG AA) among the others. The layout does not depend on the scheme, so the dark pages are
    checked at the desktop width only, the light ones at every width."""
    found: dict[str, list[str]] = {}
    widths = tuple(WIDTHS) if scheme == 'light' else ('desktop',)
    first = new_visitor()
    first.page.emulate_media(color_scheme=scheme)
    first.goto('/')
    expect(first.page.get_by_role('button', name='Create account')).to_be_visible()
    found |= check(first, 'first-run page', widths)
    first.create_first_account('ada', 'Dr. Ada Lovelace')
    first.open_patient('PAT123', 'Dr. Ada Lovelace')
    found |= check(first, 'workspace, empty conversation', widths)
    first.send('Mild fever for 3 days, 38.4 °C this morning.')
    first.send('Paracetamol 1 g given at 09:10.')
    found |= check(first, 'workspace', widths)
    first.page.get_by_label('Search notes').fill('parac')
    first.page.get_by_label('Search notes').press('Enter')
    expect(first.page.locator('.casebook-hit mark')).to_have_text(['Paracetamol'])
    found |= check(first, 'search results', widths)
    first.page.keyboard.press('Escape')
    at_width(first, 'desktop')
    first.page.get_by_role('button', name='Profile').click()  # the dialog, with a template kept and one being added
    first.page.get_by_role('button', name='Add template').click()
    first.page.get_by_label('Template name').fill('SOAP')
    first.page.get_by_label('Template text').fill('S: \nO: \nA: \nP: ')
    first.page.get_by_role('button', name='Save template').click()
    expect(first.page.get_by_role('list', name='Your templates').get_by_role('listitem')).to_have_count(1)
    first.page.get_by_role('button', name='Add template').click()
    first.page.get_by_role('button', name='Set up two-step sign-in').click()  # the QR code, the key, the code
    secret = first.page.get_by_label('Secret key').inner_text().strip()
    # at the desktop width only: at the narrower ones axe takes the dialog's backdrop (40 % black over white,
    # #999999) for the background of some of the card's buttons, which are drawn on the white card (seen in
    # screenshots at 768 and 390 px); the dialog's contents do not change with the width
    found |= check(first, 'profile with templates and a two-step set-up', widths=('desktop',))
    first.page.get_by_label('Code', exact=True).fill(pyotp.TOTP(secret).now())
    first.page.get_by_role('button', name='Turn on two-step sign-in').click()
    expect(first.page.get_by_role('region', name='Recovery codes')).to_be_visible()
    found |= check(first, 'profile with recovery codes', widths=('desktop',))
    first.page.keyboard.press('Escape')
    expect(first.page.get_by_role('dialog')).to_be_hidden()
    at_width(first, 'desktop')
    first.page.get_by_role('button', name='Templates').click()  # the composer's menu of them
    expect(first.page.get_by_role('menuitem', name='SOAP')).to_be_visible()
    found |= check(first, 'templates menu', widths)
    first.page.keyboard.press('Escape')
    first.goto('/admin')
    expect(first.page.get_by_role('heading', level=1)).to_be_visible()
    found |= check(first, 'admin page', widths)
    add_clinician('grace', 'Nurse Grace Hopper')
    other = new_visitor()
    other.page.emulate_media(color_scheme=scheme)
    other.goto('/login')
    expect(other.page.get_by_role('button', name='Log in')).to_be_visible()
    found |= check(other, 'login page', widths)
    other.page.get_by_label('Username').fill('ada')
    other.page.get_by_label('Password', exact=True).fill(PASSWORD)
    other.page.get_by_role('button', name='Log in').click()
    expect(other.page.get_by_role('button', name='Use a recovery code')).to_be_visible()
    found |= check(other, 'login, second step', widths)
    assert not found, json.dumps(found, indent=1, ensure_ascii=False)
    dark = first.page.evaluate("() => document.body.classList.contains('body--dark')")
    assert dark == (scheme == 'dark')


def test_the_theme_switch_is_remembered_for_the_clinician(new_visitor) -> None:
    ada = new_visitor()
    ada.page.emulate_media(color_scheme='light')
    ada.create_first_account('ada', 'Dr. Ada Lovelace')
    body = ada.page.locator('body')
    dark, light = re.compile(r'\bbody--dark\b'), re.compile(r'\bbody--light\b')
    expect(body).to_have_class(light)
    ada.page.get_by_role('button', name='Theme: as the device (switch to dark)').click()
    expect(ada.page.get_by_role('button', name='Theme: dark (switch to light)')).to_be_visible()
    expect(body).to_have_class(dark)
    assert violations(ada) == []
    ada.page.reload()
    expect(ada.page.get_by_role('button', name='Theme: dark (switch to light)')).to_be_visible()
    expect(body).to_have_class(dark)
    ada.page.get_by_role('button', name='Log out').click()
    expect(ada.page.get_by_role('button', name='Log in')).to_be_visible()
    expect(body).to_have_class(dark)  # the login page of this browser too
    ada.page.get_by_label('Username').fill('ada')
    ada.page.get_by_label('Password', exact=True).fill(PASSWORD)
    ada.page.get_by_role('button', name='Log in').click()
    ada.page.get_by_role('button', name='Theme: dark (switch to light)').click()
    ada.page.get_by_role('button', name='Theme: light (switch to as the device)').click()
    ada.page.emulate_media(color_scheme='dark')
    expect(ada.page.get_by_role('button', name='Theme: as the device (switch to dark)')).to_be_visible()
    expect(body).to_have_class(dark)  # following the device again
    ada.assert_clean()
