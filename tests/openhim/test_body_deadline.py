"""Behind OpenHIM, a body that does not arrive in time is answered 408 inside the mediator envelope."""

from __future__ import annotations

import asyncio
import json

from tests.openhim.conftest import behind


async def test_a_slow_body_is_an_enveloped_408(core, offline_settings, start_mediator):
    # a client map in force, or the request would be refused (503) before its body is read
    clients = {"clinic-a": ("http://a.example.org/mrn",)}
    settings = behind(core, offline_settings, body_timeout_s=0.5, client_systems=clients)
    client, _ = await start_mediator(settings)
    head = (
        "POST /fhir/Patient HTTP/1.1\r\nHost: client-registry\r\nContent-Type: application/fhir+json\r\n"
        f"X-OpenHIM-TransactionID: {'a' * 24}\r\nX-OpenHIM-ClientID: clinic-a\r\nContent-Length: 1000\r\n\r\n"
    )
    reader, writer = await asyncio.open_connection("127.0.0.1", client.server.port)
    try:
        writer.write(head.encode() + b'{"resourceType": "Pat')
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), 30)  # until the mediator closes the connection
    finally:
        writer.close()
    head_out, _, payload = answer.partition(b"\r\n\r\n")
    assert b"application/json+openhim" in head_out, head_out
    envelope = json.loads(payload)
    assert envelope["response"]["status"] == 408
    assert json.loads(envelope["response"]["body"])["issue"][0]["code"] == "timeout"
