"""The mediator-facing decision: one incoming record against its blocked candidates."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from .explain import Explanation, explain_all
from .rules import Rules
from .scoring import Table, compare

Outcome = Literal["match", "potential", "no_match"]
_RANK = {"match": 2, "potential": 1, "no_match": 0}


@dataclass(frozen=True)
class Candidate:
    """A stored source Patient and the id of its golden record."""

    id: str
    golden_id: str
    resource: Mapping[str, Any]


@dataclass(frozen=True)
class CandidateScore:
    candidate_id: str
    golden_id: str
    score: float
    classification: Outcome
    rule: str
    explanation: Explanation

    def to_dict(self) -> dict[str, Any]:
        return {
            "candidate_id": self.candidate_id,
            "golden_id": self.golden_id,
            "score": self.score,
            "classification": self.classification,
            "rule": self.rule,
            "explanation": self.explanation.to_dict(),
        }


@dataclass(frozen=True)
class Decision:
    outcome: Outcome
    golden_id: str | None  # golden record of the best auto-match (outcome == "match"), else None
    score: float | None  # best score
    rule: str
    scores: tuple[CandidateScore, ...]  # all candidates, best first

    def auto_match_goldens(self) -> list[str]:
        """Distinct golden ids with a 'match' candidate, best first."""
        return list(dict.fromkeys(s.golden_id for s in self.scores if s.classification == "match"))

    def potential_goldens(self) -> list[str]:
        """Distinct golden ids whose candidates are at best 'potential', best first."""
        auto = set(self.auto_match_goldens())
        return list(
            dict.fromkeys(
                s.golden_id
                for s in self.scores
                if s.classification == "potential" and s.golden_id not in auto
            )
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "outcome": self.outcome,
            "golden_id": self.golden_id,
            "score": self.score,
            "rule": self.rule,
            "scores": [s.to_dict() for s in self.scores],
        }


def score_pair(a: Mapping[str, Any], b: Mapping[str, Any], rules: Rules) -> Explanation:
    """Compare two Patients (no blocking) and explain."""
    t = Table.from_patients([a, b], rules)
    c = compare(t, np.zeros(1, dtype=np.int64), np.ones(1, dtype=np.int64), rules)
    return explain_all(rules, t, c, [0], [1])[0]


def decide(record: Mapping[str, Any], candidates: Sequence[Candidate], rules: Rules) -> Decision:
    """Score ``record`` against every candidate and decide."""
    return decide_many([(record, candidates)], rules)[0]


def decide_many(
    items: Sequence[tuple[Mapping[str, Any], Sequence[Candidate]]], rules: Rules
) -> list[Decision]:
    """:func:`decide` for many records at once: one table of every distinct record (a candidate shared by
    several records is normalised once) and one vectorised comparison of all pairs, which costs far less
    than a comparison per record when records have few candidates each. Same decisions as :func:`decide`:
    a pair's levels and weights depend on its two records and the rules only."""
    rows: list[Mapping[str, Any]] = []
    row_of: dict[int, int] = {}  # id(record) -> table row; every record is held by ``items`` meanwhile

    def row(record: Mapping[str, Any]) -> int:
        key = id(record)
        if key not in row_of:
            row_of[key] = len(rows)
            rows.append(record)
        return row_of[key]

    left: list[int] = []
    right: list[int] = []
    starts: list[int] = []
    for record, candidates in items:
        starts.append(len(left))
        if candidates:
            r = row(record)
            for cand in candidates:
                left.append(r)
                right.append(row(cand.resource))
    if not left:
        return [_no_candidates(rules) for _ in items]
    table = Table.from_patients(rows, rules)
    li, ri = np.asarray(left, dtype=np.int64), np.asarray(right, dtype=np.int64)
    c = compare(table, li, ri, rules)
    explained = explain_all(rules, table, c, left, right)
    out = []
    for (_, candidates), start in zip(items, starts, strict=True):
        if not candidates:
            out.append(_no_candidates(rules))
            continue
        scores = []
        for k, cand in enumerate(candidates):
            e = explained[start + k]
            scores.append(
                CandidateScore(
                    candidate_id=cand.id,
                    golden_id=cand.golden_id,
                    score=e.score,
                    classification=e.classification,  # type: ignore[arg-type]
                    rule=e.rule,
                    explanation=e,
                )
            )
        out.append(_decision(scores))
    return out


def decide_reusing(
    record: Mapping[str, Any],
    candidates: Sequence[Candidate],
    known: Mapping[str, CandidateScore],
    rules: Rules,
) -> Decision:
    """:func:`decide`, taking the score of each candidate whose id is in ``known`` from there: the caller
    vouches that it was scored on these very two records (and that candidate's golden record) under
    ``rules``. Only the other candidates are compared; the decision is the one :func:`decide` gives, since
    a pair's score depends on its two records and the rules only. (The registry decides a bulk batch ahead
    and again entry by entry, when earlier entries of the batch became candidates: most pairs are known.)"""
    if not candidates:
        return _no_candidates(rules)
    todo = [cand for cand in candidates if cand.id not in known]
    fresh = {s.candidate_id: s for s in decide(record, todo, rules).scores} if todo else {}
    return _decision([known[cand.id] if cand.id in known else fresh[cand.id] for cand in candidates])


def _decision(scores: list[CandidateScore]) -> Decision:
    """The decision over a record's candidate scores, given in candidate order: best first (a stable sort,
    so ties keep that order)."""
    scores = sorted(scores, key=lambda s: (_RANK[s.classification], s.score), reverse=True)
    best = scores[0]
    return Decision(
        outcome=best.classification,
        golden_id=best.golden_id if best.classification == "match" else None,
        score=best.score,
        rule=best.rule,
        scores=tuple(scores),
    )


def _no_candidates(rules: Rules) -> Decision:
    return Decision("no_match", None, None, f"{rules.name}:no-candidates", ())
