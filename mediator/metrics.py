"""Prometheus metrics of one mediator app, served at ``GET /metrics``: counts and timings only, labelled
by route, outcome, kind of FHIR store call or job state — never by an id, identifier or demographic
value. Each app has its own registry. The list of metrics: ``docs/internals.md``.
"""

from __future__ import annotations

import time
from collections import Counter as Tally
from collections.abc import Awaitable, Callable, Iterable, Iterator

from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from .errors import UpstreamError

REVIEW_COUNT_EVERY_S = 30.0  # scrapes in between show the last count

# seconds: a single submission takes 15-40 ms at 100k records; bulk transactions and slow stores far more
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

# (kind, status, waiting for the FHIR store) of each job
JobStates = Callable[[], Iterable[tuple[str, str, bool]]]


class _JobsCollector(Collector):
    def __init__(self, states: JobStates) -> None:
        self.states = states

    def collect(self) -> Iterator[Metric]:
        by_state: Tally[tuple[str, str]] = Tally()
        waiting: Tally[str] = Tally()
        for kind, status, is_waiting in self.states():
            by_state[(kind, status)] += 1
            waiting[kind] += is_waiting
        jobs = GaugeMetricFamily("cr_jobs", "Admin jobs in the jobs directory", labels=["kind", "status"])
        for (kind, status), count in sorted(by_state.items()):
            jobs.add_metric([kind, status], count)
        yield jobs
        stalled = GaugeMetricFamily(
            "cr_jobs_waiting_for_fhir_store",
            "Running admin jobs waiting for the FHIR store (or the lock database) to answer",
            labels=["kind"],
        )
        for kind, count in sorted(waiting.items()):
            stalled.add_metric([kind], count)
        yield stalled


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "cr_http_requests",
            "HTTP requests answered, by route and status",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.request_seconds = Histogram(
            "cr_http_request_duration_seconds",
            "Time to answer an HTTP request",
            ["method", "route"],
            buckets=BUCKETS,
            registry=self.registry,
        )
        self.decisions = Counter(
            "cr_decisions", "Records decided, by outcome", ["outcome"], registry=self.registry
        )
        self.conflict_retries = Counter(
            "cr_conflict_retries",
            "Transactions decided again after a version conflict in the FHIR store",
            registry=self.registry,
        )
        self.store_seconds = Histogram(
            "cr_fhir_store_call_duration_seconds",
            "Calls the FHIR store answered, by kind of call",
            ["call"],
            buckets=BUCKETS,
            registry=self.registry,
        )
        self.store_failures = Counter(
            "cr_fhir_store_failures",
            "Calls to the FHIR store that timed out, could not connect, or got a 5xx or 429",
            ["call", "reason"],
            registry=self.registry,
        )

        self.review_open = Gauge(
            "cr_review_tasks_open",
            "Open review Tasks (the review queue), by kind",
            ["kind"],
            registry=self.registry,
        )
        self.review_counted_at: float | None = None  # time.monotonic() of the last count

    async def count_review_queue(
        self, open_tasks: Callable[[str], Awaitable[int]], kinds: Iterable[str]
    ) -> None:
        """Set ``cr_review_tasks_open`` from ``open_tasks(kind)`` (a count in the FHIR store) when the last
        count is :data:`REVIEW_COUNT_EVERY_S` old; cleared (unknown, not stale) when the store fails."""
        counted_at = self.review_counted_at
        if counted_at is not None and time.monotonic() - counted_at < REVIEW_COUNT_EVERY_S:
            return
        self.review_counted_at = time.monotonic()
        try:
            for kind in kinds:
                self.review_open.labels(kind).set(await open_tasks(kind))
        except UpstreamError:
            self.review_open.clear()  # the failure is counted too

    def store_calls(self, call: str) -> int:
        """Calls of one kind (``transaction``, ``read``, ...) the FHIR store has answered: what benchmarks and
        tests count."""
        count = self.registry.get_sample_value("cr_fhir_store_call_duration_seconds_count", {"call": call})
        return int(count or 0)

    def watch_jobs(self, states: JobStates) -> None:
        self.registry.register(_JobsCollector(states))

    def request_answered(self, request: web.Request, status: int, seconds: float) -> None:
        resource = request.match_info.route.resource
        route = resource.canonical if resource is not None else "unmatched"
        self.requests.labels(request.method, route, str(status)).inc()
        self.request_seconds.labels(request.method, route).observe(seconds)

    def exposition(self) -> web.Response:
        response = web.Response(body=generate_latest(self.registry))
        response.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return response
