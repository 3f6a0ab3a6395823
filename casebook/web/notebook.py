"""The small per-browser notebook kept in `app.storage.user`: a session token, the open patient, drafts.

Whatever is found there is checked before use: missing, outdated (the lesson's `conversation` list) or
corrupt values are dropped, never trusted, so a bad storage file signs the browser out and crashes nothing.
Conversations never live here; they are in the database.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import MutableMapping
from typing import Any

from casebook.services.conversations import MESSAGE_MAX, PATIENT_ID_PATTERN
from casebook.services.sessions import token_shaped

SESSION = 'session'
CLINICIAN = 'clinician_id'
PATIENT = 'patient_id'
DRAFTS = 'drafts'
TIMEZONE = 'timezone'
ENDED = 'ended'
THEME = 'theme'
SSO_FAILED = 'sso_failed'  # why the last single sign-on failed: a reason code of casebook/web/oidc.py
KEYS = {SESSION, CLINICIAN, PATIENT, DRAFTS, TIMEZONE, ENDED, THEME, SSO_FAILED}
THEMES = ('auto', 'dark', 'light')  # auto: as the device is set
ENDED_REASONS = ('idle', 'expired', 'ended-elsewhere', 'password-changed', 'disabled', 'two-step-reset')
MAX_DRAFTS = 20  # drafts of this many patients at most; the oldest are dropped first
TIMEZONE_PATTERN = re.compile(r'[A-Za-z0-9_+\-/]{1,64}')
REASON_PATTERN = re.compile(r'[a-z-]{1,32}')


class Notebook:
    """Typed, validated access to one browser's `app.storage.user`."""

    def __init__(self, storage: MutableMapping[str, Any]) -> None:
        self._storage = storage
        self._repair()

    def _repair(self) -> None:
        for key in [key for key in self._storage if key not in KEYS]:
            del self._storage[key]  # e.g. the lesson's whole-conversation list: never kept here
        checks = {
            SESSION: token_shaped,
            CLINICIAN: lambda v: isinstance(v, int) and not isinstance(v, bool) and v > 0,
            PATIENT: lambda v: isinstance(v, str) and PATIENT_ID_PATTERN.fullmatch(v) is not None,
            DRAFTS: lambda v: isinstance(v, dict),
            TIMEZONE: lambda v: isinstance(v, str) and TIMEZONE_PATTERN.fullmatch(v) is not None,
            ENDED: lambda v: v in ENDED_REASONS,
            THEME: lambda v: v in THEMES,
            SSO_FAILED: lambda v: isinstance(v, str) and REASON_PATTERN.fullmatch(v) is not None,
        }
        for key, valid in checks.items():
            if key in self._storage and not valid(self._storage[key]):
                del self._storage[key]
        drafts = self._storage.get(DRAFTS)
        if drafts is not None:
            good = {patient: draft for patient, draft in drafts.items() if _valid_draft(patient, draft)}
            if good != drafts:
                self._storage[DRAFTS] = good

    def same_browser(self, other: Notebook) -> bool:
        return self._storage is other._storage

    @property
    def token(self) -> str | None:
        return self._storage.get(SESSION)

    def sign_in(self, *, token: str, clinician_id: int) -> None:
        """Keep the new session; another clinician's open patient and drafts are wiped first."""
        if self._storage.get(CLINICIAN) != clinician_id:
            self._storage.clear()
        self._storage[SESSION] = token
        self._storage[CLINICIAN] = clinician_id

    def take_over(self, old: Notebook, *, token: str, clinician_id: int) -> None:
        """Sign in under a new storage identifier, keeping what the old one held for the same clinician."""
        self.sign_in(token=token, clinician_id=clinician_id)
        if old._storage.get(CLINICIAN) == clinician_id:
            for key in (PATIENT, DRAFTS, TIMEZONE, THEME):
                if key in old._storage:
                    self._storage[key] = old._storage[key]

    def sign_out(self, *, reason: str | None = None) -> None:
        """Forget the session; the open patient and drafts stay for the same clinician's next sign-in.
        `reason`: why it ended, for the login page to say once."""
        self._storage.pop(SESSION, None)
        if reason in ENDED_REASONS:
            self._storage[ENDED] = reason

    def take_ended_reason(self) -> str | None:
        """Why the last session ended (once: it is forgotten when read)."""
        return self._storage.pop(ENDED, None)

    def single_sign_on_failed(self, reason: str) -> None:
        """Keep why a single sign-on failed, for the login page to say once."""
        if REASON_PATTERN.fullmatch(reason):
            self._storage[SSO_FAILED] = reason

    def take_single_sign_on_failure(self) -> str | None:
        return self._storage.pop(SSO_FAILED, None)

    @property
    def patient_id(self) -> str | None:
        return self._storage.get(PATIENT)

    @patient_id.setter
    def patient_id(self, value: str) -> None:
        self._storage[PATIENT] = value

    @property
    def timezone(self) -> str | None:
        return self._storage.get(TIMEZONE)

    @timezone.setter
    def timezone(self, value: str) -> None:
        if TIMEZONE_PATTERN.fullmatch(value):
            self._storage[TIMEZONE] = value

    @property
    def theme(self) -> str:
        """'auto' (follow the device's light or dark setting), 'dark' or 'light': this clinician's choice."""
        return self._storage.get(THEME, 'auto')

    @theme.setter
    def theme(self, value: str) -> None:
        if value not in THEMES:
            raise ValueError(f'unknown theme {value!r}')
        if value == 'auto':
            self._storage.pop(THEME, None)
        else:
            self._storage[THEME] = value

    def draft(self, patient_id: str) -> str:
        return self._storage.get(DRAFTS, {}).get(patient_id, {}).get('text', '')

    def draft_and_id(self, patient_id: str) -> tuple[str, str]:
        """The draft and the id its send carries: the same in every tab and after a reload, until it is stored."""
        draft = self._storage.get(DRAFTS, {}).get(patient_id, {})
        return draft.get('text', ''), draft.get('id') or self.new_send_id()

    @staticmethod
    def new_send_id() -> str:
        return str(uuid.uuid4())

    def save_draft(self, patient_id: str, text: str, send_id: str) -> None:
        drafts = dict(self._storage.get(DRAFTS, {}))
        drafts.pop(patient_id, None)
        if text:
            drafts[patient_id] = {'text': text[: MESSAGE_MAX * 2], 'id': send_id}
        while len(drafts) > MAX_DRAFTS:
            drafts.pop(next(iter(drafts)))
        if drafts == self._storage.get(DRAFTS, {}):
            return  # each write rewrites the browser's storage file
        if drafts:
            self._storage[DRAFTS] = drafts
        else:
            self._storage.pop(DRAFTS, None)

    def forget_draft(self, patient_id: str, send_id: str) -> None:
        """The draft sent with this id was stored; a draft typed since (another id) is kept."""
        drafts = dict(self._storage.get(DRAFTS, {}))
        if drafts.get(patient_id, {}).get('id') == send_id:
            del drafts[patient_id]
            if drafts:
                self._storage[DRAFTS] = drafts
            else:
                self._storage.pop(DRAFTS, None)


def _valid_draft(patient_id: object, draft: object) -> bool:
    if not isinstance(patient_id, str) or not PATIENT_ID_PATTERN.fullmatch(patient_id) or not isinstance(draft, dict):
        return False
    if not isinstance(draft.get('text', ''), str) or set(draft) - {'text', 'id'}:
        return False
    if 'id' in draft:
        try:
            uuid.UUID(draft['id'])
        except (ValueError, TypeError, AttributeError):
            return False
    return True
