"""OpenCR's own test set as FHIR Patients + truth: 5,000 Ugandan records, 1,000 true duplicate pairs.

Source: intrahealth/client-registry (MIT, see ``data/opencr/LICENSE``), commit
7569452055dc6de2719e1e362e78a7d7973856d4, ``tests/uganda_data_v21_20201501.csv`` and
``tests/uganda_data_v21_20201501_true_links.csv``, stored here
gzipped and unchanged. Columns: rec_id, sex, date_of_birth (YYYYMMDD, typos and stray spaces included),
given_name, surname, phone_number, uganda_nin, art_number.

Mapping: the NIN goes to :data:`NIN` (a system the benchmark declares shared, as an installation would), the
ART number to :data:`ART` (a local system), the date keeps its digits when they form a valid date.
"""

from __future__ import annotations

import contextlib
import csv
import datetime as dt
import gzip
import io
import pathlib
from typing import Any

DATA = pathlib.Path(__file__).resolve().parent / "data" / "opencr"
NIN = "http://example.org/uganda/nin"
ART = "http://example.org/uganda/art-number"


def _rows(name: str) -> list[dict[str, str]]:
    with gzip.open(DATA / name, "rt", encoding="utf-8", newline="") as fh:
        return list(csv.DictReader(io.StringIO(fh.read())))


def to_fhir(row: dict[str, str]) -> dict[str, Any]:
    def v(key: str) -> str:
        return (row.get(key) or "").strip()

    p: dict[str, Any] = {"resourceType": "Patient", "id": v("rec_id")}
    name: dict[str, Any] = {"use": "official"}
    if v("surname"):
        name["family"] = v("surname")
    if v("given_name"):
        name["given"] = [v("given_name")]
    if len(name) > 1:
        p["name"] = [name]
    sex = v("sex")
    if sex in ("m", "f"):
        p["gender"] = "male" if sex == "m" else "female"
    dob = "".join(v("date_of_birth").split())
    if len(dob) == 8 and dob.isdigit():
        with contextlib.suppress(ValueError):
            p["birthDate"] = dt.date(int(dob[:4]), int(dob[4:6]), int(dob[6:])).isoformat()
    if v("phone_number"):
        p["telecom"] = [{"system": "phone", "value": v("phone_number")}]
    ids = [{"system": s, "value": v(k)} for s, k in ((NIN, "uganda_nin"), (ART, "art_number")) if v(k)]
    if ids:
        p["identifier"] = ids
    return p


def load() -> tuple[list[dict[str, Any]], dict[str, str]]:
    """(Patients, truth id -> person): records joined by a true link are one person."""
    patients = [to_fhir(r) for r in _rows("uganda_data_v21_20201501.csv.gz")]
    parent = {p["id"]: p["id"] for p in patients}

    def root(x: str) -> str:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for link in _rows("uganda_data_v21_20201501_true_links.csv.gz"):
        a, b = link["rec_id_1"].strip(), link["rec_id_2"].strip()
        parent[root(a)] = root(b)
    return patients, {pid: root(pid) for pid in parent}
