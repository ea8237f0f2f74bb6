"""An in-process emulator of the OpenHIM core, for tests: its mediator API and its router's side of a request.

Modelled on jembi/openhim-core-js @ fdfa87b (master, after v8.5.0); each behaviour cites the file it copies.
``CoreEmulator(core_version="8.5.0")`` checks permissions as the released v8.5.0 does (tag v8.5.0, f451ea27):
every mediator endpoint wants the user in group ``admin`` (src/api/authorisation.js ``inGroup``), and
``GET /channels`` shows a non-admin only the channels whose ``txViewAcl`` holds one of its groups. The role
permissions (``mediator-manage-all``, ...; src/utils.js ``checkUserPermission``) exist on master only.

- routes: src/koaApi.js (``GET /authenticate/:username`` is public; everything else needs authentication);
- authentication: src/api/authentication.js (``requestType``: any ``auth-*`` header → token, else
  ``Authorization: Basic`` → basic, else 401), src/protocols/token.js (token check and time window),
  src/api/users.js ``authenticateToken`` (salt look-up, 404 for an unknown user);
- permissions: src/utils.js ``checkUserPermission`` (403 for a user without an access role / the permission);
  v8.5.0: src/api/mediators.js ``authorisation.inGroup('admin', ...)`` (403 "User ... is not an admin, API
  access to <function> denied."; heartbeat, setConfig and loadDefaultChannels say ``removeMediator``);
- mediators: src/api/mediators.js ``addMediator`` (semver checks, ``validateConfigDefs``/``validateConfig``,
  ``semver.gt`` replacement that keeps stored config values, "At least 1 endpoint is required"),
  ``heartbeat`` (config iff ``_configModifiedTS > _lastHeartbeat`` or ``config: true``; else ''),
  ``setConfig`` (PUT, validated, 200), ``loadDefaultChannels`` (201; 404; 400 for unknown names);
  src/model/mediators.js (``configParamTypes``), src/model/channels.js (channel ``name`` unique index);
- routing: src/middleware/messageStore.js (``X-OpenHIM-TransactionID``, ``setFinalStatus``),
  src/middleware/basicAuthentication.js (``X-OpenHIM-ClientID``), src/middleware/proxy.js
  (``X-Forwarded-For``/``-Host``), src/middleware/router.js (``application/json+openhim`` envelope),
  src/model/transactions.js (orchestrations: ``name`` and ``request.timestamp`` required, string bodies).

Controllable: ``start()`` (also late), ``stop()``, ``restart(wipe=True)`` (an empty database),
``forget(urn)`` (or ``DELETE /mediators/:urn`` as on the real core).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import re
import secrets
import socket
import ssl
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
from aiohttp import web

ROOT_EMAIL = "root@openhim.org"  # src/server.js creates the root user with this password
ROOT_PASSWORD = "openhim-password"
CONFIG_PARAM_TYPES = ("string", "bool", "number", "option", "bigstring", "map", "struct", "password")
TX_STATUSES = (  # src/model/transactions.js transactionStatus
    "Processing",
    "Pending Async",
    "Successful",
    "Completed",
    "Completed with error(s)",
    "Failed",
)
AUTH_WINDOW_S = 10  # config/default.json api.authWindowSeconds
CORE_VERSIONS = ("master", "8.5.0")  # how permissions are checked (module docstring)
# v8.5.0: the function name each mediator endpoint's 403 names (copy-pasted 'removeMediator' included)
V850_DENIED_AS = {
    ("POST", "/mediators"): "addMediator",
    ("GET", "/mediators/{urn}"): "getMediator",
    ("DELETE", "/mediators/{urn}"): "removeMediator",
    ("POST", "/mediators/{urn}/heartbeat"): "removeMediator",
    ("PUT", "/mediators/{urn}/config"): "removeMediator",
    ("POST", "/mediators/{urn}/channels"): "removeMediator",
}


JSON_BODY = web.RequestKey("json_body", object)
USER = web.RequestKey("user", object)


class ValidationError(Exception):
    """Mirrors the JS errors named 'ValidationError' that the core turns into 400."""


# -- semver (the subset the core's ``semver.valid``/``semver.gt`` decide on) ---------------------------------
_SEMVER = re.compile(
    r"^v?(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)(?:-([0-9A-Za-z.-]+))?(?:\+[0-9A-Za-z.-]+)?$"
)


def semver_valid(version: Any) -> bool:
    return isinstance(version, str) and _SEMVER.match(version.strip()) is not None


def _semver_key(version: str) -> tuple[Any, ...]:
    m = _SEMVER.match(version.strip())
    assert m is not None
    major, minor, patch, pre = m.groups()
    pre_key: tuple[Any, ...] = (
        (1,) if pre is None else (0, *((0, int(p)) if p.isdigit() else (1, p) for p in pre.split(".")))
    )
    return (int(major), int(minor), int(patch), pre_key)


def semver_gt(a: str, b: str) -> bool:
    return _semver_key(a) > _semver_key(b)


# -- src/api/mediators.js validateConfigDef / validateConfig, ported line by line ---------------------------
def _js_object(value: Any) -> bool:
    """JS ``typeof value === 'object'``: objects, arrays and null."""
    return value is None or isinstance(value, dict | list)


def validate_config_def(d: Mapping[str, Any]) -> None:
    if d.get("type") not in CONFIG_PARAM_TYPES:  # mongoose enum on configDef.type (src/model/mediators.js)
        raise ValidationError(f"`{d.get('type')}` is not a valid enum value for path `type`.")
    if d["type"] == "struct" and not d.get("template"):
        raise ValidationError(f"Must specify a template for struct param '{d.get('param')}'")
    if d["type"] == "struct":
        for item in d["template"]:
            if not item.get("param"):
                raise ValidationError(
                    f"Must specify field 'param' in template definition for param '{d.get('param')}'"
                )
            if not item.get("type"):
                raise ValidationError(
                    f"Must specify field 'type' in template definition for param '{d.get('param')}'"
                )
            if item["type"] == "struct":
                raise ValidationError(
                    f"May not recursively specify 'struct' in template definitions (param '{d.get('param')}')"
                )
    elif d["type"] == "option":
        if not isinstance(d.get("values"), list):
            raise ValidationError(f"Expected field 'values' to be an array (option param '{d.get('param')}')")
        if len(d["values"]) == 0:
            raise ValidationError(f"Must specify a values array for option param '{d.get('param')}'")


def _validate_field(param: str, d: Mapping[str, Any], value: Any) -> None:
    kind = d["type"]
    if kind in ("string", "bigstring", "password") and not isinstance(value, str):
        raise ValidationError(f"Expected config param {param} to be a string.")
    if kind == "number" and (not isinstance(value, int | float) or isinstance(value, bool)):
        raise ValidationError(f"Expected config param {param} to be a number.")
    if kind == "bool" and not isinstance(value, bool):
        raise ValidationError(f"Expected config param {param} to be a boolean.")
    if kind == "option" and value not in d.get("values", []):
        raise ValidationError(f"Expected config param {param} to be one of {d.get('values')}")
    if kind == "map":
        if not _js_object(value):
            raise ValidationError(f"Expected config param {param} to be an object.")
        items = value.values() if isinstance(value, dict) else (value or [])
        if not all(isinstance(v, str) for v in items):
            raise ValidationError(f"Expected config param {param} to only contain string values.")
    if kind == "struct":
        if not _js_object(value):
            raise ValidationError(f"Expected config param {param} to be an object.")
        template = [t["param"] for t in d["template"]]
        for key in value or {}:
            if key not in template:
                raise ValidationError(
                    f"Field {key} is not defined in template definition for config param {param}."
                )


def validate_config(defs: list[Mapping[str, Any]], config: Mapping[str, Any]) -> None:
    for param, value in config.items():
        matching = [d for d in defs if d.get("param") == param]
        if not matching:
            raise ValidationError(f"No config definition found for parameter {param}")
        for d in matching:
            if d.get("array"):
                if not isinstance(value, list):
                    raise ValidationError(f"Expected config param {param} to be an array of type {d['type']}")
                for i, item in enumerate(value):
                    _validate_field(f"{param}[{i}]", d, item)
            else:
                _validate_field(param, d, value)


def validate_registration(doc: Any) -> None:
    """What ``addMediator`` checks before touching the database (plus the schema's required fields)."""
    if not isinstance(doc, dict):
        raise ValidationError("body must be a JSON object")
    if not doc.get("urn"):
        raise ValidationError("URN is required")
    if not semver_valid(doc.get("version")):
        raise ValidationError("Version is required. Must be in SemVer form x.y.z")
    if doc.get("configDefs"):
        for d in doc["configDefs"]:
            validate_config_def(d)
        if doc.get("config") is not None:
            validate_config(doc["configDefs"], doc["config"])
    if not doc.get("name"):  # src/model/mediators.js: name required
        raise ValidationError("Mediator validation failed: name: Path `name` is required.")
    for channel in doc.get("defaultChannelConfig", []):  # src/model/channels.js ChannelDef
        if not channel.get("name") or not channel.get("urlPattern"):
            raise ValidationError("Channel validation failed: name and urlPattern are required.")
        for route in channel.get("routes", []):
            if not route.get("name"):
                raise ValidationError("Channel validation failed: routes.name is required.")


def minimized(value: Any) -> Any:
    """What MongoDB keeps of a config: mongoose's ``minimize`` (on by default) drops empty objects when it
    saves, so ``"clientSystems": {}`` comes back from the real core as no ``clientSystems`` at all (seen on a
    real core v8.5.0, tests/openhim_real)."""
    if isinstance(value, dict):
        kept = {k: minimized(v) for k, v in value.items()}
        return {k: v for k, v in kept.items() if v != {}}
    return value


# -- state ---------------------------------------------------------------------------------------------------
@dataclass
class User:
    email: str
    password: str
    roles: tuple[str, ...] = ("admin",)  # master: role with every permission; () = no access role → 403
    may_view_channels: bool = True  # master: False = a role with mediator permissions only (sees no channel)
    groups: tuple[str, ...] = ("admin",)  # v8.5.0: 'admin' or not is all the mediator endpoints look at
    salt: str = field(default_factory=lambda: secrets.token_hex(16))
    token_passport: bool = True  # users created in a v7.2+ console have none (404 on the salt look-up)

    @property
    def password_hash(self) -> str:
        return hashlib.sha512((self.salt + self.password).encode()).hexdigest()


@dataclass
class Transaction:
    id: str
    client_id: str | None
    method: str
    path: str
    status: str = "Processing"
    response: dict[str, Any] = field(default_factory=dict)  # what the client gets: status, headers, body
    mediator_urn: str | None = None
    orchestrations: list[dict[str, Any]] = field(default_factory=list)
    properties: dict[str, Any] = field(default_factory=dict)
    error: dict[str, Any] | None = None
    enveloped: bool = False
    problems: list[str] = field(default_factory=list)  # what the real core would choke on

    def json(self) -> Any:
        return json.loads(self.response["body"])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _now_ms() -> float:
    return time.time()


class CoreEmulator:
    def __init__(
        self,
        *,
        port: int | None = None,
        ssl_context: ssl.SSLContext | None = None,
        core_version: str = "master",
    ) -> None:
        if core_version not in CORE_VERSIONS:
            raise ValueError(f"core_version must be one of {CORE_VERSIONS}")
        self.core_version = core_version
        self.port = port or free_port()
        self.ssl_context = ssl_context
        self.users: dict[str, User] = {}
        self.mediators: dict[str, dict[str, Any]] = {}
        self.channels: dict[str, dict[str, Any]] = {}
        self.api_log: list[tuple[str, str, int, Any]] = []  # method, path, status, request body
        self.transactions: list[Transaction] = []
        self.fail_next_registrations = 0  # answer that many POST /mediators with 500 (a core in trouble)
        self.fail_next_channel_installs = 0  # answer that many POST /mediators/:urn/channels with 500
        self._runner: web.AppRunner | None = None
        self._changed = asyncio.Condition()
        self.reset_users()

    def reset_users(self) -> None:
        self.users = {ROOT_EMAIL: User(ROOT_EMAIL, ROOT_PASSWORD)}

    def add_user(self, email: str, password: str, **kwargs: Any) -> User:
        user = User(email, password, **kwargs)
        self.users[email] = user
        return user

    @property
    def url(self) -> str:
        scheme = "https" if self.ssl_context else "http"
        return f"{scheme}://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self._runner is not None

    # -- control -------------------------------------------------------------------------------------------
    async def start(self) -> None:
        app = web.Application(middlewares=[self._log_middleware])
        app.router.add_get("/authenticate/{email}", self._authenticate_token)
        app.router.add_post("/mediators", self._add_mediator)
        app.router.add_get("/mediators/{urn}", self._get_mediator)
        app.router.add_delete("/mediators/{urn}", self._remove_mediator)
        app.router.add_post("/mediators/{urn}/heartbeat", self._heartbeat)
        app.router.add_put("/mediators/{urn}/config", self._set_config)
        app.router.add_post("/mediators/{urn}/channels", self._load_default_channels)
        app.router.add_get("/channels", self._get_channels)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", self.port, ssl_context=self.ssl_context)
        await site.start()
        self._runner = runner

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def restart(self, *, wipe: bool = True) -> None:
        """Stop and start on the same port; ``wipe`` = an empty database (no mediators, no channels)."""
        await self.stop()
        if wipe:
            self.mediators.clear()
            self.channels.clear()
        await self.start()

    def forget(self, urn: str) -> None:
        """Delete a mediator as ``DELETE /mediators/:urn`` does (its next heartbeat gets 404)."""
        self.mediators.pop(urn, None)

    async def wait_for(self, predicate: Callable[[], bool], within_s: float = 10.0) -> None:
        async with asyncio.timeout(within_s), self._changed:
            await self._changed.wait_for(predicate)

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    def calls(
        self, method: str, path_prefix: str, status: int | None = None
    ) -> list[tuple[str, str, int, Any]]:
        return [
            c
            for c in self.api_log
            if c[0] == method and c[1].startswith(path_prefix) and (status is None or c[2] == status)
        ]

    def heartbeats(self, urn: str, status: int | None = 200) -> list[Any]:
        return [c[3] for c in self.calls("POST", f"/mediators/{urn}/heartbeat", status)]

    # -- console (the openhim-console MediatorConfig $resource uses PUT) -------------------------------------
    async def console_set_config(
        self, urn: str, config: Mapping[str, Any], *, email: str = ROOT_EMAIL, password: str = ROOT_PASSWORD
    ) -> tuple[int, str]:
        async with (
            aiohttp.ClientSession() as session,
            session.put(
                f"{self.url}/mediators/{urn}/config",
                json=config,
                headers={
                    "Authorization": "Basic " + base64.b64encode(f"{email}:{password}".encode()).decode()
                },
                ssl=False,
            ) as resp,
        ):
            return resp.status, await resp.text()

    # -- middleware: log + authentication -------------------------------------------------------------------
    @web.middleware
    async def _log_middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        body: Any = None
        if request.can_read_body:
            raw = await request.text()
            try:
                body = json.loads(raw)
            except ValueError:
                body = raw
        try:
            if request.path.startswith("/authenticate/"):
                response = await handler(request)  # public route (src/koaApi.js, before the auth middleware)
            else:
                user = self._authenticate(request)
                denied = self._denied(request, user) if user is not None else None
                if user is None:
                    response = web.Response(status=401, text="Unauthorized")
                elif denied is not None:
                    response = web.Response(status=403, text=denied)
                else:
                    request[JSON_BODY] = body
                    request[USER] = user
                    response = await handler(request)
        except web.HTTPException as exc:
            response = web.Response(status=exc.status, text=exc.text or "")
        self.api_log.append((request.method, request.path, response.status, body))
        await self._notify()
        return response

    def _denied(self, request: web.Request, user: User) -> str | None:
        """Why the core answers 403 (its body), or None."""
        if self.core_version == "8.5.0":
            info = request.match_info.route.resource
            pattern = info.canonical if info is not None else ""
            function = V850_DENIED_AS.get((request.method, pattern))
            if function is not None and "admin" not in user.groups:
                return f"User {user.email} is not an admin, API access to {function} denied."
            return None
        if not user.roles:
            return f"User {user.email} does not have an access role specified."
        return None

    def _authenticate(self, request: web.Request) -> User | None:
        h = request.headers
        if any(h.get(k) for k in ("auth-username", "auth-ts", "auth-salt", "auth-token")):
            return self._token_user(h)
        auth = h.get("Authorization", "")
        if "Basic" in auth:
            try:
                email, _, password = base64.b64decode(auth.split(" ", 1)[1]).decode().partition(":")
            except (ValueError, IndexError):
                return None
            user = self.users.get(email)
            return user if user is not None and secrets.compare_digest(user.password, password) else None
        return None

    def _token_user(self, h: Mapping[str, str]) -> User | None:
        """src/protocols/token.js ``login``."""
        email, ts, salt, token = (
            h.get(k, "") for k in ("auth-username", "auth-ts", "auth-salt", "auth-token")
        )
        if not (email and ts and salt and token):
            return None
        try:
            moment = datetime.fromisoformat(ts.replace("Z", "+00:00"))
        except ValueError:
            return None
        if abs(datetime.now(UTC) - moment) > timedelta(seconds=AUTH_WINDOW_S):
            return None
        user = self.users.get(email)
        if user is None or not user.token_passport:
            return None
        expected = hashlib.sha512((user.password_hash + salt + ts).encode()).hexdigest()
        return user if secrets.compare_digest(expected, token) else None

    async def _authenticate_token(self, request: web.Request) -> web.Response:
        user = self.users.get(request.match_info["email"])
        if user is None or not user.token_passport:
            return web.Response(status=404, text="Could not find user")
        return web.json_response({"salt": user.salt, "ts": datetime.now(UTC).isoformat()})

    # -- src/api/mediators.js -------------------------------------------------------------------------------
    async def _add_mediator(self, request: web.Request) -> web.Response:
        doc = request[JSON_BODY]
        if self.fail_next_registrations > 0:
            self.fail_next_registrations -= 1
            return web.Response(status=500, text="Could not add Mediator via the API: MongoNetworkError")
        try:
            validate_registration(doc)
            existing = self.mediators.get(doc["urn"])
            if existing is not None:
                if semver_gt(doc["version"], existing["version"]):
                    new = json.loads(json.dumps(doc))
                    if new.get("config") is not None and existing.get("config") is not None:
                        for param in new["config"]:
                            if existing["config"].get(param) is not None:
                                new["config"][param] = existing["config"][param]
                    for internal in ("_configModifiedTS", "_lastHeartbeat", "_uptime"):
                        if internal in existing:
                            new[internal] = existing[internal]
                    if isinstance(new.get("config"), dict):
                        new["config"] = minimized(new["config"])
                    self.mediators[doc["urn"]] = new
            else:
                if not doc.get("endpoints"):
                    raise ValidationError("At least 1 endpoint is required")
                self.mediators[doc["urn"]] = new = json.loads(json.dumps(doc))
                if isinstance(new.get("config"), dict):
                    new["config"] = minimized(new["config"])
        except ValidationError as exc:
            return web.Response(
                status=400, text=f"Could not add Mediator via the API: ValidationError: {exc}"
            )
        return web.Response(status=201, text="Created")

    async def _get_mediator(self, request: web.Request) -> web.Response:
        mediator = self.mediators.get(request.match_info["urn"])
        if mediator is None:
            return web.Response(status=404)
        return web.json_response(mediator)

    async def _remove_mediator(self, request: web.Request) -> web.Response:
        """src/api/mediators.js ``removeMediator``: 200 (also for an unknown urn: findOneAndRemove finds
        nothing); its next heartbeat gets 404."""
        urn = request.match_info["urn"]
        self.mediators.pop(urn, None)
        return web.Response(
            status=200, text=f"Mediator with urn {urn} has been successfully removed by {request[USER].email}"
        )

    async def _heartbeat(self, request: web.Request) -> web.Response:
        mediator = self.mediators.get(request.match_info["urn"])
        if mediator is None:
            return web.Response(status=404)
        beat = request[JSON_BODY]
        if not isinstance(beat, dict) or beat.get("uptime") is None:
            return web.Response(status=400)
        modified, last = mediator.get("_configModifiedTS"), mediator.get("_lastHeartbeat")
        deliver = (modified is not None and last is not None and modified > last) or beat.get(
            "config"
        ) is True
        mediator["_lastHeartbeat"] = _now_ms()
        mediator["_uptime"] = beat["uptime"]
        if deliver:
            if mediator.get("config") is None:
                return web.Response(status=200, text="OK")  # Koa's body for ctx.body = undefined
            return web.json_response(mediator["config"])
        return web.Response(status=200, text="")

    async def _set_config(self, request: web.Request) -> web.Response:
        mediator = self.mediators.get(request.match_info["urn"])
        if mediator is None:
            return web.Response(status=404, text="No mediator found for this urn.")
        config = request[JSON_BODY]
        try:
            if not isinstance(config, dict):
                raise ValidationError("config must be an object")
            validate_config(mediator.get("configDefs", []), config)
        except ValidationError as exc:
            return web.Response(status=400, text=str(exc))
        mediator["config"] = minimized(config)
        mediator["_configModifiedTS"] = _now_ms()
        return web.Response(status=200)

    async def _load_default_channels(self, request: web.Request) -> web.Response:
        mediator = self.mediators.get(request.match_info["urn"])
        if mediator is None:
            return web.Response(status=404, text="No mediator found for this urn.")
        urn = request.match_info["urn"]
        if self.fail_next_channel_installs > 0:
            self.fail_next_channel_installs -= 1
            return web.Response(
                status=500,
                text=f"Could not load mediator default channel config (urn: {urn}): MongoNetworkError",
            )
        names = request[JSON_BODY]
        defaults = mediator.get("defaultChannelConfig", [])
        chosen = defaults if not names else [c for c in defaults if c["name"] in names]
        if names and len(chosen) < len(names):
            return web.Response(
                status=400,
                text="Could not load mediator default channel config, one or more channels in the request "
                f"body not found in the mediator config (urn: {urn})",
            )
        for channel in chosen:
            if channel["name"] in self.channels:  # unique index on name → Mongo E11000 → 500
                return web.Response(
                    status=500,
                    text=f"Could not load mediator default channel config (urn: {urn}): MongoServerError: "
                    "E11000 duplicate key error collection: openhim.channels index: name_1 dup key",
                )
        for channel in chosen:
            self.channels[channel["name"]] = json.loads(json.dumps(channel))
        return web.Response(status=201)

    async def _get_channels(self, request: web.Request) -> web.Response:
        user = request[USER]
        if self.core_version == "8.5.0":  # src/api/authorisation.js getUserViewableChannels
            if "admin" in user.groups:
                return web.json_response(list(self.channels.values()))
            groups = set(user.groups)
            return web.json_response(
                [c for c in self.channels.values() if groups & set(c.get("txViewAcl") or [])]
            )
        if not user.may_view_channels:  # src/api/channels.js getChannels →
            return web.json_response([])  # authorisation.getUserViewableChannels: only viewable ones
        return web.json_response(list(self.channels.values()))

    # -- the router: a client request routed to the mediator ------------------------------------------------
    async def route(
        self,
        mediator_url: str,
        method: str,
        path: str,
        *,
        body: Any = None,
        client_id: str | None = "pos-a",
        headers: Mapping[str, str] | None = None,
    ) -> Transaction:
        """Forward like src/middleware/router.js and store what src/middleware/messageStore.js would."""
        tx = Transaction(id=secrets.token_hex(12), client_id=client_id, method=method, path=path)
        out = {"Content-Type": "application/fhir+json", **(headers or {})}
        out["X-OpenHIM-TransactionID"] = tx.id
        if client_id is not None:
            out["X-OpenHIM-ClientID"] = client_id
        out["X-Forwarded-For"] = "10.0.0.7"  # the POS address as the core saw it (never contacted)
        out["X-Forwarded-Host"] = "openhim-core:5001"
        data = json.dumps(body) if body is not None else None
        async with (
            aiohttp.ClientSession() as session,
            session.request(method, mediator_url.rstrip("/") + path, data=data, headers=out) as resp,
        ):
            text = await resp.text()
            raw_status = resp.status
            raw_headers = dict(resp.headers)
        content_type = raw_headers.get("Content-Type", "")
        if "application/json+openhim" in content_type:
            tx.enveloped = True
            env = json.loads(text)  # invalid JSON would be a route error → 500 in the real core
            self._check_envelope(env, tx)
            tx.mediator_urn = env.get("x-mediator-urn")
            tx.response = dict(env.get("response") or {})
            tx.response["status"] = int(tx.response.get("status", 500))
            tx.orchestrations = list(env.get("orchestrations") or [])
            tx.properties = dict(env.get("properties") or {})
            tx.error = env.get("error")
            tx.status = env.get("status") or _final_status(tx.response["status"])
        else:
            tx.response = {"status": raw_status, "headers": raw_headers, "body": text}
            tx.status = _final_status(raw_status)
        self.transactions.append(tx)
        return tx

    @staticmethod
    def _check_envelope(env: Any, tx: Transaction) -> None:
        problems = tx.problems
        if not isinstance(env, dict):
            problems.append("envelope is not an object")
            return
        if env.get("status") is not None and env["status"] not in TX_STATUSES:
            problems.append(f"status {env['status']!r} is not a transaction status")
        response = env.get("response")
        if not isinstance(response, dict):
            problems.append("no response object")
        elif not isinstance(response.get("body", ""), str):
            problems.append("response.body is not a string")
        for i, orch in enumerate(env.get("orchestrations") or []):
            if not orch.get("name"):
                problems.append(f"orchestrations[{i}].name is required")
            req = orch.get("request")
            if req is not None:
                if not req.get("timestamp"):
                    problems.append(f"orchestrations[{i}].request.timestamp is required")
                if not isinstance(req.get("body", ""), str):
                    problems.append(f"orchestrations[{i}].request.body is not a string")
            res = orch.get("response")
            if res is not None and not isinstance(res.get("body", ""), str):
                problems.append(f"orchestrations[{i}].response.body is not a string")
        if not isinstance(env.get("properties", {}), dict):
            problems.append("properties is not an object")


def _final_status(status: int) -> str:
    """src/middleware/messageStore.js ``setFinalStatus`` for a single primary route."""
    if 500 <= status <= 599:
        return "Failed"
    if 200 <= status <= 299:
        return "Successful"
    return "Completed"
