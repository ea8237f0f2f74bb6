"""The matching rules a re-match job applied, stored in HAPI (``Basic/cr-rules-applied``) so every replica
and every restart uses them: installed at start-up over the ``CR_RULES`` file, polled while running
(:func:`watch`), forgotten by :func:`reset`. A broken stored document fails start-up rather than let
replicas decide with different rules. Precedence and failure modes: ``docs/internals.md``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import yaml

import matching

from .config import ConfigHolder, RegistryConfig, RulesOrigin
from .errors import UpstreamError, UpstreamUnavailable
from .fhir_client import HapiClient
from .records import NS

# the client of the FHIR store in force, asked at each use (``app[STORE].hapi``: the OpenHIM console may
# change the store while the app runs; mediator/store.py)
Client = Callable[[], HapiClient]

log = logging.getLogger(__name__)

RESOURCE_TYPE = "Basic"
RESOURCE_ID = "cr-rules-applied"
CODE_SYSTEM = f"{NS}:config"
YAML_URL = f"{NS}:rules-yaml"
APPLIED_AT_URL = f"{NS}:applied-at"
APPLIED_BY_URL = f"{NS}:applied-by"
JOB_URL = f"{NS}:rematch-job"
RETRY_MAX_S = 10.0


class StoredRulesError(RuntimeError):
    """The rules document stored in HAPI cannot be used."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__(
            f"The matching rules stored in HAPI ({RESOURCE_TYPE}/{RESOURCE_ID}) are invalid: "
            + "; ".join(problems)
            + ". Fix them by applying valid rules, or go back to the CR_RULES file with "
            "'python -m mediator.admin reset-rules'."
        )


