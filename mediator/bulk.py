"""Bulk load of a facility's patient list (FHIR NDJSON or CSV) through the registry's own workflow.

    python -m mediator.bulk load FILE --system URI [--registry URL | (in-process: CR_* settings)]
                                      [--batch 50] [--concurrency 2] [--window 2000]
                                      [--job-dir var/bulk] [--encoding cp1252]

Rows are read in windows of ``--window`` rows (default 40 batches); within a window, rows sharing a
frequent blocking key are grouped into the same batch (a large block is then searched once, not once per
batch), rows of one record keep their file order in separate batches. Each batch of at most ``--batch``
submissions is one all-or-nothing HAPI transaction (``Registry.submit_all``, or a transaction Bundle posted
to a running registry's ``/fhir``, which keeps the file's order). A batch that fails is retried one row at a
time, so a bad row is reported with its row number (its line in the file; a CSV's header is line 1) and
the rest go on; nothing half-written remains of a failed row.

Resumable: the job's state (rows done, counts) is a JSON file in ``--job-dir`` written after every window;
running the same command again goes on after the last row known done. Rows after it that were written
before a stop are submitted again, which updates the same source records (their ids derive from the
identifiers), so a resume never duplicates a record. The decisions report is a CSV beside the state, in row
order: ``row,source_id,outcome,golden_id,cruid,score,rule,error,seq`` (outcome: match / potential /
no_match, the registry's own words; in ``--registry`` mode the FHIR API gives no scores: outcome
``created``/``updated``; ``seq``: the order in which the rows were decided).

The file is read as UTF-8 unless ``--encoding`` names its character set (spreadsheets often save CSV files as
cp1252 or latin-1); a byte the encoding cannot read stops the job with a message (exit 2).

CSV columns (header row; names are case-insensitive; empty cells are left out; unknown columns are an error):

    id           required  the record's number at the facility -> identifier {system: --system, value: id}
    family, given          name (given: space-separated names)
    gender                 male | female | other | unknown (M / F accepted)
    birth_date             YYYY, YYYY-MM or YYYY-MM-DD
    phone, email           telecom
    national_id            identifier of --national-id-system (default: the first CR_SHARED_SYSTEMS)
    address_line, city, district, country      address
"""

from __future__ import annotations

import argparse
import asyncio
import codecs
import csv
import hashlib
import json
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from .audit import Actor
from .errors import RegistryError, UpstreamError, UpstreamUnavailable
from .files import write_json
from .registry import Prepared, Registry, Submission, SubmissionResult
from .validation import validate_patient

CSV_COLUMNS = (
    *("id", "family", "given", "gender", "birth_date", "phone", "email", "national_id"),
    *("address_line", "city", "district", "country"),
)
REPORT_FIELDS = ["row", "source_id", "outcome", "golden_id", "cruid", "score", "rule", "error", "seq"]
WINDOW_BATCHES = 40  # rows are grouped by blocking key within windows of this many batches
_UPSTREAM = UpstreamError
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


@dataclass
class Decision:
    row: int
    source_id: str = ""
    outcome: str = ""
    golden_id: str = ""
    cruid: str = ""
    score: float | None = None
    rule: str = ""
    error: str = ""
    seq: int = 0  # order of decision in the job (rows are regrouped by blocking key within a window)


# -- reading -----------------------------------------------------------------------------------------


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


# -- submitting --------------------------------------------------------------------------------------


class Submitter(Protocol):
    async def submit(self, rows: Sequence[Row]) -> list[Decision]: ...

    def locate(self, patient: dict[str, Any]) -> tuple[str | None, list[str]]:
        """The record the row writes (None: unknown) and the blocking keys its decision searches and locks
        (for grouping and spreading batches; may be empty)."""
        ...


def _key(patient: dict[str, Any], system: str | None) -> tuple[str, str] | None:
    if system is None:
        return None
    for ident in patient.get("identifier", []):
        if ident.get("system") == system and ident.get("value"):
            return system, str(ident["value"])
    raise RegistryError(f"The row has no identifier of the file's system {system}.")


class InProcess:
    """Decide through a :class:`Registry` in this process (``Registry.submit_all``: one HAPI transaction)."""

    def __init__(self, registry: Registry, system: str | None) -> None:
        self.registry = registry
        self.system = system
        self.actor = Actor(client_id=None, address="bulk-load")
        self._located: dict[int, Prepared] = {}  # id(patient) -> prepared by locate, until submitted

    async def submit(self, rows: Sequence[Row]) -> list[Decision]:
        subs: list[Submission | Prepared] = []
        for r in rows:
            patient = r.patient or {}
            known = self._located.pop(id(patient), None)
            if known is not None and known.submission.patient is patient:
                subs.append(known)  # prepared once, by locate
            else:
                subs.append(
                    Submission(patient=patient, actor=self.actor, conditional=_key(patient, self.system))
                )
        results = await self.registry.submit_all(subs)
        return [_decision(r.number, res) for r, res in zip(rows, results, strict=True)]

    def locate(self, patient: dict[str, Any]) -> tuple[str | None, list[str]]:
        try:
            sub = Submission(patient=patient, actor=self.actor, conditional=_key(patient, self.system))
            prepared = self.registry.prepare(sub, self.registry.config.current)
        except RegistryError:
            return None, []  # refused when submitted, with its row number
        self._located[id(patient)] = prepared
        return prepared.source_id, prepared.search_keys


