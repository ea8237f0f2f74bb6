"""One identifier, one record: the normal form of identifiers, FHIR search escaping and ids in URLs.

Each test is a request from the identity-integrity review (issue #21) that used to answer with another
person, take over another client's record, read an old version, or make one identifier many people.
"""

from __future__ import annotations

import hashlib
import unicodedata
import uuid
from urllib.parse import urlencode

import aiohttp
import pytest

from mediator import identifiers, records
from tests.conftest import patient, unique_surname


def _system() -> str:
    return f"urn:test:{uuid.uuid4().hex[:10]}"


def _identifiers(params) -> set[tuple[str, str]]:
    return {
        (p["valueIdentifier"]["system"], p["valueIdentifier"]["value"])
        for p in params["parameter"]
        if p["name"] == "targetIdentifier"
    }


async def _submit(client, system: str, value: str, **kw) -> dict:
    resp = await client.post("/fhir/Patient", json=patient(system, value, family=unique_surname(), **kw))
    assert resp.status in (200, 201), await resp.text()
    return {"status": resp.status, "cruid": resp.headers["X-CRUID"], "location": resp.headers["Location"]}


# -- the normal form, without HAPI ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spelling", "normal"),
    [
        (unicodedata.normalize("NFD", "Zoé-12"), "Zoé-12"),  # NFD → NFC
        ("ＭＲＮ-１２", "MRN-12"),  # full-width letters and digits
        ("  MRN-9 ", "MRN-9"),  # HAPI trims token values
        ("\u3000MRN-9", "MRN-9"),  # an ideographic space
        ("MRN 9", "MRN 9"),  # a space inside stays
    ],
)
def test_spellings_of_one_identifier_have_one_normal_form(spelling, normal):
    assert identifiers.normal_form("urn:x", spelling) == ("urn:x", normal)


@pytest.mark.parametrize(
    "value",
    [
        "MRN\u200b12",  # zero-width space
        "\ufeffMRN12",  # byte-order mark
        "MRN\u202e21",  # right-to-left override
        "MRN\u206612\u2069",  # bidirectional isolate
        "MRN\u00ad12",  # soft hyphen
        "MRN\t12",  # a tab inside
        "MRN\u034f12",  # combining grapheme joiner: invisible, not a format character
        "12\u316434",  # Hangul filler (NFKC: U+1160)
        "MRN12\ufe0f",  # variation selector
        "MRN\U000e010012",  # variation selector supplement
        "MRN-\u0410BC",  # Cyrillic А among Latin letters
        " ",
    ],
)
def test_invisible_bidirectional_and_look_alike_characters_are_refused(value):
    with pytest.raises(identifiers.IdentifierRefused):
        identifiers.normal_form("urn:x", value)


def test_one_script_values_are_kept():
    assert identifiers.normal_form("urn:x", "АБ-123")[1] == "АБ-123"  # Cyrillic only
    assert identifiers.normal_form("urn:x", "x|1") == ("urn:x", "x|1")  # a value may hold '|'


@pytest.mark.parametrize("system", ["urn:sys:a|x", "urn:a b"])
def test_a_system_holds_no_bar_and_no_space(system):
    with pytest.raises(identifiers.IdentifierRefused):
        identifiers.normal_form(system, "1")


def test_search_values_are_escaped():
    assert identifiers.token("urn:c", "12,345") == r"urn:c|12\,345"
    assert identifiers.token("urn:c", r"a|b$c\d") == r"urn:c|a\|b\$c\\d"
    assert identifiers.token("urn:c") == "urn:c|"


@pytest.mark.parametrize(
    ("param", "parts"),
    [
        (r"urn:c|12\,345", ("urn:c", "12,345")),  # FHIR search escapes read as what they escape
        (r"urn:c|a\|b\$c\\d", ("urn:c", r"a|b$c\d")),
        ("urn:c|12,345", ("urn:c", "12,345")),  # leniently, unescaped: the character itself
        ("urn:c|x|1", ("urn:c", "x|1")),
        (r"urn:c|A\1", ("urn:c", r"A\1")),  # a backslash before another character stays
        (r"urn:a\|x|1", ("urn:a|x", "1")),  # an escaped bar does not split (and is refused in a system)
        ("urn:c", None),
    ],
)
def test_search_parameters_are_read_as_fhir_search_syntax(param, parts):
    assert identifiers.parse_token(param) == parts
    if parts is not None:
        assert identifiers.parse_token(identifiers.token(*parts)) == parts  # what token writes reads back


