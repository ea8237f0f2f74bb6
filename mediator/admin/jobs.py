"""The admin's background jobs (bulk loads, re-match dry runs and applies) as asyncio tasks of the mediator.

:class:`Jobs` keeps each job in a file of ``CR_JOBS_DIR`` (``<id>.job.json`` plus the engine's own state),
runs it under a lease of the key locks (one replica at a time), resumes unfinished jobs at start-up, takes
over jobs whose replica is gone, and lets a job wait while the FHIR store is down. :func:`setup` owns the
jobs in the app's ``cleanup_ctx``. Their HTTP handlers and page are in :mod:`mediator.admin.job_handlers`.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

import matching

from .. import bulk, rematch
from ..context import CONFIG, METRICS, SETTINGS, STORE
from ..errors import Conflict, UpstreamError
from ..files import write_json
from ..locks import Lease

log = logging.getLogger(__name__)

UPSTREAM = UpstreamError  # the FHIR store or the lock database is down or slow

APPLY_LEASE = "rematch-apply"  # one re-match apply (or rules reset) at a time in the whole deployment
JOB_LEASE = "job:"  # + job id: a job runs on one replica at a time (replicas may share CR_JOBS_DIR)
LEASE_RETRY_S = 2.0  # a resumed apply asks for the lease again this often while another replica holds it
UPSTREAM_RETRY_S = (5.0, 60.0)  # a job that lost the FHIR store waits this long, doubling up to the second
ENDED = ("finished", "cancelled")  # statuses of jobs that never run again


@dataclass
class JobInfo:
    id: str
    kind: str  # bulk | rematch-dry-run | rematch-apply
    created: float
    params: dict[str, Any] = field(default_factory=dict)
    result: dict[str, Any] = field(default_factory=dict)  # dry run: the summary
    error: str = ""
    status: str = "running"  # running | finished | failed | cancelled


WAITING = "Waiting for the FHIR store"  # a running job's error while it waits (jobs page, API, metrics)


def waiting_for_store(info: JobInfo) -> bool:
    return info.status == "running" and info.error.startswith(WAITING)


def cancellable(info: JobInfo) -> bool:
    """Bulk jobs and dry runs that may still run; an apply's rules are live from its start."""
    return info.kind != "rematch-apply" and info.status not in ENDED


class JobCancelled(Exception):
    """An admin cancelled the job (its file says so): it stops at its next saved position."""


Wait = Callable[[float], Awaitable[None]]  # waits that many seconds (asyncio.sleep; tests pass their own)


