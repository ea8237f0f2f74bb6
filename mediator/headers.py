"""Security headers on every answer (FHIR, admin JSON, pages), set in one place; HSTS on admin answers
when the admin cookie is ``Secure``. What each is for: ``docs/internals.md`` (Security headers).
"""

from __future__ import annotations

from aiohttp import web

PAGE_CSP = (
    "default-src 'self'; style-src 'unsafe-inline'; "
    "form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)
API_CSP = "default-src 'none'; form-action 'none'; base-uri 'none'; frame-ancestors 'none'"
HSTS = "max-age=31536000"


async def security_headers(request: web.Request, response: web.StreamResponse) -> None:
    """``on_response_prepare`` of the mediator app: runs for its sub-applications' answers too."""
    set_security_headers(response)


def set_security_headers(response: web.StreamResponse) -> None:
    """The headers themselves; also for answers no app sees (mediator/parse_errors.py)."""
    headers = response.headers
    headers.setdefault("X-Content-Type-Options", "nosniff")
    headers.setdefault("Referrer-Policy", "no-referrer")
    if "Content-Security-Policy" not in headers:
        headers["Content-Security-Policy"] = PAGE_CSP if response.content_type == "text/html" else API_CSP


async def strict_transport(request: web.Request, response: web.StreamResponse) -> None:
    response.headers.setdefault("Strict-Transport-Security", HSTS)
