"""Single submissions from 1, 4 and 16 concurrent clients against HAPI's plain creates, side by side.

    .venv/bin/python -m bench.concurrent_singles [--db h2|postgres] [--port 8134] [--clients 1,4,16]
        [--records 400] [--stored 3000] [--warmup 4000] [--rounds 2] [--modes alone,shared] [--pos 1]
        [--hapi URL --hapi-pid PIDFILE]

Starts a fresh HAPI (H2, or PostgreSQL with ``--db postgres``: ``scripts/pg-start`` on ``--pg-port``, database
``--pg-db`` recreated) unless ``--hapi`` names a running one, and the registry in this process
(``registry_in_process``). Then:

1. ``--stored`` generated records loaded through ``Registry.submit_all`` (batches of 50): the candidates;
2. warm-up (HAPI's JIT changes its rates several-fold): ``--warmup`` plain creates and a quarter as many
   registry submissions, each from 4 clients, untimed;
3. ``--rounds`` rounds; in each, for every client count: ``--records`` plain creates (``POST Patient``, a
   server id, an identifier system of their own) from that many clients, each waiting for its answer, and
   ``--records`` new generated records as single submissions (``Registry.submit``) from as many clients, once
   per ``--modes`` entry: ``alone`` (every submission its own transaction: ``Registry.shared_writes = 0``) and
   ``shared`` (submissions that arrive while others are being written share a transaction, the default),
   ``shared:N`` (N such transactions in flight); the plain creates and the modes take turns in ``--blocks``
   blocks. ``--pos``: how many OpenHIM clients the concurrent clients belong to, in turn (1, the default:
   one, whose submissions sharing a transaction share its AuditEvent; 0: each its own, so they share none);
   a mode's suffix ``@P`` sets it for that mode (``shared@0``).

Per line: records/s, latency p50/p95, HAPI CPU per record (user + system of the HAPI process, /proc), with
``--db postgres`` PostgreSQL's CPU per record (the cluster on ``--pg-port``: postmaster and processes), this
process's CPU per record (the mediator; for plain creates, the client), HAPI transactions per submission; the
summary gives registry / plain creates per client count and mode (mean of the rounds). Figures only; not a
test.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp

from bench import hapi_instance
from bench.bench_scale import pct, records, valid_birth_date
from mediator.app import registry_in_process
from mediator.audit import Actor
from mediator.errors import RegistryError
from mediator.registry import Registry, Submission
from mediator.settings import Settings

REPO = Path(__file__).resolve().parent.parent
TICK = os.sysconf("SC_CLK_TCK")
ACTOR = Actor(client_id=None, address="bench")


def _stat(pid: int | str) -> list[str]:
    """``/proc/<pid>/stat`` from its third field (state) on: the command name may hold spaces."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def proc_cpu_s(pid: int) -> float:
    fields = _stat(pid)
    return (int(fields[11]) + int(fields[12])) / TICK  # utime, stime


