"""How a batch of rows is decided: through a :class:`~mediator.registry.Registry` in this process
(:class:`InProcess`) or a running registry's FHIR API (:class:`OverHttp`); one :class:`Decision` a row."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import quote

from ..audit import Actor
from ..errors import InvalidInput, RegistryError, UpstreamUnavailable
from ..identifiers import IdentifierRefused, normal_form, normal_system, token
from ..linking import merge_link
from ..records import source_record_id
from ..registry import Prepared, Registry, Submission, SubmissionResult
from .rows import Row


@dataclass
class Decision:
    row: int
    source_id: str = ""
    outcome: str = ""
    golden_id: str = ""
    cruid: str = ""
    score: float | None = None
    rule: str = ""
    error: str = ""
    seq: int = 0  # order of decision in the job (rows are regrouped by blocking key within a window)


class Submitter(Protocol):
    async def submit(self, rows: Sequence[Row]) -> list[Decision]: ...

    def locate(self, patient: dict[str, Any]) -> tuple[str | None, list[str]]:
        """The record the row writes (None: unknown) and the blocking keys its decision searches and locks
        (for grouping and spreading batches; may be empty)."""
        ...

    def follows(self, patient: dict[str, Any]) -> str | None:
        """The record whose earlier rows a row must be decided after, besides its own (the survivor its POS
        merged it into), as :meth:`locate` names records; None: none, or not known."""
        ...


def _key(patient: dict[str, Any], system: str | None) -> tuple[str, str] | None:
    """The row's identifier of the file's ``system`` (the record it writes); rows hold their identifiers in
    normal form (:func:`~mediator.validation.validate_patient`), so the system is compared in normal form."""
    if system is None:
        return None
    try:
        system = normal_system(system)
    except IdentifierRefused as exc:
        raise InvalidInput(f"The file's system: {exc}") from exc
    for ident in patient.get("identifier", []):
        if ident.get("system") == system and ident.get("value"):
            return system, str(ident["value"])
    raise RegistryError(f"The row has no identifier of the file's system {system}.")


class InProcess:
    """Decide through a :class:`Registry` in this process (``Registry.submit_all``: one HAPI transaction)."""

    def __init__(self, registry: Registry, system: str | None) -> None:
        self.registry = registry
        self.system = system
        self.actor = Actor(client_id=None, address="bulk-load")
        self._located: dict[int, Prepared] = {}  # id(patient) -> prepared by locate, until submitted

    async def submit(self, rows: Sequence[Row]) -> list[Decision]:
        subs: list[Submission | Prepared] = []
        for r in rows:
            patient = r.patient or {}
            known = self._located.pop(id(patient), None)
            if known is not None and known.submission.patient is patient:
                subs.append(known)  # prepared once, by locate
            else:
                subs.append(
                    Submission(patient=patient, actor=self.actor, conditional=_key(patient, self.system))
                )
        results = await self.registry.submit_all(subs)
        return [_decision(r.number, res) for r, res in zip(rows, results, strict=True)]

    def locate(self, patient: dict[str, Any]) -> tuple[str | None, list[str]]:
        try:
            sub = Submission(patient=patient, actor=self.actor, conditional=_key(patient, self.system))
            prepared = self.registry.prepare(sub, self.registry.config.current)
        except RegistryError:
            return None, []  # refused when submitted, with its row number
        self._located[id(patient)] = prepared
        return prepared.source_id, prepared.search_keys

    def follows(self, patient: dict[str, Any]) -> str | None:
        known = self._located.get(id(patient))
        return known.merge.survivor_id if known is not None and known.merge is not None else None


def _decision(row: int, res: SubmissionResult) -> Decision:
    return Decision(row, res.source_id, res.outcome, res.golden_id, res.cruid, res.score, res.rule)


class OverHttp:
    """Decide through a running registry: a transaction Bundle per batch, posted to ``{url}/fhir``."""

    def __init__(self, session: Any, url: str, system: str | None) -> None:
        self.session, self.url, self.system = session, url.rstrip("/"), system

    def locate(self, patient: dict[str, Any]) -> tuple[str | None, list[str]]:
        """No rules here, so no blocking keys: only the record the row writes, named by its key identifier
        (``--system``) in normal form, as the registry names it."""
        try:
            key = _key(patient, self.system)
            return (source_record_id(*normal_form(*key)) if key else None), []
        except (RegistryError, IdentifierRefused):
            return None, []  # refused when submitted, with its row number

    def follows(self, patient: dict[str, Any]) -> str | None:
        """The survivor the row's POS merge names (by reference or by identifier), so that the row is
        decided after the survivor's earlier rows (in one transaction with them, it would be refused)."""
        try:
            # no CRUID system here: a link naming a golden record is refused by the registry itself
            link = merge_link(patient.get("link"), cruid_system="")
        except RegistryError:
            return None
        return link.survivor_id if link is not None else None

    async def submit(self, rows: Sequence[Row]) -> list[Decision]:
        entries = []
        for r in rows:
            key = _key(r.patient or {}, self.system)
            # FHIR search syntax (escaped: `\,` is a comma of the value), then URL-encoded (``&+%#`` would
            # otherwise cut or change it)
            url = f"Patient?identifier={quote(token(*key), safe='')}" if key else "Patient"
            entries.append(
                {"resource": r.patient, "request": {"method": "PUT" if key else "POST", "url": url}}
            )
        body = {"resourceType": "Bundle", "type": "transaction", "entry": entries}
        async with self.session.post(f"{self.url}/fhir", json=body) as resp:
            answer = await resp.json(content_type=None)
            if resp.status != 200:
                issues = answer.get("issue", [{}]) if isinstance(answer, dict) else [{}]
                message = str(issues[0].get("diagnostics", f"HTTP {resp.status}"))
                raise (UpstreamUnavailable if resp.status >= 500 else RegistryError)(message)
        out = []
        for r, entry in zip(rows, answer.get("entry", []), strict=True):
            patient = entry.get("resource", {})
            golden = next((lk["other"]["reference"].split("/")[1] for lk in patient.get("link", [])), "")
            cruid = patient.get("identifier", [{}])[-1].get("value", "")
            outcome = "created" if entry["response"]["status"].startswith("201") else "updated"
            out.append(Decision(r.number, patient.get("id", ""), outcome, golden, cruid))
        return out
