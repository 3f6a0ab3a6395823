"""Our FHIR export read by someone else: `fhir.resources`' R4B models (a test dependency), so a field the standard
does not know, a missing required one or a wrong type fails a test rather than only our own expectations.

R4B changed nothing in Bundle, Patient, Practitioner or Communication from R4, which is what the export claims.
"""

from __future__ import annotations

from typing import Any

from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.communication import Communication
from fhir.resources.R4B.patient import Patient
from fhir.resources.R4B.practitioner import Practitioner

# FHIR's EventStatus value set, required for Communication.status; the models check the type only, not the code.
EVENT_STATUS = {
    'preparation',
    'in-progress',
    'not-done',
    'on-hold',
    'stopped',
    'completed',
    'entered-in-error',
    'unknown',
}


def assert_valid_bundle(data: dict[str, Any]) -> Bundle:
    """The exported bundle parses as a FHIR Bundle whose entries are one Patient, one Practitioner and a
    Communication per message; every reference points at an entry of the bundle. Raises on anything else."""
    bundle = Bundle.model_validate(data)  # every field, nested, against the standard's models (extras forbidden)
    assert bundle.type == 'collection'
    entries = bundle.entry or []
    resources = [entry.resource for entry in entries]
    assert [type(r) for r in resources[:2]] == [Patient, Practitioner], resources[:2]
    assert all(type(r) is Communication for r in resources[2:]), resources[2:]
    urls = [entry.fullUrl for entry in entries]
    assert len(set(urls)) == len(urls) and all(url and url.startswith('urn:uuid:') for url in urls), urls
    messages = set(urls[2:])
    for communication in resources[2:]:
        assert communication.status in EVENT_STATUS, communication.status
        assert communication.subject.reference == urls[0]
        assert communication.sender.reference == urls[1]
        assert communication.sent is not None and communication.payload
        for corrected in communication.inResponseTo or []:
            assert corrected.reference in messages, corrected.reference  # a message of this same bundle
    return bundle
