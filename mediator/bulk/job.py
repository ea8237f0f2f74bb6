"""A bulk load as a resumable job: a file's rows decided window by window through a submitter, its state
and its decisions report saved beside it (the CLI's and the admin upload's engine)."""

from __future__ import annotations

import asyncio
import csv
import hashlib
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..errors import RegistryError, UpstreamError
from ..files import write_json
from .plan import earlier_rows_of_records, plan_batches, windows
from .rows import Row, read_rows
from .submitters import Decision, Submitter

REPORT_FIELDS = ["row", "source_id", "outcome", "golden_id", "cruid", "score", "rule", "error", "seq"]
WINDOW_BATCHES = 40  # rows are grouped by blocking key within windows of this many batches
_UPSTREAM = UpstreamError


@dataclass
class JobState:
    file: str
    system: str | None
    rows_done: int = 0  # every row up to this line number is decided (or reported as an error)
    counts: dict[str, int] = field(default_factory=dict)
    finished: bool = False
    seconds: float = 0.0


class BulkJob:
    """A file's rows decided through ``submitter``, window by window, resumably.

    Rows are read in windows of ``window`` rows (``--window``; default 40 batches); within a window, rows
    sharing a frequent blocking key are grouped into the same batch (a large block is then searched once, not
    once per batch), rows of one record keep their file order in separate batches. Each batch of at most
    ``batch_size`` (``--batch``) submissions is one all-or-nothing HAPI transaction (``Registry.submit_all``,
    or a transaction Bundle posted to a running registry's ``/fhir``, which keeps the file's order). A batch
    that fails is retried one row at a time, so a bad row is reported with its row number (its line in the
    file; a CSV's header is line 1) and the rest go on; nothing half-written remains of a failed row.

    Resumable: the job's state (rows done, counts) is a JSON file in ``job_dir`` (``--job-dir``) written after
    every window; running the same command again goes on after the last row known done. Rows after it that
    were written before a stop are submitted again, which updates the same source records (their ids derive
    from the identifiers), so a resume never duplicates a record. The decisions report is a CSV beside the
    state, in row order: ``row,source_id,outcome,golden_id,cruid,score,rule,error,seq`` (outcome: match /
    potential / no_match, the registry's own words; in ``--registry`` mode the FHIR API gives no scores:
    outcome ``created``/``updated``; ``seq``: the order in which the rows were decided).
    """

    def __init__(
        self,
        path: Path,
        submitter: Submitter,
        *,
        system: str | None,
        job_dir: Path,
        national_id_system: str | None = None,
        encoding: str = "utf-8",
        batch_size: int = 50,
        concurrency: int = 2,
        window: int | None = None,
        progress: Any = None,
    ) -> None:
        self.path, self.submitter, self.system = path, submitter, system
        self.national_id_system, self.encoding = national_id_system, encoding
        self.batch_size, self.concurrency = max(1, batch_size), max(1, concurrency)
        self.window = max(self.batch_size, window or WINDOW_BATCHES * self.batch_size)
        ident = hashlib.sha256(f"{path.resolve()}|{system}".encode()).hexdigest()[:12]
        job_dir.mkdir(parents=True, exist_ok=True)
        self.state_path = job_dir / f"{path.stem}-{ident}.state.json"
        self.report_path = job_dir / f"{path.stem}-{ident}.report.csv"
        self.progress = progress
        self.state = self._load()

    def _load(self) -> JobState:
        if self.state_path.exists():
            return JobState(**json.loads(self.state_path.read_text()))
        return JobState(file=str(self.path), system=self.system)

    def _save(self) -> None:
        write_json(self.state_path, asdict(self.state))

    def _open_report(self) -> Any:
        """The report keeps the lines of rows known done; lines of rows after them are written again."""
        kept: list[dict[str, str]] = []
        if self.report_path.exists():
            with self.report_path.open(newline="") as f:
                kept = [r for r in csv.DictReader(f) if int(r["row"]) <= self.state.rows_done]
        f = self.report_path.open("w", newline="")
        writer = csv.DictWriter(f, REPORT_FIELDS)
        writer.writeheader()
        writer.writerows(kept)
        return f, writer

    async def run(self) -> JobState:
        """Windows of ``window`` rows, one after the other; in each, the rows are grouped into batches
        (:func:`plan_batches`) decided ``concurrency`` at a time; the window is saved when all are done."""
        if self.state.finished:
            return self.state
        started = time.perf_counter() - self.state.seconds
        rows = read_rows(self.path, self.system, self.national_id_system, self.encoding)
        report_file, writer = self._open_report()
        try:
            todo = (r for r in rows if r.number > self.state.rows_done)
            for window in windows(todo, self.window):
                decisions = await self._decide_window(window)
                for d in sorted(decisions, key=lambda d: d.row):
                    writer.writerow({**asdict(d), "score": "" if d.score is None else round(d.score, 4)})
                    key = "error" if d.error else d.outcome
                    self.state.counts[key] = self.state.counts.get(key, 0) + 1
                report_file.flush()
                self.state.rows_done = window[-1].number
                self.state.seconds = time.perf_counter() - started
                self._save()
                if self.progress:
                    self.progress(self.state)
            self.state.finished = True
            self.state.seconds = time.perf_counter() - started
            self._save()
        finally:
            report_file.close()
        return self.state

    async def _decide_window(self, window: list[Row]) -> list[Decision]:
        """Decide the window's batches in planned order, ``concurrency`` at a time. A batch holding a later
        row of a record waits for the batch with its earlier row (rows of one record are written in file
        order). A batch that fails as a whole (HAPI or the registry down) stops the job; it resumes at the
        window's start."""
        located = {r.number: self.submitter.locate(r.patient) for r in window if r.patient is not None}
        follows = {
            r.number: s for r in window if r.patient is not None and (s := self.submitter.follows(r.patient))
        }
        batches = plan_batches(window, self.batch_size, located, apart=self.concurrency - 1, follows=follows)
        done = [asyncio.Event() for _ in batches]
        after = earlier_rows_of_records(batches, located, follows)
        sem = asyncio.Semaphore(self.concurrency)
        sequence = iter(range(1, len(window) + 1))
        seq_base = sum(self.state.counts.values())

        async def decide(index: int) -> list[Decision]:
            # slots are taken in planned order (the tasks start in that order, the semaphore is FIFO), so
            # a batch waiting for an earlier one never blocks it, and one slot decides in exactly that order
            try:
                async with sem:
                    for earlier in after[index]:
                        await done[earlier].wait()
                    decisions = await self._decide(batches[index])
            finally:
                done[index].set()
            return decisions

        tasks = [asyncio.create_task(decide(i)) for i in range(len(batches))]
        try:
            results = await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
        out = []
        for batch_decisions in results:  # planned order: what single submissions in this order would see
            for d in batch_decisions:
                d.seq = seq_base + next(sequence)
                out.append(d)
        return out

    async def _decide(self, batch: list[Row]) -> list[Decision]:
        bad = {r.number: Decision(r.number, error=r.error or "") for r in batch if r.patient is None}
        good = [r for r in batch if r.patient is not None]
        decided: dict[int, Decision] = {}
        try:
            if good:
                decided = {d.row: d for d in await self.submitter.submit(good)}
        except _UPSTREAM:
            raise  # HAPI or the registry is down: stop; the job resumes from its last saved row
        except RegistryError:
            for r in good:  # one at a time: the bad row gets its error, the others their decision
                try:
                    decided[r.number] = (await self.submitter.submit([r]))[0]
                except _UPSTREAM:
                    raise
                except RegistryError as exc:
                    decided[r.number] = Decision(r.number, error=exc.diagnostics)
        merged = {**bad, **decided}
        return [merged[r.number] for r in batch]
