"""Bulk load through the registry workflow, against the real (H2) test HAPI."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import urllib.parse
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from mediator import bulk, records
from mediator.app import create_app, registry_in_process
from mediator.errors import RegistryError, UpstreamUnavailable
from tests.conftest import REPO, patient, unique_surname


def _report(job: bulk.BulkJob) -> list[dict[str, str]]:
    with job.report_path.open(newline="") as f:
        return list(csv.DictReader(f))


def _csv(path: Path, rows: list[dict[str, str]]) -> Path:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, ["id", "family", "given", "gender", "birth_date", "phone", "city"])
        writer.writeheader()
        writer.writerows(rows)
    return path


async def test_csv_rows_are_decided_and_a_bad_row_is_reported_with_its_line(
    settings, store, facility, tmp_path
):
    family = unique_surname()
    person = {"family": family, "given": "Amina", "gender": "F", "birth_date": "1987-04-12"}
    phone = patient(facility, "-", family=family)["telecom"][0]["value"]
    path = _csv(
        tmp_path / "clinic.csv",
        [
            {"id": "A1", **person, "phone": phone},
            {"id": "A2", **person, "phone": phone},  # the same person again: linked
            {"id": "A3", **person, "gender": "x"},  # line 4: bad gender
            {"id": "A4", **person, "birth_date": "12/04/1987"},  # line 5: bad date (FHIR validation)
            {"id": "A5", "family": unique_surname(), "given": "Okello", "gender": "male"},
            {"id": "A6", **person, "city": "Gulu\x01"},  # line 7: a control character
        ],
    )
    async with registry_in_process(settings) as registry:
        job = bulk.BulkJob(
            path, bulk.InProcess(registry, facility), system=facility, job_dir=tmp_path / "jobs", batch_size=2
        )
        state = await job.run()
    report = {int(r["row"]): r for r in _report(job)}
    assert sorted(report) == [2, 3, 4, 5, 6, 7]
    assert report[4]["error"] and "gender" in report[4]["error"]
    assert "Patient.address[0].city: U+0001" in report[7]["error"] and not report[7]["source_id"]
    assert report[5]["error"] and not report[5]["source_id"]
    assert report[3]["outcome"] == "match"
    assert report[2]["golden_id"] == report[3]["golden_id"]
    assert float(report[3]["score"]) > 0
    assert state.finished and state.rows_done == 7 and state.counts["error"] == 3
    sources = await store.sources_with(facility)
    assert sorted(i["value"] for s in sources for i in s["identifier"] if i["system"] == facility) == [
        "A1",
        "A2",
        "A5",
    ]
    golden = await store.read("Patient", report[2]["golden_id"])
    assert sorted(records.source_ids_of(golden)) == sorted([report[2]["source_id"], report[3]["source_id"]])


class Crash(Exception):
    pass


class CrashAfter:
    """A submitter that stops the job (like a killed process) after ``n`` batches."""

    def __init__(self, inner: bulk.Submitter, n: int) -> None:
        self.inner, self.n = inner, n

    async def submit(self, rows):
        if self.n == 0:
            raise Crash  # not a row error: the job stops where it is
        self.n -= 1
        return await self.inner.submit(rows)

    def locate(self, patient):
        return self.inner.locate(patient)

    def follows(self, patient):
        return self.inner.follows(patient)


async def test_an_interrupted_ndjson_job_resumes_without_duplicates(settings, store, facility, tmp_path):
    lines = [json.dumps(patient(facility, f"P{n}", family=unique_surname())) for n in range(9)]
    lines.insert(4, "{not json")  # line 5
    lines.insert(7, json.dumps(patient("urn:other", "X", family=unique_surname())))  # line 8: not this system
    path = tmp_path / "clinic.ndjson"
    path.write_text("\n".join(lines) + "\n")
    jobs = tmp_path / "jobs"
    async with registry_in_process(settings) as registry:
        first = bulk.BulkJob(
            path,
            CrashAfter(bulk.InProcess(registry, facility), 2),
            system=facility,
            job_dir=jobs,
            batch_size=3,
            concurrency=1,
            window=3,  # saved after every 3 rows
        )
        with pytest.raises(Crash):
            await first.run()
        assert first.state.rows_done == 6 and not first.state.finished
        second = bulk.BulkJob(
            path, bulk.InProcess(registry, facility), system=facility, job_dir=jobs, batch_size=3, window=3
        )
        assert second.state.rows_done == 6  # read back from the state file
        state = await second.run()
    assert state.finished and state.rows_done == 11
    report = _report(second)
    assert [int(r["row"]) for r in report] == list(range(1, 12))
    errors = {int(r["row"]): r["error"] for r in report if r["error"]}
    assert set(errors) == {5, 8}
    assert "urn:other" not in errors[8] and facility in errors[8]
    sources = await store.sources_with(facility)
    assert len(sources) == 9 and all(s["meta"]["versionId"] == "1" for s in sources)


async def _over_http(server: Any, path: Path, facility: str, job_dir: Path) -> tuple[bulk.BulkJob, Any]:
    """Load ``path`` through ``server``'s FHIR API (``OverHttp``): the job and its final state."""
    async with aiohttp.ClientSession() as session:
        job = bulk.BulkJob(
            path, bulk.OverHttp(session, str(server.make_url("")), facility), system=facility, job_dir=job_dir
        )
        return job, await job.run()


