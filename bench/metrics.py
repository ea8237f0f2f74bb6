"""Pairwise precision / recall / F1 of a clustering against the truth."""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass


def _pairs(n: int) -> int:
    return n * (n - 1) // 2


@dataclass
class PairwiseScores:
    true_pairs: int
    predicted_pairs: int
    correct_pairs: int
    false_merge_pairs: int
    household_false_merges: int

    @property
    def precision(self) -> float:
        return self.correct_pairs / self.predicted_pairs if self.predicted_pairs else 1.0

    @property
    def recall(self) -> float:
        return self.correct_pairs / self.true_pairs if self.true_pairs else 1.0

    @property
    def f1(self) -> float:
        p, r = self.precision, self.recall
        return 2 * p * r / (p + r) if p + r else 0.0


def pairwise(
    clusters: Mapping[str, str], truth: Mapping[str, str], group: Callable[[str], str] | None = None
) -> PairwiseScores:
    """``clusters`` and ``truth`` map record id -> cluster / person. ``group(person)`` (e.g. household) lets
    false merges inside a group be counted separately."""
    true_pairs = sum(_pairs(c) for c in Counter(truth.values()).values())
    by_cluster: dict[str, list[str]] = defaultdict(list)
    for rid, cl in clusters.items():
        by_cluster[cl].append(rid)
    predicted = correct = household = 0
    for members in by_cluster.values():
        predicted += _pairs(len(members))
        persons = Counter(truth[m] for m in members)
        correct += sum(_pairs(c) for c in persons.values())
        if group is not None:
            groups: dict[str, list[int]] = defaultdict(list)
            for person, count in persons.items():
                groups[group(person)].append(count)
            for counts in groups.values():
                total = sum(counts)
                household += _pairs(total) - sum(_pairs(c) for c in counts)
    return PairwiseScores(true_pairs, predicted, correct, predicted - correct, household)


def pairwise_edges(edges: Iterable[tuple[str, str]], truth: Mapping[str, str]) -> PairwiseScores:
    """Scores of matched pairs as predicted, before any clustering (no transitive closure)."""
    true_pairs = sum(_pairs(c) for c in Counter(truth.values()).values())
    seen = {(a, b) if a < b else (b, a) for a, b in edges}
    correct = sum(1 for a, b in seen if truth[a] == truth[b])
    return PairwiseScores(true_pairs, len(seen), correct, len(seen) - correct, 0)
