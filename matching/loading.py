"""Rules documents (a YAML file or an already-parsed mapping) -> frozen :class:`~matching.rules.Rules`.

Every problem is collected and reported together in one :class:`~matching.errors.RulesError`, each naming
the line of the file (or the key path of a mapping). See ``rules/default.yaml`` for the documented format.
"""

from __future__ import annotations

import math
import pathlib
from collections.abc import Mapping
from typing import Any, TypeGuard

import numpy as np
import yaml

from .aliases import SHIPPED, Aliases
from .comparators import REGISTRY, Context
from .errors import RulesError
from .normalise import EXTRACTORS
from .rules import BLOCK_PARTS, OUTCOMES, TOP_KEYS, Block, DeterministicRule, Field, Rules, _plain


def load_rules(source: str | pathlib.Path | Mapping[str, Any]) -> Rules:
    """Load and validate rules from a YAML file path or an already-parsed mapping."""
    lines: dict[tuple[str, ...], int] = {}
    base = pathlib.Path.cwd()
    if isinstance(source, Mapping):
        doc: Any = source
    else:
        path = pathlib.Path(source)
        base = path.parent
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise RulesError([f"{path}: cannot read: {exc}"]) from exc
        try:
            node = yaml.compose(text, Loader=yaml.SafeLoader)
            doc = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f"line {mark.line + 1}: " if mark is not None else ""
            raise RulesError([f"{path}: {where}YAML syntax error: {exc}"]) from exc
        if node is not None:
            _index_lines(node, (), lines)
    return _build(doc, lines, base)


def _index_lines(node: yaml.Node, path: tuple[str, ...], out: dict[tuple[str, ...], int]) -> None:
    out.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            key = (*path, str(k.value))
            out[key] = k.start_mark.line + 1
            _index_lines(v, key, out)
    elif isinstance(node, yaml.SequenceNode):
        for i, v in enumerate(node.value):
            _index_lines(v, (*path, str(i)), out)


class _Problems:
    def __init__(self, lines: dict[tuple[str, ...], int]) -> None:
        self.lines = lines
        self.items: list[str] = []

    def add(self, path: tuple[Any, ...], message: str) -> None:
        p = tuple(str(x) for x in path)
        where = ".".join(p) or "<document>"
        line = None
        for n in range(len(p), -1, -1):
            line = self.lines.get(p[:n])
            if line is not None:
                break
        self.items.append(
            f"line {line}: {where}: {message}" if line is not None and self.lines else f"{where}: {message}"
        )


def _num(x: Any) -> TypeGuard[int | float]:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


