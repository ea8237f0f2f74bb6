"""Batch de-duplication: blocking -> vectorised comparison -> non-chaining clustering."""

from __future__ import annotations

import sys
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, TextIO

import numpy as np

from .blocking import keys_of
from .cluster import cluster
from .rules import OUTCOMES, Rules
from .scoring import MATCH, Compared, Table, compare

CHUNK = 200_000


@dataclass
class DedupeResult:
    ids: list[str]
    labels: np.ndarray  # cluster label (record index of the cluster's first record)
    left: np.ndarray  # compared pairs
    right: np.ndarray
    compared: Compared
    refused: list[tuple[int, int]]  # auto-match edges refused by clustering (would have chained)
    skipped_blocks: list[tuple[str, int]]

    def cluster_ids(self) -> list[str]:
        return [self.ids[int(x)] for x in self.labels]

    def review_pairs(self) -> list[tuple[int, int, float, str]]:
        """Potential matches across clusters and refused auto-matches: (i, j, score, reason)."""
        out = []
        c = self.compared
        pot = np.nonzero(c.outcome == 1)[0]
        for k in pot.tolist():
            i, j = int(self.left[k]), int(self.right[k])
            if self.labels[i] != self.labels[j]:
                out.append((i, j, float(c.scores[k]), "potential"))
        if self.refused:
            n = np.int64(len(self.ids))
            codes = self.left * n + self.right  # sorted: candidate_pairs returns them in code order
            for i, j in self.refused:
                code = min(i, j) * n + max(i, j)
                pos = int(np.searchsorted(codes, code))
                found = pos < len(codes) and codes[pos] == code
                out.append((i, j, float(c.scores[pos]) if found else float("nan"), "refused-would-chain"))
        return out


Progress = Callable[[str], None]


def stderr_progress(stream: TextIO | None = None) -> Progress:
    def report(msg: str) -> None:
        print(msg, file=stream or sys.stderr, flush=True)

    return report


@lru_cache(maxsize=1024)
def _triu(size: int) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.triu_indices(size, k=1)
    return a, b


def candidate_pairs(
    keys: Sequence[Sequence[str]],
    max_block_size: int,
    search: Sequence[Sequence[str]] | None = None,
) -> tuple[np.ndarray, np.ndarray, list[tuple[str, int]]]:
    """Unique pairs ``(i < j)`` of records one of which is filed under (``keys``) a key the other is looked
    up by (``search``, :attr:`BlockKeys.search`; the same as ``keys`` when not given). A block — the records
    filed under one key — over ``max_block_size`` is skipped."""
    blocks: dict[str, list[int]] = defaultdict(list)
    for i, ks in enumerate(keys):
        for k in ks:
            blocks[k].append(i)
    seekers: dict[str, list[int]] = defaultdict(list)
    if search is not None:
        for i, ks in enumerate(search):
            for k in ks:
                if k in blocks:
                    seekers[k].append(i)
    n = len(keys)
    skipped = []
    parts = []
    for k, members in blocks.items():
        s = len(members)
        if s > max_block_size:
            skipped.append((k, s))
            continue
        m = np.asarray(members, dtype=np.int64)
        if search is None:
            if s < 2:
                continue
            a, b = _triu(s)
            parts.append(m[a] * n + m[b])
            continue
        grid = np.meshgrid(np.asarray(seekers[k], dtype=np.int64), m, indexing="ij")
        x, y = grid[0].ravel(), grid[1].ravel()
        keep = x != y
        lo, hi = np.minimum(x[keep], y[keep]), np.maximum(x[keep], y[keep])
        parts.append(lo * n + hi)
    if not parts:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, skipped
    code = np.unique(np.concatenate(parts))
    return code // n, code % n, skipped


def compare_all(
    table: Table, left: np.ndarray, right: np.ndarray, rules: Rules, progress: Progress | None
) -> Compared:
    chunks = []
    for start in range(0, len(left), CHUNK):
        chunks.append(compare(table, left[start : start + CHUNK], right[start : start + CHUNK], rules))
        if progress and len(left) > CHUNK:
            progress(f"compared {min(start + CHUNK, len(left)):,}/{len(left):,} pairs")
    if not chunks:
        return compare(table, left, right, rules)
    return Compared(*(np.concatenate([getattr(c, f) for c in chunks]) for f in Compared.__dataclass_fields__))


def dedupe(
    patients: Sequence[Mapping[str, Any]], rules: Rules, progress: Progress | None = None
) -> DedupeResult:
    n = len(patients)
    ids = [str(p.get("id")) for p in patients]
    if progress:
        progress(f"normalising {n:,} records")
    table = Table.from_patients(patients, rules)
    keys = [keys_of(p, rules) for p in patients]
    left, right, skipped = candidate_pairs(
        [k.index for k in keys], rules.max_block_size, [k.search for k in keys]
    )
    if progress:
        progress(f"{len(left):,} candidate pairs from blocking")
        for k, s in skipped:
            progress(f"skipped block {k} of {s} records (max_block_size {rules.max_block_size})")
    c = compare_all(table, left, right, rules, progress)
    auto = np.nonzero(c.outcome == MATCH)[0]
    in_auto = np.zeros(n, dtype=bool)
    in_auto[left[auto]] = True
    in_auto[right[auto]] = True
    sel = np.nonzero(in_auto[left] & in_auto[right])[0]
    least = OUTCOMES.index(rules.min_cross_pair)
    ok = (c.outcome[sel] >= least) & (c.capped_by[sel] < 0)
    compatible = dict(
        zip(zip(left[sel].tolist(), right[sel].tolist(), strict=True), ok.tolist(), strict=True)
    )

    def check(li: np.ndarray, ri: np.ndarray) -> np.ndarray:
        cc = compare(table, li, ri, rules)
        return (cc.outcome >= least) & (cc.capped_by < 0)

    labels, refused = cluster(n, left[auto], right[auto], c.scores[auto], compatible, check)
    if progress:
        progress(
            f"{len(auto):,} auto-match pairs, {len(refused):,} refused to avoid chaining, "
            f"{len(set(labels.tolist())):,} clusters"
        )
    return DedupeResult(ids, labels, left, right, c, refused, skipped)
