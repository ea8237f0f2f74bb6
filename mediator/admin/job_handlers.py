"""HTTP side of the admin jobs under ``/admin/jobs/…``: bulk upload, re-match dry run and apply, rules reset,
progress, decisions report, cancel, and the jobs page; the jobs themselves run in :mod:`mediator.admin.jobs`.

Same auth and CSRF as the rest of ``/admin`` (the admin app's middleware); the routes are listed, with what
they answer, in :func:`add_routes`.
"""

from __future__ import annotations

import csv
import json
import logging
import time
import uuid
from pathlib import Path
from typing import Any

import yaml
from aiohttp import BodyPartReader, web

import matching

from .. import applied_rules, bulk
from ..context import CONFIG, STORE
from ..errors import Conflict, InvalidInput, NotFound
from ..locks import Lease
from ..openhim import OPENHIM
from .auth import ADMIN_USER
from .jobs import APPLY_LEASE, JOBS, JobInfo, Jobs, cancellable
from .pages import csrf_field, e, layout
from .requests import body

log = logging.getLogger(__name__)

MAX_UPLOAD_BYTES = 512 * 1024 * 1024


def _jobs(request: web.Request) -> Jobs:
    return request.config_dict[JOBS]


def _count_rows(path: Path, encoding: str) -> int:
    """Rows of the uploaded file, read whole: an encoding it is not in fails here, at upload."""
    if path.suffix == ".csv":
        with path.open(newline="", encoding=bulk.csv_encoding(encoding)) as f:
            return max(0, sum(1 for _ in bulk.csv_records(csv.reader(f))) - 1)
    with path.open(encoding=encoding) as f:
        return sum(1 for line in f if line.strip())


async def upload_bulk(request: web.Request) -> web.Response:
    if not request.content_type.startswith("multipart/"):
        raise InvalidInput(
            "Send multipart/form-data with 'file', 'system' and optional 'national_id_system' and 'encoding'."
        )
    jobs = _jobs(request)
    job_id = f"bulk-{uuid.uuid4().hex[:12]}"
    fields: dict[str, str] = {}
    saved: Path | None = None
    filename = ""
    try:  # a client that leaves mid-upload (or a body past its deadline) leaves no partial file
        reader = await request.multipart()
        while (part := await reader.next()) is not None:
            if not isinstance(part, BodyPartReader) or part.name is None:
                continue
            if part.name == "file":
                filename = part.filename or "upload.ndjson"
                suffix = ".csv" if filename.lower().endswith(".csv") else ".ndjson"
                (jobs.dir / "uploads").mkdir(exist_ok=True)
                saved = jobs.dir / "uploads" / f"{job_id}{suffix}"
                size = 0
                with saved.open("wb") as out:
                    while chunk := await part.read_chunk():
                        size += len(chunk)
                        if size > MAX_UPLOAD_BYTES:
                            out.close()
                            saved.unlink()
                            raise InvalidInput(f"The file is larger than {MAX_UPLOAD_BYTES} bytes.")
                        out.write(chunk)
            else:
                fields[part.name] = (await part.text()).strip()
    except BaseException:
        if saved is not None:
            saved.unlink(missing_ok=True)
        raise
    if saved is None:
        raise InvalidInput("No 'file' part.")
    system = fields.get("system", "")
    if not system:
        saved.unlink()
        raise InvalidInput("Give the facility's identifier system ('system').")
    cfg = request.config_dict[CONFIG].current
    national = fields.get("national_id_system") or next(iter(sorted(cfg.shared_identifier_systems)), None)
    encoding = fields.get("encoding") or "utf-8"
    try:
        total = _count_rows(saved, encoding)
        if saved.suffix == ".csv":
            next(bulk.read_rows(saved, system, national, encoding), None)  # checks the header
    except UnicodeDecodeError as exc:
        saved.unlink()
        raise InvalidInput(
            f"The file is not {fields.get('encoding') or 'UTF-8'}: byte 0x{exc.object[exc.start]:02X} cannot "
            "be read. Export it as UTF-8, or give its encoding in 'encoding' (e.g. cp1252 or latin-1, in "
            "which spreadsheets often save CSV files)."
        ) from exc
    except (ValueError, LookupError, csv.Error) as exc:
        saved.unlink()
        raise InvalidInput(f"Cannot read the file: {exc}") from exc
    info = JobInfo(
        id=job_id,
        kind="bulk",
        created=time.time(),
        params={
            "file": str(saved),
            "filename": filename,
            "system": system,
            "national_id_system": national,
            "encoding": encoding,
            "rows_total": total,
        },
    )
    jobs.start(info)
    return web.json_response(jobs.progress(info), status=202)