def _decision(row: int, res: SubmissionResult) -> Decision:
    return Decision(row, res.source_id, res.outcome, res.golden_id, res.cruid, res.score, res.rule)


class OverHttp:
    """Decide through a running registry: a transaction Bundle per batch, posted to ``{url}/fhir``."""

    def __init__(self, session: Any, url: str, system: str | None) -> None:
        self.session, self.url, self.system = session, url.rstrip("/"), system

    def locate(self, patient: dict[str, Any]) -> tuple[str | None, list[str]]:
        """No rules here: rows keep the file's order; only the record key (``--system``) is known."""
        try:
            key = _key(patient, self.system)
        except RegistryError:
            return None, []
        return (f"{key[0]}|{key[1]}" if key else None), []

    async def submit(self, rows: Sequence[Row]) -> list[Decision]:
        entries = []
        for r in rows:
            key = _key(r.patient or {}, self.system)
            url = f"Patient?identifier={key[0]}|{key[1]}" if key else "Patient"
            entries.append(
                {"resource": r.patient, "request": {"method": "PUT" if key else "POST", "url": url}}
            )
        body = {"resourceType": "Bundle", "type": "transaction", "entry": entries}
        async with self.session.post(f"{self.url}/fhir", json=body) as resp:
            answer = await resp.json(content_type=None)
            if resp.status != 200:
                issues = answer.get("issue", [{}]) if isinstance(answer, dict) else [{}]
                message = str(issues[0].get("diagnostics", f"HTTP {resp.status}"))
                raise (UpstreamUnavailable if resp.status >= 500 else RegistryError)(message)
        out = []
        for r, entry in zip(rows, answer.get("entry", []), strict=True):
            patient = entry.get("resource", {})
            golden = next((lk["other"]["reference"].split("/")[1] for lk in patient.get("link", [])), "")
            cruid = patient.get("identifier", [{}])[-1].get("value", "")
            outcome = "created" if entry["response"]["status"].startswith("201") else "updated"
            out.append(Decision(r.number, patient.get("id", ""), outcome, golden, cruid))
        return out


# -- the job -----------------------------------------------------------------------------------------


@dataclass
class JobState:
    file: str
    system: str | None
    rows_done: int = 0  # every row up to this line number is decided (or reported as an error)
    counts: dict[str, int] = field(default_factory=dict)
    finished: bool = False
    seconds: float = 0.0


class BulkJob:
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
            for window in _batches(todo, self.window):
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
        batches = plan_batches(window, self.batch_size, located, apart=self.concurrency - 1)
        done = [asyncio.Event() for _ in batches]
        after = _earlier_rows_of_records(batches, located)
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


def plan_batches(
    rows: Sequence[Row], size: int, located: dict[int, tuple[str | None, list[str]]], apart: int = 1
) -> list[list[Row]]:
    """Group a window's rows into batches of at most ``size``: rows sharing a frequent blocking key go
    together, so a large block is searched once for all of them instead of once per batch (at 100k stored
    records this made bulk loads 1.7x faster); rows of one record keep their file order and never share a
    batch (a transaction writes each record once): a record's second row goes with the other second rows,
    after every first row, and so on (next to its first row, each repeated record cut a batch short and
    made the next one wait for it: 2,000 rows with 69 repeats became 81 batches, 66 waiting on the one
    before). ``located``: row number -> (record key, blocking keys). Batches are then ordered so that
    none shares a lock key with the ``apart`` batches before it where possible (:func:`_spread`)."""
    frequency = Counter(k for _, keys in located.values() for k in keys)
    rows_of_record: Counter[str] = Counter()
    layer: dict[int, int] = {}
    for row in rows:  # file order
        record = located.get(row.number, (None, []))[0]
        if record is not None:
            layer[row.number] = rows_of_record[record]
            rows_of_record[record] += 1

    def order(row: Row) -> tuple[int, int, str]:
        keys = located.get(row.number, (None, []))[1]
        group = max(((frequency[k], k) for k in keys), default=(0, ""))
        return layer.get(row.number, 0), -group[0], group[1]

    batches: list[list[Row]] = []
    current: list[Row] = []
    records_in_current: set[str] = set()
    for row in sorted(rows, key=order):  # stable: file order within a group
        record = located.get(row.number, (None, []))[0]
        if len(current) >= size or (record is not None and record in records_in_current):
            batches.append(current)
            current, records_in_current = [], set()
        current.append(row)
        if record is not None:
            records_in_current.add(record)
    if current:
        batches.append(current)
    return _spread(batches, located, apart)


