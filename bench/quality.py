"""Quality benchmark: pairwise precision / recall / F1 of ``matching`` against the truth, side by side with
Splink 5 (unsupervised) on the same synthetic population in the same run, and on FEBRL3 / FEBRL4.

    python -m bench.quality [--people 3000] [--seed 7] [--no-splink] [--no-febrl] [--large 30000]

Precision and recall are over record pairs placed in the same cluster (auto-matches only). "household FM"
counts false-merge pairs between different people of the same household (twins, parent/child, siblings,
spouses) — the costly kind.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any

import matching
from matching.dedupe import dedupe
from matching.em import train

from .metrics import PairwiseScores, pairwise, pairwise_edges
from .population import generate_population, household

ROOT_RULES = "rules/default.yaml"
FEBRL_RULES = "rules/febrl.yaml"


def row(label: str, s: PairwiseScores, seconds: float, extra: str = "") -> str:
    return (
        f"{label:<44} {s.precision:>9.4f} {s.recall:>7.4f} {s.f1:>7.4f} {s.false_merge_pairs:>7} "
        f"{s.household_false_merges:>9} {seconds:>7.1f}s {extra}"
    )


HEADER = f"{'system':<44} {'precision':>9} {'recall':>7} {'F1':>7} {'FM':>7} {'house FM':>9} {'time':>8}"


def ours(
    patients: Sequence[Mapping[str, Any]], truth: Mapping[str, str], rules: matching.Rules
) -> tuple[PairwiseScores, float]:
    t0 = time.perf_counter()
    r = dedupe(patients, rules)
    return pairwise(
        dict(zip(r.ids, r.cluster_ids(), strict=True)), truth, household
    ), time.perf_counter() - t0


def with_threshold(rules: matching.Rules, auto: float) -> matching.Rules:
    doc = rules.to_dict()
    doc["thresholds"]["auto_match"] = auto
    doc["thresholds"]["potential_match"] = min(doc["thresholds"]["potential_match"], auto)
    return matching.load_rules(doc)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--people", type=int, default=3000)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--no-splink", action="store_true")
    ap.add_argument("--no-febrl", action="store_true")
    ap.add_argument("--large", type=int, default=0, help="also run on a population of this many people")
    args = ap.parse_args(argv)

    patients, truth = generate_population(args.people, args.seed)
    print(f"synthetic population: {args.people} people, {len(patients)} records, seed {args.seed}")
    print(HEADER)
    rules = matching.load_rules(ROOT_RULES)
    s, sec = ours(patients, truth, rules)
    print(row(f"ours: {ROOT_RULES} as shipped", s, sec, f"(auto >= {rules.auto_threshold:g})"))
    r = dedupe(patients, rules)
    auto = r.compared.outcome == 2
    edges = [(r.ids[a], r.ids[b]) for a, b in zip(r.left[auto].tolist(), r.right[auto].tolist(), strict=True)]
    print(row("  ours: auto-match pairs before clustering", pairwise_edges(edges, truth), sec))
    pot = r.compared.outcome >= 1
    edges = [(r.ids[a], r.ids[b]) for a, b in zip(r.left[pot].tolist(), r.right[pot].tolist(), strict=True)]
    print(row("  ours: auto + potential pairs (review queue)", pairwise_edges(edges, truth), sec))
    t0 = time.perf_counter()
    trained = matching.load_rules(train(patients, rules))
    t_train = time.perf_counter() - t0
    s, sec = ours(patients, truth, trained)
    print(row("ours: default + `train` (EM m/u, prior, TF)", s, sec + t_train))
    t0 = time.perf_counter()
    kept = matching.load_rules(train(patients, rules, keep_weights=True))
    t_train = time.perf_counter() - t0
    s, sec = ours(patients, truth, kept)
    print(row("ours: default + `train --keep-weights`", s, sec + t_train, f"(prior {kept.prior:.3g})"))
    print("threshold trade-off (shipped rules, auto_match varied):")
    for auto in (2.0, 4.0, 6.0, 8.0, 10.0, 12.0, 16.0):
        s, sec = ours(patients, truth, with_threshold(rules, auto))
        print(row(f"  ours auto_match >= {auto:g}", s, sec))
    if not args.no_splink:
        from .splink_baseline import splink_dedupe

        thresholds = [0.5, 0.9, 0.99, 0.999, 0.9999, 0.99999, 0.999999]
        t0 = time.perf_counter()
        res, scored = splink_dedupe(patients, thresholds)
        sec = time.perf_counter() - t0
        for th in thresholds:
            print(row(f"Splink 5 (EM, connected comps) p >= {th}", pairwise(res[th], truth, household), sec))
        print("Splink 5 scored pairs before clustering (no transitive closure; household FM not counted):")
        for th in thresholds:
            edges = [(a, b) for a, b, p in scored if p >= th]
            print(row(f"  Splink 5 pairs p >= {th}", pairwise_edges(edges, truth), sec))

    if args.large:
        print(f"\nlarger population: {args.large} people (the prior depends on the registry's size)")
        big, big_truth = generate_population(args.large, args.seed + 1)
        print(f"{len(big)} records")
        print(HEADER)
        s, sec = ours(big, big_truth, rules)
        print(row(f"ours: {ROOT_RULES} as shipped", s, sec))
        t0 = time.perf_counter()
        kept = matching.load_rules(train(big, rules, keep_weights=True))
        t_train = time.perf_counter() - t0
        s, sec = ours(big, big_truth, kept)
        print(row("ours: default + `train --keep-weights`", s, sec + t_train, f"(prior {kept.prior:.3g})"))

    if not args.no_febrl:
        from .febrl import load

        print()
        print(HEADER)
        base = matching.load_rules(FEBRL_RULES)
        for name in ("febrl3", "febrl4"):
            pats, tr = load(name)
            s, sec = ours(pats, tr, base)
            print(row(f"{name}: {FEBRL_RULES}", s, sec))
            t0 = time.perf_counter()
            tr_rules = matching.load_rules(train(pats, base))
            t_train = time.perf_counter() - t0
            s, sec = ours(pats, tr, tr_rules)
            print(row(f"{name}: {FEBRL_RULES} + `train` (EM)", s, sec + t_train))
    return 0


if __name__ == "__main__":
    sys.exit(main())