def _build(doc: Any, lines: dict[tuple[str, ...], int], base: pathlib.Path) -> Rules:
    P = _Problems(lines)
    if not isinstance(doc, Mapping):
        raise RulesError(["<document>: must be a mapping"])
    for k in doc:
        if k not in TOP_KEYS:
            P.add((k,), f"unknown key (known: {', '.join(sorted(TOP_KEYS))})")
    if "trained" in doc and not isinstance(doc["trained"], str):  # when `train` wrote them (UTC)
        P.add(("trained",), "must be a quoted ISO 8601 date-time, e.g. '2026-12-07T09:00:00+00:00'")
    name = doc.get("name")
    if not isinstance(name, str) or not name:
        P.add(("name",), "required, a non-empty string")
        name = "rules"
    shared = doc.get("shared_identifier_systems", [])
    if not isinstance(shared, list) or not all(isinstance(s, str) for s in shared):
        P.add(("shared_identifier_systems",), "must be a list of identifier system URIs")
        shared = []
    alias_files = [SHIPPED]
    raw_aliases = doc.get("aliases", [])
    if not isinstance(raw_aliases, list):
        P.add(("aliases",), "must be a list of CSV file paths (relative to the rules file)")
        raw_aliases = []
    for i, a in enumerate(raw_aliases):
        p = base / str(a)
        if not p.is_file():
            P.add(("aliases", i), f"file not found: {p}")
        else:
            alias_files.append(p)
    english = doc.get("english_nicknames", True)
    if not isinstance(english, bool):
        P.add(("english_nicknames",), "must be true or false")
        english = True
    context = Context(tuple(shared), Aliases(alias_files, english_nicknames=english))

    prior = doc.get("prior", 0.01)
    if not _num(prior) or not 0 < prior < 1:
        P.add(("prior",), f"must be a probability strictly between 0 and 1, got {prior!r}")
        prior = 0.01
    auto, potential = 10.0, 0.0
    th = doc.get("thresholds")
    if not isinstance(th, Mapping):
        P.add(("thresholds",), "required: {auto_match: <weight>, potential_match: <weight>}")
    else:
        for k in th:
            if k not in ("auto_match", "potential_match"):
                P.add(("thresholds", k), "unknown key (known: auto_match, potential_match)")
        for k in ("auto_match", "potential_match"):
            v = th.get(k)
            if not _num(v) or not -100 <= v <= 100:
                P.add(("thresholds", k), f"required, a match weight between -100 and 100, got {v!r}")
        if _num(th.get("auto_match")) and _num(th.get("potential_match")):
            auto, potential = float(th["auto_match"]), float(th["potential_match"])
            if potential > auto:
                P.add(("thresholds", "potential_match"), "must not be above auto_match")

    fields = _fields(doc.get("fields"), P, context)
    levels = {f.name: set(f.level_names) for f in fields}
    raw_fields = doc.get("fields")
    broken = (
        {str(k) for k in raw_fields if str(k) not in levels} if isinstance(raw_fields, Mapping) else set()
    )

    swap = doc.get("swap")
    if swap is not None:
        if isinstance(swap, list) and set(swap) & broken:
            swap = None  # already reported
        elif not (isinstance(swap, list) and len(swap) == 2 and all(s in levels for s in swap)):
            P.add(("swap",), "must be a list of two declared name fields, e.g. [given, family]")
            swap = None
        elif any(next(f for f in fields if f.name == s).kind != "name" for s in swap):
            P.add(("swap",), "both fields must read names (name.given / name.family)")
            swap = None

    det = _deterministic(doc.get("deterministic", []), P, levels, broken)
    blocks = _blocking(doc.get("blocking"), P)
    mbs = doc.get("max_block_size", 500)
    if not isinstance(mbs, int) or isinstance(mbs, bool) or mbs < 2:
        P.add(("max_block_size",), f"must be an integer >= 2, got {mbs!r}")
        mbs = 500
    min_cross = "potential"
    cl = doc.get("clustering", {})
    if not isinstance(cl, Mapping):
        P.add(("clustering",), "must be a mapping {min_cross_pair: potential | no_match}")
    else:
        for k in cl:
            if k != "min_cross_pair":
                P.add(("clustering", k), "unknown key (known: min_cross_pair)")
        min_cross = cl.get("min_cross_pair", "potential")
        if min_cross not in ("potential", "no_match"):
            P.add(("clustering", "min_cross_pair"), f"must be potential or no_match, got {min_cross!r}")
            min_cross = "potential"
    if P.items:
        raise RulesError(P.items)
    return Rules(
        name=name,
        auto_threshold=auto,
        potential_threshold=potential,
        prior=float(prior),
        fields=tuple(fields),
        deterministic=tuple(det),
        blocking=tuple(blocks),
        shared_identifier_systems=tuple(shared),
        swap=(swap[0], swap[1]) if swap else None,
        max_block_size=mbs,
        min_cross_pair=min_cross,
        source=_plain(doc),
    )


