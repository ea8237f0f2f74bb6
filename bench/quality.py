"""Quality benchmark: pairwise precision / recall / F1 of ``matching`` against the truth and the review load
it leaves to people, side by side with Splink 5 (unsupervised) in the same run, on three kinds of data:

- the generated household population (:mod:`bench.population`; twins, namesakes, siblings);
- OpenCR's own test set (:mod:`bench.opencr`; the NIN declared a shared identifier system);
- FEBRL3 / FEBRL4 (:mod:`bench.febrl`; soc_sec_id declared shared), with the shipped rules and ``train``,
  and with ``rules/febrl.yaml`` for reference.

    python -m bench.quality [--rules rules/default.yaml] [--people 3000] [--seed 7] [--no-splink]
                            [--no-population] [--no-opencr] [--no-febrl] [--thresholds] [--large 30000]
                            [--decisions 300]

Precision and recall are over record pairs placed in the same cluster (auto-matches only). "house FM"
counts false-merge pairs between different people of the same household (twins, parent/child, siblings,
spouses) — the costly kind. "review/1k" is the number of pairs the batch run leaves to a person (potential
matches across clusters and auto-matches refused by clustering, as ``dedupe --review`` writes them) per
1,000 records; "same" is the share of them that are the same person; "rev.recall" is the recall of auto
and potential pairs together (what a reviewer can reach). ``--decisions N`` simulates N reviewers'
decisions on the shipped rules' review queue (random pairs, decided by the truth) and trains with them.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import matching
from matching.dedupe import dedupe
from matching.em import train

from .metrics import PairwiseScores, pairwise, pairwise_edges
from .population import generate_population, household

ROOT_RULES = "rules/default.yaml"
FEBRL_RULES = "rules/febrl.yaml"


@dataclass
class Run:
    scores: PairwiseScores
    review_pairs: int
    review_same: int
    queue_recall: float  # recall of auto + potential pairs before clustering
    records: int
    seconds: float

    @property
    def review_per_1000(self) -> float:
        return 1000.0 * self.review_pairs / self.records if self.records else 0.0

    @property
    def review_share_same(self) -> float:
        return self.review_same / self.review_pairs if self.review_pairs else 0.0


HEADER = (
    f"{'system':<46} {'precision':>9} {'recall':>7} {'F1':>7} {'FM':>6} {'house FM':>8} "
    f"{'review/1k':>9} {'same':>6} {'rev.recall':>10} {'time':>7}"
)


def row(label: str, s: PairwiseScores, seconds: float, extra: str = "", review: Run | None = None) -> str:
    rev = (
        f"{review.review_per_1000:>9.1f} {review.review_share_same:>6.3f} {review.queue_recall:>10.4f}"
        if review
        else f"{'-':>9} {'-':>6} {'-':>10}"
    )
    return (
        f"{label:<46} {s.precision:>9.4f} {s.recall:>7.4f} {s.f1:>7.4f} {s.false_merge_pairs:>6} "
        f"{s.household_false_merges:>8} {rev} {seconds:>6.1f}s {extra}"
    )


def run(
    patients: Sequence[Mapping[str, Any]],
    truth: Mapping[str, str],
    rules: matching.Rules,
    group: Callable[[str], str] | None = household,
) -> Run:
    t0 = time.perf_counter()
    r = dedupe(patients, rules)
    sec = time.perf_counter() - t0
    s = pairwise(dict(zip(r.ids, r.cluster_ids(), strict=True)), truth, group)
    review = r.review_pairs()
    same = sum(1 for i, j, _, _ in review if truth[r.ids[i]] == truth[r.ids[j]])
    pot = r.compared.outcome >= 1
    edges = [(r.ids[a], r.ids[b]) for a, b in zip(r.left[pot].tolist(), r.right[pot].tolist(), strict=True)]
    return Run(s, len(review), same, pairwise_edges(edges, truth).recall, len(patients), sec)


def show(label: str, result: Run, extra: str = "") -> None:
    print(row(label, result.scores, result.seconds, extra, result), flush=True)


def trained(
    patients: Sequence[Mapping[str, Any]], rules: matching.Rules, **kw: Any
) -> tuple[matching.Rules, float]:
    t0 = time.perf_counter()
    out = matching.load_rules(train(patients, rules, **kw))
    return out, time.perf_counter() - t0


def with_threshold(rules: matching.Rules, auto: float) -> matching.Rules:
    doc = rules.to_dict()
    doc["thresholds"]["auto_match"] = auto
    doc["thresholds"]["potential_match"] = min(doc["thresholds"]["potential_match"], auto)
    return matching.load_rules(doc)


def with_shared(rules: matching.Rules, system: str) -> matching.Rules:
    """``rules`` with ``system`` declared a shared (national) identifier system, as an installation would."""
    doc = rules.to_dict()
    if system not in doc.get("shared_identifier_systems", []):
        doc["shared_identifier_systems"] = [*doc.get("shared_identifier_systems", []), system]
    return matching.load_rules(doc)


def ours_and_trained(
    label: str,
    patients: Sequence[Mapping[str, Any]],
    truth: Mapping[str, str],
    rules: matching.Rules,
    group: Callable[[str], str] | None,
) -> None:
    show(f"{label}: shipped rules", run(patients, truth, rules, group), f"(auto >= {rules.auto_threshold:g})")
    tr, sec = trained(patients, rules)
    res = run(patients, truth, tr, group)
    res.seconds += sec
    show(f"{label}: shipped + `train` (EM m/u, prior, TF)", res)
    kept, sec = trained(patients, rules, keep_weights=True)
    res = run(patients, truth, kept, group)
    res.seconds += sec
    show(f"{label}: shipped + `train --keep-weights`", res, f"(prior {kept.prior:.3g})")


def simulated_decisions(
    patients: Sequence[Mapping[str, Any]],
    truth: Mapping[str, str],
    rules: matching.Rules,
    n: int,
    seed: int = 1,
) -> list[tuple[int, int, bool]]:
    """``n`` pairs of the review queue of ``rules``, drawn at random and decided as a reviewer who knows
    the truth would: (record index, record index, same person?)."""
    import random

    r = dedupe(patients, rules)
    queue = r.review_pairs()
    picked = random.Random(seed).sample(queue, min(n, len(queue)))
    return [(i, j, truth[r.ids[i]] == truth[r.ids[j]]) for i, j, _, _ in picked]


SPLINK_THRESHOLDS = [0.5, 0.9, 0.99, 0.999, 0.9999]


def splink_rows(
    label: str,
    patients: Sequence[Mapping[str, Any]],
    truth: Mapping[str, str],
    group: Callable[[str], str] | None,
    nid: str,
    pairs: bool = False,
) -> None:
    from .splink_baseline import splink_dedupe

    t0 = time.perf_counter()
    res, scored = splink_dedupe(patients, SPLINK_THRESHOLDS, nid=nid)
    sec = time.perf_counter() - t0
    for th in SPLINK_THRESHOLDS:
        print(row(f"{label}: Splink 5 (EM, conn. comps) p >= {th}", pairwise(res[th], truth, group), sec))
    if pairs:
        for th in SPLINK_THRESHOLDS:
            edges = [(a, b) for a, b, p in scored if p >= th]
            print(row(f"  {label}: Splink 5 pairs p >= {th}", pairwise_edges(edges, truth), sec))


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rules", default=ROOT_RULES, help="the rules to measure (default: the shipped rules)")
    ap.add_argument("--people", type=int, default=3000)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--no-splink", action="store_true")
    ap.add_argument("--no-population", action="store_true")
    ap.add_argument("--no-opencr", action="store_true")
    ap.add_argument("--no-febrl", action="store_true")
    ap.add_argument(
        "--decisions",
        type=int,
        default=300,
        help="reviewers' decisions simulated for `train --labels` (0: none)",
    )
    ap.add_argument("--thresholds", action="store_true", help="also vary auto_match on the population")
    ap.add_argument("--large", type=int, default=0, help="also run on a population of this many people")
    args = ap.parse_args(argv)
    rules = matching.load_rules(args.rules)
    print(f"rules: {args.rules} (version {rules.source.get('version')})")

    if not args.no_population:
        patients, truth = generate_population(args.people, args.seed)
        print(f"\nhousehold population: {args.people} people, {len(patients)} records, seed {args.seed}")
        print(HEADER)
        ours_and_trained("population", patients, truth, rules, household)
        if args.decisions:
            labels = simulated_decisions(patients, truth, rules, args.decisions)
            for keep in (True, False):
                tr_l, sec = trained(patients, rules, keep_weights=keep, labels=labels)
                res = run(patients, truth, tr_l, household)
                res.seconds += sec
                what = "train --keep-weights" if keep else "train"
                show(f"population: + `{what} --labels` ({len(labels)})", res)
        if args.thresholds:
            print("threshold trade-off (auto_match varied):")
            for auto in (2.0, 4.0, 6.0, 8.0, 10.0, 12.0, 16.0):
                show(f"  ours auto_match >= {auto:g}", run(patients, truth, with_threshold(rules, auto)))
        if not args.no_splink:
            from .population import NID

            splink_rows("population", patients, truth, household, NID, pairs=True)

    if args.large:
        big, big_truth = generate_population(args.large, args.seed + 1)
        print(f"\nlarger population: {args.large} people, {len(big)} records (the prior depends on the size)")
        print(HEADER)
        show("large: shipped rules", run(big, big_truth, rules))
        kept, sec = trained(big, rules, keep_weights=True)
        res = run(big, big_truth, kept)
        res.seconds += sec
        show("large: shipped + `train --keep-weights`", res, f"(prior {kept.prior:.3g})")

    if not args.no_opencr:
        from . import opencr

        pats, tr = opencr.load()
        print(
            f"\nOpenCR test set: {len(pats)} records, NIN declared shared (target F1 >= 0.998, precision 1)"
        )
        print(HEADER)
        ours_and_trained("opencr", pats, tr, with_shared(rules, opencr.NIN), None)
        if not args.no_splink:
            splink_rows("opencr", pats, tr, None, opencr.NIN)

    if not args.no_febrl:
        from . import febrl

        base = matching.load_rules(FEBRL_RULES)
        for name in ("febrl3", "febrl4"):
            pats, tr = febrl.load(name)
            print(
                f"\n{name}: {len(pats)} records, soc_sec_id declared shared (target after train F1 >= 0.99)"
            )
            print(HEADER)
            ours_and_trained(name, pats, tr, with_shared(rules, febrl.NID), None)
            show(f"{name}: {FEBRL_RULES} (reference)", run(pats, tr, base, None))
            tb, sec = trained(pats, base)
            res = run(pats, tr, tb, None)
            res.seconds += sec
            show(f"{name}: {FEBRL_RULES} + `train`", res)
            if not args.no_splink:
                splink_rows(name, pats, tr, None, febrl.NID)
    return 0


if __name__ == "__main__":
    sys.exit(main())
