"""Server-rendered HTML for HIE admins (no JavaScript, no external assets; every action is a plain form, so
the pages work offline and with the keyboard alone). Decisions and repairs go through a confirmation page.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping
from html import escape
from typing import Any
from urllib.parse import urlencode

from aiohttp import web

from ..context import CONFIG, STORE
from ..errors import RegistryError
from ..handlers import fhir_response
from ..headers import PAGE_CSP
from ..review import POSSIBLE_DUPLICATE, POTENTIAL_MATCH
from . import labels, queries
from .auth import ADMIN_CSRF, ADMIN_USER, SESSION, Unauthorized, csrf_token, log_in, log_out
from .curation import DIFFERENT_PEOPLE, SAME_PERSON, Outcome
from .requests import admin_of, curation
from .score_index import SCORE_INDEX
from .throttle import TooManyAttempts

CSS = """
body{font:15px/1.45 system-ui,sans-serif;margin:0;color:#1b1b1b;background:#fafafa}
header{background:#14365d;color:#fff;padding:.5rem 1rem;display:flex;gap:1rem;
align-items:center;flex-wrap:wrap}
header a{color:#fff}header form{margin-left:auto}main{padding:1rem 1.5rem;max-width:80rem}
a{color:#0b5cad}a:focus,button:focus,input:focus,select:focus{outline:3px solid #f5a623;outline-offset:2px}
table{border-collapse:collapse;width:100%;background:#fff;margin:.5rem 0 1rem}
th,td{border:1px solid #ccd;padding:.3rem .5rem;text-align:left;vertical-align:top}th{background:#eef2f7}
.agree{background:#dff3e0}.close{background:#fff4cf}.differ{background:#fbdcdc}.missing{background:#eee;color:#555}
.skip{position:absolute;left:-999px}.skip:focus{left:1rem;top:.5rem;background:#fff;color:#000;padding:.3rem}
button{font:inherit;padding:.35rem .8rem;border:1px solid #14365d;background:#fff;
border-radius:3px;cursor:pointer}
button.primary{background:#14365d;color:#fff}button.danger{border-color:#a00;color:#a00}
.msg{padding:.5rem 1rem;border-left:4px solid #14365d;background:#e8f0fa}
.error{border-color:#a00;background:#fbdcdc}
.scale{font-family:monospace}form.inline{display:inline}label{margin-right:.5rem}
"""

Page = Callable[[web.Request], Awaitable[web.StreamResponse]]


def e(value: Any) -> str:
    return escape("" if value is None else str(value))


def layout(request: web.Request, title: str, body: str, status: int = 200) -> web.Response:
    user = request.get(ADMIN_USER)
    nav = ""
    if user:
        nav = (
            '<nav aria-label="main"><a href="/admin/">Potential matches</a> · '
            f'<a href="/admin/?kind={POSSIBLE_DUPLICATE}">Possible duplicates</a> · '
            '<a href="/admin/auto-matches">New auto-matches</a> · <a href="/admin/search">Search</a> · '
            '<a href="/admin/decisions">Decisions</a></nav>'
            f'<form method="post" action="/admin/logout">{csrf_field(request)}'
            f"<span>{e(user)}</span> <button>Log out</button></form>"
        )
    html = (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f"<title>{e(title)} · Client registry</title>"
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        f"<style>{CSS}</style></head><body>"
        f'<a class="skip" href="#main">Skip to content</a><header><strong>Client registry admin</strong>{nav}'
        f'</header><main id="main"><h1>{e(title)}</h1>{body}</main></body></html>'
    )
    return web.Response(text=html, content_type="text/html", status=status, headers=_NO_CACHE)


_NO_CACHE = {
    "Cache-Control": "no-store",
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": PAGE_CSP,
}


def csrf_field(request: web.Request) -> str:
    token = request.get(ADMIN_CSRF) or csrf_token(request[SESSION])
    return f'<input type="hidden" name="csrf_token" value="{e(token)}">'


def hidden(fields: dict[str, str]) -> str:
    return "".join(f'<input type="hidden" name="{e(k)}" value="{e(v)}">' for k, v in fields.items() if v)


def table(headers: Iterable[str], rows: Iterable[Iterable[str]], caption: str = "") -> str:
    head = "".join(f'<th scope="col">{h}</th>' for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    cap = f"<caption>{e(caption)}</caption>" if caption else ""
    return f"<table>{cap}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def person_link(golden_id: str | None) -> str:
    return f'<a href="/admin/person/{e(golden_id)}">{e(golden_id)}</a>' if golden_id else ""


def source_cell(summary: dict[str, Any]) -> str:
    if not summary:
        return "<em>gone</em>"
    ids = "<br>".join(e(i) for i in summary.get("identifiers", []))
    manual = " · <strong>manual link</strong>" if summary.get("manual") else ""
    if summary.get("mergedInto"):
        manual = f" · <strong>merged by its POS</strong> into {e(summary['mergedInto'])}"
    return (
        f"<strong>{e(summary.get('name'))}</strong> · {e(summary.get('birthDate'))} · "
        f"{e(summary.get('gender'))}"
        f"{manual}<br><small>{ids}</small>"
    )


# -- login -----------------------------------------------------------------------------------------------


def _safe_next(value: str | None) -> str:
    return value if value and value.startswith("/admin/") and not value.startswith("//") else "/admin/"


async def login_page(request: web.Request, error: str = "", status: int = 200) -> web.Response:
    nxt = _safe_next(request.query.get("next"))
    msg = f'<p class="msg error" role="alert">{e(error)}</p>' if error else ""
    body = (
        f'{msg}<form method="post" action="/admin/login">{csrf_field(request)}{hidden({"next": nxt})}'
        '<p><label for="username">User</label><input id="username" name="username" autocomplete="username" '
        'required autofocus></p><p><label for="password">Password</label><input id="password" '
        'name="password" type="password" autocomplete="current-password" required></p>'
        '<p><button class="primary">Log in</button></p></form>'
    )
    return layout(request, "Log in", body, status)


async def login_submit(request: web.Request) -> web.StreamResponse:
    form = await request.post()
    try:
        await log_in(request, str(form.get("username", "")), str(form.get("password", "")))
    except Unauthorized as exc:
        return await login_page(request, exc.diagnostics, 401)
    except TooManyAttempts as exc:
        page = await login_page(request, exc.diagnostics, 429)
        page.headers["Retry-After"] = str(exc.retry_after_s)
        return page
    raise web.HTTPSeeOther(_safe_next(str(form.get("next", ""))))


async def logout_submit(request: web.Request) -> web.StreamResponse:
    await log_out(request)
    raise web.HTTPSeeOther("/admin/login")


# -- queue and pair --------------------------------------------------------------------------------------


async def queue_page(request: web.Request) -> web.Response:
    f = queries.QueueFilter.from_query(request.query)
    page = await queries.queue(request.config_dict[STORE].hapi, f, request.config_dict[SCORE_INDEX])
    title = "Potential matches" if f.kind == POTENTIAL_MATCH else "Possible duplicates"
    filters = (
        '<form method="get" action="/admin/" aria-label="filter">'
        f'{hidden({"kind": f.kind})}<label for="system">Facility identifier system</label>'
        f'<input id="system" name="system" value="{e(f.system)}" size="40"> '
        f'<label for="since">From</label><input id="since" name="since" type="date" value="{e(f.since)}"> '
        f'<label for="until">To</label><input id="until" name="until" type="date" value="{e(f.until)}"> '
        "<button>Filter</button></form>"
    )
    rows = [
        [
            f'<span class="scale">{e(i["score"])}</span>',
            source_cell(i["source"]),
            person_link(i["golden"]),
            person_link(i["candidate"]),
            e(i["authoredOn"]),
            f'<a href="/admin/pairs/{e(i["task"])}">Review pair</a>',
        ]
        for i in page["items"]
    ]
    pages = -(-page["total"] // f.per_page) or 1
    nav = []
    for label, number in (("Previous", f.page - 1), ("Next", f.page + 1)):
        if 1 <= number <= pages:
            query = {k: v for k, v in request.query.items() if k != "page"} | {"page": str(number)}
            nav.append(f'<a href="/admin/?{e(urlencode(query))}">{label}</a>')
    body = (
        f"{filters}<p>{page['total']} open, page {f.page} of {pages}, highest score first.</p>"
        + table(["Score", "Submitted record", "Its person", "Candidate person", "Raised", ""], rows, title)
        + " · ".join(nav)
    )
    return layout(request, title, body)


async def pair_page(request: web.Request) -> web.Response:
    cfg = request.config_dict[CONFIG].current
    view = await queries.pair(request.config_dict[STORE].hapi, cfg, request.match_info["task"])
    task = view["task"]
    left, right = view["left"], view["right"]
    t = view["thresholds"]
    parts = [
        f"<p>{e(task['kind'])} raised {e(task['authoredOn'])}; status <strong>{e(task['status'])}</strong>"
        + (f" — decided: <strong>{e(task['decision'])}</strong>" if task["decision"] else "")
        + "</p>"
    ]
    if "fields" in view:
        parts.append(
            f'<p>Score <strong class="scale">{e(view["score"])}</strong> ({e(view["classification"])}); '
            f"potential match from {e(t['potential_match'])}, automatic match from {e(t['auto_match'])}. "
            f"Rule: {e(view['explanation']['rule'])}.</p>"
        )
        rows = [
            [
                f"<strong>{e(f['field'])}</strong>",
                e(" | ".join(f["left"])),
                e(" | ".join(f["right"])),
                f'<span class="{e(f["agreement"])}">{e(f["agreement"])}</span> ({e(f["level"])})',
                f'<span class="scale">{f["weight"]:+.2f}</span>',
            ]
            for f in view["fields"]
        ]
        parts.append(
            table(
                ["Field", "Submitted record", "Candidate's closest record", "Agreement", "Weight"],
                rows,
                "Field by field",
            )
        )
    parts.append(
        table(
            ["", "Submitted record", "Candidate"],
            [
                ["Record", source_cell(left["record"]), source_cell(right.get("record", {}))],
                ["Person", person_link(left["golden"]), person_link(right["golden"])],
                ["Records of that person", e(left["golden_sources"]), e(right["golden_sources"])],
            ],
            "Side by side",
        )
    )
    if task["status"] == "requested":
        token = csrf_field(request)
        action = f"/admin/pairs/{e(task['id'])}/decision"
        survivor = (
            '<label for="survivor">Keep the CRUID of</label><select id="survivor" name="survivor">'
            '<option value="">the person with more records</option>'
            f'<option value="{e(left["golden"])}">{e(left["golden"])}</option>'
            f'<option value="{e(right["golden"])}">{e(right["golden"])}</option></select> '
        )
        if view["same_golden"]:
            parts.append('<p class="msg">Both records already belong to one person.</p>')
        parts.append(
            '<h2>Decision</h2><div role="group" aria-label="decision">'
            f'<form class="inline" method="post" action="{action}">{token}{hidden({"decision": SAME_PERSON})}'
            f'{survivor}<button class="primary">Same person…</button></form> '
            f'<form class="inline" method="post" action="{action}">{token}'
            f"{hidden({'decision': DIFFERENT_PEOPLE})}"
            '<button class="danger">Different people…</button></form>'
            "</div>"
        )
    return layout(request, "Review pair", "".join(parts))


# -- confirmation and actions ----------------------------------------------------------------------------


async def _confirm_or_run(
    request: web.Request,
    question: str,
    run: Callable[[], Awaitable[Outcome]],
    back: str,
    pinned: Mapping[str, str] | None = None,
) -> web.StreamResponse:
    """Ask the admin to confirm (a form re-posting the fields, with ``pinned`` ones added: what the question
    showed), then run the decision and show its person."""
    form = await request.post()
    if form.get("confirmed") != "yes":
        fields = {k: str(v) for k, v in form.items() if k not in ("csrf_token", "confirmed")}
        fields.update(pinned or {})
        body = (
            f'<p class="msg" role="alert">{e(question)}</p><form method="post" action="{e(request.path)}">'
            f"{csrf_field(request)}{hidden(fields)}{hidden({'confirmed': 'yes'})}"
            '<p><label for="note">Note for the audit trail (optional)</label>'
            '<input id="note" name="note" size="60"></p>'
            '<button class="primary" autofocus>Confirm</button> '
            f'<a href="{e(back)}">Cancel</a></form>'
        )
        return layout(request, "Please confirm", body)
    try:
        outcome = await run()
    except RegistryError as exc:
        body = (
            f'<p class="msg error" role="alert">{e(exc.diagnostics)}</p><p><a href="{e(back)}">Back</a></p>'
        )
        return layout(request, "Not done", body, exc.status)
    target = outcome.golden_ids[0] if outcome.golden_ids else ""
    raise web.HTTPSeeOther(f"/admin/person/{target}?done={outcome.audit_event_id}" if target else back)


def _note(form: Any) -> str | None:
    note = str(form.get("note", "")).strip()
    return note or None


async def decision_submit(request: web.Request) -> web.StreamResponse:
    form = await request.post()
    task = request.match_info["task"]
    decision = str(form.get("decision", ""))
    label = "the same person (merge them)" if decision == SAME_PERSON else "different people"
    return await _confirm_or_run(
        request,
        f"Record that these two are {label}?",
        lambda: curation(request).decide(
            task,
            decision,
            admin_of(request),
            survivor=str(form.get("survivor", "")) or None,
            note=_note(form),
        ),
        f"/admin/pairs/{task}",
    )


async def break_submit(request: web.Request) -> web.StreamResponse:
    form = await request.post()
    golden, source = request.match_info["golden"], str(form.get("source", ""))
    return await _confirm_or_run(
        request,
        f"Split {source} out of {golden} into a new person with a new CRUID?",
        lambda: curation(request).break_out(golden, source, admin_of(request), note=_note(form)),
        f"/admin/person/{golden}",
    )


async def move_submit(request: web.Request) -> web.StreamResponse:
    form = await request.post()
    source, target = str(form.get("source", "")), str(form.get("target", "")).strip()
    return await _confirm_or_run(
        request,
        f"Move {source} to the person {target}?",
        lambda: curation(request).move(source, target, admin_of(request), note=_note(form)),
        "/admin/search",
    )


async def confirm_submit(request: web.Request) -> web.StreamResponse:
    form = await request.post()
    source = str(form.get("source", ""))
    return await _confirm_or_run(
        request,
        f"Confirm the automatic link of {source}? Matching will never move it afterwards.",
        lambda: curation(request).confirm(source, admin_of(request), note=_note(form)),
        "/admin/auto-matches",
    )


async def undo_submit(request: web.Request) -> web.StreamResponse:
    """Undo, confirmed first. The confirmation names the decision that is last now and pins its id, so the
    undo is of that one only (409 if another came meanwhile), and a resubmitted form (after a lost answer)
    is answered from the undo already written instead of undoing the decision before it."""
    form = await request.post()
    patient = str(form.get("patient", ""))
    decision = str(form.get("decision", "")) or None
    question, pinned = f"Undo the last decision on {patient}?", {}
    if form.get("confirmed") != "yes" and decision is None:
        last = await curation(request).last_decision(patient)
        if last is not None:
            action = next((str(c.get("code", "")) for c in last.get("subtype", [])), "")
            question = f"Undo the last decision on {patient}: {action}, {last.get('recorded', '')}?"
            pinned = {"decision": str(last["id"])}
    return await _confirm_or_run(
        request,
        question,
        lambda: curation(request).undo_last(patient, admin_of(request), decision),
        f"/admin/person/{patient}",
        pinned,
    )


# -- search, person, auto-matches ------------------------------------------------------------------------


async def search_page(request: web.Request) -> web.Response:
    q = request.query.get("q", "").strip()
    results = ""
    if q:
        cfg = request.config_dict[CONFIG].current
        by_identifier = "|" in q or q.startswith("cr-") or any(ch.isdigit() for ch in q)
        found = await queries.search_people(
            request.config_dict[STORE].hapi, cfg, q if by_identifier else None, None if by_identifier else q
        )
        rows = [
            [
                person_link(p["golden"]),
                "active" if p["active"] else f"inactive (replaced by {person_link(p['replaced_by'])})",
                e(p["sources"]),
                "<br>".join(source_cell(s) for s in p["matched"]),
            ]
            for p in found
        ]
        results = table(
            ["Person (CRUID)", "State", "Records", "Matching records"], rows, f"{len(rows)} found"
        )
    body = (
        '<form method="get" action="/admin/search" role="search"><label for="q">Identifier (system|value, '
        'value or CRUID) or name</label><input id="q" name="q" size="50" autofocus '
        f'value="{e(q)}"> <button>Search</button></form>{results}'
    )
    return layout(request, "Search a person", body)


async def person_page(request: web.Request) -> web.Response:
    cfg = request.config_dict[CONFIG].current
    golden_id = request.match_info["golden"]
    view = await queries.golden_view(request.config_dict[STORE].hapi, cfg, golden_id)
    token = csrf_field(request)
    done = request.query.get("done")
    parts = [f'<p class="msg" role="status">Done — recorded as AuditEvent {e(done)}.</p>' if done else ""]
    state = "active" if view["active"] else "inactive"
    if view["replaced_by"]:
        state += f", merged into {person_link(view['replaced_by'])}"
    distinct = ", ".join(person_link(g) for g in view["distinct_from"]) or "none"
    parts.append(
        f"<p>CRUID <strong>{e(view['cruid'])}</strong> · {state} · different people from: {distinct}</p>"
    )
    rows = []
    for s in view["sources"]:
        actions = ""
        if len(view["sources"]) > 1:
            actions += (
                f'<form class="inline" method="post" action="/admin/person/{e(golden_id)}/break">{token}'
                f"{hidden({'source': s['id']})}<button>Break out…</button></form> "
            )
        actions += (
            f'<form class="inline" method="post" action="/admin/move">{token}{hidden({"source": s["id"]})}'
            f'<label for="t-{e(s["id"])}">to</label><input id="t-{e(s["id"])}" name="target" '
            'placeholder="cr-…" required size="20"> <button>Move…</button></form>'
        )
        rows.append([source_cell(s), e(s.get("client")), actions])
    parts.append(table(["Record", "Submitted by", "Repair"], rows, "Source records"))
    parts.append(
        f'<form method="post" action="/admin/undo">{token}{hidden({"patient": golden_id})}'
        "<button>Undo the last decision on this person…</button></form>"
    )
    hist = [
        [
            e(ev["recorded"]),
            e(ev["action"]) + (" (admin)" if ev["admin"] else ""),
            e(ev["by"]),
            e(ev["decision"] or ev["note"] or ""),
            "<br>".join(
                e(x["what"])
                + (f" {e(_state_text(x['before']))} → {e(_state_text(x['after']))}" if "before" in x else "")
                for x in ev["entities"]
            ),
        ]
        for ev in view["history"]
    ]
    parts.append('<h2 id="history">History</h2>')
    parts.append(table(["When", "Action", "By", "Decision / note", "Records (before → after)"], hist))
    return layout(request, f"Person {golden_id}", "".join(parts))


def _state_text(state: dict[str, Any]) -> str:
    kind = state.get("kind")
    if kind == "source":
        if state.get("pos_merge"):
            return f"→ {state.get('golden')} (merged by its POS into {state['pos_merge']})"
        return f"→ {state.get('golden')}" + (" (manual)" if state.get("manual") else "")
    if kind == "golden":
        text = f"{len(state.get('sources', []))} records" + ("" if state.get("active") else ", inactive")
        return text + (f", replaced by {state['replaced_by']}" if state.get("replaced_by") else "")
    return "absent"


async def auto_matches_page(request: web.Request) -> web.Response:
    items = await queries.auto_matches(request.config_dict[STORE].hapi, request.query.get("since"), 50)
    token = csrf_field(request)
    rows = [
        [
            e(i["recorded"]),
            f'<span class="scale">{e(i["score"])}</span>',
            source_cell(i["source"]),
            person_link(i["golden"]),
            f'<form class="inline" method="post" action="/admin/confirm">{token}'
            f"{hidden({'source': i['source']['id']})}<button>Confirm…</button></form> "
            f'<form class="inline" method="post" action="/admin/person/{e(i["golden"])}/break">{token}'
            f'{hidden({"source": i["source"]["id"]})}<button class="danger">Break…</button></form>',
        ]
        for i in items
    ]
    body = table(["When", "Score", "Record", "Linked to", ""], rows, "Automatic links not yet confirmed")
    return layout(request, "New auto-matches", body)


async def decisions_page(request: web.Request) -> web.Response:
    c = await labels.counts(request.config_dict[STORE].hapi, request.config_dict[CONFIG])
    if c["rules_trained_at"]:
        when = (
            "trained" if c["rules_date_is"] == "trained" else "applied (their training date is not recorded)"
        )
        since = (
            f'<p id="decisions-since"><strong>{e(c["since_rules"])}</strong> decisions since the matching '
            f"rules in force ({e(c['rules'])}) were {when} on {e(c['rules_trained_at'])}.</p>"
        )
    else:
        since = (
            f'<p id="decisions-since">The matching rules in force ({e(c["rules"])}) do not record when they '
            f"were trained: all <strong>{e(c['since_rules'])}</strong> decisions may be newer.</p>"
        )
    body = (
        f"{since}<p>{e(c['decided'])} pairs decided in all (same person or different people).</p>"
        '<p><a href="/admin/api/decisions/labels.csv" download>Download the decided pairs (CSV)</a> — '
        "<code>id_a,id_b,decision,conflict</code>, the file <code>python -m matching train --labels</code> "
        "reads, with the records exported from this registry as its input. Decisions that contradict each "
        "other (A same as B, B same as C, but A different from C) name their group in <code>conflict</code>: "
        "<code>train</code> refuses the file until one of them is decided again.</p>"
    )
    return layout(request, "Decisions", body)


def is_page(request: web.Request) -> bool:
    """A GET of an HTML page (everything under /admin but the JSON API and /admin/audit)."""
    return request.method in ("GET", "HEAD") and not (
        request.path.startswith("/admin/api/") or request.path == "/admin/audit"
    )


@web.middleware
async def error_pages(request: web.Request, handler: Page) -> web.StreamResponse:
    """Errors of GET page routes as HTML pages; the JSON API keeps its OperationOutcomes (``Retry-After`` on
    a refused login)."""
    try:
        return await handler(request)
    except TooManyAttempts as exc:
        if is_page(request):
            raise
        response = fhir_response(exc.to_operation_outcome(), status=exc.status)
        response.headers["Retry-After"] = str(exc.retry_after_s)
        return response
    except RegistryError as exc:
        if not is_page(request):
            raise
        return _error_page(request, exc.status, exc.diagnostics)
    except web.HTTPException as exc:
        if exc.status < 400 or not is_page(request):
            raise
        return _error_page(request, exc.status, exc.reason)


def _error_page(request: web.Request, status: int, message: str) -> web.Response:
    titles = {400: "Bad request", 403: "Not allowed", 404: "Not found", 409: "Changed meanwhile"}
    title = titles.get(status, "Service unavailable" if status in (502, 503, 504) else "Error")
    body = (
        f'<p class="msg error" role="alert">{e(message)}</p>'
        '<p><a href="/admin/">Back to the queue</a> · <a href="/admin/search">Search</a></p>'
    )
    return layout(request, f"{title} ({status})", body, status)


def add_routes(app: web.Application) -> None:
    r = app.router
    r.add_get("/login", login_page)
    r.add_post("/login", login_submit)
    r.add_post("/logout", logout_submit)
    r.add_get("/", queue_page)
    r.add_get("/pairs/{task}", pair_page)
    r.add_post("/pairs/{task}/decision", decision_submit)
    r.add_get("/search", search_page)
    r.add_get("/person/{golden}", person_page)
    r.add_post("/person/{golden}/break", break_submit)
    r.add_post("/move", move_submit)
    r.add_post("/confirm", confirm_submit)
    r.add_post("/undo", undo_submit)
    r.add_get("/auto-matches", auto_matches_page)
    r.add_get("/decisions", decisions_page)