def _fields(raw: Any, P: _Problems, context: Context) -> list[Field]:
    out: list[Field] = []
    if not isinstance(raw, Mapping) or not raw:
        P.add(("fields",), "required: a mapping of field name -> {path, comparator, levels}")
        return out
    for fname, spec in raw.items():
        at = ("fields", fname)
        if not isinstance(spec, Mapping):
            P.add(at, "must be a mapping with path, comparator, levels")
            continue
        for k in spec:
            if k not in ("path", "comparator", "params", "levels", "frequencies"):
                P.add((*at, k), "unknown key (known: path, comparator, params, levels, frequencies)")
        path, cname = str(spec.get("path")), str(spec.get("comparator"))
        ok = True
        if path not in EXTRACTORS:
            P.add((*at, "path"), f"unknown path {path!r} (known: {', '.join(EXTRACTORS)})")
            ok = False
        if cname not in REGISTRY:
            P.add((*at, "comparator"), f"unknown comparator {cname!r} (known: {', '.join(REGISTRY)})")
            ok = False
        if not ok:
            continue
        cls = REGISTRY[cname]
        kind = EXTRACTORS[path][1]
        if kind not in cls.kinds:
            P.add((*at, "comparator"), f"comparator {cname!r} cannot compare {path} values ({kind})")
            continue
        params = spec.get("params") or {}
        if not isinstance(params, Mapping):
            P.add((*at, "params"), "must be a mapping")
            continue
        for msg in cls.check_params(params):
            P.add((*at, "params", msg.split(":", 1)[0]), msg.split(": ", 1)[1])
        comp = cls(params, context)
        names = comp.levels
        lv = spec.get("levels")
        m: list[float] = []
        u: list[float] = []
        if not isinstance(lv, Mapping):
            P.add((*at, "levels"), f"required: m and u for each level: {', '.join(names)}")
            continue
        for k in lv:
            if k not in names:
                P.add((*at, "levels", k), f"unknown level for {cname} (levels: {', '.join(names)})")
        for level in names:
            item = lv.get(level)
            if not isinstance(item, Mapping):
                P.add(
                    (*at, "levels", level) if level in lv else (*at, "levels"),
                    f"level {level!r} needs {{m: <probability>, u: <probability>}}",
                )
                m.append(0.5)
                u.append(0.5)
                continue
            for key, dest in (("m", m), ("u", u)):
                v = item.get(key)
                if not _num(v) or not 0 <= v <= 1:
                    P.add((*at, "levels", level, key), f"must be a probability in [0, 1], got {v!r}")
                    v = 0.5
                dest.append(float(v))
        w = np.zeros(len(names) + 1)
        for i, (mi, ui) in enumerate(zip(m, u, strict=True)):
            w[i + 1] = math.log2(max(mi, 1e-6) / max(ui, 1e-6))
        freq = spec.get("frequencies") or {}
        if not isinstance(freq, Mapping) or not all(
            isinstance(k, str) and _num(v) and 0 < v <= 1 for k, v in freq.items()
        ):
            P.add((*at, "frequencies"), "must map normalised values to frequencies in (0, 1]")
            freq = {}
        elif freq and "exact" not in names:
            P.add((*at, "frequencies"), f"comparator {cname!r} has no 'exact' level to adjust")
        out.append(Field(str(fname), path, cname, dict(params), tuple(m), tuple(u), comp, w, dict(freq)))
    return out


