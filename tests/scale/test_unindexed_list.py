"""``HAPI_UNINDEXED_SEARCH_PARAMETERS`` decides which built-in parameters HAPI leaves unindexed; a parameter
taken off the list on a later start is a known search parameter again (records written from then on are
found by it)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path

from bench import hapi_instance
from tests.scale.conftest import free_port


def _status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=60) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


def _put(base: str, record_id: str) -> None:
    body = {"resourceType": "Patient", "id": record_id, "name": [{"family": "Listova", "given": ["Ana"]}]}
    request = urllib.request.Request(
        f"{base}/Patient/{record_id}",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/fhir+json"},
        method="PUT",
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        assert response.status in (200, 201)


def test_a_parameter_taken_off_the_list_is_indexed_again(tmp_path: Path):
    env = hapi_instance.hapi_env("unindexed", free_port(), folder=tmp_path, java_opts="-Xmx768m")
    base = f"http://127.0.0.1:{env['HAPI_PORT']}/fhir"
    try:
        hapi_instance.start({**env, "HAPI_UNINDEXED_SEARCH_PARAMETERS": "Patient.family"}, fresh=True)
        _put(base, "listed-1")
        assert _status(f"{base}/Patient?family=Listova") == 400
        assert _status(f"{base}/Patient?given=Ana") == 200, "only the listed parameter is retired"
        hapi_instance.stop(env)

        hapi_instance.start({**env, "HAPI_UNINDEXED_SEARCH_PARAMETERS": "Patient.given"}, fresh=False)
        _put(base, "listed-2")
        assert _status(f"{base}/Patient?given=Ana") == 400
        with urllib.request.urlopen(f"{base}/Patient?family=Listova", timeout=60) as response:
            found = [e["resource"]["id"] for e in json.load(response).get("entry", [])]
        assert "listed-2" in found, "family is indexed again for records written since"
    finally:
        hapi_instance.stop(env)