async def _rules_body(request: web.Request) -> dict[str, Any]:
    data = await body(request)
    doc = data.get("rules")
    if doc is None and isinstance(data.get("rules_yaml"), str):
        try:
            doc = yaml.safe_load(data["rules_yaml"])
        except yaml.YAMLError as exc:
            raise InvalidInput(f"rules_yaml is not valid YAML: {exc}") from exc
        except RecursionError as exc:
            raise InvalidInput("rules_yaml is nested too deeply.") from exc
    if not isinstance(doc, dict):
        raise InvalidInput("Give the new rules: 'rules' (an object) or 'rules_yaml' (the YAML text).")
    try:
        rules = matching.load_rules(doc)
    except matching.RulesError as exc:
        raise InvalidInput(str(exc)) from exc
    systems = data.get("systems", [])
    if not isinstance(systems, list) or not all(isinstance(s, str) and s for s in systems):
        raise InvalidInput("'systems' must be a list of identifier systems.")
    return {"rules": rules.to_dict(), "systems": systems}


async def rematch_dry_run(request: web.Request) -> web.Response:
    params = await _rules_body(request)
    info = JobInfo(
        id=f"dry-{uuid.uuid4().hex[:12]}", kind="rematch-dry-run", created=time.time(), params=params
    )
    _jobs(request).start(info)
    return web.json_response(_jobs(request).progress(info), status=202)


async def rematch_apply(request: web.Request) -> web.Response:
    params = await _rules_body(request)
    jobs = _jobs(request)
    link = request.config_dict.get(OPENHIM)
    if link is not None and link.console_sets_rules:  # its text would keep winning on every replica
        raise Conflict(
            "The OpenHIM console sets the matching rules (its 'rules' text), and they win over any re-match: "
            "empty that text in the console (the rules in effect are then used) before applying new rules "
            "here, or edit the rules in the console."
        )
    lease = await _apply_lease(request)
    params["applied_by"] = request.get(ADMIN_USER, "")
    info = JobInfo(
        id=f"rematch-{uuid.uuid4().hex[:12]}", kind="rematch-apply", created=time.time(), params=params
    )
    jobs.start(info, lease)
    return web.json_response(jobs.progress(info), status=202)


async def _apply_lease(request: web.Request) -> Lease:
    """The apply lease, or 409 while a re-match is being applied on this or another replica."""
    lease = await request.config_dict[STORE].registry.locks.try_lease(APPLY_LEASE)
    if lease is None:
        raise Conflict("A re-match is being applied (on this or another replica); wait for it to finish.")
    return lease


def rules_in_effect(request: web.Request) -> dict[str, Any]:
    holder = request.config_dict[CONFIG]
    origin, rules = holder.origin, holder.current.rules
    return {
        "source": "applied" if origin.applied else "file",
        "description": origin.describe(),
        "file": origin.path,
        "job": origin.job_id,
        "applied_at": origin.applied_at,
        "applied_by": origin.applied_by,
        "name": rules.name,
        "auto_match": rules.auto_threshold,
        "potential_match": rules.potential_threshold,
    }


async def reset_rules(request: web.Request) -> web.StreamResponse:
    lease = await _apply_lease(request)
    try:
        removed = await applied_rules.reset(request.config_dict[CONFIG], request.config_dict[STORE].hapi)
    finally:
        await lease.release()
    log.info("admin reset the matching rules to the file", extra={"admin": request.get(ADMIN_USER)})
    if request.content_type in ("application/x-www-form-urlencoded", "multipart/form-data"):
        raise web.HTTPSeeOther("/admin/jobs/page")
    return web.json_response({"removed": removed, "rules_in_effect": rules_in_effect(request)})


def _info(request: web.Request) -> JobInfo:
    jobs = _jobs(request)
    jobs.refresh()
    info = jobs.infos.get(request.match_info["job"])
    if info is None:
        raise NotFound(f"No job {request.match_info['job']}.")
    return info


async def list_jobs(request: web.Request) -> web.Response:
    jobs = _jobs(request)
    jobs.refresh()
    items = [jobs.progress(i) for i in sorted(jobs.infos.values(), key=lambda i: i.created, reverse=True)]
    return web.json_response({"items": items, "rules_in_effect": rules_in_effect(request)})


async def job_progress(request: web.Request) -> web.Response:
    return web.json_response(_jobs(request).progress(_info(request)))


async def cancel_job(request: web.Request) -> web.StreamResponse:
    jobs, info = _jobs(request), _info(request)
    jobs.cancel(info, str(request.get(ADMIN_USER) or "an admin"))
    log.info("admin cancelled a job", extra={"job": info.id, "admin": request.get(ADMIN_USER)})
    if request.content_type in ("application/x-www-form-urlencoded", "multipart/form-data"):
        raise web.HTTPSeeOther("/admin/jobs/page")
    return web.json_response(jobs.progress(info), status=202)


async def job_report(request: web.Request) -> web.StreamResponse:
    info = _info(request)
    if info.kind != "bulk":
        raise NotFound("Only bulk jobs have a decisions report.")
    path = _jobs(request).bulk_job(info).report_path
    if not path.exists():
        raise NotFound("The report is not written yet.")
    return web.FileResponse(
        path,
        headers={
            "Content-Type": "text/csv; charset=utf-8",
            "Content-Disposition": f'attachment; filename="{info.id}-decisions.csv"',
        },
    )