@pytest.mark.parametrize(
    "text", ["cr-1/_history/4", "cr-1?_elements=id", "a" * 65, "", "cr 1", "cr-1%2F", ".", ".."]
)
def test_what_is_not_a_fhir_id(text):
    assert not identifiers.is_fhir_id(text)


def test_record_keys_of_normal_identifiers_are_unchanged():
    """Installations keep their records: for an identifier in normal form the key is still
    ``src-`` + the first 40 hex digits of sha256("system|value")."""
    old = "src-" + hashlib.sha256(b"urn:old|MRN-1").hexdigest()[:40]
    assert records.source_record_id("urn:old", "MRN-1") == old


# -- through the registry and HAPI ------------------------------------------------------------------------


async def test_records_stored_under_the_old_keys_are_found(client, hapi_url, settings):
    """A source record and its golden record written as earlier versions wrote them (the key computed
    here, not by the registry) are found by a resubmission and a lookup: installations keep their people."""
    system, family = _system(), unique_surname()
    source_id = "src-" + hashlib.sha256(f"{system}|OLD-1".encode()).hexdigest()[:40]
    golden_id = f"cr-{uuid.uuid4()}"
    golden = records.new_golden(golden_id, settings.cruid_system)
    golden["link"] = [{"other": {"reference": f"Patient/{source_id}"}, "type": "seealso"}]
    source = records.build_source_record(
        patient(system, "OLD-1", family=family), source_id, client_id=None, golden_id=golden_id, block_keys=[]
    )
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {"resource": r, "request": {"method": "PUT", "url": f"Patient/{r['id']}"}}
            for r in (golden, source)
        ],
    }
    async with aiohttp.ClientSession() as session, session.post(hapi_url, json=bundle) as resp:
        assert resp.status == 200, await resp.text()
    again = await client.post("/fhir/Patient", json=patient(system, "OLD-1", family=family))
    assert (again.status, again.headers["X-CRUID"]) == (200, golden_id)
    assert again.headers["Location"].startswith(f"Patient/{source_id}/")
    lookup = await client.get("/fhir/Patient/$ihe-pix", params={"sourceIdentifier": f"{system}|OLD-1"})
    assert (settings.cruid_system, golden_id) in _identifiers(await lookup.json(content_type=None))


async def test_a_comma_in_a_lookup_is_not_an_or(client, settings):
    """`urn:c|12,345` and `urn:nope|x,urn:z|345` once answered with the person holding `urn:z|345`."""
    z, c = _system(), _system()
    await _submit(client, z, "345")
    for query in (f"{c}|12,345", f"urn:nope|x,{z}|345"):
        resp = await client.get(f"/fhir/Patient/$ihe-pix?sourceIdentifier={query}")
        assert resp.status == 404, query
    mine = await _submit(client, c, "12,345")  # an identifier that holds a comma is looked up as itself
    resp = await client.get(f"/fhir/Patient/$ihe-pix?sourceIdentifier={c}|12,345")
    assert resp.status == 200
    assert _identifiers(await resp.json(content_type=None)) == {(settings.cruid_system, mine["cruid"])}


