"""Typed settings, read once from the environment (``CR_*`` variables) at start.

Settings that an HIE admin may change at run time from the OpenHIM console live in
:class:`mediator.config.RegistryConfig`; these here are the process's start-up settings, every one of them
(the admin's and the jobs' too): an app built from a :class:`Settings` reads no environment variable.
:meth:`Settings.from_env` only reads; the admin session key generated into a file on first use is made by
the process's entry point (:func:`mediator.admin.auth.with_secret_key`), not here nor by the app.
"""

from __future__ import annotations

import ipaddress
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.fernet import Fernet

REPO_ROOT = Path(__file__).resolve().parent.parent
# transactions of single submissions in flight before the next ones wait and share one (docs/internals.md,
# shared transactions); 0 = every single submission its own transaction
SHARED_WRITES = 2
VAR = REPO_ROOT / "var"  # where the mediator keeps its files by default


def _bool(value: str) -> bool:
    return value.strip().lower() in {"1", "true", "yes", "on"}


def _list(value: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in value.split(",") if item.strip())


def proxy_networks(value: str) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    """``CR_TRUSTED_PROXIES``: comma list of addresses or networks (``10.0.0.5``, ``10.1.0.0/16``)."""
    networks = []
    for item in _list(value):
        try:
            networks.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            raise ValueError(
                f"CR_TRUSTED_PROXIES takes IP addresses or networks separated by commas; {item!r} is neither"
            ) from None
    return tuple(networks)


def _choice(name: str, value: str, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(allowed)}, not {value!r}")
    return value


def _gc_threshold(value: str) -> tuple[int, ...]:
    numbers = tuple(int(v) for v in _list(value))
    if len(numbers) > 3 or any(n < 0 for n in numbers):
        raise ValueError(f"CR_GC_THRESHOLD takes up to three numbers >= 0 (gc.set_threshold), not {value!r}")
    return numbers


@dataclass(frozen=True)
class AdminSettings:
    """The admin interface's settings (``CR_ADMIN_*``; mediator/admin/README.md)."""

    users_file: Path = VAR / "admin-users.json"
    # the session cookies' Fernet key: CR_ADMIN_SECRET_KEY, else the key in ``secret_file``, which the
    # entry point reads or generates (mediator.admin.auth.with_secret_key). None when an app is built:
    # a key of that app only (its sessions end with it), nothing written.
    secret_key: bytes | None = None
    secret_file: Path = VAR / "admin-secret.key"
    session_max_age_s: int = 8 * 3600
    cookie_secure: bool = False

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> AdminSettings:
        defaults = cls()
        raw = env.get("CR_ADMIN_SECRET_KEY")
        key = raw.encode() if raw else None
        if key is not None:
            Fernet(key)  # fails early on a malformed key
        return cls(
            users_file=Path(env.get("CR_ADMIN_USERS_FILE") or defaults.users_file),
            secret_key=key,
            secret_file=Path(env.get("CR_ADMIN_SECRET_FILE") or defaults.secret_file),
            session_max_age_s=int(float(env.get("CR_ADMIN_SESSION_HOURS") or 8) * 3600),
            cookie_secure=(env.get("CR_ADMIN_COOKIE_SECURE") or "").lower() in {"1", "true", "yes"},
        )


