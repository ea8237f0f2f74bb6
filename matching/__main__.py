"""Command line: ``python -m matching {dedupe,train,explain} ...`` (the only I/O in this package).

    python -m matching dedupe --rules rules/default.yaml IN.ndjson -o OUT.csv [--review OUT2.csv]
    python -m matching train --rules rules/default.yaml IN.ndjson -o rules/trained.yaml [--labels DECIDED.csv]
    python -m matching explain --rules rules/default.yaml A.json B.json [--json]

IN is FHIR Patient NDJSON (one resource a line, as ``$export`` writes it). A bad line (not JSON, not a
Patient, no id, duplicate id) is reported on stderr with its line number and skipped, or fails the run with
``--on-bad-line fail``. Exit status: 0 ok, 1 invalid rules, 2 bad input.
"""

from __future__ import annotations

import argparse
import csv
import json
import pathlib
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import numpy as np

from .decision import score_pair
from .dedupe import dedupe, stderr_progress
from .em import dump, train
from .errors import RulesError
from .labels import LabelsError, read_labels
from .loading import load_rules
from .rules import Rules
from .scoring import MATCH, Table, compare


class BadInput(Exception):
    pass


def read_ndjson(path: pathlib.Path, on_bad_line: str) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    seen: set[str] = set()
    bad = 0
    with path.open(encoding="utf-8") as fh:
        for no, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            problem = None
            try:
                res = json.loads(line)
            except json.JSONDecodeError as exc:
                problem = f"not JSON ({exc.msg})"
            else:
                if not isinstance(res, dict) or res.get("resourceType") != "Patient":
                    problem = "not a FHIR Patient"
                elif not isinstance(res.get("id"), str) or not res["id"]:
                    problem = "Patient has no id"
                elif res["id"] in seen:
                    problem = f"duplicate Patient id {res['id']!r}"
            if problem:
                bad += 1
                print(f"{path}:{no}: {problem}", file=sys.stderr)
                if on_bad_line == "fail":
                    raise BadInput(f"{path}:{no}: {problem}")
                continue
            seen.add(res["id"])
            out.append(res)
    if bad:
        print(f"{path}: skipped {bad} bad line(s)", file=sys.stderr)
    return out


def _cmd_dedupe(args: argparse.Namespace, rules: Rules) -> int:
    t0 = time.perf_counter()
    patients = read_ndjson(args.input, args.on_bad_line)
    progress = None if args.quiet else stderr_progress()
    result = dedupe(patients, rules, progress)
    with args.output.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["id", "cluster"])
        w.writerows(zip(result.ids, result.cluster_ids(), strict=True))
    if args.review:
        with args.review.open("w", newline="", encoding="utf-8") as fh:
            w = csv.writer(fh)
            w.writerow(["id_a", "id_b", "cluster_a", "cluster_b", "score", "reason"])
            labels = result.cluster_ids()
            for i, j, score, reason in result.review_pairs():
                w.writerow([result.ids[i], result.ids[j], labels[i], labels[j], f"{score:.3f}", reason])
    if progress:
        progress(f"done in {time.perf_counter() - t0:.1f}s -> {args.output}")
    return 0