def postgres_pid(port: int) -> int | None:
    """The postmaster serving ``port`` (``scripts/pg-start`` runs it with ``-p <port>``), if one runs here."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        options = list(itertools.pairwise(argv))
        if argv[0].endswith(b"/postgres") and (b"-p", str(port).encode()) in options:
            return int(proc.name)
    return None


def cluster_cpu_s(postmaster: int) -> float:
    """CPU seconds of a PostgreSQL cluster: the postmaster, its live processes (HAPI's pooled connections,
    the writers) and the ones that ended (counted in the postmaster's cutime and cstime)."""
    fields = _stat(postmaster)
    total = sum(int(f) for f in fields[11:15])  # utime, stime, cutime, cstime
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            child = _stat(proc.name)
        except OSError:
            continue
        if int(child[1]) == postmaster:  # ppid
            total += int(child[11]) + int(child[12])
    return total / TICK


class Measure:
    """Wall time, HAPI CPU and this process's CPU over a phase."""

    def __init__(self, hapi_pid: int | None, pg_pid: int | None = None) -> None:
        self.hapi_pid = hapi_pid
        self.pg_pid = pg_pid

    def __enter__(self) -> Measure:
        self.t0, self.c0 = time.perf_counter(), time.process_time()
        self.h0 = proc_cpu_s(self.hapi_pid) if self.hapi_pid else 0.0
        self.p0 = cluster_cpu_s(self.pg_pid) if self.pg_pid else 0.0
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.perf_counter() - self.t0
        self.cpu = time.process_time() - self.c0
        self.hapi = (proc_cpu_s(self.hapi_pid) - self.h0) if self.hapi_pid else float("nan")
        self.pg = (cluster_cpu_s(self.pg_pid) - self.p0) if self.pg_pid else float("nan")


async def _clients(n: int, items: list[Any], one: Callable[[Any, int], Awaitable[None]]) -> list[float]:
    """``items`` handled by ``n`` clients, each waiting for its answer before the next (``one(item, k)``,
    ``k`` the client's number): latencies (ms)."""
    todo = iter(items)
    latencies: list[float] = []

    async def client(k: int) -> None:
        for item in todo:
            t = time.perf_counter()
            await one(item, k)
            latencies.append((time.perf_counter() - t) * 1000)

    await asyncio.gather(*(client(k) for k in range(n)))
    return latencies


def _plain_patient(p: dict[str, Any]) -> dict[str, Any]:
    ids = [{**i, "system": "urn:bench-plain:" + i["system"]} for i in p.get("identifier", [])]
    return {**p, "identifier": ids}


async def plain_creates(
    session: aiohttp.ClientSession, hapi: str, patients: list[dict[str, Any]], clients: int
) -> list[float]:
    async def create(p: dict[str, Any], _: int) -> None:
        headers = {"Content-Type": "application/fhir+json"}
        async with session.post(f"{hapi}/Patient", json=_plain_patient(p), headers=headers) as resp:
            assert resp.status == 201, await resp.text()
            await resp.read()

    return await _clients(clients, [p for p in patients if valid_birth_date(p.get("birthDate"))], create)


def actor(k: int, pos: int) -> Actor:
    """The OpenHIM client of concurrent client ``k``: with ``pos`` 0 one each, else ``pos`` clients in turn
    (1: all are one client, whose submissions share AuditEvents in shared transactions)."""
    n = k if pos == 0 else k % pos
    return Actor(client_id=f"pos-{n}", address=f"10.0.0.{n}") if pos != 1 else ACTOR


async def singles(
    registry: Registry, patients: list[dict[str, Any]], clients: int, pos: int = 1
) -> list[float]:
    async def submit(p: dict[str, Any], k: int) -> None:
        try:
            await registry.submit(Submission(patient=p, actor=actor(k, pos)))
        except RegistryError as error:
            if error.status >= 500:
                raise

    return await _clients(clients, patients, submit)


def _line(
    round_: int,
    clients: int,
    what: str,
    latencies: list[float],
    m: Measure,
    tx: float,
    rates: dict[tuple[int, str], list[float]],
    p50s: dict[tuple[int, str], list[float]],
) -> None:
    n = len(latencies)
    pg = f"{m.pg * 1000 / n:>12.2f}" if m.pg_pid else f"{'-':>12}"
    rates[(clients, what)].append(n / m.wall)
    p50s[(clients, what)].append(statistics.median(latencies))
    print(
        f"{round_:>5} {clients:>7} {what:<9} {n / m.wall:>7.1f} "
        f"{statistics.median(latencies):>7.1f} {pct(latencies, 0.95):>7.1f} "
        f"{m.hapi * 1000 / n:>15.2f} {pg} {m.cpu * 1000 / n:>14.2f} {tx:>6.2f}",
        flush=True,
    )


async def _store(registry: Registry, patients: list[dict[str, Any]]) -> None:
    """``patients`` in one transaction (``submit_all``), else one by one (one record twice, a bad row)."""
    try:
        await registry.submit_all([Submission(patient=p, actor=ACTOR) for p in patients])
    except RegistryError as error:
        if error.status >= 500:
            raise
        await singles(registry, patients, 1)


async def _mode(
    registry: Registry, mode: str, sharing: int, patients: list[dict[str, Any]], clients: int, pos: int
) -> list[float]:
    """``alone``: every submission its own transaction; ``shared``: the registry's default; ``shared:N``: N
    transactions of single submissions in flight; a suffix ``@P``: the clients belong to P OpenHIM clients
    (as ``--pos``)."""
    mode, _, clients_of = mode.partition("@")
    pos = int(clients_of) if clients_of else pos
    name, _, count = mode.partition(":")
    registry.shared_writes = 0 if name == "alone" else int(count) if count else sharing
    return await singles(registry, patients, clients, pos)


def _start_hapi(args: argparse.Namespace) -> dict[str, str]:
    name = f"bench-singles-{args.db}-{args.port}"
    if args.db == "postgres":
        env = {**os.environ, "PG_PORT": str(args.pg_port), "PG_DB": args.pg_db, "PG_RESET_DB": "1"}
        subprocess.run([str(REPO / "scripts" / "pg-start")], env=env, check=True)
        jdbc = f"jdbc:postgresql://127.0.0.1:{args.pg_port}/{args.pg_db}"
        hapi_env = hapi_instance.hapi_env(name, args.port, postgres_jdbc_url=jdbc, java_opts=args.java_opts)
    else:
        hapi_env = hapi_instance.hapi_env(name, args.port, java_opts=args.java_opts)
    hapi_instance.start(hapi_env, fresh=True)
    return hapi_env


async def main(args: argparse.Namespace, hapi_pid: int | None) -> None:
    hapi = args.hapi.rstrip("/")
    pg_pid = postgres_pid(args.pg_port) if args.db == "postgres" else None
    client_counts = [int(c) for c in args.clients.split(",")]
    modes = args.modes.split(",")
    per_round = args.records * len(client_counts)
    # the same records whatever the modes (up to 4 of them)
    population = records(args.stored + args.warmup // 4 + per_round * args.rounds * 4, args.seed)
    plain_pool = records(args.warmup + per_round * args.rounds, args.seed + 50)
    print(f"cpus {os.cpu_count()}, load average at start {os.getloadavg()[0]:.1f}", flush=True)
    settings = Settings(hapi_base_url=hapi, hapi_timeout_s=120.0)
    async with (
        registry_in_process(settings) as registry,
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as session,
    ):
        assert registry.metrics is not None
        metrics = registry.metrics
        if not hasattr(registry, "shared_writes"):
            print("this registry has no shared transactions: only mode 'alone'")
            modes = ["alone"]
        start_sharing = getattr(registry, "shared_writes", 0)
        stored, population = population[: args.stored], population[args.stored :]
        started = time.perf_counter()
        for k in range(0, len(stored), 100):
            batches = [stored[j : j + 50] for j in (k, k + 50)]
            await asyncio.gather(*(_store(registry, b) for b in batches if b))
        print(f"stored {len(stored)} records in {time.perf_counter() - started:.0f} s", flush=True)
        started = time.perf_counter()
        warm, plain_pool = plain_pool[: args.warmup], plain_pool[args.warmup :]
        await plain_creates(session, hapi, warm, 4)
        warm, population = population[: args.warmup // 4], population[args.warmup // 4 :]
        await singles(registry, warm, 4)
        print(f"warm-up in {time.perf_counter() - started:.0f} s", flush=True)

        rates: dict[tuple[int, str], list[float]] = defaultdict(list)
        p50s: dict[tuple[int, str], list[float]] = defaultdict(list)
        print(
            f"{'round':>5} {'clients':>7} {'what':<9} {'rec/s':>7} {'p50 ms':>7} {'p95 ms':>7} "
            f"{'HAPI CPU ms/rec':>15} {'PG CPU ms/rec':>12} {'own CPU ms/rec':>14} {'tx/rec':>6}",
            flush=True,
        )
        for round_ in range(1, args.rounds + 1):
            for clients in client_counts:
                # plain creates and the modes take turns in blocks, so the store's growth, the JIT's drift and
                # the machine's other load fall on each alike
                block = max(clients, args.records // args.blocks)
                done: dict[str, tuple[list[float], float, float, float, float, int]] = {}
                for _ in range(args.records // block):
                    for mode in ["plain", *modes]:
                        before = metrics.store_calls("transaction")
                        if mode == "plain":
                            batch, plain_pool = plain_pool[:block], plain_pool[block:]
                            with Measure(hapi_pid, pg_pid) as m:
                                latencies = await plain_creates(session, hapi, batch, clients)
                        else:
                            batch, population = population[:block], population[block:]
                            with Measure(hapi_pid, pg_pid) as m:
                                latencies = await _mode(
                                    registry, mode, start_sharing, batch, clients, args.pos
                                )
                        lat, wall, hapi_s, pg_s, own_s, tx = done.get(mode, ([], 0.0, 0.0, 0.0, 0.0, 0))
                        done[mode] = (
                            lat + latencies,
                            wall + m.wall,
                            hapi_s + m.hapi,
                            pg_s + m.pg,
                            own_s + m.cpu,
                            tx + metrics.store_calls("transaction") - before,
                        )
                for mode in ["plain", *modes]:
                    lat, wall, hapi_s, pg_s, own_s, tx = done[mode]
                    total = Measure(hapi_pid, pg_pid)
                    total.wall, total.hapi, total.pg, total.cpu = wall, hapi_s, pg_s, own_s
                    per_record = 1.0 if mode == "plain" else tx / len(lat)
                    _line(round_, clients, mode, lat, total, per_record, rates, p50s)
        print("summary (mean of the rounds): registry records/s over plain creates/s at the same clients")
        for clients in client_counts:
            plain = statistics.mean(rates[(clients, "plain")])
            cells = [
                f"{mode} {statistics.mean(rates[(clients, mode)]) / plain:.1%} "
                f"(p50 {statistics.mean(p50s[(clients, mode)]):.1f} ms)"
                for mode in modes
            ]
            print(f"  {clients:>2} clients: plain {plain:.0f}/s; " + "; ".join(cells), flush=True)
        print(f"load average at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--hapi", help="a running HAPI (else one is started)")
    parser.add_argument("--hapi-pid", help="its pid file (for its CPU)")
    parser.add_argument("--db", choices=("h2", "postgres"), default="h2")
    parser.add_argument("--port", type=int, default=8134)
    parser.add_argument("--pg-port", type=int, default=5433)
    parser.add_argument("--pg-db", default="hapi_bench_singles")
    parser.add_argument("--java-opts", default="-Xmx2g -XX:+ExitOnOutOfMemoryError")
    parser.add_argument("--clients", default="1,4,16")
    parser.add_argument("--records", type=int, default=400, help="per client count, mode and round")
    parser.add_argument("--stored", type=int, default=3000)
    parser.add_argument("--warmup", type=int, default=4000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--modes", default="alone,shared", help="alone, shared, shared:N (N in flight)")
    parser.add_argument("--blocks", type=int, default=4, help="turns the modes take per client count")
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument(
        "--pos",
        type=int,
        default=1,
        help="OpenHIM clients the concurrent clients belong to, in turn (0: one each; 1: all one client)",
    )
    args = parser.parse_args()
    env = None
    if args.hapi is None:
        env = _start_hapi(args)
        args.hapi = f"http://127.0.0.1:{args.port}/fhir"
        args.hapi_pid = env["HAPI_PID_FILE"]
    try:
        asyncio.run(main(args, int(Path(args.hapi_pid).read_text()) if args.hapi_pid else None))
    finally:
        if env is not None:
            hapi_instance.stop(env)
    sys.exit(0)
