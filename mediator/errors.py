"""The registry's error tree. Raised in the domain, turned into HTTP + OperationOutcome at the edge.

RegistryError                     base; ``status`` and FHIR ``issue.code``
├── InvalidInput          400     the request cannot be read (not JSON, wrong resourceType, bad parameter)
├── Forbidden             403     the caller may not do this (identifier system of another client)
├── NotFound              404     unknown record or identifier
├── Conflict              409     the record changed under us (the workflow decides again from fresh reads)
├── Ambiguous             409     an identifier names records of more than one person (never answer with one)
├── PayloadTooLarge       413     body over the configured limit
├── Unprocessable         422     well-formed FHIR that the registry cannot accept (no usable identifier)
└── UpstreamError                 HAPI (or another upstream) could not be used: nothing was written
    ├── UpstreamUnavailable   503 refused, is down or answered 5xx
    └── UpstreamTimeout       504 did not answer in time
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
