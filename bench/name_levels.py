"""Where the name comparator puts pairs, with and without ``typing_errors`` (the ``name`` comparator's
comparison of names as clerks mistype them): per data set, per name field and level, the blocked candidate
pairs of the same person and of different people.

    python -m bench.name_levels [--people 3000] [--seed 7]

A level's "same" column is what its m is made of, "different" what its u is made of: the change moves
true pairs up (from similar / else to exact / close) without moving different people there.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

import matching
from matching.blocking import keys_of
from matching.dedupe import candidate_pairs, compare_all
from matching.scoring import Table

from .population import generate_population
from .quality import ROOT_RULES, with_shared


def with_typing_errors(rules: matching.Rules, on: bool) -> matching.Rules:
    doc = rules.to_dict()
    for f in doc["fields"].values():
        if f["comparator"] == "name":
            f.setdefault("params", {})["typing_errors"] = on
    return matching.load_rules(doc)


def level_counts(
    patients: Sequence[Mapping[str, Any]], truth: Mapping[str, str], rules: matching.Rules
) -> dict[str, dict[str, tuple[int, int]]]:
    """field -> level -> (same-person pairs, different-people pairs) among blocked candidate pairs."""
    table = Table.from_patients(patients, rules)
    keys = [keys_of(p, rules) for p in patients]
    left, right, _ = candidate_pairs([k.index for k in keys], rules.max_block_size, [k.search for k in keys])
    c = compare_all(table, left, right, rules, None)
    ids = [str(p["id"]) for p in patients]
    same = np.array(
        [truth[ids[a]] == truth[ids[b]] for a, b in zip(left.tolist(), right.tolist(), strict=True)]
    )
    out: dict[str, dict[str, tuple[int, int]]] = {}
    for k, f in enumerate(rules.fields):
        if f.comparator_name != "name":
            continue
        lv = c.levels[:, k]
        out[f.name] = {
            name: (int(((lv == i) & same).sum()), int(((lv == i) & ~same).sum()))
            for i, name in enumerate(f.level_names)
        }
    return out


def report(
    label: str, patients: Sequence[Mapping[str, Any]], truth: Mapping[str, str], rules: matching.Rules
) -> None:
    off = level_counts(patients, truth, with_typing_errors(rules, False))
    on = level_counts(patients, truth, with_typing_errors(rules, True))
    print(f"\n{label}: blocked pairs per level, same person / different people, typing_errors off -> on")
    for fname in off:
        print(f"  {fname}")
        for level in off[fname]:
            (s0, d0), (s1, d1) = off[fname][level], on[fname][level]
            print(
                f"    {level:<8} same {s0:>7} -> {s1:>7} ({s1 - s0:+d})   "
                f"different {d0:>8} -> {d1:>8} ({d1 - d0:+d})"
            )


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--people", type=int, default=3000)
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args(argv)
    rules = matching.load_rules(ROOT_RULES)
    patients, truth = generate_population(args.people, args.seed)
    report(f"household population ({args.people} people, seed {args.seed})", patients, truth, rules)
    from . import febrl, opencr

    pats, tr = opencr.load()
    report("OpenCR test set", pats, tr, with_shared(rules, opencr.NIN))
    for name in ("febrl3", "febrl4"):
        pats, tr = febrl.load(name)
        report(name, pats, tr, rules)
    return 0


if __name__ == "__main__":
    sys.exit(main())
