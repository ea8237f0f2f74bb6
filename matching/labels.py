"""Reviewers' decisions as labelled pairs for ``train --labels``.

A labels CSV has a header with ``id_a``, ``id_b`` and ``decision`` (``same`` or ``different``), one decided
pair a line: the admin page's export of closed review Tasks, or any file of that shape. Every problem is
reported with its line, and a file with problems is refused as a whole (never used in part): an id that is
not among the records trained on, a pair decided both ways, a ``different`` pair that ``same`` decisions
join through other records (A same B, B same C, A different C), an id paired with itself, a bad decision.
:func:`contradicting_chains` is that last rule, for whoever writes such a file (the admin export flags them).
"""

from __future__ import annotations

import csv
import pathlib
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass

DECISIONS = ("same", "different")
EXTRA, ROOT = -1, -2  # edge ids in _block_with: the pair decided different; none (the search's root)


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


Pair = tuple[str, str, bool]  # (id_a, id_b, decided the same person)


@dataclass(frozen=True)
class Chain:
    """A contradicting chain: pair ``different`` was decided different people, yet same-person decisions join
    its two records. ``same``: every pair decided the same person that lies on a path of such decisions
    between the two through no record twice (indices into the pairs given, ascending): the decisions to
    look at again, with ``different``. ``group``: 1, 2, … one per set of records same-person decisions join,
    numbered in the order of their first chain; the chains through one set share it."""

    group: int
    different: int
    same: tuple[int, ...]


def contradicting_chains(pairs: Sequence[Pair]) -> list[Chain]:
    """Every pair decided different people whose records same-person decisions among ``pairs`` join, in the
    order of ``pairs``, with the same-person decisions that join them."""
    graph: dict[str, list[tuple[str, int]]] = {}
    for i, (a, b, same) in enumerate(pairs):
        if same and a != b:
            graph.setdefault(a, []).append((b, i))
            graph.setdefault(b, []).append((a, i))
    component = _components(graph)
    groups: dict[int, int] = {}
    chains: list[Chain] = []
    for i, (a, b, same) in enumerate(pairs):
        if same or a == b or a not in component or component[a] != component.get(b):
            continue
        group = groups.setdefault(component[a], len(groups) + 1)
        chains.append(Chain(group, i, tuple(sorted(_block_with(graph, a, b) - {EXTRA}))))
    return chains


def _components(graph: Mapping[str, list[tuple[str, int]]]) -> dict[str, int]:
    """Record -> the number of the set of records the edges of ``graph`` join."""
    component: dict[str, int] = {}
    for start in graph:
        if start in component:
            continue
        number, todo = len(component), [start]
        component[start] = number
        while todo:
            for other, _ in graph[todo.pop()]:
                if other not in component:
                    component[other] = number
                    todo.append(other)
    return component


def _block_with(graph: Mapping[str, list[tuple[str, int]]], a: str, b: str) -> set[int]:
    """The edges of ``graph`` that lie on a simple path between ``a`` and ``b``: with an edge :data:`EXTRA`
    between them, the biconnected block holding it (two edges share a block iff a simple cycle holds both).
    Tarjan's edge-stack search, iterative."""

    def edges(v: str) -> list[tuple[str, int]]:
        extra = [(b, EXTRA)] if v == a else [(a, EXTRA)] if v == b else []
        return extra + graph.get(v, [])

    order = {a: 0}
    low = {a: 0}
    stack: list[tuple[str, int, Iterator[tuple[str, int]]]] = [(a, ROOT, iter(edges(a)))]
    path: list[int] = []
    while stack:
        v, via, todo = stack[-1]
        for w, e in todo:
            if e == via:
                continue
            if w not in order:
                order[w] = low[w] = len(order)
                path.append(e)
                stack.append((w, e, iter(edges(w))))
                break
            if order[w] < order[v]:  # back to an ancestor
                path.append(e)
                low[v] = min(low[v], order[w])
        else:
            stack.pop()
            if not stack:
                break
            u = stack[-1][0]
            low[u] = min(low[u], low[v])
            if low[v] >= order[u]:  # the edges pushed since ``via`` are one block
                block = {path.pop()}
                while via not in block:
                    block.add(path.pop())
                if EXTRA in block:
                    return block
    return set()


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
    decided_same = {(min(lb.id_a, lb.id_b), max(lb.id_a, lb.id_b)) for lb in labels if lb.same}
    for chain in contradicting_chains([(lb.id_a, lb.id_b, lb.same) for lb in labels]):
        lb = labels[chain.different]
        if (min(lb.id_a, lb.id_b), max(lb.id_a, lb.id_b)) in decided_same:
            continue  # decided both ways, said above
        lines = ", ".join(str(labels[i].line) for i in chain.same)
        out.append(
            f"{name}: line {lb.line}: {lb.id_a} / {lb.id_b} decided different, but same-person decisions "
            f"join them through other records (lines {lines})"
        )
    return out