async def test_an_escaped_lookup_is_the_identifier_it_escapes(client, settings):
    r"""`urn:c|12\,345` (a comma escaped as FHIR search syntax requires) once answered with the person
    holding the identifier `12\,345`, and a conditional update of `12,345` written so was refused."""
    system, family = _system(), unique_surname()
    comma = await _submit(client, system, "12,345", given="Kato", birth_date="1950-01-01")
    backslash = await _submit(client, system, r"12\,345", given="Zuri", birth_date="2001-09-30")
    assert comma["cruid"] != backslash["cruid"]
    for query, wanted in ((r"12\,345", comma), (r"12\\\,345", backslash), ("12,345", comma)):
        resp = await client.get("/fhir/Patient/$ihe-pix", params={"sourceIdentifier": f"{system}|{query}"})
        assert resp.status == 200, query
        assert (settings.cruid_system, wanted["cruid"]) in _identifiers(await resp.json(content_type=None))
    body = patient(system, "12,345", family=family)
    resp = await client.put(
        "/fhir/Patient", params={"identifier": identifiers.token(system, "12,345")}, json=body
    )
    assert (resp.status, resp.headers["X-CRUID"]) == (200, comma["cruid"]), await resp.text()
    url = "Patient?" + urlencode({"identifier": identifiers.token(system, "12,345")})
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [{"resource": body, "request": {"method": "PUT", "url": url}}],
    }
    resp = await client.post("/fhir", json=bundle)
    assert resp.status == 200, await resp.text()
    [entry] = (await resp.json(content_type=None))["entry"]
    assert entry["response"]["location"].startswith(comma["location"].split("/_history")[0] + "/")


async def test_target_systems_are_read_in_normal_form_and_as_search_syntax(client, settings):
    r"""`targetSystem` was split at every comma and compared as typed: a system holding a comma (`\,` as
    FHIR search syntax escapes it) or spelled in another Unicode form was an unknown domain (403)."""
    comma, accented = f"urn:x,{uuid.uuid4().hex[:8]}", f"urn:é:{uuid.uuid4().hex[:8]}"
    extra = [{"system": accented, "value": "TS-2"}]
    mine = await client.post(
        "/fhir/Patient", json=patient(comma, "TS-1", family=unique_surname(), extra_identifiers=extra)
    )
    assert mine.status == 201
    cruid = (settings.cruid_system, mine.headers["X-CRUID"])
    for source, target, wanted in (
        (identifiers.token(accented, "TS-2"), identifiers.search_escape(comma), (comma, "TS-1")),
        (identifiers.token(comma, "TS-1"), unicodedata.normalize("NFD", accented), (accented, "TS-2")),
        (identifiers.token(comma, "TS-1"), f"{accented},{settings.cruid_system}", (accented, "TS-2")),
    ):
        resp = await client.get(
            "/fhir/Patient/$ihe-pix", params={"sourceIdentifier": source, "targetSystem": target}
        )
        assert resp.status == 200, (target, await resp.text())
        found = _identifiers(await resp.json(content_type=None))
        assert found == ({wanted, cruid} if settings.cruid_system in target else {wanted}), target


@pytest.mark.parametrize("special", ["A$1", "A\\1", "A|1"])
async def test_values_with_search_syntax_characters_are_their_own_records(client, settings, special):
    system = _system()
    plain = await _submit(client, system, "A1", given="Kato", birth_date="1950-01-01")
    marked = await _submit(client, system, special, given="Zuri", birth_date="2001-09-30")
    assert marked["status"] == 201 and marked["cruid"] != plain["cruid"]
    resp = await client.get("/fhir/Patient/$ihe-pix", params={"sourceIdentifier": f"{system}|{special}"})
    assert resp.status == 200
    assert (settings.cruid_system, marked["cruid"]) in _identifiers(await resp.json(content_type=None))


async def test_a_trailing_space_is_the_same_identifier(client, store):
    system = _system()
    first = await _submit(client, system, "MRN-9 ")
    second = await _submit(client, system, "MRN-9")
    assert (first["status"], second["status"]) == (201, 200)
    assert first["location"].split("/_history")[0] == second["location"].split("/_history")[0]
    [stored] = await store.sources_with(system)
    assert stored["identifier"][0]["value"] == "MRN-9"


async def test_a_bar_in_a_system_cannot_take_over_another_record(client, store):
    """system `urn:sys:a|x` value `1` and system `urn:sys:a` value `x|1` once had one record key."""
    base = _system()
    resp = await client.post("/fhir/Patient", json=patient(f"{base}|x", "1", family=unique_surname()))
    assert resp.status == 400
    outcome = await resp.json(content_type=None)
    assert outcome["issue"][0]["expression"] == ["Patient.identifier[0]"]
    assert await store.sources_with(f"{base}|x") == []
    family = unique_surname()
    other = await client.post("/fhir/Patient", json=patient(base, "x|1", family=family))
    assert other.status == 201
    conditional = await client.put(
        "/fhir/Patient", params={"identifier": f"{base}|x|1"}, json=patient(base, "x|1", family=family)
    )
    assert conditional.status == 200 and conditional.headers["X-CRUID"] == other.headers["X-CRUID"]


