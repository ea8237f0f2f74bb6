"""Bulk load of a facility's patient list through the registry's own workflow: ``python -m mediator.bulk``
(:mod:`mediator.bulk.__main__`) and the admin's bulk upload (:mod:`mediator.admin.jobs`).

``rows`` reads a file into validated Patients (CSV columns mapped), ``plan`` orders a window of rows into
batches, ``submitters`` decide a batch (in process or over HTTP), ``job`` runs a file resumably.
"""

from __future__ import annotations

from .job import REPORT_FIELDS, WINDOW_BATCHES, BulkJob, JobState
from .plan import plan_batches
from .rows import CSV_COLUMNS, Row, csv_encoding, csv_patient, csv_records, read_rows
from .submitters import Decision, InProcess, OverHttp, Submitter

__all__ = [
    "CSV_COLUMNS",
    "REPORT_FIELDS",
    "WINDOW_BATCHES",
    "BulkJob",
    "Decision",
    "InProcess",
    "JobState",
    "OverHttp",
    "Row",
    "Submitter",
    "csv_encoding",
    "csv_patient",
    "csv_records",
    "plan_batches",
    "read_rows",
]
