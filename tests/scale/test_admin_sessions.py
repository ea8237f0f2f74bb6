"""Admin sessions across real replicas and restarts: two ``python -m mediator`` processes sharing one user
file and session key (as behind a load balancer), and the operator's CLI changing a password."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import aiohttp
from cryptography.fernet import Fernet

from mediator.admin.users import UserStore
from tests.scale.conftest import REPO, mediator_process

PASSWORD = "correct horse battery staple"


async def _login(url: str) -> tuple[aiohttp.ClientSession, dict[str, str]]:
    """A browser-like session logged in as alice at ``url``; and the headers replaying its cookie + CSRF."""
    http = aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))
    async with http.post(f"{url}/admin/api/login", json={"username": "alice", "password": PASSWORD}) as r:
        assert r.status == 200, await r.text()
        csrf = (await r.json())["csrf"]
    cookie = next(c for c in http.cookie_jar if c.key == "cr_admin").value
    return http, {"Cookie": f"cr_admin={cookie}", "X-CSRF-Token": csrf}


async def _me(url: str, replay: dict[str, str]) -> int:
    async with aiohttp.ClientSession() as http, http.get(f"{url}/admin/api/me", headers=replay) as r:
        return r.status


async def test_logout_and_a_new_password_end_sessions_on_every_replica_and_after_restart(
    hapi_url: str, tmp_path: Path
):
    users = tmp_path / "users.json"
    UserStore(users).set_password("alice", PASSWORD)
    env = {
        "CR_HAPI_URL": hapi_url,
        "CR_ADMIN_USERS_FILE": str(users),
        "CR_ADMIN_SECRET_KEY": Fernet.generate_key().decode(),
        "CR_JOBS_DIR": str(tmp_path / "jobs"),
        "CR_RULES_POLL_S": "0",
    }
    with mediator_process(env, tmp_path / "two.log") as two:
        with mediator_process(env, tmp_path / "one.log") as one:
            http, replay = await _login(one)
            await http.close()
            assert await _me(two, replay) == 200  # one cookie, valid on both replicas
            async with aiohttp.ClientSession() as other:
                async with other.post(f"{two}/admin/api/logout", headers=replay) as r:
                    assert r.status == 200
                undo = {"patient": "cr-x"}
                async with other.post(f"{one}/admin/api/undo", json=undo, headers=replay) as r:
                    assert r.status == 401  # the old cookie and CSRF token, replayed on the other replica
            assert await _me(one, replay) == 401
            kept, kept_replay = await _login(one)
            await kept.close()

        with mediator_process(env, tmp_path / "one-again.log") as one:  # replica one restarted
            assert await _me(one, kept_replay) == 200  # an open session stays open
            assert await _me(one, replay) == 401  # an ended one stays ended

            sessions = [await _login(one), await _login(two)]
            for http, _ in sessions:
                await http.close()
            replays = [kept_replay] + [h for _, h in sessions]
            assert [await _me(url, h) for url in (one, two) for h in replays] == [200] * 6
            cli = await asyncio.create_subprocess_exec(  # the operator sets a new password
                sys.executable,
                "-m",
                "mediator.admin",
                "create-user",
                "alice",
                stdin=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                cwd=REPO,
                env={**env, "PATH": "/usr/bin:/bin"},
            )
            _, err = await asyncio.wait_for(cli.communicate(b"a brand new passphrase\n"), 60)
            assert cli.returncode == 0, err
            assert [await _me(url, h) for url in (one, two) for h in replays] == [401] * 6
