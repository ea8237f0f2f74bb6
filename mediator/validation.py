"""Read and validate FHIR R4 input: every problem becomes a 4xx with an OperationOutcome, before any write."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

from aiohttp import web
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.patient import Patient
from pydantic import ValidationError

from .context import SETTINGS
from .errors import InvalidInput, PayloadTooLarge, Unprocessable
from .identifiers import IdentifierRefused, is_fhir_id, normal_form, normal_system, parse_list, parse_token

SUPPORTED_FHIR_VERSIONS = {"4.0", "4.0.0", "4.0.1"}
GENDERS = {"male", "female", "other", "unknown"}
JSON_TYPES = {"application/fhir+json", "application/json", "application/json+fhir", "text/json"}
# FHIR R4 strings "SHALL NOT contain Unicode character points below 32, except for u0009 (horizontal tab),
# u0010 (carriage return) and u0013 (line feed)"; the models do not check it, and PostgreSQL cannot store
# U+0000 at all (HAPI answers a transaction holding one with an error, which would look like a conflict).
CONTROL_CHARACTER = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f]")
# A Patient nests about 6 levels (extension in extension adds 2 each); deeper input is refused before the
# models (and the JSON encoder towards HAPI) recurse through it
MAX_DEPTH = 64


def check_fhir_version(request: web.Request) -> None:
    for header in ("Content-Type", "Accept"):
        value = request.headers.get(header, "")
        for part in value.split(";")[1:]:
            name, _, version = part.strip().partition("=")
            if (
                name.strip().lower() == "fhirversion"
                and version.strip().strip('"') not in SUPPORTED_FHIR_VERSIONS
            ):
                raise InvalidInput(
                    f"FHIR version {version.strip()} is not supported; this registry speaks FHIR R4 (4.0.1)."
                )


async def read_json(request: web.Request) -> dict[str, Any]:
    check_fhir_version(request)
    if request.content_type and request.content_type not in JSON_TYPES:
        raise InvalidInput(
            f"Content type {request.content_type} is not accepted; send application/fhir+json."
        )
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge as exc:
        limit = request.app[SETTINGS].max_body_bytes
        raise PayloadTooLarge(f"The body is larger than the limit of {limit} bytes.") from exc
    if not raw:
        raise InvalidInput("The request has no body.")
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InvalidInput(f"The body is not valid JSON: {exc}.") from exc
    except RecursionError as exc:
        raise InvalidInput(f"The body nests more than {MAX_DEPTH} levels deep.") from exc
    if not isinstance(data, dict):
        raise InvalidInput("The body must be a JSON object holding one FHIR resource.")
    return data


def _pydantic_problems(exc: ValidationError, prefix: str) -> tuple[str, list[str]]:
    problems, paths = [], []
    for error in exc.errors()[:10]:
        path = ".".join(str(p) for p in error["loc"])
        paths.append(f"{prefix}.{path}" if path else prefix)
        problems.append(f"{path or prefix}: {error['msg']}")
    return "; ".join(problems), paths


def _strings(data: Any, where: str) -> Iterator[tuple[str, str]]:
    """Every string value in ``data`` with its path, in document order, without recursion; InvalidInput
    past :data:`MAX_DEPTH` levels."""
    stack: list[tuple[str, Any, int]] = [(where, data, 0)]
    while stack:
        path, value, depth = stack.pop()
        if isinstance(value, str):
            yield path, value
            continue
        if isinstance(value, dict | list) and depth >= MAX_DEPTH:
            raise InvalidInput(f"{path}: nested more than {MAX_DEPTH} levels deep.", expression=[path])
        if isinstance(value, dict):
            stack.extend((f"{path}.{k}", v, depth + 1) for k, v in reversed(list(value.items())))
        elif isinstance(value, list):
            stack.extend((f"{path}[{i}]", v, depth + 1) for i, v in reversed(list(enumerate(value))))


def check_strings(data: dict[str, Any], where: str) -> None:
    """No control characters (FHIR) and no nesting deeper than :data:`MAX_DEPTH`."""
    for path, text in _strings(data, where):
        found = CONTROL_CHARACTER.search(text)
        if found:
            code = f"U+{ord(found.group()):04X}"
            raise InvalidInput(
                f"{path}: {code} at position {found.start()}; FHIR strings hold no control characters but "
                "tab, carriage return and line feed.",
                expression=[path],
            )


def validate_patient(
    data: dict[str, Any], where: str = "Patient", *, identifier_required: bool = True
) -> dict[str, Any]:
    """``data`` as a Patient the registry can take, identifiers in their normal form (400/422 otherwise).
    ``identifier_required``: a submission must carry one; a demographics query need not."""
    if data.get("resourceType") != "Patient":
        raise InvalidInput(
            f"Expected a Patient resource, got {data.get('resourceType')!r}.", expression=[where]
        )
    check_strings(data, where)
    try:
        Patient.model_validate(data)
    except ValidationError as exc:
        message, paths = _pydantic_problems(exc, where)
        raise InvalidInput(f"Invalid Patient: {message}", expression=paths) from exc
    gender = data.get("gender")
    if gender is not None and gender not in GENDERS:
        raise InvalidInput(
            f"Patient.gender must be one of {sorted(GENDERS)}.", expression=[f"{where}.gender"]
        )
    if identifier_required and not data.get("identifier"):
        raise Unprocessable("The Patient has no identifier.", expression=[f"{where}.identifier"])
    normal = []
    for index, ident in enumerate(data.get("identifier") or []):
        if not ident.get("system"):
            raise InvalidInput(
                "Every identifier needs a system.", expression=[f"{where}.identifier[{index}].system"]
            )
        if not ident.get("value"):
            raise InvalidInput(
                "Every identifier needs a value.", expression=[f"{where}.identifier[{index}].value"]
            )
        try:
            system, value = normal_form(ident["system"], ident["value"])
        except IdentifierRefused as exc:
            raise InvalidInput(str(exc), expression=[f"{where}.identifier[{index}]"]) from exc
        normal.append({**ident, "system": system, "value": value})
    # keys, searches and the stored record all take the identifiers in their normal form
    return {**data, "identifier": normal} if normal else data


def validate_bundle(data: dict[str, Any]) -> dict[str, Any]:
    if data.get("resourceType") != "Bundle":
        raise InvalidInput(f"Expected a Bundle, got {data.get('resourceType')!r}.")
    if data.get("type") not in ("batch", "transaction"):
        raise InvalidInput("Only batch and transaction Bundles are accepted.", expression=["Bundle.type"])
    # Entries are validated one by one (a batch answers per entry); check the envelope only here.
    envelope = {k: v for k, v in data.items() if k != "entry"}
    check_strings(envelope, "Bundle")
    try:
        Bundle.model_validate(envelope)
    except ValidationError as exc:
        message, paths = _pydantic_problems(exc, "Bundle")
        raise InvalidInput(f"Invalid Bundle: {message}", expression=paths) from exc
    if not isinstance(data.get("entry", []), list):
        raise InvalidInput("Bundle.entry must be a list.", expression=["Bundle.entry"])
    return data


def parse_identifier_param(value: str | None, name: str) -> tuple[str, str]:
    """``system|value`` in FHIR search syntax (split at the first ``|`` not escaped: a system holds none;
    ``\\,`` and the other escapes read as what they escape, :func:`parse_token`) in its normal form."""
    parts = parse_token(value) if value else None
    if parts is None:
        raise InvalidInput(f"Parameter {name} must be system|value.")
    system, ident = parts
    if not system or not ident:
        raise InvalidInput(f"Parameter {name} must be system|value with both parts.")
    try:
        return normal_form(system, ident)
    except IdentifierRefused as exc:
        raise InvalidInput(f"Parameter {name}: {exc}") from exc


def parse_systems_param(values: list[str], name: str) -> list[str]:
    """Identifier systems given as a FHIR search parameter, repeated or as a list (``a,b``; ``\\,`` is a
    comma of the system, :func:`parse_list`), each in its normal form; empty ones are left out."""
    systems = []
    for value in values:
        for system in parse_list(value):
            if not system.strip():
                continue
            try:
                systems.append(normal_system(system))
            except IdentifierRefused as exc:
                raise InvalidInput(f"Parameter {name}: {exc}") from exc
    return systems


def check_id(resource_id: str, where: str) -> str:
    """``resource_id`` if it is a FHIR id (it goes into a URL), else InvalidInput naming ``where``."""
    if not is_fhir_id(resource_id):
        raise InvalidInput(
            f"{where}: {resource_id[:80]!r} is not a FHIR id ([A-Za-z0-9-.], 1 to 64 characters).",
            expression=[where],
        )
    return resource_id