def _deterministic(
    raw: Any, P: _Problems, levels: dict[str, set[str]], broken: set[str]
) -> list[DeterministicRule]:
    out: list[DeterministicRule] = []
    if not isinstance(raw, list):
        P.add(("deterministic",), "must be a list of rules")
        return out
    names: set[str] = set()
    for i, r in enumerate(raw):
        at = ("deterministic", i)
        if not isinstance(r, Mapping):
            P.add(at, "must be a mapping {name, when, then | at_most}")
            continue
        for k in r:
            if k not in ("name", "when", "unless", "then", "at_most", "description"):
                P.add((*at, k), "unknown key (known: name, when, unless, then, at_most, description)")
        name = r.get("name")
        if not isinstance(name, str) or not name:
            P.add((*at, "name"), "required, a non-empty string")
            name = f"rule{i}"
        elif name in names:
            P.add((*at, "name"), f"duplicate rule name {name!r}")
        names.add(name)
        then, at_most = r.get("then"), r.get("at_most")
        if (then is None) == (at_most is None):
            P.add(at, "exactly one of 'then' or 'at_most' is required")
        if then is not None and then not in OUTCOMES:
            P.add((*at, "then"), f"must be one of {', '.join(OUTCOMES)}, got {then!r}")
        if at_most is not None and at_most not in ("potential", "no_match"):
            P.add((*at, "at_most"), f"must be potential or no_match, got {at_most!r}")
        when = r.get("when")
        conds: dict[str, frozenset[str]] = {}
        if not isinstance(when, Mapping) or not when:
            P.add((*at, "when"), "required: a mapping field -> level or list of levels")
        else:
            conds = _conditions(when, (*at, "when"), P, levels, broken)
        unless: list[dict[str, frozenset[str]]] = []
        raw_unless = r.get("unless")
        if raw_unless is not None:
            alternatives = [raw_unless] if isinstance(raw_unless, Mapping) else raw_unless
            if not isinstance(alternatives, list) or not alternatives:
                P.add((*at, "unless"), "must be a mapping field -> level(s), or a list of such mappings")
                alternatives = []
            for j, alt in enumerate(alternatives):
                where = (*at, "unless") if isinstance(raw_unless, Mapping) else (*at, "unless", j)
                if not isinstance(alt, Mapping) or not alt:
                    P.add(where, "must be a non-empty mapping field -> level or list of levels")
                    continue
                unless.append(_conditions(alt, where, P, levels, broken))
        out.append(DeterministicRule(name, conds, then, at_most, tuple(unless)))
    return out


def _conditions(
    raw: Mapping[Any, Any], at: tuple[Any, ...], P: _Problems, levels: dict[str, set[str]], broken: set[str]
) -> dict[str, frozenset[str]]:
    """A ``when:`` / ``unless:`` mapping field -> level or list of levels, every name checked."""
    conds: dict[str, frozenset[str]] = {}
    for f, lv in raw.items():
        if f in broken:
            continue  # the field's own problem is reported already
        if f not in levels:
            P.add((*at, f), f"unknown field {f!r}")
            continue
        lvs = [lv] if isinstance(lv, str) else lv
        if not isinstance(lvs, list) or not lvs:
            P.add((*at, f), "must be a level name or a list of level names")
            continue
        for x in lvs:
            if x not in levels[f]:
                P.add((*at, f), f"unknown level {x!r} (levels: {', '.join(sorted(levels[f]))})")
        conds[str(f)] = frozenset(str(x) for x in lvs)
    return conds


def _blocking(raw: Any, P: _Problems) -> list[Block]:
    out: list[Block] = []
    if not isinstance(raw, list) or not raw:
        P.add(("blocking",), "required: a list of {name, key: [parts]}")
        return out
    seen: set[str] = set()
    for i, b in enumerate(raw):
        at = ("blocking", i)
        if not isinstance(b, Mapping):
            P.add(at, "must be a mapping {name, key}")
            continue
        name, key = b.get("name"), b.get("key")
        for k in b:
            if k not in ("name", "key", "description"):
                P.add((*at, k), "unknown key (known: name, key, description)")
        if not isinstance(name, str) or not name.isalnum() or len(name) > 8:
            P.add((*at, "name"), "required: letters/digits only, at most 8 characters (it prefixes the keys)")
            name = f"b{i}"
        elif name in seen:
            P.add((*at, "name"), f"duplicate block name {name!r}")
        seen.add(name)
        if not isinstance(key, list) or not key:
            P.add((*at, "key"), f"required: a list of parts from {', '.join(BLOCK_PARTS)}")
            continue
        for j, part in enumerate(key):
            if part not in BLOCK_PARTS:
                P.add((*at, "key", j), f"unknown key part {part!r} (known: {', '.join(BLOCK_PARTS)})")
        out.append(Block(name, tuple(str(x) for x in key)))
    return out