@dataclass(frozen=True)
class AppliedRules:
    yaml_text: str
    job_id: str
    applied_at: str  # ISO 8601, UTC
    applied_by: str = ""

    @classmethod
    def of(cls, rules_doc: Mapping[str, Any], job_id: str, applied_by: str = "") -> AppliedRules:
        text = yaml.safe_dump(dict(rules_doc), sort_keys=False, allow_unicode=True)
        return cls(text, job_id, datetime.now(UTC).isoformat(timespec="seconds"), applied_by)

    def rules(self) -> matching.Rules:
        """Validated with the loader of the ``CR_RULES`` file; :class:`StoredRulesError` if broken."""
        try:
            doc = yaml.safe_load(self.yaml_text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f"line {mark.line + 1}: " if mark is not None else ""
            raise StoredRulesError([f"{where}not valid YAML"]) from exc
        if not isinstance(doc, Mapping):
            raise StoredRulesError(["the rules must be a YAML mapping"])
        try:
            return matching.load_rules(doc)
        except matching.RulesError as exc:
            raise StoredRulesError(list(exc.problems)) from exc

    def origin(self, path: str, rules: matching.Rules | None = None) -> RulesOrigin:
        return RulesOrigin(
            path=path,
            job_id=self.job_id,
            applied_at=self.applied_at,
            applied_by=self.applied_by,
            doc=rules.to_dict() if rules is not None else None,
        )

    def to_resource(self) -> dict[str, Any]:
        return {
            "resourceType": RESOURCE_TYPE,
            "id": RESOURCE_ID,
            "code": {"coding": [{"system": CODE_SYSTEM, "code": "matching-rules"}], "text": "Matching rules"},
            "extension": [
                {"url": YAML_URL, "valueString": self.yaml_text},
                {"url": APPLIED_AT_URL, "valueDateTime": self.applied_at},
                {"url": APPLIED_BY_URL, "valueString": self.applied_by or "unknown"},
                {"url": JOB_URL, "valueString": self.job_id},
            ],
        }

    @classmethod
    def from_resource(cls, resource: Mapping[str, Any]) -> AppliedRules:
        values: dict[str, Any] = {}
        for ext in resource.get("extension", []):
            value = next((v for k, v in ext.items() if k.startswith("value")), None)
            values[ext.get("url", "")] = value
        text = values.get(YAML_URL)
        if not isinstance(text, str):
            raise StoredRulesError(["the document holds no rules text"])
        return cls(
            yaml_text=text,
            job_id=str(values.get(JOB_URL) or "?"),
            applied_at=str(values.get(APPLIED_AT_URL) or "?"),
            applied_by=str(values.get(APPLIED_BY_URL) or ""),
        )


async def read(hapi: HapiClient) -> AppliedRules | None:
    resource = await hapi.read(RESOURCE_TYPE, RESOURCE_ID)
    return AppliedRules.from_resource(resource) if resource is not None else None


async def write(hapi: HapiClient, applied: AppliedRules) -> None:
    await hapi.transaction(
        {
            "resourceType": "Bundle",
            "type": "transaction",
            "entry": [
                {
                    "resource": applied.to_resource(),
                    "request": {"method": "PUT", "url": f"{RESOURCE_TYPE}/{RESOURCE_ID}"},
                }
            ],
        }
    )


async def remove(hapi: HapiClient) -> bool:
    """Delete the stored rules; False if there were none."""
    if await hapi.read(RESOURCE_TYPE, RESOURCE_ID) is None:
        return False
    await hapi.transaction(
        {
            "resourceType": "Bundle",
            "type": "transaction",
            "entry": [{"request": {"method": "DELETE", "url": f"{RESOURCE_TYPE}/{RESOURCE_ID}"}}],
        }
    )
    return True


def with_rules(cfg: RegistryConfig, rules: matching.Rules, shared_systems: frozenset[str]) -> RegistryConfig:
    """``cfg`` with other rules (and the rules' shared identifier systems added to the configured ones)."""
    return cfg.with_changes(
        rules=rules,
        shared_identifier_systems=frozenset(shared_systems) | frozenset(rules.shared_identifier_systems),
    )


def use(holder: ConfigHolder, applied: AppliedRules, rules: matching.Rules) -> None:
    """Make ``rules`` (stored as ``applied``) the live rules of this process."""
    holder.replace(with_rules(holder.current, rules, holder.base_shared_systems))
    holder.origin = applied.origin(holder.origin.path, rules)
    holder.pending = None


def use_file(holder: ConfigHolder) -> None:
    """Back to the ``CR_RULES`` file's rules in this process."""
    rules = matching.load_rules(holder.origin.path)
    holder.replace(with_rules(holder.current, rules, holder.base_shared_systems))
    holder.origin = RulesOrigin(path=holder.origin.path)
    holder.pending = None


def version_of(resource: Mapping[str, Any] | None) -> str:
    """The stored document's ``meta.versionId`` (``""``: no document) — what :func:`poll` compares."""
    if resource is None:
        return ""
    meta = resource.get("meta") or {}
    return str(meta.get("versionId") or meta.get("lastUpdated") or "?")


def _in_effect(holder: ConfigHolder, applied: AppliedRules, rules: matching.Rules) -> bool:
    """``applied`` is already what this process decides with (e.g. its own re-match job wrote it)."""
    origin = holder.origin
    return (
        origin.job_id == applied.job_id
        and origin.applied_at == applied.applied_at
        and origin.doc == rules.to_dict()
    )


def _install(holder: ConfigHolder, resource: Mapping[str, Any] | None) -> bool:
    """Make the stored document ``resource`` (None: none) the live rules; True if the rules changed.

    The one validation/installation path of start-up and of :func:`poll`: broken rules raise
    :class:`StoredRulesError` and change nothing; rules already in effect are not installed again.
    """
    if resource is None:
        changed = holder.origin.applied
        if changed:
            use_file(holder)
    else:
        applied = AppliedRules.from_resource(resource)
        rules = applied.rules()
        changed = not _in_effect(holder, applied, rules)
        if changed:
            use(holder, applied, rules)
    first = holder.stored_version is None
    holder.stored_version = version_of(resource)
    holder.pending = None
    if changed and holder.rules_swapped is not None:
        holder.rules_swapped()
    if changed or first:
        rules_now = holder.current.rules
        log.info(
            "matching rules in effect",
            extra={
                "rules_source": holder.origin.describe(),
                "rules_version": holder.stored_version or None,
                "rules_name": rules_now.name,
                "auto_match": rules_now.auto_threshold,
                "potential_match": rules_now.potential_threshold,
            },
        )
    return changed


async def _read_stable(holder: ConfigHolder, hapi: HapiClient) -> tuple[bool, dict[str, Any] | None]:
    """``(stable, the stored document)``; not stable if the live rules were swapped while it was being read (a
    re-match job or ``reset`` here, the console): what was read may predate that swap and must not undo it."""
    generation = holder.generation
    resource = await hapi.read(RESOURCE_TYPE, RESOURCE_ID)
    return holder.generation == generation, resource


async def load(holder: ConfigHolder, hapi: HapiClient) -> None:
    """Read the stored rules (if any) into ``holder``; logs which rules are in effect (never demographics)."""
    stable, resource = await _read_stable(holder, hapi)
    while not stable:  # swapped meanwhile: read again
        stable, resource = await _read_stable(holder, hapi)
    _install(holder, resource)


def _refuse_until_fixed(holder: ConfigHolder, current: Client) -> None:
    """Submissions wait for / are refused (503 naming the reset command) until the stored rules are usable."""

    async def pending() -> None:
        try:
            await load(holder, current())
        except StoredRulesError as exc:
            log.error("stored matching rules are invalid", extra={"problems": exc.problems})
            raise UpstreamUnavailable(str(exc)) from exc

    holder.pending = pending


async def poll(holder: ConfigHolder, current: Client) -> bool:
    """One look at the stored document's version; on a change, the start-up path (:func:`_install`).

    Returns True if the live rules changed (then ``holder.rules_swapped()`` runs: the OpenHIM console config
    is built again over them, so its own rules text keeps winning). HAPI unreachable: the rules stay, a
    warning is logged, the next period tries again. A broken document: the rules stay but submissions are
    refused (503, naming ``reset-rules``) until it is fixed or reset — replicas never silently decide with
    different rules.
    """
    try:
        stable, resource = await _read_stable(holder, current())
    except UpstreamError as exc:
        log.warning(
            "FHIR store unreachable while checking the stored matching rules; the current ones stay",
            extra={"error": type(exc).__name__},
        )
        return False
    if not stable:
        return False  # swapped here meanwhile: look again next period
    version = version_of(resource)
    if version == holder.stored_version:
        return False
    try:
        return _install(holder, resource)
    except StoredRulesError as exc:
        holder.stored_version = version
        _refuse_until_fixed(holder, current)
        log.error(
            "stored matching rules changed and are invalid; submissions are refused until they are reset",
            extra={"rules_version": version, "problems": exc.problems},
        )
        return False


async def watch(holder: ConfigHolder, current: Client, period_s: float) -> None:
    """Every ``period_s``: :func:`poll` (the app's background task; cancelled at shutdown)."""
    while True:
        await asyncio.sleep(period_s)  # the poll period
        try:
            await poll(holder, current)
        except Exception:  # never let the watch die: log, try again next period
            log.exception("checking the stored matching rules failed")


async def reset(holder: ConfigHolder, hapi: HapiClient) -> bool:
    """Delete the stored rules and use the file's again (this process now; other replicas at their next
    :func:`poll`)."""
    removed = await remove(hapi)
    use_file(holder)
    holder.stored_version = ""
    if holder.rules_swapped is not None:
        holder.rules_swapped()  # a console rules text still wins over the file
    log.info(
        "applied matching rules removed; back to the rules file", extra={"rules_source": holder.origin.path}
    )
    return removed


async def install(holder: ConfigHolder, current: Client) -> asyncio.Task[None] | None:
    """At start-up: read the stored rules; broken ones raise :class:`StoredRulesError` (start-up fails).

    If HAPI is unreachable, returns a background task that keeps trying; submissions wait for it meanwhile.
    """

    _refuse_until_fixed(holder, current)
    try:
        await load(holder, current())
        return None
    except UpstreamError:
        log.warning("FHIR store unreachable at start-up: the applied matching rules are read once it answers")

    async def keep_trying() -> None:
        delay = 0.5
        while holder.pending is not None:
            with contextlib.suppress(UpstreamError):
                await holder.settled()
                return
            await asyncio.sleep(delay)  # retry backoff while HAPI is unreachable
            delay = min(delay * 2, RETRY_MAX_S)

    return asyncio.create_task(keep_trying(), name="applied-rules")