class Jobs:
    """The app's jobs: their files, their tasks, resumption at start-up.

    Replicas may share the jobs directory (one volume): a job runs under the lease ``job:<id>`` of the key
    locks (a PostgreSQL advisory lock with ``CR_LOCKS=postgres``), so a replica starting while another runs
    the job leaves it to that one, and every replica lists the directory's jobs with the progress their
    files show (:meth:`refresh`), whichever replica runs them. With shared key locks each replica also looks
    every ``CR_JOBS_ADOPT_S`` for jobs left running whose lease nobody holds (their replica is gone: its
    session ended) and takes them over (:meth:`adopt`); a job is always re-read from its file under its
    lease. A re-match apply also holds :data:`APPLY_LEASE` for as long as it runs (one apply, or rules
    reset, at a time in the deployment); one resumed at start-up waits for it. While the FHIR store or the
    lock database cannot be reached, a job waits (still running, its ``error`` saying so) and goes on from
    its saved position, backing off from 5 s to 60 s through ``retry_wait``; it keeps its lease meanwhile,
    takes it again if the lock connection was lost, and stops if another replica took the job over
    meanwhile (:meth:`_run_owned`).
    """

    def __init__(self, app: web.Application, job_dir: Path, retry_wait: Wait = asyncio.sleep) -> None:
        self.app, self.dir, self.retry_wait = app, job_dir, retry_wait
        self.dir.mkdir(parents=True, exist_ok=True)
        self.infos: dict[str, JobInfo] = {}
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self.bulk_jobs: dict[str, bulk.BulkJob] = {}
        self.rematch_jobs: dict[str, rematch.RematchJob] = {}
        self.leases: dict[str, Lease] = {}  # job id -> the lease it runs under (re-match applies)
        self.adopting: asyncio.Task[None] | None = None  # adopt_every, with shared key locks

    def _info_path(self, job_id: str) -> Path:
        return self.dir / f"{job_id}.job.json"

    def save(self, info: JobInfo) -> None:
        write_json(self._info_path(info.id), asdict(info))

    def resume_all(self) -> None:
        """At start-up: run again every job that has not finished (a failed one is tried again)."""
        for path in sorted(self.dir.glob("*.job.json")):
            info = JobInfo(**json.loads(path.read_text()))
            self.infos[info.id] = info
            if info.status not in ENDED:
                self._spawn(info.id, retry_failed=True)

    def adopt(self) -> list[asyncio.Task[None]]:
        """Run the jobs whose files say running but which no replica runs: the one that ran them is gone,
        and with it its session and the job's lease (shared key locks). A job another replica still runs
        keeps its lease and is left to it. Returns the tasks started (each ends at once if that lease is
        held)."""
        self.refresh()
        return [
            self._spawn(job_id, adopted=True)
            for job_id, info in sorted(self.infos.items())
            if info.status == "running" and job_id not in self.tasks
        ]

    async def adopt_every(self, interval_s: float) -> None:
        while True:
            await asyncio.sleep(interval_s)  # a period, not synchronisation: jobs are looked at again
            self.adopt()

    def states(self) -> list[tuple[str, str, bool]]:
        """(kind, status, waiting for the FHIR store) of every job in the directory, for the metrics."""
        self.refresh()
        return [(i.kind, i.status, waiting_for_store(i)) for i in self.infos.values()]

    def refresh(self) -> None:
        """Read again the jobs this process does not run (another replica sharing the directory may have
        started, advanced or finished them): their files say how far they are."""
        for path in sorted(self.dir.glob("*.job.json")):
            job_id = path.name.removesuffix(".job.json")
            if job_id in self.tasks:
                continue  # run here: what this process holds is the latest
            try:
                self.infos[job_id] = JobInfo(**json.loads(path.read_text()))
            except (OSError, ValueError, TypeError):
                log.warning("job file unreadable", extra={"job": job_id})
                continue
            self.bulk_jobs.pop(job_id, None)  # their engines' state is read again from their files
            self.rematch_jobs.pop(job_id, None)

    def start(self, info: JobInfo, lease: Lease | None = None) -> None:
        """Run a new job in the background; a re-match apply runs under ``lease`` (waits for it if None)."""
        if lease is not None:
            self.leases[info.id] = lease
        self.infos[info.id] = info
        self.save(info)
        self._spawn(info.id)

    def _spawn(self, job_id: str, retry_failed: bool = False, adopted: bool = False) -> asyncio.Task[None]:
        task = asyncio.create_task(self._run(job_id, retry_failed, adopted), name=f"job-{job_id}")
        self.tasks[job_id] = task
        task.add_done_callback(lambda _t: self.tasks.pop(job_id, None))
        return task

    async def _lease(self, info: JobInfo) -> None:
        """Hold the apply lease before a resumed apply goes on (another replica may be applying)."""
        while info.id not in self.leases:
            lease = await self.app[STORE].registry.locks.try_lease(APPLY_LEASE)
            if lease is not None:
                self.leases[info.id] = lease
                return
            log.info("re-match apply waits for another one to end", extra={"job": info.id})
            await asyncio.sleep(LEASE_RETRY_S)  # polling a lease held elsewhere, not synchronising a test

    async def _run(self, job_id: str, retry_failed: bool, adopted: bool) -> None:
        owned = await self.app[STORE].registry.locks.try_lease(JOB_LEASE + job_id)
        held: list[Lease | None] = [owned]  # the job's lease as it runs (taken again if its connection drops)
        try:
            if owned is None:  # a replica sharing this jobs directory runs it
                log.debug("job runs on another replica", extra={"job": job_id})
                return
            if adopted:  # the gone replica's last transaction may still land in HAPI: records it creates
                # meanwhile make this replica's writes of them fail and be decided again (If-Match W/"0")
                log.info("taking over a job left by a replica that is gone", extra={"job": job_id})
            # under the lease, the file is what the job's last runner left: it may have ended meanwhile
            try:
                info = JobInfo(**json.loads(self._info_path(job_id).read_text()))
            except (OSError, ValueError, TypeError):
                log.warning("job file unreadable", extra={"job": job_id})
                return
            self.infos[job_id] = info
            if info.status in ENDED or (info.status == "failed" and not retry_failed):
                return
            info.status, info.error = "running", ""
            self.save(info)
            await self._run_owned(info, held)
        finally:  # the job's own lease, and the apply lease it ran (or was started) under
            for lease in (self.leases.pop(job_id, None), held[0]):
                if lease is not None:
                    await asyncio.shield(lease.release())

    async def _run_owned(self, info: JobInfo, held: list[Lease | None]) -> None:
        """Run the job to its end under the job lease ``held[0]``. While the FHIR store (or the lock
        database) cannot be reached, the job waits and goes on from its saved position, still running, its
        ``error`` saying why it waits; ``held[0]`` becomes the lease taken again after a lost lock
        connection, or None when another replica took the job over meanwhile (this one stops)."""
        delay = UPSTREAM_RETRY_S[0]
        while True:
            self.bulk_jobs.pop(info.id, None)  # engines read their state again from their files
            self.rematch_jobs.pop(info.id, None)
            try:
                await self._run_once(info)
                info.status, info.error = "finished", ""
            except asyncio.CancelledError:
                raise  # shutting down (or a cancelled dry run): resumed at the next start unless cancelled
            except JobCancelled:
                log.info("job cancelled", extra={"job": info.id, "kind": info.kind})
                self._took_cancel(info)
                return
            except UPSTREAM as exc:
                log.warning(
                    "job waits for the FHIR store",
                    extra={"job": info.id, "kind": info.kind, "error": type(exc).__name__, "retry_s": delay},
                )
                info.error = f"{WAITING} ({type(exc).__name__}: {exc}); next try in {delay:.0f} s."
                self.save(info)
                next_delay = await self._wait_for_upstream(info, held, delay)
                if next_delay is None:
                    return
                delay = next_delay
                continue
            except Exception as exc:
                log.exception("job failed", extra={"job": info.id, "kind": info.kind})
                info.status, info.error = "failed", f"{type(exc).__name__}: {exc}"
            if not self._took_cancel(info):  # a cancel meanwhile (here or on another replica) keeps its word
                self.save(info)
            return

    async def _wait_for_upstream(self, info: JobInfo, held: list[Lease | None], delay: float) -> float | None:
        """Wait ``delay``, then keep the job lease (``held[0]``, taken again if its connection was lost),
        waiting longer while the lock database is down too. The next delay, or None when the job must stop:
        another replica took it over, or an admin cancelled it."""
        while True:
            await self.retry_wait(delay)  # backing off from a FHIR store that is down, not synchronisation
            delay = min(delay * 2, UPSTREAM_RETRY_S[1])
            try:
                held[0] = await self._still_leased(info, held[0])
            except UPSTREAM:
                continue  # the lock database is still down: wait again
            return None if held[0] is None or self._took_cancel(info) else delay

    def _cancelled_on_file(self, job_id: str) -> dict[str, Any] | None:
        """The job's file if it says an admin cancelled the job (here or on a replica sharing the jobs)."""
        try:
            on_file = json.loads(self._info_path(job_id).read_text())
        except (OSError, ValueError):
            return None
        return on_file if isinstance(on_file, dict) and on_file.get("status") == "cancelled" else None

    def _took_cancel(self, info: JobInfo) -> bool:
        """True, with ``info`` as its file says, when the job was cancelled."""
        on_file = self._cancelled_on_file(info.id)
        if on_file is not None:
            info.status, info.error = "cancelled", str(on_file.get("error", ""))
        return on_file is not None

    def _stop_if_cancelled(self, job_id: str) -> None:
        if self._cancelled_on_file(job_id) is not None:
            raise JobCancelled(job_id)

    def cancel(self, info: JobInfo, admin: str) -> None:
        """Mark the job cancelled in its file. A bulk job stops after the window it is deciding (its rows are
        written and reported whole), on whichever replica runs it; a dry run here stops at once; a job
        waiting for the FHIR store stops after its wait. Re-match applies cannot be cancelled."""
        if not cancellable(info):
            raise Conflict(
                "A re-match apply cannot be stopped halfway: its rules are live already. Apply the previous "
                "rules to go back."
                if info.kind == "rematch-apply"
                else f"The job is {info.status} already."
            )
        info.status, info.error = "cancelled", f"Cancelled by {admin}."
        self.save(info)
        task = self.tasks.get(info.id)
        if task is not None and info.kind == "rematch-dry-run":
            task.cancel()  # writes nothing: nothing to finish

    async def _run_once(self, info: JobInfo) -> None:
        if info.kind == "rematch-apply":
            await self._lease(info)
        self._on_store_in_force(info)
        if info.kind == "bulk":
            await self._bulk(info)
        elif info.kind == "rematch-dry-run":
            cfg = self.app[CONFIG].current.with_changes(rules=matching.load_rules(info.params["rules"]))
            the_plan = await rematch.dry_run(self.app[STORE].hapi, cfg, info.params.get("systems", []))
            info.result = the_plan.summary()
        else:
            job = self._rematch(info)
            state = await job.run()
            if state.phase != "finished":
                raise job.failure or RuntimeError(state.error)

    async def _still_leased(self, info: JobInfo, owned: Lease | None) -> Lease | None:
        """After a wait: the job's lease, taken again if the lock connection was lost meanwhile (None if
        another replica took it: that one runs the job now). A lost apply lease is given up here and taken
        again before the apply goes on."""
        apply = self.leases.get(info.id)
        if apply is not None and not await apply.held():
            await self.leases.pop(info.id).release()
        if owned is not None:
            if await owned.held():
                return owned
            await owned.release()
        again = await self.app[STORE].registry.locks.try_lease(JOB_LEASE + info.id)
        if again is None:
            log.info("job taken over by another replica while it waited", extra={"job": info.id})
        return again

    def _on_store_in_force(self, info: JobInfo) -> None:
        """Each run of a job works on the FHIR store in force when it starts: a run in flight when the
        OpenHIM console changes the store ends on its own store (as requests in flight do), the next run
        (after a wait for the store, or a restart) takes the new one."""
        store = self.app[STORE]
        if info.kind == "bulk":
            self.bulk_job(info).submitter = bulk.InProcess(store.registry, info.params["system"])
        elif info.kind == "rematch-apply":
            job = self._rematch(info)
            job.hapi, job.registry = store.hapi, store.registry

    def bulk_job(self, info: JobInfo) -> bulk.BulkJob:
        if info.id not in self.bulk_jobs:
            p = info.params
            self.bulk_jobs[info.id] = bulk.BulkJob(
                Path(p["file"]),
                bulk.InProcess(self.app[STORE].registry, p["system"]),
                system=p["system"],
                job_dir=self.dir / "bulk",
                national_id_system=p.get("national_id_system"),
                encoding=p.get("encoding", "utf-8"),
                progress=lambda _state: self._stop_if_cancelled(info.id),
            )
        return self.bulk_jobs[info.id]

    async def _bulk(self, info: JobInfo) -> None:
        await self.bulk_job(info).run()

    def _rematch(self, info: JobInfo) -> rematch.RematchJob:
        if info.id not in self.rematch_jobs:
            path = self.dir / f"{info.id}.rematch.json"
            hapi, config, registry = self.app[STORE].hapi, self.app[CONFIG], self.app[STORE].registry
            if path.exists():
                job = rematch.RematchJob.load(path, hapi=hapi, config=config, registry=registry)
            else:
                rules = matching.load_rules(info.params["rules"])
                state = rematch.new_state(
                    info.id, rules, info.params.get("systems", []), info.params.get("applied_by", "")
                )
                job = rematch.RematchJob(state, job_dir=self.dir, hapi=hapi, config=config, registry=registry)
            self.rematch_jobs[info.id] = job
        return self.rematch_jobs[info.id]

    def progress(self, info: JobInfo) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": info.id,
            "kind": info.kind,
            "status": info.status,
            "created": info.created,
            "error": info.error,
        }
        if info.kind == "bulk":
            state = self.bulk_job(info).state
            out.update(
                file=info.params.get("filename"),
                system=info.params.get("system"),
                rows_done=sum(state.counts.values()),
                rows_total=info.params.get("rows_total"),
                counts=state.counts,
                seconds=round(state.seconds, 1),
            )
        elif info.kind == "rematch-dry-run":
            out["result"] = info.result
        else:
            out.update(self._rematch(info).state.progress())
            out["status"] = info.status  # the job's, not the engine's phase
        return out

    async def stop(self) -> None:
        tasks = list(self.tasks.values()) + ([self.adopting] if self.adopting is not None else [])
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


JOBS = web.AppKey("jobs", Jobs)


def setup(app: web.Application, jobs_dir: Path, retry_wait: Wait = asyncio.sleep) -> None:
    """Own the jobs kept in ``jobs_dir`` (``CR_JOBS_DIR``) in the mediator app's ``cleanup_ctx`` (after the
    HAPI session: jobs need the registry). ``retry_wait``: how a job waits before trying a FHIR store that
    was down again."""

    async def jobs_ctx(app: web.Application) -> AsyncIterator[None]:
        jobs = Jobs(app, jobs_dir, retry_wait)
        app[JOBS] = jobs
        app[METRICS].watch_jobs(jobs.states)
        jobs.resume_all()
        interval = app[SETTINGS].jobs_adopt_s
        if app[STORE].registry.locks.shared and interval > 0:  # with in-process locks, another process's jobs
            jobs.adopting = asyncio.create_task(jobs.adopt_every(interval), name="jobs-adopt")  # look unrun
        yield
        await jobs.stop()

    app.cleanup_ctx.append(jobs_ctx)