async def jobs_page(request: web.Request) -> web.Response:
    jobs = _jobs(request)
    jobs.refresh()
    rows = []
    for info in sorted(jobs.infos.values(), key=lambda i: i.created, reverse=True):
        p = jobs.progress(info)
        if info.kind == "bulk":
            done = f"{p['rows_done']} / {p['rows_total']} rows · {e(json.dumps(p['counts']))}"
            link = f' · <a href="/admin/jobs/{e(info.id)}/report.csv">report</a>'
        elif info.kind == "rematch-dry-run":
            r = p.get("result") or {}
            done = (
                f"{r.get('links_changed', '…')} links would change "
                f"({r.get('merges', 0)} merges, {r.get('splits', 0)} splits)"
            )
            link = ""
        else:
            done = (
                f"{p.get('phase')} · {p.get('relink_done')} / {p.get('relink_total')} relinked, "
                f"{p.get('changed')} changed"
            )
            link = ""
        cancel = (
            f'<form class="inline" method="post" action="/admin/jobs/{e(info.id)}/cancel">'
            f'{csrf_field(request)}<button class="danger">Cancel</button></form>'
            if cancellable(info)
            else ""
        )
        rows.append(
            f"<tr><td>{e(info.id)}</td><td>{e(info.kind)}</td>"
            f"<td>{e(info.status)} {e(info.error)} {cancel}</td><td>{done}{link}</td></tr>"
        )
    rules = rules_in_effect(request)
    reset = (
        f'<form class="inline" method="post" action="/admin/jobs/rules/reset">{csrf_field(request)}'
        '<button class="danger">Back to the rules file</button></form>'
        if rules["source"] == "applied"
        else ""
    )
    body = (
        f'<p id="rules-in-effect">Matching rules in effect: {e(rules["name"])} — {e(rules["description"])} '
        f"(auto match ≥ {e(rules['auto_match'])}, potential ≥ {e(rules['potential_match'])}) {reset}</p>"
        "<table><caption>Jobs (newest first)</caption><thead><tr><th>Job</th><th>Kind</th><th>Status</th>"
        f"<th>Progress</th></tr></thead><tbody>{''.join(rows)}</tbody></table>"
    )
    return layout(request, "Jobs", body)


def add_routes(app: web.Application) -> None:
    """The job routes, on the admin sub-application (mounted at ``/admin``):

    * ``POST /admin/jobs/bulk`` (multipart: ``file`` = .ndjson/.csv, ``system``, optional
      ``national_id_system`` and ``encoding``: the file's character set when not UTF-8, e.g. ``cp1252``,
      checked on upload) → 202 with the job's progress; the file is decided by ``mediator.bulk`` in this
      process, in the background.
    * ``POST /admin/jobs/rematch/dry-run`` ``{rules: {…}}`` or ``{rules_yaml: "…"}``, optional ``systems``
      (only the source records of these identifier systems) → 202; the job's ``result`` is the dry-run summary
      (links that would change, merges, splits, examples). Writes nothing.
    * ``POST /admin/jobs/rematch/apply`` (same body) → 202; the new rules become the live rules and the
      records are relinked (``mediator.rematch``); 409 while another apply runs — on any replica: the apply
      holds the lease :data:`APPLY_LEASE` of the key locks (a PostgreSQL advisory lock with
      ``CR_LOCKS=postgres``) for as long as it runs — or while the OpenHIM console sets its own rules text (it
      would keep winning on every replica). An apply resumed at start-up waits for the lease.
    * ``POST /admin/jobs/rules/reset``: forget the rules a re-match applied (``Basic/cr-rules-applied`` in
      HAPI, :mod:`mediator.applied_rules`) and use the ``CR_RULES`` file's again (409 while an apply runs); a
      form post (from the jobs page) is redirected back to the page.
    * ``GET /admin/jobs``, ``GET /admin/jobs/{id}``: progress JSON — bulk ``rows_done``, ``rows_total``,
      ``counts`` (no_match / match / potential / error); apply ``phase``, ``relink_done`` / ``relink_total``,
      ``changed``, ``summary``. The list also says which rules are in effect (``rules_in_effect``).
    * ``GET /admin/jobs/{id}/report.csv``: a bulk job's decisions (row, source_id, outcome, golden_id, cruid,
      score, rule, error).
    * ``POST /admin/jobs/{id}/cancel`` → 202: the job is cancelled (never resumed). A bulk job stops after the
      window it is deciding, on whichever replica runs it: what it wrote is whole and in its report. 409 for a
      re-match apply (its rules are live already) and for a finished or cancelled job.
    * ``GET /admin/jobs/page``: HTML list of the jobs with their progress.
    """
    r = app.router
    r.add_post("/jobs/bulk", upload_bulk)
    r.add_post("/jobs/rematch/dry-run", rematch_dry_run)
    r.add_post("/jobs/rematch/apply", rematch_apply)
    r.add_post("/jobs/rules/reset", reset_rules)
    r.add_get("/jobs", list_jobs)
    r.add_get("/jobs/page", jobs_page)
    r.add_get("/jobs/{job}", job_progress)
    r.add_get("/jobs/{job}/report.csv", job_report)
    r.add_post("/jobs/{job}/cancel", cancel_job)
