"""Explanations: per field the compared (normalised) values, the level and its weight; the total against
the thresholds, and the rule that decided. JSON-serialisable via ``to_dict()``."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property, lru_cache, partial
from typing import Any, NamedTuple

from .comparators import Identifier
from .normalise import split_identifier
from .rules import OUTCOMES, Rules
from .scoring import Compared, Table, holds


class Guards(NamedTuple):
    """The guards of one pair: ``fired`` held (their ``when`` and none of their ``unless``); ``capped_by``
    the first of them that lowered the outcome (None: none did); ``stepped_aside`` the guards whose
    ``when`` held but an ``unless`` alternative too, each with the first alternative that held."""

    fired: tuple[str, ...]
    stepped_aside: tuple[tuple[str, dict[str, tuple[str, ...]]], ...]
    capped_by: str | None


class FieldExplanation(NamedTuple):
    """One compared field (a named tuple: cheap to build for every candidate)."""

    field: str
    left: tuple[str, ...]
    right: tuple[str, ...]
    level: str
    weight: float
    m: float | None
    u: float | None


_SCALARS = (
    "prior_weight",
    "score",
    "auto_threshold",
    "potential_threshold",
    "classification",
    "rule",
    "names_swapped",
)


@dataclass(frozen=True)
class Explanation:
    """The explanation of one pair. ``fields`` is built on first access: a decision scores every candidate,
    but only the ones somebody looks at need their per-field breakdown."""

    prior_weight: float
    score: float
    auto_threshold: float
    potential_threshold: float
    classification: str
    rule: str
    names_swapped: bool
    build_fields: Callable[[], tuple[FieldExplanation, ...]] = field(repr=False, compare=False)
    build_guards: Callable[[], Guards] = field(
        repr=False, compare=False, default=lambda: Guards((), (), None)
    )

    @cached_property
    def fields(self) -> tuple[FieldExplanation, ...]:
        return self.build_fields()

    @cached_property
    def guards(self) -> Guards:
        """The guards (``at_most`` rules) of this pair: which held, which stepped aside, which capped."""
        return self.build_guards()

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {k: getattr(self, k) for k in _SCALARS}
        g = self.guards
        d["guards"] = {
            "capped_by": g.capped_by,
            "fired": list(g.fired),
            "stepped_aside": [
                {"rule": n, "unless": {k: list(v) for k, v in u.items()}} for n, u in g.stepped_aside
            ],
        }
        d["fields"] = [
            {**f._asdict(), "left": list(f.left), "right": list(f.right), "weight": round(f.weight, 4)}
            for f in self.fields
        ]
        return d

    def text(self) -> str:
        """A human-readable table."""
        out = [f"{'field':<14} {'left':<28} {'right':<28} {'level':<10} {'weight':>7}"]
        for f in self.fields:
            left, right = (" ".join(split_identifier(v)[1] for v in side) for side in (f.left, f.right))
            out.append(f"{f.field:<14} {left[:28]:<28} {right[:28]:<28} {f.level:<10} {f.weight:>+7.2f}")
        out.append(f"{'prior':<82} {self.prior_weight:>+7.2f}")
        out.append(f"{'total':<82} {self.score:>+7.2f}")
        out.append(
            f"thresholds: auto_match {self.auto_threshold:+.2f}, potential_match "
            f"{self.potential_threshold:+.2f}"
            + ("; given/family compared swapped" if self.names_swapped else "")
        )
        out.append(f"classification: {self.classification} (rule: {self.rule})")
        g = self.guards
        if g.capped_by:
            out.append(f"capped by guard: {g.capped_by}")
        others = [n for n in g.fired if n != g.capped_by]
        if others:
            out.append(f"guards that held without lowering it: {', '.join(others)}")
        for n, u in g.stepped_aside:
            why = ", ".join(f"{k} {'/'.join(v)}" for k, v in u.items())
            out.append(f"guard stepped aside: {n} (unless: {why})")
        return "\n".join(out)


def _label(rules: Rules, decided: int, capped: int) -> str:
    label = rules.deterministic[decided].name if decided >= 0 else "fellegi-sunter"
    if capped >= 0:
        label += f", capped by {rules.deterministic[capped].name}"
    return f"{rules.name}:{label}"


def _shown(comparator: object, values: tuple[str, ...]) -> tuple[str, ...]:
    """Identifier fields show only the identifiers of the systems they compare, as they compare them:
    shared systems' values folded, facilities' as the registry keys them."""
    if values and isinstance(comparator, Identifier):
        return _selected(comparator, values)
    return values


@lru_cache(maxsize=65_536)
def _selected(comparator: Identifier, values: tuple[str, ...]) -> tuple[str, ...]:
    return comparator.shown(values)


def explain_all(
    rules: Rules, table: Table, c: Compared, left: list[int], right: list[int]
) -> list[Explanation]:
    """The explanation of every pair of ``c`` (records ``left[i]`` and ``right[i]`` of ``table``), read from
    Python lists rather than one numpy scalar at a time (a bulk batch explains ≈ 1,000 pairs)."""
    prior = round(rules.prior_weight, 4)
    labels: dict[tuple[int, int], str] = {}
    out = []
    rows = zip(
        c.scores.tolist(),
        c.outcome.tolist(),
        c.swapped.tolist(),
        c.decided_by.tolist(),
        c.capped_by.tolist(),
        left,
        right,
        strict=True,
    )
    for i, (score, outcome, swapped, decided, capped, li, ri) in enumerate(rows):
        label = labels.get((decided, capped))
        if label is None:
            label = labels[(decided, capped)] = _label(rules, decided, capped)
        out.append(
            Explanation(
                prior_weight=prior,
                score=round(score, 4),
                auto_threshold=rules.auto_threshold,
                potential_threshold=rules.potential_threshold,
                classification=OUTCOMES[outcome],
                rule=label,
                names_swapped=swapped,
                build_fields=partial(_fields, rules, table, c, i, li, ri),
                build_guards=partial(_guards, rules, c, i),
            )
        )
    return out


def _guards(rules: Rules, c: Compared, i: int) -> Guards:
    levels = c.levels[i : i + 1]
    fired, aside = [], []
    for j, r in enumerate(rules.deterministic):
        if r.at_most is None or not holds(levels, rules.compiled_rules[j])[0]:
            continue
        held = [k for k, alt in enumerate(rules.compiled_unless[j]) if holds(levels, alt)[0]]
        if held:
            alt = r.unless[held[0]]
            aside.append((r.name, {f: _ordered(rules, f, v) for f, v in alt.items()}))
        else:
            fired.append(r.name)
    capped = int(c.capped_by[i])
    return Guards(tuple(fired), tuple(aside), rules.deterministic[capped].name if capped >= 0 else None)


def _ordered(rules: Rules, name: str, levels: frozenset[str]) -> tuple[str, ...]:
    return tuple(lv for lv in rules.field(name).level_names if lv in levels)


def _fields(
    rules: Rules, table: Table, c: Compared, i: int, li: int, ri: int
) -> tuple[FieldExplanation, ...]:
    swapped, flipped = bool(c.swapped[i]), bool(c.flipped[i])
    columns = table.columns
    return tuple(
        FieldExplanation(
            name,
            _shown(f.comparator, columns[other if swapped and flipped else name].values[li]),
            _shown(f.comparator, columns[other if swapped and not flipped else name].values[ri]),
            names[lv],
            w,
            m[lv] if lv else None,
            u[lv] if lv else None,
        )
        for (name, other, names, m, u), f, lv, w in zip(
            rules.explain_table, rules.fields, c.levels[i].tolist(), c.weights[i].tolist(), strict=True
        )
    )