async def test_over_http_to_a_running_registry(aiohttp_server, settings, store, facility, tmp_path):
    server = await aiohttp_server(create_app(settings))
    family = unique_surname()
    lines = [json.dumps(patient(facility, f"H{n}", family=family, phone="+256700999888")) for n in range(3)]
    lines.append(json.dumps({"resourceType": "Observation"}))
    path = tmp_path / "c.ndjson"
    path.write_text("\n".join(lines))
    job, state = await _over_http(server, path, facility, tmp_path)
    report = _report(job)
    assert [r["outcome"] for r in report[:3]] == ["created"] * 3
    assert len({r["golden_id"] for r in report[:3]}) == 1
    assert report[3]["error"] and state.counts == {"created": 3, "error": 1}
    assert len(await store.sources_with(facility)) == 3


async def test_over_http_keys_identifiers_as_the_registry_does(
    aiohttp_server, settings, store, facility, tmp_path
):
    """Each row is a conditional update by its key identifier, URL-encoded (before, ``&`` ``+`` ``%`` ``#``
    cut or changed the identifier: the row was refused or keyed as another identifier); a second spelling
    of one identifier (full-width digits, spaces around it) is the same record, decided after the first
    (before, the planner took it for another record), so its demographics win."""
    server = await aiohttp_server(create_app(settings))
    values = ["A:1", "E&x=5", "F+6", "G%2C7", "H#8", "I 9", "J?k=1"]
    people = [patient(facility, v, family=unique_surname(), phone=None) for v in values]
    renamed = patient(facility, " A:\uff11 ", family=unique_surname(), phone=None)  # the first one again
    path = tmp_path / "c.ndjson"
    path.write_text("\n".join(json.dumps(p) for p in [*people, renamed]))
    async with aiohttp.ClientSession() as session:
        submitter = bulk.OverHttp(session, str(server.make_url("")), facility)
        assert submitter.locate(renamed)[0] == submitter.locate(people[0])[0]
        job = bulk.BulkJob(path, submitter, system=facility, job_dir=tmp_path, batch_size=50)
        state = await job.run()
    report = _report(job)
    assert [r["error"] for r in report] == [""] * 8, report
    assert [r["source_id"] for r in report] == [
        records.source_record_id(facility, v) for v in [*values, "A:1"]
    ]
    first = await store.read("Patient", records.source_record_id(facility, "A:1"))
    assert first["name"][0]["family"] == renamed["name"][0]["family"]
    assert state.counts == {"created": 7, "updated": 1}


class _Ordered:
    """A submitter that notes when each batch's decision starts and ends."""

    def __init__(self, inner: bulk.OverHttp) -> None:
        self.inner = inner
        self.events: list[tuple[str, int]] = []

    def locate(self, patient: dict[str, Any]) -> tuple[str | None, list[str]]:
        return self.inner.locate(patient)

    def follows(self, patient: dict[str, Any]) -> str | None:
        return self.inner.follows(patient)

    async def submit(self, rows: Sequence[bulk.Row]) -> list[bulk.Decision]:
        self.events += [("start", r.number) for r in rows]
        decisions = await self.inner.submit(rows)
        self.events += [("end", r.number) for r in rows]
        return decisions


async def test_over_http_decides_a_pos_merge_after_its_survivor(
    aiohttp_server, settings, store, facility, tmp_path
):
    """A row merging a record into one an earlier row submits waits for that row's batch (before, the two
    batches were decided side by side, and the merge could reach the registry before its survivor)."""
    server = await aiohttp_server(create_app(settings))
    family = unique_surname()
    survivor = patient(facility, "S1", family=family)
    merged = {
        **patient(facility, "M1", family=family, given="Halima"),
        "active": False,
        "link": [{"type": "replaced-by", "other": {"identifier": {"system": facility, "value": "S1"}}}],
    }
    path = tmp_path / "m.ndjson"
    path.write_text("\n".join(json.dumps(p) for p in [survivor, merged]))
    async with aiohttp.ClientSession() as session:
        submitter = _Ordered(bulk.OverHttp(session, str(server.make_url("")), facility))
        job = bulk.BulkJob(path, submitter, system=facility, job_dir=tmp_path, batch_size=1, concurrency=2)
        await job.run()
    assert submitter.events.index(("end", 1)) < submitter.events.index(("start", 2)), submitter.events
    report = _report(job)
    assert [r["error"] for r in report] == ["", ""], report
    stored = await store.read("Patient", records.source_record_id(facility, "M1"))
    assert records.pos_survivor(stored) == records.source_record_id(facility, "S1")
    assert report[0]["golden_id"] == report[1]["golden_id"]


