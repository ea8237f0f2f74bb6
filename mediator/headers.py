"""Security headers on every answer of the mediator (FHIR, admin JSON and pages), set in one place.

* ``X-Content-Type-Options: nosniff`` — a browser never reads a JSON answer (which may echo input) as HTML.
* ``Referrer-Policy: no-referrer`` — admin page URLs hold record ids and search terms: no other site
  sees them.
* ``Content-Security-Policy``: pages get :data:`PAGE_CSP` (own resources, inline styles only, forms post to
  this origin only, no ``<base>``, never framed); every other answer :data:`API_CSP` (nothing at all).
  A handler that sets its own policy keeps it.
* ``Strict-Transport-Security`` on the admin answers when the admin cookie is ``Secure``
  (``CR_ADMIN_COOKIE_SECURE=true``: the admin pages are served over HTTPS), added by ``mediator/admin``.
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
    headers = response.headers
    headers.setdefault("X-Content-Type-Options", "nosniff")
    headers.setdefault("Referrer-Policy", "no-referrer")
    if "Content-Security-Policy" not in headers:
        headers["Content-Security-Policy"] = PAGE_CSP if response.content_type == "text/html" else API_CSP


async def strict_transport(request: web.Request, response: web.StreamResponse) -> None:
    response.headers.setdefault("Strict-Transport-Security", HSTS)
