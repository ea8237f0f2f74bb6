"""The rows of a bulk file (FHIR NDJSON, or CSV with the columns below) as validated Patients, each with its
line number, or the error that line gets in the decisions report."""

from __future__ import annotations

import codecs
import csv
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import RegistryError
from ..validation import validate_patient

# CSV columns (header row; names are case-insensitive; empty cells are left out; unknown columns are errors):
#
#     id           required  the record's number at the facility -> identifier {system: --system, value: id}
#     family, given          name (given: space-separated names)
#     gender                 male | female | other | unknown (M / F accepted)
#     birth_date             YYYY, YYYY-MM or YYYY-MM-DD
#     phone, email           telecom
#     national_id            identifier of --national-id-system (default: the first CR_SHARED_SYSTEMS)
#     address_line, city, district, country      address
CSV_COLUMNS = (
    *("id", "family", "given", "gender", "birth_date", "phone", "email", "national_id"),
    *("address_line", "city", "district", "country"),
)
_GENDERS = {
    "m": "male",
    "f": "female",
    "male": "male",
    "female": "female",
    "other": "other",
    "unknown": "unknown",
}


@dataclass
class Row:
    number: int
    patient: dict[str, Any] | None
    error: str | None = None


def csv_patient(record: dict[str, str], system: str, national_id_system: str | None) -> dict[str, Any]:
    get = {k.strip().lower(): (v or "").strip() for k, v in record.items() if k}.get
    if not get("id"):
        raise ValueError("the id column is empty")
    patient: dict[str, Any] = {
        "resourceType": "Patient",
        "identifier": [{"system": system, "value": get("id")}],
    }
    if get("national_id") and national_id_system:
        patient["identifier"].append({"system": national_id_system, "value": get("national_id")})
    name: dict[str, Any] = {}
    if get("family"):
        name["family"] = get("family")
    if get("given"):
        name["given"] = (get("given") or "").split()
    if name:
        patient["name"] = [{"use": "official", **name}]
    if get("gender"):
        gender = _GENDERS.get((get("gender") or "").lower())
        if gender is None:
            raise ValueError(f"gender {get('gender')!r} is not one of male, female, other, unknown")
        patient["gender"] = gender
    if get("birth_date"):
        patient["birthDate"] = get("birth_date")
    telecom = [{"system": s, "value": get(s)} for s in ("phone", "email") if get(s)]
    if telecom:
        patient["telecom"] = telecom
    address: dict[str, Any] = {k: get(k) for k in ("city", "district", "country") if get(k)}
    if get("address_line"):
        address["line"] = [get("address_line")]
    if address:
        patient["address"] = [address]
    return patient


def csv_records(reader: Iterator[Any]) -> Iterator[tuple[int, Any]]:
    """(line number, record) of a ``csv`` reader or ``DictReader``, with a line it cannot read as its
    ``csv.Error`` in place of the record, and the lines after it read on."""
    lines: Any = getattr(reader, "reader", reader)  # a DictReader counts lines only after a good record
    while True:
        before = lines.line_num
        try:
            record = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            if lines.line_num == before:
                raise  # nothing consumed: it would fail again
            yield lines.line_num, exc
            continue
        yield lines.line_num, record


def csv_encoding(encoding: str) -> str:
    """How to open a CSV file in ``encoding``: UTF-8 ones may start with the byte-order mark spreadsheets
    write (LookupError when the encoding is unknown)."""
    return "utf-8-sig" if codecs.lookup(encoding).name == "utf-8" else encoding


def read_rows(
    path: Path, system: str | None, national_id_system: str | None, encoding: str = "utf-8"
) -> Iterator[Row]:
    """Every data row of the file as a validated Patient, or an error with its line number. ``encoding``:
    the file's character set (LookupError when unknown; a byte it cannot decode stops the reading)."""
    if path.suffix.lower() == ".csv":
        if not system:
            raise ValueError("a CSV file needs --system (the facility's identifier system)")
        with path.open(newline="", encoding=csv_encoding(encoding)) as f:
            reader = csv.DictReader(f)
            unknown = [c for c in reader.fieldnames or [] if c.strip().lower() not in CSV_COLUMNS]
            if unknown or "id" not in [c.strip().lower() for c in reader.fieldnames or []]:
                raise ValueError(
                    f"CSV columns: unknown {unknown}, or no id column; known: {', '.join(CSV_COLUMNS)}"
                )
            for line_num, record in csv_records(reader):
                if isinstance(record, csv.Error):  # e.g. a field over the csv module's 128 KiB limit
                    yield Row(line_num, None, f"unreadable CSV line: {record}")
                    continue
                yield _checked(line_num, lambda r=record: csv_patient(r, system, national_id_system))
        return
    with path.open(encoding=encoding) as f:
        for number, line in enumerate(f, start=1):
            if line.strip():
                yield _checked(number, lambda line=line: json.loads(line))


def _checked(number: int, build: Any) -> Row:
    try:
        patient = build()
        if not isinstance(patient, dict):
            raise ValueError("not a JSON object")
        patient.pop("id", None)  # the registry names records by their identifiers
        patient.pop("meta", None)
        return Row(number, validate_patient(patient))
    except RegistryError as exc:
        return Row(number, None, exc.diagnostics)
    except ValueError as exc:  # json.JSONDecodeError is a ValueError
        return Row(number, None, str(exc))
    except RecursionError:
        return Row(number, None, "nested too deeply to read")
