"""What H2's URL settings cost: ``WRITE_DELAY=0`` (every commit stored before HAPI answers) against H2's
default (500 ms), or any other settings side by side.

    .venv/bin/python -m bench.h2_write_delay [--size 10000] [--samples 500] [--rounds 2] [--ports 8184,8185]
        [--variant 'WRITE_DELAY=0' --variant 'WRITE_DELAY=500' ...]

Starts one HAPI on H2 per ``--variant`` (settings appended to the launcher's H2 URL; default: the launcher's
``WRITE_DELAY=0`` and H2 2.3's default 500), from the same jar, each in a fresh data folder
``var/bench-wd-<n>``, fills each with ``--size`` plain Patients, then times ``--samples`` registry-shaped
transactions one at a time on each (the transactions of :mod:`bench.h2_id_lookups`), alternating for
``--rounds`` rounds, and prints per transaction the median latency, p95, HAPI's CPU, and the size of the
database file after each round and after the servers stop. Figures only; not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
from pathlib import Path

import aiohttp

from bench import hapi_instance
from bench.h2_id_lookups import Server, _p, fill, timed

URL = "jdbc:h2:file:${hapi.data-dir}/hapi;DB_CLOSE_ON_EXIT=FALSE;"
DEFAULT_VARIANTS = ["WRITE_DELAY=0", "WRITE_DELAY=500"]


def _size_mb(server: Server) -> float:
    return Path(server.env["HAPI_DATA_DIR"], "hapi.mv.db").stat().st_size / 1e6


async def main(size: int, samples: int, rounds: int, ports: list[int], variants: list[str]) -> None:
    servers = []
    for n, (settings, port) in enumerate(zip(variants, ports, strict=True)):
        server = Server("", port, "auto")
        server.label = settings
        server.env = {
            **hapi_instance.hapi_env(f"bench-wd-{n}", port),
            "SPRING_DATASOURCE_URL": URL + settings,
        }
        servers.append(server)
    for server in servers:
        hapi_instance.start(server.env, fresh=True)
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600)) as session:
            await asyncio.gather(*(fill(session, server, size) for server in servers))
            for server in servers:
                await timed(session, server, 300)  # warm-up (JIT), untimed
            width = max(16, *(len(s.label) for s in servers))
            print(
                f"{'':<{width}} {'p50 ms':>8} {'p95 ms':>8} {'HAPI CPU ms/tx':>15} {'file MB':>10}",
                flush=True,
            )
            results: dict[str, tuple[list[float], list[float], list[float]]] = {
                s.label: ([], [], []) for s in servers
            }
            for _ in range(rounds):
                for server in servers:
                    latencies, cpu = await timed(session, server, samples)
                    results[server.label][0].extend(latencies)
                    results[server.label][1].append(cpu)
                    results[server.label][2].append(_size_mb(server))
            for server in servers:
                latencies, cpus, sizes = results[server.label]
                print(
                    f"{server.label:<{width}} "
                    f"{statistics.median(latencies):>8.1f} {_p(latencies, 0.95):>8.1f} "
                    f"{' / '.join(f'{c:.1f}' for c in cpus):>15} {' / '.join(f'{s:.0f}' for s in sizes):>10}"
                    f"   ({server.stored} resources)",
                    flush=True,
                )
    finally:
        for server in servers:
            hapi_instance.stop(server.env)
    print("file MB after stopping: " + ", ".join(f"{s.label} {_size_mb(s):.0f}" for s in servers), flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", type=int, default=10000)
    parser.add_argument("--samples", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--ports", default="8184,8185", help="one per variant")
    parser.add_argument(
        "--variant", action="append", help="H2 URL settings, e.g. 'WRITE_DELAY=0;RETENTION_TIME=0'"
    )
    args = parser.parse_args()
    ports = [int(p) for p in args.ports.split(",")]
    asyncio.run(main(args.size, args.samples, args.rounds, ports, args.variant or DEFAULT_VARIANTS))
