"""HAPI refuses INLINE tag storage on a database whose tags live in HAPI's tag tables (they would become
unsearchable), says how to go on, and still starts that database with ``HAPI_TAG_STORAGE_MODE=VERSIONED``."""

from __future__ import annotations

import json
import subprocess
import urllib.request
from pathlib import Path

from bench import hapi_instance
from tests.conftest import REPO
from tests.hapi_helpers import put_now
from tests.scale.conftest import free_port


def _put_tagged_patient(base: str) -> None:
    body = {"resourceType": "Patient", "id": "guard-1", "meta": {"tag": [{"system": "urn:t", "code": "x"}]}}
    assert put_now(base, body) == 201


def _tagged(base: str) -> list[str]:
    with urllib.request.urlopen(f"{base}/Patient?_tag=urn:t%7Cx", timeout=60) as response:
        return [e["resource"]["id"] for e in json.load(response).get("entry", [])]


def test_inline_is_refused_on_a_versioned_database(tmp_path: Path):
    env = hapi_instance.hapi_env("guard", free_port(), folder=tmp_path, java_opts="-Xmx768m")
    versioned = {**env, "HAPI_TAG_STORAGE_MODE": "VERSIONED"}
    base = f"http://127.0.0.1:{env['HAPI_PORT']}/fhir"
    try:
        hapi_instance.start(versioned, fresh=True)
        _put_tagged_patient(base)
        assert _tagged(base) == ["guard-1"]
        hapi_instance.stop(versioned)

        inline = subprocess.run(
            [str(REPO / "scripts" / "hapi-start")], env=env, capture_output=True, text=True, check=False
        )
        assert inline.returncode != 0
        assert "HAPI_TAG_STORAGE_MODE=VERSIONED" in inline.stderr + Path(env["HAPI_LOG_FILE"]).read_text()

        hapi_instance.start(versioned, fresh=False)
        assert _tagged(base) == ["guard-1"], "the tags are still there and searchable"
    finally:
        hapi_instance.stop(env)