async def test_a_cruid_with_a_path_suffix_reads_nothing(client, settings):
    mine = await _submit(client, _system(), "P1")
    cruid_system = settings.cruid_system
    for suffix in ("/_history/1", "?_elements=identifier", "/../cr-x"):
        resp = await client.get(
            "/fhir/Patient/$ihe-pix", params={"sourceIdentifier": f"{cruid_system}|{mine['cruid']}{suffix}"}
        )
        assert resp.status == 404, suffix
    ok = await client.get(
        "/fhir/Patient/$ihe-pix", params={"sourceIdentifier": f"{cruid_system}|{mine['cruid']}"}
    )
    assert ok.status == 200


async def test_ids_in_urls_are_checked(client):
    system = _system()
    body = patient(system, "Q1", family=unique_surname())
    resp = await client.put("/fhir/Patient/src-1$x", json=body)
    assert resp.status == 400
    bundle = {
        "resourceType": "Bundle",
        "type": "batch",
        "entry": [{"resource": body, "request": {"method": "PUT", "url": "Patient/src-1%2F_history"}}],
    }
    resp = await client.post("/fhir", json=bundle)
    answer = await resp.json(content_type=None)
    assert answer["entry"][0]["response"]["status"].startswith("400")


async def test_dot_segments_are_not_ids(client):
    """`DELETE Patient/.` in a batch once read HAPI's search of every Patient as the record to delete, and
    `Patient/..` the server's base; a POS merge could name either as its survivor."""
    system, family = _system(), unique_surname()
    await _submit(client, system, "DOT-1")
    entries = [{"request": {"method": "DELETE", "url": url}} for url in ("Patient/.", "Patient/..")]
    resp = await client.post("/fhir", json={"resourceType": "Bundle", "type": "batch", "entry": entries})
    answer = await resp.json(content_type=None)
    for entry in answer["entry"]:
        assert entry["response"]["status"].startswith("400")
        assert "is not a FHIR id" in entry["response"]["outcome"]["issue"][0]["diagnostics"]
    merged = patient(system, "DOT-2", family=family)
    merged["link"] = [{"type": "replaced-by", "other": {"reference": "Patient/.."}}]
    resp = await client.post("/fhir/Patient", json=merged)
    assert resp.status == 400
    outcome = await resp.json(content_type=None)
    assert outcome["issue"][0]["expression"] == ["Patient.link[0]"]


async def test_a_bundle_update_names_one_record_and_a_lookup_one_identifier(client, store):
    """A batch's `PUT Patient/<id>` with another id in the resource was written (the direct PUT refuses it),
    and `$ihe-pix` with two sourceIdentifiers answered for the first one alone."""
    system, family = _system(), unique_surname()
    mine = await _submit(client, system, "ONE-1")
    source_id = mine["location"].split("/")[1]
    body = {**patient(system, "ONE-1", family=family), "id": records.source_record_id(system, "ONE-2")}
    entry = {"resource": body, "request": {"method": "PUT", "url": f"Patient/{source_id}"}}
    resp = await client.post("/fhir", json={"resourceType": "Bundle", "type": "batch", "entry": [entry]})
    [answer] = (await resp.json(content_type=None))["entry"]
    assert answer["response"]["status"].startswith("400")
    assert answer["response"]["outcome"]["issue"][0]["expression"] == ["Bundle.entry[0].resource.id"]
    [stored] = await store.sources_with(system)
    assert stored["meta"]["versionId"] == "1"  # nothing written
    resp = await client.get(
        f"/fhir/Patient/$ihe-pix?sourceIdentifier={system}|ONE-1&sourceIdentifier=urn:other|x"
    )
    assert resp.status == 400


