"""The mediator-facing decision: one incoming record against its blocked candidates."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from .explain import Explanation, explain_pair, rule_label
from .rules import OUTCOMES, Rules
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
    return explain_pair(rules, t, c, 0, 0, 1)


def decide(record: Mapping[str, Any], candidates: Sequence[Candidate], rules: Rules) -> Decision:
    """Score ``record`` against every candidate and decide."""
    if not candidates:
        return Decision("no_match", None, None, f"{rules.name}:no-candidates", ())
    table = Table.from_patients([record, *(c.resource for c in candidates)], rules)
    right = np.arange(1, len(candidates) + 1, dtype=np.int64)
    c = compare(table, np.zeros(len(candidates), dtype=np.int64), right, rules)
    scores = []
    for i, cand in enumerate(candidates):
        scores.append(
            CandidateScore(
                candidate_id=cand.id,
                golden_id=cand.golden_id,
                score=round(float(c.scores[i]), 4),
                classification=OUTCOMES[int(c.outcome[i])],  # type: ignore[arg-type]
                rule=rule_label(rules, c, i),
                explanation=explain_pair(rules, table, c, i, 0, i + 1),
            )
        )
    scores.sort(key=lambda s: (_RANK[s.classification], s.score), reverse=True)
    best = scores[0]
    return Decision(
        outcome=best.classification,
        golden_id=best.golden_id if best.classification == "match" else None,
        score=best.score,
        rule=best.rule,
        scores=tuple(scores),
    )