def _cmd_train(args: argparse.Namespace, rules: Rules) -> int:
    patients = read_ndjson(args.input, args.on_bad_line)
    index = {p["id"]: i for i, p in enumerate(patients)}
    labels: list[tuple[int, int, bool]] = []
    if args.labels is not None:
        try:
            decided = read_labels(args.labels, index)
        except LabelsError as exc:
            print(f"{args.labels}: labels refused, nothing trained", file=sys.stderr)
            for problem in exc.problems:
                print(f"  {problem}", file=sys.stderr)
            return 2
        labels = [(index[lb.id_a], index[lb.id_b], lb.same) for lb in decided]
    progress = None if args.quiet else stderr_progress()
    doc = train(patients, rules, keep_weights=args.keep_weights, progress=progress, labels=labels)
    trained_at = datetime.now(UTC).isoformat(timespec="seconds")  # decisions after it are new labels
    items = [(k, v) for k, v in doc.items() if k != "trained"]
    at = next((n + 1 for n, (k, _) in enumerate(items) if k == "version"), 1)
    doc = dict([*items[:at], ("trained", trained_at), *items[at:]])
    what = "prior and name frequencies" if args.keep_weights else "m/u, prior and name frequencies"
    how = "estimated without labels (EM)"
    if labels:
        same = sum(1 for _, _, s in labels if s)
        trained = load_rules(doc)
        different = [(a, b) for a, b, s in labels if not s]
        linked = 0
        if different:
            table = Table.from_patients(patients, trained)
            c = compare(
                table, np.array([a for a, _ in different]), np.array([b for _, b in different]), trained
            )
            linked = int((c.outcome == MATCH).sum())
        how = (
            f"estimated without labels, m blended with {same} same-person decisions\n# of "
            f"{args.labels.name}; {len(different)} different-people decisions, of which these rules "
            f"auto-match {linked}"
        )
        if linked:
            print(f"warning: {linked} pair(s) decided different people are auto-matched", file=sys.stderr)
    original = rules.to_dict()
    same = doc.get("deterministic") == original.get("deterministic") and doc.get(
        "clustering"
    ) == original.get("clustering", {})
    guards = (
        "deterministic rules copied unchanged"
        if same
        else "guards re-checked against the data:\n# see `description` of the rules and of each guard"
    )
    before = original["thresholds"]
    thresholds = (
        "thresholds copied unchanged"
        if doc["thresholds"] == before
        else f"auto_match raised {before['auto_match']:g} -> {doc['thresholds']['auto_match']:g}"
    )
    header = (
        f"# Trained by `python -m matching train` from {args.input.name} ({len(patients)} records),\n"
        f"# starting from rules '{rules.name}': {what} {how};\n"
        f"# {thresholds}; {guards}. Weights (log2 m/u) shown as comments.\n"
    )
    text = dump(doc, header)
    load_rules(doc)  # never write a file we cannot read back
    args.output.write_text(text, encoding="utf-8")
    print(f"wrote {args.output}", file=sys.stderr)
    return 0


def _cmd_explain(args: argparse.Namespace, rules: Rules) -> int:
    a = json.loads(args.a.read_text(encoding="utf-8"))
    b = json.loads(args.b.read_text(encoding="utf-8"))
    e = score_pair(a, b, rules)
    print(json.dumps(e.to_dict(), indent=2, ensure_ascii=False) if args.json else e.text())
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m matching", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    for name in ("dedupe", "train"):
        s = sub.add_parser(name)
        s.add_argument("--rules", type=pathlib.Path, required=True)
        s.add_argument("input", type=pathlib.Path, help="FHIR Patient NDJSON")
        s.add_argument("-o", "--output", type=pathlib.Path, required=True)
        s.add_argument("--on-bad-line", choices=("skip", "fail"), default="skip")
        s.add_argument("--quiet", action="store_true", help="no progress on stderr")
        if name == "dedupe":
            s.add_argument("--review", type=pathlib.Path, help="CSV of potential matches for human review")
        else:
            s.add_argument(
                "--keep-weights",
                action="store_true",
                help="keep the rules' m/u; estimate only the prior and name frequencies (recommended for "
                "the shipped rules on a new population)",
            )
            s.add_argument(
                "--labels",
                type=pathlib.Path,
                help="CSV of reviewers' decisions (id_a,id_b,decision: same|different) whose same-person "
                "pairs inform m; unknown ids or contradictions are reported with their line and refused",
            )
    s = sub.add_parser("explain")
    s.add_argument("--rules", type=pathlib.Path, required=True)
    s.add_argument("a", type=pathlib.Path)
    s.add_argument("b", type=pathlib.Path)
    s.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    try:
        rules = load_rules(args.rules)
    except RulesError as exc:
        print(f"{args.rules}: invalid rules", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        return 1
    try:
        cmd = {"dedupe": _cmd_dedupe, "train": _cmd_train, "explain": _cmd_explain}[args.command]
        return cmd(args, rules)
    except BadInput:
        return 2
    except (OSError, json.JSONDecodeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
