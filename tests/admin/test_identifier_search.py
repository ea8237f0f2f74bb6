"""The admin search and person view: an identifier is looked up as itself, an id in a URL is a FHIR id."""

from __future__ import annotations

import uuid

from tests.conftest import patient, unique_surname


async def test_a_comma_in_an_identifier_search_is_not_an_or(admin):
    z, c = f"urn:test:{uuid.uuid4().hex[:10]}", f"urn:test:{uuid.uuid4().hex[:10]}"
    resp = await admin.client.post("/fhir/Patient", json=patient(z, "345", family=unique_surname()))
    assert resp.status == 201
    for query in (f"{c}|12,345", f"urn:nope|x,{z}|345", "x,345"):
        assert (await admin.get("/admin/api/search", identifier=query))["items"] == [], query
    found = (await admin.get("/admin/api/search", identifier=f"{z}|345"))["items"]
    assert [p["golden"] for p in found] == [resp.headers["X-CRUID"]]
    spaced = (await admin.get("/admin/api/search", identifier=f" {z}|345 "))["items"]
    assert [p["golden"] for p in spaced] == [resp.headers["X-CRUID"]]


async def test_a_golden_id_with_a_path_suffix_reads_no_old_version(admin):
    resp = await admin.client.post(
        "/fhir/Patient", json=patient(f"urn:test:{uuid.uuid4().hex[:10]}", "G1", family=unique_surname())
    )
    cruid = resp.headers["X-CRUID"]
    assert (await admin.get("/admin/api/search", identifier=f"{cruid}/_history/1"))["items"] == []
    view = await admin.client.get(f"/admin/api/golden/{cruid}%2F_history%2F1")
    assert view.status == 404
    assert (await admin.client.get(f"/admin/api/golden/{cruid}")).status == 200
