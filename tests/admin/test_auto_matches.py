"""New auto-matches at scale: the AuditEvents are read newest first through HAPI's indexed ``_lastUpdated``,
a bounded page at a time — never sorted by ``date`` nor filtered by ``subtype`` (HAPI then sorted every
AuditEvent first: 40-52 s at 23,000). Not timed: the search parameters sent and the rows answered."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qsl, urlsplit

from mediator.admin import queries
from mediator.context import STORE
from mediator.fhir_client import CallRecorder, current_recorder
from tests.conftest import patient, unique_surname


async def _auto_match(client, facility: str) -> str:
    family = unique_surname()
    first = await client.post("/fhir/Patient", json=patient(facility, family, family=family))
    assert first.status == 201, await first.text()
    other = facility.replace("facility-", "clinic-")
    second = await client.post("/fhir/Patient", json=patient(other, family, family=family))
    assert second.headers["X-Match-Outcome"] == "match"
    return str((await second.json())["id"])


async def test_auto_matches_page_newest_first_through_last_updated(admin, app_client, facility, monkeypatch):
    since = (datetime.now(UTC) - timedelta(seconds=2)).isoformat(timespec="milliseconds")
    ours = [await _auto_match(app_client, facility) for _ in range(3)]  # oldest first
    # 6 AuditEvents of ours: several pages
    monkeypatch.setattr(queries, "AUTO_MATCH_PAGE", 2, raising=False)
    monkeypatch.setattr(queries, "AUTO_MATCH_FIRST_PAGE", 2, raising=False)

    recorder = CallRecorder()
    token = current_recorder.set(recorder)
    try:
        found = await queries.auto_matches(app_client.app[STORE].hapi, since, limit=50)
    finally:
        current_recorder.reset(token)
    listed = [i["source"]["id"] for i in found]
    assert [s for s in listed if s in ours] == ours[::-1]  # newest first, each once
    assert len(listed) == len(set(listed))

    urls = [c.url for c in recorder.calls if "/AuditEvent?" in c.url]
    assert len(urls) >= 3  # paged
    for n, url in enumerate(urls):
        pairs = parse_qsl(urlsplit(url).query)
        params = dict(pairs)
        assert params["_sort"] == "-_lastUpdated" and params["_count"] == "2"
        assert "subtype" not in params and "date" not in params
        assert ("_lastUpdated", f"ge{since}") in pairs
        # a next page ends where the one before did (keyset paging: no offset, no search kept by HAPI)
        assert any(k == "_lastUpdated" and v.startswith("le") for k, v in pairs) == (n > 0)
        assert "_offset" not in params and "_getpages" not in params


async def test_auto_matches_api_drops_confirmed_links_and_keeps_the_order(admin, app_client, facility):
    since = (datetime.now(UTC) - timedelta(seconds=2)).isoformat(timespec="milliseconds")
    ours = [await _auto_match(app_client, facility) for _ in range(3)]
    listed = [i["source"]["id"] for i in (await admin.get("/admin/api/auto-matches", since=since))["items"]]
    assert [s for s in listed if s in ours] == ours[::-1]
    await admin.post("/admin/api/confirm", {"source": ours[1]})
    listed = [i["source"]["id"] for i in (await admin.get("/admin/api/auto-matches", since=since))["items"]]
    assert [s for s in listed if s in ours] == [ours[2], ours[0]]
    newest = (await admin.get("/admin/api/auto-matches", since=since, limit="1"))["items"]
    assert [i["source"]["id"] for i in newest] == [listed[0]]
    page = await (await admin.client.get("/admin/auto-matches")).text()
    assert ours[2] in page and ours[1] not in page