@dataclass(frozen=True)
class Settings:
    host: str = "127.0.0.1"
    port: int = 3000
    hapi_base_url: str = "http://127.0.0.1:8090/fhir"
    hapi_connect_timeout_s: float = 3.0
    hapi_timeout_s: float = 15.0
    hapi_max_connections: int = 16  # HAPI calls in flight; HAPI's own DB pool is 10 connections by default
    rules_path: Path = REPO_ROOT / "rules" / "default.yaml"
    cruid_system: str = "urn:oid:2.25.310153142271591873458216447651146233113"  # registry's CRUID system
    # shared identifier systems (national ids): matching evidence, never record keys; plus the rules file's
    shared_identifier_systems: tuple[str, ...] = ("http://example.org/national-id",)
    # client id -> identifier systems it may submit; empty = open development mode (any system, any caller)
    client_systems: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    max_body_bytes: int = 2_000_000
    # seconds a request body may take to arrive (then 408); the admin bulk upload's; mediator/request_body.py
    body_timeout_s: float = 60.0
    upload_timeout_s: float = 3600.0
    # TCP peers whose X-Forwarded-For is believed (OpenHIM core, a load balancer); mediator/forwarded.py
    trusted_proxies: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    max_candidates: int = 500
    # source records kept (parsed, ≈ 5 KB each) to answer candidate searches without reading them again
    source_cache_records: int = 200_000
    # Python's cyclic garbage collector thresholds (gc.set_threshold); empty = Python's default (700, 10, 10).
    # With the registry's caches, full collections at the defaults were a third of the mediator's CPU.
    gc_threshold: tuple[int, ...] = (50_000, 20, 100)
    conflict_retries: int = 5
    shared_writes: int = SHARED_WRITES
    # seconds between checks of the rules stored in HAPI (mediator/applied_rules.py); 0 = only at start
    rules_poll_s: float = 10.0
    # seconds between looks for jobs left running by a replica that is gone (shared key locks only); 0 = never
    jobs_adopt_s: float = 30.0
    # GET /metrics needs "Authorization: Bearer <this>" when set; unset = open (keep the port internal)
    metrics_token: str | None = None
    # OpenHIM (mediator/openhim.py); no URL = the mediator runs on its own
    openhim_api_url: str | None = None
    openhim_username: str = "root@openhim.org"
    openhim_password: str = ""
    openhim_auth: str = "basic"  # basic (core >= 7.1) | token (older cores)
    openhim_verify_tls: bool = True
    openhim_ca_file: str | None = None
    openhim_heartbeat_s: float = 10.0
    openhim_install_channels: bool = False
    openhim_allow_anonymous: bool = False
    # behind OpenHIM, routed requests are refused (503) while no client map is in force, unless this is set
    openhim_allow_open_mode: bool = False
    # what the orchestrations sent to OpenHIM show of each HAPI call's bodies: "ids" (ids, versions,
    # request lines and statuses: no demographics of anyone) or "full" (the bodies, for debugging)
    openhim_orchestration_bodies: str = "ids"
    openhim_timeout_s: float = 10.0  # every call to the core's API
    openhim_retry_max_s: float = 30.0  # registration backoff cap while the core is down
    # how the core reaches this mediator (endpoints, default channel route); None = mediator-config.json
    openhim_mediator_host: str | None = None
    openhim_mediator_port: int | None = None
    mediator_config_path: Path = REPO_ROOT / "mediator-config.json"
    log_level: str = "INFO"
    # key locks: "local" (one process) or "postgres" (advisory locks shared by replicas, mediator/pg_locks.py)
    locks: str = "local"
    locks_dsn: str | None = None
    locks_pool_size: int = 20
    locks_timeout_s: float = 30.0
    # admin interface: users file, session key, cookies (CR_ADMIN_*)
    admin: AdminSettings = field(default_factory=AdminSettings)
    # the admin's background jobs (bulk loads, re-matches), resumed at start; replicas may share it
    jobs_dir: Path = VAR / "jobs"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        defaults = cls()
        get = env.get

        def num(name: str, default: float) -> float:
            raw = get(name)
            return float(raw) if raw not in (None, "") else default

        client_systems_raw = get("CR_CLIENT_SYSTEMS")
        client_systems = (
            {k: tuple(v) for k, v in json.loads(client_systems_raw).items()} if client_systems_raw else {}
        )
        locks = get("CR_LOCKS", defaults.locks)
        if locks not in ("local", "postgres"):
            raise ValueError(f"CR_LOCKS must be 'local' or 'postgres', not {locks!r}")
        return cls(
            host=get("CR_HOST", defaults.host),
            port=int(num("CR_PORT", defaults.port)),
            hapi_base_url=get("CR_HAPI_URL", defaults.hapi_base_url).rstrip("/"),
            hapi_connect_timeout_s=num("CR_HAPI_CONNECT_TIMEOUT", defaults.hapi_connect_timeout_s),
            hapi_timeout_s=num("CR_HAPI_TIMEOUT", defaults.hapi_timeout_s),
            hapi_max_connections=int(num("CR_HAPI_MAX_CONNECTIONS", defaults.hapi_max_connections)),
            rules_path=Path(get("CR_RULES", str(defaults.rules_path))),
            cruid_system=get("CR_CRUID_SYSTEM", defaults.cruid_system),
            shared_identifier_systems=_list(
                get("CR_SHARED_SYSTEMS", ",".join(defaults.shared_identifier_systems))
            ),
            client_systems=client_systems,
            max_body_bytes=int(num("CR_MAX_BODY_BYTES", defaults.max_body_bytes)),
            body_timeout_s=num("CR_BODY_TIMEOUT_S", defaults.body_timeout_s),
            upload_timeout_s=num("CR_UPLOAD_TIMEOUT_S", defaults.upload_timeout_s),
            trusted_proxies=proxy_networks(get("CR_TRUSTED_PROXIES", "")),
            max_candidates=int(num("CR_MAX_CANDIDATES", defaults.max_candidates)),
            source_cache_records=int(num("CR_SOURCE_CACHE_RECORDS", defaults.source_cache_records)),
            gc_threshold=_gc_threshold(get("CR_GC_THRESHOLD", ",".join(map(str, defaults.gc_threshold)))),
            conflict_retries=int(num("CR_CONFLICT_RETRIES", defaults.conflict_retries)),
            shared_writes=int(num("CR_SHARED_WRITES", defaults.shared_writes)),
            rules_poll_s=num("CR_RULES_POLL_S", defaults.rules_poll_s),
            jobs_adopt_s=num("CR_JOBS_ADOPT_S", defaults.jobs_adopt_s),
            metrics_token=get("CR_METRICS_TOKEN") or None,
            openhim_api_url=get("CR_OPENHIM_API_URL") or None,
            openhim_username=get("CR_OPENHIM_USERNAME", defaults.openhim_username),
            openhim_password=get("CR_OPENHIM_PASSWORD", defaults.openhim_password),
            openhim_auth=get("CR_OPENHIM_AUTH", defaults.openhim_auth),
            openhim_verify_tls=_bool(get("CR_OPENHIM_VERIFY_TLS", "true")),
            openhim_ca_file=get("CR_OPENHIM_CA_FILE") or None,
            openhim_heartbeat_s=num("CR_OPENHIM_HEARTBEAT_S", defaults.openhim_heartbeat_s),
            openhim_install_channels=_bool(get("CR_OPENHIM_INSTALL_CHANNELS", "false")),
            openhim_allow_anonymous=_bool(get("CR_OPENHIM_ALLOW_ANONYMOUS", "false")),
            openhim_allow_open_mode=_bool(get("CR_OPENHIM_ALLOW_OPEN_MODE", "false")),
            openhim_orchestration_bodies=_choice(
                "CR_OPENHIM_ORCHESTRATION_BODIES",
                get("CR_OPENHIM_ORCHESTRATION_BODIES", defaults.openhim_orchestration_bodies),
                ("ids", "full"),
            ),
            openhim_timeout_s=num("CR_OPENHIM_TIMEOUT_S", defaults.openhim_timeout_s),
            openhim_retry_max_s=num("CR_OPENHIM_RETRY_MAX_S", defaults.openhim_retry_max_s),
            openhim_mediator_host=get("CR_OPENHIM_MEDIATOR_HOST") or None,
            openhim_mediator_port=int(get("CR_OPENHIM_MEDIATOR_PORT") or 0) or None,
            mediator_config_path=Path(get("CR_MEDIATOR_CONFIG", str(defaults.mediator_config_path))),
            log_level=get("CR_LOG_LEVEL", defaults.log_level),
            locks=locks,
            locks_dsn=get("CR_LOCKS_DSN") or None,
            locks_pool_size=int(num("CR_LOCKS_POOL_SIZE", defaults.locks_pool_size)),
            locks_timeout_s=num("CR_LOCKS_TIMEOUT_S", defaults.locks_timeout_s),
            admin=AdminSettings.from_env(env),
            jobs_dir=Path(get("CR_JOBS_DIR") or defaults.jobs_dir),
        )