def _spread(
    batches: list[list[Row]], located: dict[int, tuple[str | None, list[str]]], apart: int
) -> list[list[Row]]:
    """Reorder batches so that each shares no record or blocking key (what the registry locks) with the
    ``apart`` batches before it, when some later batch allows it: batches in flight together then do not
    wait for each other's locks (2,000 rows at 100k stored: 25 of 39 neighbouring batches shared a key).
    A batch never moves before the batch holding an earlier row of one of its records."""

    def lock_keys(batch: list[Row]) -> set[str]:
        out: set[str] = set()
        for row in batch:
            record, keys = located.get(row.number, (None, []))
            out.update(keys)
            if record is not None:
                out.add(f"record:{record}")
        return out

    keys = [lock_keys(b) for b in batches]
    needs = _earlier_rows_of_records(batches, located)
    remaining = list(range(len(batches)))
    placed: list[int] = []
    while remaining:
        ready = [i for i in remaining if needs[i] <= set(placed)]
        recent = placed[-apart:] if apart > 0 else []
        pick = next((i for i in ready if not any(keys[i] & keys[j] for j in recent)), ready[0])
        remaining.remove(pick)
        placed.append(pick)
    return [batches[i] for i in placed]


def _earlier_rows_of_records(
    batches: list[list[Row]], located: dict[int, tuple[str | None, list[str]]]
) -> list[set[int]]:
    """For each batch, the earlier batches holding a row of one of its records: they must be written
    first (rows of one record in file order), both when batches are reordered and when they run."""
    batches_of: dict[str, list[int]] = {}
    out: list[set[int]] = []
    for index, batch in enumerate(batches):
        records = {r for row in batch if (r := located.get(row.number, (None, []))[0]) is not None}
        out.append({i for r in records for i in batches_of.get(r, [])})
        for r in records:
            batches_of.setdefault(r, []).append(index)
    return out


def _batches(rows: Iterator[Row], size: int) -> Iterator[list[Row]]:
    batch: list[Row] = []
    for row in rows:
        batch.append(row)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


# -- CLI ---------------------------------------------------------------------------------------------


def _print_progress(state: JobState) -> None:
    done = sum(state.counts.values())
    rate = done / state.seconds if state.seconds else 0.0
    print(f"bulk: line {state.rows_done}  {json.dumps(state.counts)}  {rate:.1f} rows/s", file=sys.stderr)


async def load(args: argparse.Namespace) -> JobState:
    import aiohttp

    from .settings import Settings

    settings = Settings.from_env()
    national = args.national_id_system or (settings.shared_identifier_systems or (None,))[0]
    options = dict(
        system=args.system,
        job_dir=Path(args.job_dir),
        national_id_system=national,
        encoding=args.encoding,
        batch_size=args.batch,
        concurrency=args.concurrency,
        window=args.window,
        progress=None if args.quiet else _print_progress,
    )
    timeout = aiohttp.ClientTimeout(total=max(settings.hapi_timeout_s * 4, 120))
    async with aiohttp.ClientSession(timeout=timeout) as session:
        if args.registry:
            return await BulkJob(
                Path(args.file), OverHttp(session, args.registry, args.system), **options
            ).run()
        async with registry_in_process(settings) as registry:
            return await BulkJob(Path(args.file), InProcess(registry, args.system), **options).run()


@asynccontextmanager
async def registry_in_process(settings: Any) -> AsyncIterator[Registry]:
    """The registry of ``create_app(settings)`` with its resources (HAPI session, locks) open, no server."""
    from aiohttp import web

    from .app import create_app
    from .context import REGISTRY

    app = create_app(settings)
    runner = web.AppRunner(app)
    await runner.setup()  # runs the cleanup_ctx start-up half
    try:
        yield app[REGISTRY]
    finally:
        await runner.cleanup()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mediator.bulk", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("load", help="load a .ndjson or .csv file (resumes an interrupted job of that file)")
    p.add_argument("file")
    p.add_argument("--system", help="the facility's identifier system (required for CSV)")
    p.add_argument("--national-id-system", help="identifier system of the CSV national_id column")
    p.add_argument(
        "--encoding", default="utf-8", help="the file's character set, e.g. cp1252 (default utf-8)"
    )
    p.add_argument("--registry", help="base URL of a running mediator; default: decide in this process")
    p.add_argument("--batch", type=int, default=50, help="submissions per HAPI transaction (default 50)")
    p.add_argument("--concurrency", type=int, default=2, help="batches in flight (default 2)")
    p.add_argument("--window", type=int, help="rows regrouped by blocking key at a time (default 40 batches)")
    p.add_argument("--job-dir", default="var/bulk", help="job state and report (default var/bulk)")
    p.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    try:
        state = asyncio.run(load(args))
    except (ValueError, LookupError) as exc:  # a UnicodeDecodeError is a ValueError
        print(f"bulk: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(asdict(state)))
    return 0 if not state.counts.get("error") else 1


if __name__ == "__main__":
    sys.exit(main())