async def test_an_update_by_id_finds_its_identifier_wherever_it_is_listed(client, store):
    """`PUT Patient/<record of O1>` with identifiers [O2, O1] was refused (400): the first one was taken as
    the key. The record is updated; another client's identifier never names it (it is not `own`)."""
    system, family = _system(), unique_surname()
    first = await _submit(client, system, "O1")
    source_id = first["location"].split("/")[1]
    body = patient(system, "O2", family=family, extra_identifiers=[{"system": system, "value": "O1"}])
    resp = await client.put(f"/fhir/Patient/{source_id}", json=body)
    assert resp.status == 200, await resp.text()
    assert resp.headers["Location"].startswith(f"Patient/{source_id}/")
    [stored] = await store.sources_with(system)
    assert stored["id"] == source_id and stored["name"][0]["family"] == family
    elsewhere = await client.put(f"/fhir/Patient/{source_id}", json=patient(system, "O3", family=family))
    assert elsewhere.status == 400


async def test_an_identifier_accepted_can_be_looked_up(client):
    """A value of 8,000 characters was stored (201) but `$ihe-pix` could never find it (HAPI refused the
    search: 422); one of 2,000 `é` did not even fit the mediator's request line. The longest value accepted,
    of the characters that take most room in a URL, is found."""
    system = _system()
    for value in ("a" * 8000, "a" * (identifiers.MAX_LENGTH + 1)):
        resp = await client.post("/fhir/Patient", json=patient(system, value, family=unique_surname()))
        assert resp.status == 400
        assert (await resp.json(content_type=None))["issue"][0]["expression"] == ["Patient.identifier[0]"]
    for char in (",", "\U00010348"):  # escaped in a search; 4 bytes of UTF-8 (Gothic hwair)
        longest = await _submit(client, system, char * identifiers.MAX_LENGTH)
        resp = await client.get(
            "/fhir/Patient/$ihe-pix",
            params={"sourceIdentifier": identifiers.token(system, char * identifiers.MAX_LENGTH)},
        )
        assert resp.status == 200, await resp.text()
        assert longest["cruid"] in {v for _, v in _identifiers(await resp.json(content_type=None))}


async def test_one_identifier_spelled_twice_in_a_bundle_is_one_record(client, store):
    """A transaction writes each record once: two spellings of one identifier are refused together (400,
    nothing written); a batch decides them one after the other, on one record."""
    system, family = _system(), unique_surname()
    spellings = ["Zoé-7", unicodedata.normalize("NFD", "Zoé-7") + " ", "Ｚｏé-７"]
    entries = [
        {"resource": patient(system, value, family=family), "request": {"method": "POST", "url": "Patient"}}
        for value in spellings[:2]
    ]
    entries.append(
        {
            "resource": patient(system, spellings[2], family=family),
            "request": {
                "method": "PUT",
                "url": "Patient?" + urlencode({"identifier": f"{system}|{spellings[2]}"}),
            },
        }
    )
    resp = await client.post(
        "/fhir", json={"resourceType": "Bundle", "type": "transaction", "entry": entries}
    )
    assert resp.status == 400
    assert await store.sources_with(system) == []
    resp = await client.post("/fhir", json={"resourceType": "Bundle", "type": "batch", "entry": entries})
    answer = await resp.json(content_type=None)
    statuses = [e["response"]["status"] for e in answer["entry"]]
    assert statuses == ["201 Created", "200 OK", "200 OK"]
    assert len({e["response"]["location"].split("/_history")[0] for e in answer["entry"]}) == 1
    [stored] = await store.sources_with(system)
    assert stored["identifier"][0]["value"] == "Zoé-7"


async def test_unicode_spellings_are_one_record_or_refused(client, store):
    """Eleven spellings once became eleven people."""
    system = _system()
    first = await _submit(client, system, "Zoé-12")
    same = [unicodedata.normalize("NFD", "Zoé-12"), "Ｚｏé-１２", " Zoé-12"]
    for spelling in same:
        again = await _submit(client, system, spelling)
        assert (again["status"], again["cruid"]) == (200, first["cruid"]), ascii(spelling)
    refused_spellings = ("Zoé\u200b-12", "\ufeffZoé-12", "Zo\u202eé-12", "Zoе-12", "Zoé\u034f-12")
    for refused in refused_spellings:  # Cyrillic е; a combining grapheme joiner
        resp = await client.post("/fhir/Patient", json=patient(system, refused, family=unique_surname()))
        assert resp.status == 400, ascii(refused)
        outcome = await resp.json(content_type=None)
        assert outcome["issue"][0]["expression"] == ["Patient.identifier[0]"]
    assert len(await store.sources_with(system)) == 1


