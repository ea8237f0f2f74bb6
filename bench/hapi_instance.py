"""The environment of a HAPI FHIR instance of its own for tests and benchmarks, and starting/stopping it.

``scripts/hapi-start`` and ``scripts/hapi-stop`` read the instance from the environment; :func:`hapi_env`
builds it from a name: data folder ``<folder>/<name>``, ``<folder>/<name>.pid`` and ``<folder>/<name>.log``
(``folder`` defaults to the checkout's ``var``), and with ``postgres`` the ``SPRING_DATASOURCE_*`` variables.
No pytest here: the benchmarks use it as well as the tests.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def hapi_env(
    name: str,
    port: int | str,
    *,
    folder: Path = REPO / "var",
    postgres_jdbc_url: str | None = None,
    postgres_user: str = "hapi",
    postgres_password: str = "hapi",
    java_opts: str | None = None,
) -> dict[str, str]:
    """``os.environ`` plus the ``HAPI_*`` (and for PostgreSQL ``SPRING_DATASOURCE_*``) variables."""
    env = {**os.environ}
    if postgres_jdbc_url is not None:
        env.update(
            {
                "HAPI_DB": "postgres",
                "SPRING_DATASOURCE_URL": postgres_jdbc_url,
                "SPRING_DATASOURCE_USERNAME": postgres_user,
                "SPRING_DATASOURCE_PASSWORD": postgres_password,
            }
        )
    env.update(
        {
            "HAPI_PORT": str(port),
            "HAPI_DATA_DIR": str(folder / name),
            "HAPI_PID_FILE": str(folder / f"{name}.pid"),
            "HAPI_LOG_FILE": str(folder / f"{name}.log"),
        }
    )
    if java_opts is not None:
        env["HAPI_JAVA_OPTS"] = java_opts
    return env


def start(env: dict[str, str], *, fresh: bool) -> None:
    """Stop whatever runs as this instance, wipe its data folder if ``fresh``, start it and wait for it."""
    stop(env)
    if fresh:
        shutil.rmtree(env["HAPI_DATA_DIR"], ignore_errors=True)
    subprocess.run([str(REPO / "scripts" / "hapi-start")], env=env, check=True)


def stop(env: dict[str, str]) -> None:
    subprocess.run([str(REPO / "scripts" / "hapi-stop")], env=env, check=False)
