"""PostgreSQL, HAPI on PostgreSQL and real mediator processes, started once per test session.

``scripts/pg-start`` starts (or reuses) the project's private cluster on ``CR_TEST_PG_PORT`` (5433) and
recreates the database ``hapi_test``; HAPI runs on it at ``CR_TEST_PG_HAPI_PORT`` (8096) with its own pid and
log files, so the development servers can stay up meanwhile.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from bench import hapi_instance
from tests.conftest import patient, unique_surname
from tests.pairing_proxy import PairingProxy

REPO = Path(__file__).resolve().parents[2]
PG_PORT = os.environ.get("CR_TEST_PG_PORT", "5433")
PG_HAPI_PORT = os.environ.get("CR_TEST_PG_HAPI_PORT", "8096")
PG_DB = os.environ.get("CR_TEST_PG_DB", "hapi_test")


@pytest.fixture(scope="session")
def pg_dsn() -> str:
    env = {**os.environ, "PG_PORT": PG_PORT, "PG_DB": PG_DB, "PG_RESET_DB": "1"}
    subprocess.run([str(REPO / "scripts" / "pg-start")], env=env, check=True)
    return f"postgresql://hapi:hapi@127.0.0.1:{PG_PORT}/{PG_DB}"


@pytest.fixture(scope="session")
def pg_hapi_url(pg_dsn: str) -> Iterator[str]:
    env = hapi_instance.hapi_env(
        f"test-pg-hapi-{PG_HAPI_PORT}",
        PG_HAPI_PORT,
        postgres_jdbc_url=f"jdbc:postgresql://127.0.0.1:{PG_PORT}/{PG_DB}",
    )
    hapi_instance.start(env, fresh=False)  # the database was recreated by pg-start
    try:
        yield f"http://127.0.0.1:{PG_HAPI_PORT}/fhir"
    finally:
        hapi_instance.stop(env)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return bool(response.status == 200)
    except OSError:
        return False


@contextmanager
def mediator_process(env: dict[str, str], log_path: Path, timeout_s: float = 60.0) -> Iterator[str]:
    """``python -m mediator`` in a child process; yields its base URL once ``/health`` answers 200."""
    with mediator_child(env, log_path, timeout_s) as (url, _proc):
        yield url


@contextmanager
def mediator_child(
    env: dict[str, str], log_path: Path, timeout_s: float = 60.0
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """:func:`mediator_process`, also yielding the process (for a test that kills it)."""
    port = free_port()
    full_env = {**os.environ, **env, "CR_HOST": "127.0.0.1", "CR_PORT": str(port)}
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "mediator"], cwd=REPO, env=full_env, stdout=log, stderr=subprocess.STDOUT
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout_s
        while not _healthy(f"{url}/health"):
            if proc.poll() is not None:
                raise RuntimeError(f"mediator exited with {proc.returncode}; see {log_path}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"mediator not healthy within {timeout_s}s; see {log_path}")
            time.sleep(0.2)  # polling a condition with a deadline, not synchronising on time
        yield url, proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextmanager
def replica_pair(env: dict[str, str], label: str) -> Iterator[list[str]]:
    """Two ``python -m mediator`` processes with the same settings, both warmed up; yields their URLs."""
    logs = REPO / "var"
    with (
        mediator_process(env, logs / f"test-replica-{PG_HAPI_PORT}{label}-1.log") as one,
        mediator_process(env, logs / f"test-replica-{PG_HAPI_PORT}{label}-2.log") as two,
    ):
        for n, url in enumerate((one, two)):  # warm both (first requests are slow), so they really race
            warm_up = patient(f"urn:warm-up:{uuid.uuid4().hex}", str(n), family=unique_surname())
            request = urllib.request.Request(
                f"{url}/fhir/Patient",
                data=json.dumps(warm_up).encode(),
                headers={"Content-Type": "application/fhir+json"},
            )
            with urllib.request.urlopen(request, timeout=120) as response:
                assert response.status == 201
        yield [one, two]


REPLICA_ADMIN = ("replica-admin", "correct horse battery staple")


async def replica_admin_login(admin: Any, url: str) -> dict[str, str]:
    """Log ``admin`` (an aiohttp session keeping cookies) in as :data:`REPLICA_ADMIN` on the replica at
    ``url`` (the cookie holds on every replica of a pair); the CSRF header for its unsafe requests."""
    name, password = REPLICA_ADMIN
    async with admin.post(f"{url}/admin/api/login", json={"username": name, "password": password}) as r:
        assert r.status == 200, await r.text()
        return {"X-CSRF-Token": (await r.json())["csrf"]}


@pytest.fixture(scope="session")
def admin_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """One admin user, session key and (empty) jobs directory for both replicas of a pair: a session
    cookie from one replica is valid on the other, as behind a load balancer."""
    from cryptography.fernet import Fernet

    from mediator.admin.users import UserStore

    folder = tmp_path_factory.mktemp("replica-admin")
    UserStore(folder / "users.json").set_password(*REPLICA_ADMIN)
    return {
        "CR_ADMIN_USERS_FILE": str(folder / "users.json"),
        "CR_ADMIN_SECRET_KEY": Fernet.generate_key().decode(),
        "CR_JOBS_DIR": str(folder / "jobs"),
    }


@pytest.fixture(scope="session")
def replica_urls(pg_dsn: str, pg_hapi_url: str, admin_env: dict[str, str]) -> Iterator[list[str]]:
    """Two mediator replicas against one HAPI (on PostgreSQL), sharing PostgreSQL advisory locks."""
    env = {
        "CR_HAPI_URL": pg_hapi_url,
        "CR_LOCKS": "postgres",
        "CR_LOCKS_DSN": pg_dsn,
        "CR_HAPI_TIMEOUT": "60",
        **admin_env,
    }
    with replica_pair(env, "") as urls:
        yield urls


# How long the pairing proxy holds a lone transaction for a partner. A submission's search and decision take
# well under this (tens of ms once warm), so two submissions that no lock keeps apart do pair up. Submissions
# of one person that a lock serialises each wait this long: 20 of them take ~20 * PAIRING_HOLD_S.
PAIRING_HOLD_S = 1.0


@dataclass
class Replicas:
    urls: list[str]
    proxy: PairingProxy


@contextmanager
def proxied_replica_pair(
    locks: dict[str, str], pg_hapi_url: str, label: str, admin_env: dict[str, str]
) -> Iterator[Replicas]:
    with PairingProxy(pg_hapi_url, hold_s=PAIRING_HOLD_S) as proxy:
        env = {
            "CR_HAPI_URL": proxy.url,
            "CR_HAPI_TIMEOUT": "60",
            "CR_LOCKS_TIMEOUT_S": "120",  # serialised submissions wait for each other's held transactions
            **locks,
            **admin_env,
        }
        with replica_pair(env, label) as urls:
            yield Replicas(urls, proxy)


@pytest.fixture(scope="module")
def proxied_replicas(pg_dsn: str, pg_hapi_url: str, admin_env: dict[str, str]) -> Iterator[Replicas]:
    """Two replicas sharing PostgreSQL advisory locks, reaching HAPI through a :class:`PairingProxy`."""
    shared = {"CR_LOCKS": "postgres", "CR_LOCKS_DSN": pg_dsn}
    with proxied_replica_pair(shared, pg_hapi_url, "-pg", admin_env) as pair:
        yield pair


@pytest.fixture(scope="module")
def proxied_local_replicas(pg_hapi_url: str, admin_env: dict[str, str]) -> Iterator[Replicas]:
    """Two replicas with in-process locks only (``CR_LOCKS=local``) through a :class:`PairingProxy`: what
    the cross-process guarantees would be without shared locks."""
    with proxied_replica_pair({"CR_LOCKS": "local"}, pg_hapi_url, "-local", admin_env) as pair:
        yield pair