async def test_a_system_in_other_letter_case_is_another_identifier(client, store, settings):
    """FHIR compares URIs case-sensitively and HAPI searches them so: `URN:…|X1` is not `urn:…|X1`. It keys
    its own record and never reaches the other one's record or person."""
    system = _system()
    lower = await _submit(client, system, "X1", given="Kato", birth_date="1950-01-01")
    upper = await _submit(client, system.upper(), "X1", given="Zuri", birth_date="2001-09-30")
    assert upper["status"] == 201 and upper["cruid"] != lower["cruid"]
    [stored] = await store.sources_with(system)
    assert stored["meta"]["versionId"] == "1"  # untouched
    for spelled, person in ((system, lower), (system.upper(), upper)):
        resp = await client.get("/fhir/Patient/$ihe-pix", params={"sourceIdentifier": f"{spelled}|X1"})
        assert _identifiers(await resp.json(content_type=None)) == {(settings.cruid_system, person["cruid"])}


async def test_an_identifier_held_by_two_people_is_not_answered_with_one(client, settings):
    """A shared identifier (national id) on the records of two people: the lookup names neither."""
    nid_system = settings.shared_identifier_systems[0]
    nid = {"system": nid_system, "value": f"NID-{uuid.uuid4().hex[:8]}"}
    a = await _submit(client, _system(), "A", extra_identifiers=[nid], given="Kato", birth_date="1950-01-01")
    b = await _submit(client, _system(), "B", extra_identifiers=[nid], given="Zuri", birth_date="2001-09-30")
    assert a["cruid"] != b["cruid"]
    resp = await client.get(
        "/fhir/Patient/$ihe-pix", params={"sourceIdentifier": f"{nid_system}|{nid['value']}"}
    )
    assert resp.status == 409
    outcome = await resp.json(content_type=None)
    assert outcome["issue"][0]["code"] == "multiple-matches"


# -- closed mode: who may look up what --------------------------------------------------------------------


async def test_closed_mode_lookups_need_a_known_client_and_see_only_its_domains(closed, store):
    client, settings, clinic, lab = closed.client, closed.settings, closed.clinic, closed.lab
    a = closed.clinic_answer
    query = {"sourceIdentifier": f"{clinic}|C1"}
    assert (await client.get("/fhir/Patient/$ihe-pix", params=query)).status == 403
    unknown = await client.get(
        "/fhir/Patient/$ihe-pix", params=query, headers={"X-OpenHIM-ClientID": "intruder"}
    )
    assert unknown.status == 403
    seen = await client.get("/fhir/Patient/$ihe-pix", params=query, headers={"X-OpenHIM-ClientID": "clinic"})
    assert seen.status == 200
    params = await seen.json(content_type=None)
    assert _identifiers(params) == {(settings.cruid_system, a["X-CRUID"])}  # not the lab's L1
    refs = {p["valueReference"]["reference"] for p in params["parameter"] if p["name"] == "targetId"}
    assert refs == {a["LocationCRUID"], a["Location"].split("/_history")[0]}
    into_lab = await client.get(
        "/fhir/Patient/$ihe-pix",
        params={**query, "targetSystem": lab},
        headers={"X-OpenHIM-ClientID": "clinic"},
    )
    assert into_lab.status == 403
    by_lab_id = await client.get(
        "/fhir/Patient/$ihe-pix",
        params={"sourceIdentifier": f"{lab}|L1"},
        headers={"X-OpenHIM-ClientID": "clinic"},
    )
    assert by_lab_id.status == 403
    events = await store.search("AuditEvent", {"subtype": "urn:ihe:event-type-code|ITI-83", "_count": "500"})
    refused = [e for e in events if e.get("outcome") == "4" and "intruder" in str(e.get("agent"))]
    assert refused, "a refused lookup is audited too"
