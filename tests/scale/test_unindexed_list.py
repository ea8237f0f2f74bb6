"""``HAPI_UNINDEXED_SEARCH_PARAMETERS`` decides which built-in parameters HAPI leaves unindexed; a parameter
taken off the list on a later start is a known search parameter again (records written from then on are
found by it)."""

from __future__ import annotations

from pathlib import Path

from bench import hapi_instance
from tests.hapi_helpers import get_now, put_now
from tests.scale.conftest import free_port


def _status(url: str) -> int:
    return get_now(url)[0]


def _put(base: str, record_id: str) -> None:
    body = {"resourceType": "Patient", "id": record_id, "name": [{"family": "Listova", "given": ["Ana"]}]}
    assert put_now(base, body) in (200, 201)


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
        status, bundle = get_now(f"{base}/Patient?family=Listova")
        assert status == 200
        found = [e["resource"]["id"] for e in bundle.get("entry", [])]
        assert "listed-2" in found, "family is indexed again for records written since"
    finally:
        hapi_instance.stop(env)
