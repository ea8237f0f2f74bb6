"""Bulk load of a facility's patient list (FHIR NDJSON or CSV) through the registry's own workflow.

    python -m mediator.bulk load FILE --system URI [--registry URL | (in-process: CR_* settings)]
                                      [--batch 50] [--concurrency 2] [--window 2000]
                                      [--job-dir var/bulk] [--encoding cp1252]

Resumes an interrupted job of the same file (:class:`~mediator.bulk.BulkJob`); CSV columns in
:mod:`mediator.bulk.rows`. The file is read as UTF-8 unless ``--encoding`` names its character set
(spreadsheets often save CSV files as cp1252 or latin-1); a byte it cannot read stops the job (exit 2).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import aiohttp

from ..app import registry_in_process
from ..settings import Settings
from .job import BulkJob, JobState
from .submitters import InProcess, OverHttp


def _print_progress(state: JobState) -> None:
    done = sum(state.counts.values())
    rate = done / state.seconds if state.seconds else 0.0
    print(f"bulk: line {state.rows_done}  {json.dumps(state.counts)}  {rate:.1f} rows/s", file=sys.stderr)


async def load(args: argparse.Namespace) -> JobState:
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
