"""The matching rules a re-match job applied, stored in HAPI so every replica and every restart uses them.

**Where.** One ``Basic`` resource with the fixed id ``cr-rules-applied`` (:data:`RESOURCE_ID`): the rules as
YAML text (``rules-yaml`` extension; ``matching.Rules.to_dict()`` of the applied rules, dumped), when
(``applied-at``), by whom (``applied-by``, the admin user) and the job (``rematch-job``). A re-match apply
job (:class:`mediator.rematch.RematchJob`) writes it when it makes its rules live; the last job to start wins.

**Precedence.** At start-up (:func:`install`, from the app's HAPI session) a stored document wins over the
``CR_RULES`` file; without one the file's rules stay. The OpenHIM console's own ``rules`` text, when set,
still wins over both (an explicit edit); an empty console ``rules`` means "the rules in effect" (applied,
else the file). :func:`reset` (``POST /admin/jobs/rules/reset`` or ``python -m mediator.admin reset-rules``)
deletes the document and goes back to the file (other replicas at their next start).

**Failure mode.** The stored YAML is validated by the same loader as the file (``matching.load_rules``). A
broken stored document **fails start-up** with a :class:`StoredRulesError` naming the problems and the way
out (``python -m mediator.admin reset-rules``): replicas must never silently decide with different rules.
If HAPI is unreachable at start-up the mediator starts anyway and reads the document in the background;
until it is read, submissions wait for it (:meth:`mediator.config.ConfigHolder.settled`) and fail with 503
while HAPI stays unreachable (as they would anyway); a broken document found then refuses submissions (503)
until reset.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import yaml

import matching

from .config import ConfigHolder, RegistryConfig, RulesOrigin
from .errors import UpstreamTimeout, UpstreamUnavailable
from .fhir_client import HapiClient
from .records import NS

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


async def load(holder: ConfigHolder, hapi: HapiClient) -> None:
    """Read the stored rules (if any) into ``holder``; logs which rules are in effect (never demographics)."""
    applied = await read(hapi)
    if applied is not None:
        use(holder, applied, applied.rules())
    holder.pending = None
    rules = holder.current.rules
    log.info(
        "matching rules in effect",
        extra={
            "rules_source": holder.origin.describe(),
            "rules_name": rules.name,
            "auto_match": rules.auto_threshold,
            "potential_match": rules.potential_threshold,
        },
    )


async def reset(holder: ConfigHolder, hapi: HapiClient) -> bool:
    """Delete the stored rules and use the file's again (this process; other replicas at their next start)."""
    removed = await remove(hapi)
    use_file(holder)
    log.info(
        "applied matching rules removed; back to the rules file", extra={"rules_source": holder.origin.path}
    )
    return removed


async def install(holder: ConfigHolder, hapi: HapiClient) -> asyncio.Task[None] | None:
    """At start-up: read the stored rules; broken ones raise :class:`StoredRulesError` (start-up fails).

    If HAPI is unreachable, returns a background task that keeps trying; submissions wait for it meanwhile.
    """

    async def pending() -> None:
        try:
            await load(holder, hapi)
        except StoredRulesError as exc:
            log.error("stored matching rules are invalid", extra={"problems": exc.problems})
            raise UpstreamUnavailable(str(exc)) from exc

    holder.pending = pending
    try:
        await load(holder, hapi)
        return None
    except (UpstreamUnavailable, UpstreamTimeout):
        log.warning("FHIR store unreachable at start-up: the applied matching rules are read once it answers")

    async def keep_trying() -> None:
        delay = 0.5
        while holder.pending is not None:
            with contextlib.suppress(UpstreamUnavailable, UpstreamTimeout):
                await holder.settled()
                return
            await asyncio.sleep(delay)  # retry backoff while HAPI is unreachable
            delay = min(delay * 2, RETRY_MAX_S)

    return asyncio.create_task(keep_trying(), name="applied-rules")
