"""A real OpenHIM core (v8.5.0 built by ../shared/openhim-real/build.sh, run by start.sh) as the suite
sees it: its API as root, the
router on :5001, an idempotent bootstrap (what bootstrap.sh does once), and a restart of the core process.

The core's folder is ``CR_TEST_OPENHIM_CORE`` (``build.sh CORE_GIT DIR``'s DIR): ``certs/ca.crt`` verifies the
API's certificate, ``openhim.pid`` is the core process that start.sh started (the suite stops only that one).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import ssl
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp

from mediator.openhim_auth import basic_header
from tests.openhim_real.mkclient import pos_client

HERE = Path(__file__).resolve().parent
API = "https://127.0.0.1:8080"
ROUTER = "http://127.0.0.1:5001"
ROOT = ("root@openhim.org", "openhim-password")
MEDIATOR_USER = ("client-registry@openhim.local", "Mediator-Pass-1")  # group admin (v8.5.0)
VIEWER = ("viewer@openhim.local", "Viewer-Pass-1")  # group 'users': no mediator rights on v8.5.0
CLIENTS = {"emr-kisenyi": "kisenyi-pw", "emr-mulago": "mulago-pw"}  # role client-registry-pos
URN = "urn:mediator:client-registry"
URN_PATH = quote(URN, safe="")
CHANNEL = "Client Registry - FHIR Patient"


class RealCore:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.ca_file = str(folder / "certs" / "ca.crt")
        self.ssl = ssl.create_default_context(cafile=self.ca_file)

    # -- the API ----------------------------------------------------------------------------------------
    async def api(
        self, method: str, path: str, body: Any = None, *, user: tuple[str, str] = ROOT
    ) -> tuple[int, Any]:
        """One API call; the answer's JSON if it is JSON, else its text."""
        async with (
            aiohttp.ClientSession() as session,
            session.request(
                method,
                API + path,
                json=body,
                headers=basic_header(*user),
                ssl=self.ssl,
                timeout=aiohttp.ClientTimeout(total=30),
            ) as resp,
        ):
            text = await resp.text()
            try:
                return resp.status, json.loads(text)
            except ValueError:
                return resp.status, text

    async def route(
        self, method: str, path: str, body: Any = None, *, client: str = "emr-kisenyi"
    ) -> tuple[int, dict[str, str], Any]:
        """A POS request to the router on :5001 with the client's Basic auth."""
        async with (
            aiohttp.ClientSession() as session,
            session.request(
                method,
                ROUTER + path,
                data=json.dumps(body) if body is not None else None,
                headers={**basic_header(client, CLIENTS[client]), "Content-Type": "application/fhir+json"},
                timeout=aiohttp.ClientTimeout(total=60),
            ) as resp,
        ):
            text = await resp.text()
            try:
                parsed: Any = json.loads(text)
            except ValueError:
                parsed = text
            return resp.status, dict(resp.headers), parsed

    async def up(self) -> bool:
        try:
            status, _ = await self.api("GET", "/heartbeat")
        except (aiohttp.ClientError, OSError, TimeoutError):
            return False
        return status == 200

    # -- state ------------------------------------------------------------------------------------------
    async def bootstrap(self) -> None:
        """The API users and the POS clients, created if missing; the users' passwords set with PUT (on
        v8.5.0 a password given to POST /users is stored unhashed and Basic login fails)."""
        for (email, password), groups in ((MEDIATOR_USER, ["admin"]), (VIEWER, ["users"])):
            status, _ = await self.api("GET", f"/users/{email}")
            if status == 404:
                user = {"email": email, "firstname": "Test", "surname": email.split("@")[0], "groups": groups}
                status, text = await self.api("POST", "/users", user)
                assert status == 201, (status, text)
            status, text = await self.api("PUT", f"/users/{email}", {"email": email, "password": password})
            assert status == 200, (status, text)
        status, existing = await self.api("GET", "/clients")
        assert status == 200, existing
        known = {c.get("clientID") for c in existing}
        for client_id, password in CLIENTS.items():
            if client_id in known:
                continue
            status, text = await self.api("POST", "/clients", pos_client(client_id, password))
            assert status == 201, (status, text)

    async def channel(self) -> dict[str, Any] | None:
        status, channels = await self.api("GET", "/channels")
        assert status == 200, channels
        return next((c for c in channels if c.get("name") == CHANNEL), None)

    async def forget_mediator(self) -> None:
        """No mediator and no default channel: each test starts as on a core that never saw us."""
        status, text = await self.api("DELETE", f"/mediators/{URN_PATH}")
        assert status == 200, (status, text)
        channel = await self.channel()
        if channel is not None:  # a channel with transactions would only be flagged 'deleted', name kept
            filters = quote(json.dumps({"channelID": channel["_id"]}))
            while True:
                status, txs = await self.api("GET", f"/transactions?filterLimit=100&filters={filters}")
                assert status == 200, (status, txs)
                if not txs:
                    break
                for tx in txs:
                    status, text = await self.api("DELETE", f"/transactions/{tx['_id']}")
                    assert status == 200, (status, text)
            status, text = await self.api("DELETE", f"/channels/{channel['_id']}")
            assert status == 200, (status, text)
        assert await self.channel() is None

    async def mediator(self) -> dict[str, Any] | None:
        status, doc = await self.api("GET", f"/mediators/{URN_PATH}")
        return doc if status == 200 else None

    async def transaction(self, tx_id: str) -> dict[str, Any]:
        status, tx = await self.api("GET", f"/transactions/{tx_id}")
        assert status == 200, (status, tx)
        return dict(tx)

    # -- the process ------------------------------------------------------------------------------------
    def start(self) -> None:
        """start.sh: FerretDB and the core, each unless it answers already; returns once the API answers."""
        subprocess.run(
            [str(HERE / "start.sh"), str(self.folder)], check=True, capture_output=True, timeout=300
        )

    async def restart(self) -> None:
        """Stop the core process start.sh started (its pid file), wait until its API is gone, start again."""
        pid = int((self.folder / "openhim.pid").read_text().strip())
        os.kill(pid, signal.SIGTERM)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 60
        while await self.up():
            assert loop.time() < deadline, "the core did not stop"
            await asyncio.sleep(0.2)  # polling a condition, not synchronising on time
        await asyncio.to_thread(self.start)