async def test_over_http_rows_keep_identifiers_that_search_syntax_would_change(
    aiohttp_server, settings, store, facility, tmp_path
):
    r"""Each row's conditional update names its identifier in FHIR search syntax: unescaped, `A\,B` would be
    read as `A,B` (the row refused as not naming its own identifier, or keyed as another one)."""
    server = await aiohttp_server(create_app(settings))
    values = [r"A\,B", "A,B", "A|B", "A$B", "A\\B", r"A\\,B"]
    path = tmp_path / "specials.ndjson"
    path.write_text("\n".join(json.dumps(patient(facility, v, family=unique_surname())) for v in values))
    job, state = await _over_http(server, path, facility, tmp_path)
    report = _report(job)
    assert [r["error"] for r in report] == [""] * len(values)
    assert state.counts == {"created": len(values)}
    assert [r["source_id"] for r in report] == [records.source_record_id(facility, v) for v in values]


async def test_the_files_system_is_taken_in_normal_form(settings, store, facility, tmp_path):
    """`--system "urn:x "` (or any spelling of it) named no identifier of the rows (held in normal form):
    every row was refused."""
    path = _csv(tmp_path / "spaced.csv", [{"id": "S1", "family": unique_surname()}])
    async with registry_in_process(settings) as registry:
        spelled = f" {facility} "
        job = bulk.BulkJob(path, bulk.InProcess(registry, spelled), system=spelled, job_dir=tmp_path / "jobs")
        state = await job.run()
    assert state.counts == {"no_match": 1}, _report(job)
    [stored] = await store.sources_with(facility)
    assert stored["id"] == records.source_record_id(facility, "S1")


def test_cli_loads_a_csv_in_process(hapi_url, facility, tmp_path):
    path = _csv(tmp_path / "f.csv", [{"id": "C1", "family": unique_surname(), "given": "Ali", "gender": "m"}])
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "mediator.bulk",
            "load",
            str(path),
            "--system",
            facility,
            "--job-dir",
            str(tmp_path),
        ],
        cwd=REPO,
        env={"CR_HAPI_URL": hapi_url, "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    state = json.loads(run.stdout)
    assert state["counts"] == {"no_match": 1} and state["finished"]


def test_unknown_csv_columns_are_refused_together(tmp_path):
    path = tmp_path / "x.csv"
    path.write_text("id,surname,dob\n1,a,b\n")
    with pytest.raises(ValueError, match=r"surname.*dob"):
        list(bulk.read_rows(path, "urn:s", None))


def test_registry_error_is_the_row_error_type():
    assert issubclass(UpstreamUnavailable, RegistryError)


def test_ndjson_lines_too_deep_or_with_control_characters_are_row_errors(tmp_path):
    """Each such line is reported with its number; the lines around it are read (before, a line nested
    deeper than Python's recursion limit stopped the whole job)."""
    good = patient("urn:s", "1", family="Okello")
    path = tmp_path / "c.ndjson"
    lines = [
        json.dumps(good),
        json.dumps({**good, "extension": ["DEEP"]}).replace('"DEEP"', "[" * 50_000 + "]" * 50_000),
        json.dumps({**good, "extension": ["NESTED"]}).replace(
            '"NESTED"',
            '{"url": "http://x", "extension": [' * 40 + '{"url": "http://x", "valueString": "v"}' + "]}" * 40,
        ),
        json.dumps({**good, "gender": "female\u0007"}),
        json.dumps(good),
    ]
    path.write_text("\n".join(lines) + "\n")
    rows = list(bulk.read_rows(path, "urn:s", None))
    assert [r.number for r in rows] == [1, 2, 3, 4, 5]
    assert rows[0].patient is not None and rows[4].patient is not None
    assert rows[1].patient is None and "nested too deeply" in (rows[1].error or "")
    assert rows[2].patient is None and "nested more than 64 levels deep" in (rows[2].error or "")
    assert rows[3].patient is None and "Patient.gender: U+0007" in (rows[3].error or "")


def test_cli_reads_a_csv_in_the_encoding_it_is_given(hapi_url, facility, tmp_path):
    family = unique_surname() + "-Ouédraogo"
    path = tmp_path / "w.csv"
    path.write_bytes(f"id,family,given,gender\nW1,{family},Zoé,F\n".encode("cp1252"))

    def load(*extra: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "mediator.bulk", "load", str(path), "--system", facility]
        return subprocess.run(
            [*command, "--job-dir", str(tmp_path / "jobs"), *extra],
            cwd=REPO,
            env={"CR_HAPI_URL": hapi_url, "PATH": "/usr/bin:/bin"},
            capture_output=True,
            text=True,
            timeout=120,
        )

    as_utf8 = load()
    assert as_utf8.returncode == 2 and "can't decode byte 0xe9" in as_utf8.stderr, as_utf8.stderr
    assert load("--encoding", "klingon").returncode == 2
    as_cp1252 = load("--encoding", "cp1252")
    assert as_cp1252.returncode == 0, as_cp1252.stderr
    query = urllib.parse.urlencode({"identifier": f"{facility}|W1"})
    with urllib.request.urlopen(f"{hapi_url}/Patient?{query}", timeout=60) as response:
        [entry] = json.load(response)["entry"]
    name = entry["resource"]["name"][0]
    assert name["family"] == family and name["given"] == ["Zoé"]
