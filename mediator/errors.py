"""The registry's error tree, raised in the domain, turned into HTTP + OperationOutcome at the edge.

RegistryError            base: ``status`` and FHIR ``issue.code``
├── InvalidInput     400 the request or a parameter cannot be read
├── Forbidden        403 not this caller's to do;  NotFound 404 unknown record or identifier
├── Conflict         409 changed under us: decided again;  Ambiguous 409 an identifier of two people;
│                        StillReferenced 409 a record others depend on (not retried)
├── PayloadTooLarge  413 body over the limit;  Unprocessable 422 valid FHIR the registry cannot take
└── UpstreamError        HAPI or another upstream unusable, nothing written
    ├── UpstreamUnavailable  503 refused, down or 5xx
    └── UpstreamTimeout      504 no answer in time
"""

from __future__ import annotations

from typing import Any


class RegistryError(Exception):
    status: int = 500
    code: str = "exception"

    def __init__(self, diagnostics: str, *, expression: list[str] | None = None) -> None:
        super().__init__(diagnostics)
        self.diagnostics = diagnostics
        self.expression = expression or []

    def to_operation_outcome(self) -> dict[str, Any]:
        issue: dict[str, Any] = {"severity": "error", "code": self.code, "diagnostics": self.diagnostics}
        if self.expression:
            issue["expression"] = self.expression
        return {"resourceType": "OperationOutcome", "issue": [issue]}


class InvalidInput(RegistryError):
    status = 400
    code = "invalid"


class Forbidden(RegistryError):
    status = 403
    code = "forbidden"


class NotFound(RegistryError):
    status = 404
    code = "not-found"


class Conflict(RegistryError):
    status = 409
    code = "conflict"


class Ambiguous(RegistryError):
    status = 409
    code = "multiple-matches"


class StillReferenced(RegistryError):
    """A deletion refused because other records depend on this one (FHIR: 409); retrying cannot help."""

    status = 409
    code = "conflict"


class PayloadTooLarge(RegistryError):
    status = 413
    code = "too-costly"


class Unprocessable(RegistryError):
    status = 422
    code = "processing"


class UpstreamError(RegistryError):
    """An upstream (the FHIR store, the lock database) could not be used; retrying later may work."""

    status = 503
    code = "transient"


class UpstreamUnavailable(UpstreamError):
    status = 503
    code = "transient"


class UpstreamTimeout(UpstreamError):
    status = 504
    code = "timeout"


def operation_outcome(severity: str, code: str, diagnostics: str) -> dict[str, Any]:
    return {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": severity, "code": code, "diagnostics": diagnostics}],
    }
