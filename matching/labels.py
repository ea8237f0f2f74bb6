"""Reviewers' decisions as labelled pairs for ``train --labels``.

A labels CSV has a header with ``id_a``, ``id_b`` and ``decision`` (``same`` or ``different``), one decided
pair a line: the admin page's export of closed review Tasks, or any file of that shape. Every problem is
reported with its line, and a file with problems is refused as a whole (never used in part): an id that is
not among the records trained on, a pair decided both ways, a ``different`` pair that ``same`` decisions
join through other records (A same B, B same C, A different C), an id paired with itself, a bad decision.
"""

from __future__ import annotations

import csv
import pathlib
from collections.abc import Collection, Iterable
from dataclasses import dataclass

DECISIONS = ("same", "different")


class LabelsError(ValueError):
    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


@dataclass(frozen=True)
class Label:
    id_a: str
    id_b: str
    same: bool
    line: int


def read_labels(path: pathlib.Path, known_ids: Collection[str]) -> list[Label]:
    try:
        with path.open(encoding="utf-8", newline="") as fh:
            rows = list(csv.reader(fh))
    except (OSError, UnicodeDecodeError) as exc:
        raise LabelsError([f"{path}: cannot read: {exc}"]) from exc
    return parse_labels(rows, known_ids, str(path))


def parse_labels(rows: Iterable[list[str]], known_ids: Collection[str], name: str = "labels") -> list[Label]:
    """Rows of a labels CSV (the first is the header) -> labels, or :class:`LabelsError` listing every
    problem with its line."""
    problems: list[str] = []
    it = iter(rows)
    header = [h.strip() for h in next(it, [])]
    missing = [c for c in ("id_a", "id_b", "decision") if c not in header]
    if missing:
        raise LabelsError(
            [f"{name}: line 1: header must name id_a, id_b, decision (missing {', '.join(missing)})"]
        )
    ia, ib, idec = header.index("id_a"), header.index("id_b"), header.index("decision")
    labels: list[Label] = []
    for line, row in enumerate(it, start=2):
        if not any(x.strip() for x in row):
            continue
        if len(row) <= max(ia, ib, idec):
            problems.append(f"{name}: line {line}: expected {len(header)} columns, got {len(row)}")
            continue
        a, b, dec = row[ia].strip(), row[ib].strip(), row[idec].strip().lower()
        bad = False
        for x in (a, b):
            if x not in known_ids:
                problems.append(f"{name}: line {line}: unknown id {x!r} (not among the records trained on)")
                bad = True
        if a == b:
            problems.append(f"{name}: line {line}: {a!r} is paired with itself")
            bad = True
        if dec not in DECISIONS:
            problems.append(f"{name}: line {line}: decision must be same or different, got {row[idec]!r}")
            bad = True
        if not bad:
            labels.append(Label(a, b, dec == "same", line))
    problems.extend(_contradictions(labels, name))
    if problems:
        raise LabelsError(problems)
    return labels


def _contradictions(labels: list[Label], name: str) -> list[str]:
    out: list[str] = []
    first: dict[tuple[str, str], Label] = {}
    for lb in labels:
        key = (min(lb.id_a, lb.id_b), max(lb.id_a, lb.id_b))
        seen = first.setdefault(key, lb)
        if seen.same != lb.same:
            out.append(
                f"{name}: line {lb.line}: {lb.id_a} / {lb.id_b} decided "
                f"{'same' if lb.same else 'different'}, but {'same' if seen.same else 'different'} on line "
                f"{seen.line}"
            )
    parent: dict[str, str] = {}

    def root(x: str) -> str:
        parent.setdefault(x, x)
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for lb in labels:
        if lb.same:
            parent[root(lb.id_a)] = root(lb.id_b)
    for lb in labels:
        key = (min(lb.id_a, lb.id_b), max(lb.id_a, lb.id_b))
        if not lb.same and first[key].same is False and root(lb.id_a) == root(lb.id_b):
            out.append(
                f"{name}: line {lb.line}: {lb.id_a} / {lb.id_b} decided different, but same-person decisions "
                "join them through other records"
            )
    return out
