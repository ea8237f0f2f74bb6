"""Logs carry ids, decisions and timings — never names, birth dates or other demographics."""

from __future__ import annotations

import logging

from mediator.logs import JsonFormatter
from tests.conftest import patient, unique_surname


async def test_logs_hold_no_demographics(client, facility, caplog):
    family = unique_surname()
    submission = patient(
        facility, "LOG1", family=family, given="Zawadi", birth_date="1979-08-21", phone="+256711987654"
    )
    with caplog.at_level(logging.DEBUG):
        resp = await client.post("/fhir/Patient", json=submission)
        bad = await client.post("/fhir/Patient", json={**submission, "birthDate": "1979-02-31"})
    assert resp.status == 201 and bad.status == 400
    formatter = JsonFormatter()
    text = "\n".join(formatter.format(r) for r in caplog.records)
    assert "submission decided" in text and resp.headers["X-CRUID"] in text
    for secret in (family, "Zawadi", "1979-08-21", "+256711987654", "1979-02-31"):
        assert secret not in text
