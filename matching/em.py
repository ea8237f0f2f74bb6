"""Estimating m, u and the prior from unlabelled records (expectation–maximisation), Splink-style.

- u (P(level | different people)) is counted on random record pairs: almost all of them are different
  people, so no labels are needed.
- m (P(level | same person)) and λ (the share of matches among *blocked* pairs) come from a two-class EM on
  the blocked candidate pairs (their non-matches are far more alike than random pairs, so the EM has its
  own "blocked u", started from the random-pair u and then discarded); null levels are left out.
- The written prior is the expected number of matching pairs (λ × blocked pairs) over all pairs.
- Only *identity* fields (names, gender, birth date, shared identifiers) drive the EM's latent class.
  Household fields (address, phone, email, facility ids) are shared by relatives: letting them vote makes EM
  discover "same household" instead of "same person". Their m is estimated afterwards from the posteriors.
- The guards' premises are re-checked on the data (:func:`review_guards`: no families, a personal id, an
  id that the same person's records do not always agree on) and ``auto_match`` raised until the trained
  scores vouch for the auto-matches (:func:`calibrated_auto_match`); ``potential_match`` and ``then``
  rules are kept. ``--keep-weights`` and ``--labels`` change neither.
"""

from __future__ import annotations

import copy
import math
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import yaml

from .blocking import keys_of
from .dedupe import Progress, candidate_pairs, compare_all
from .loading import load_rules
from .rules import Rules
from .scoring import Table

FLOOR = 1e-5
STRICT_RECALL = 0.6  # share of true matches that agree exactly on given, family and birth date (assumed)
LABEL_WEIGHT = 200.0  # reviewers' same-person decisions: pseudo-pairs the prior estimate of m counts for
# auto_match rises until the trained scores, corrected for what different people sharing a family name
# share beyond chance (:func:`shared_family_dependence`), put at most this share of different people among
# auto-matches: the 0.1 % a registry can afford
FALSE_MATCH_RATE = 0.001
DEPENDENCE_PSEUDO_PAIRS = 10.0  # a level's u among pairs sharing the family name: shrunk towards its overall
# u by this many pairs' worth of it (a level seen a handful of times keeps about its overall u)
# Guards, re-checked against the data by `train` (:func:`review_guards`):
NO_RELATIVES = 0.02  # no families: at most this share of household pairs look like relatives (a population
# with families: a third; FEBRL 0.2-0.4 %, records of one person mistyped field by field up to 1.5 %)
PERSONAL_ID = (
    0.01  # a shared id is personal: at most this share of the pairs agreeing on it look like relatives
)
ID_CONFLICT = 0.01  # a different shared id proves two people when fewer same-person pairs than this differ


def level_frequencies(levels: np.ndarray, weights: np.ndarray | None, rules: Rules) -> list[np.ndarray]:
    out = []
    for k, f in enumerate(rules.fields):
        n = len(f.level_names)
        w = np.ones(len(levels)) if weights is None else weights
        counts = np.bincount(levels[:, k].astype(np.int64), weights=w, minlength=n)[1:]
        total = counts.sum()
        p = (counts + FLOOR * max(total, 1.0)) / (total + FLOOR * max(total, 1.0) * len(counts))
        out.append(p)
    return out


def train(
    patients: Sequence[Mapping[str, Any]],
    rules: Rules,
    *,
    random_pairs: int = 500_000,
    iterations: int = 30,
    seed: int = 0,
    keep_weights: bool = False,
    progress: Progress | None = None,
    labels: Sequence[tuple[int, int, bool]] = (),
    label_weight: float = LABEL_WEIGHT,
) -> dict[str, Any]:
    """Return a rules dict (same shape as the input rules) with estimated m, u, prior and term frequencies.

    ``keep_weights``: keep the rules' m and u (hand-set and reviewed) and estimate only the prior and the
    term frequencies, the two things that depend on the size and the names of the registry's population.
    ``labels``: reviewers' decisions, (record index, record index, same person?) — see :func:`with_labels`.
    """
    doc = _train(patients, rules, random_pairs, iterations, seed, keep_weights, progress)
    if labels:
        doc = with_labels(doc, Table.from_patients(patients, rules), rules, labels, label_weight, progress)
    return doc


def with_labels(
    doc: dict[str, Any],
    table: Table,
    rules: Rules,
    labels: Sequence[tuple[int, int, bool]],
    label_weight: float = LABEL_WEIGHT,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Blend the m of every level with the levels of the pairs reviewers decided are the same person:
    m = (w · m_estimated + count) / (w + n) per field, ``w`` = ``label_weight`` pseudo-pairs standing for
    the estimate (EM or hand-set), n the decided pairs with a value on both sides. Pairs decided different
    people are not a sample of random pairs, so they say nothing about u; they are compared and counted
    (the CLI reports how many the trained rules would still link). Thresholds and guards are kept."""
    same = [(a, b) for a, b, s in labels if s]
    if not same:
        return doc
    c = compare_all(table, np.array([a for a, _ in same]), np.array([b for _, b in same]), rules, None)
    for k, f in enumerate(rules.fields):
        names = f.level_names[1:]
        counts = np.bincount(c.levels[:, k].astype(np.int64), minlength=len(names) + 1)[1:].astype(float)
        n = counts.sum()
        if n == 0:
            continue
        spec = doc["fields"][f.name]["levels"]
        m0 = np.array([float(spec[lv]["m"]) for lv in names])
        m = (label_weight * m0 / max(m0.sum(), 1e-12) + counts) / (label_weight + n)
        for lv, mi in zip(names, m.tolist(), strict=True):
            spec[lv]["m"] = _round(max(mi, FLOOR))
    if progress:
        progress(f"m blended with {len(same):,} same-person decisions (weight {label_weight:g} pseudo-pairs)")
    return doc


def _train(
    patients: Sequence[Mapping[str, Any]],
    rules: Rules,
    random_pairs: int,
    iterations: int,
    seed: int,
    keep_weights: bool,
    progress: Progress | None,
) -> dict[str, Any]:
    n = len(patients)
    if n < 3:
        raise ValueError("need at least 3 records to train")
    table = Table.from_patients(patients, rules)
    if keep_weights:
        return _prior_and_frequencies(patients, rules, table, progress)
    rng = np.random.default_rng(seed)
    a = rng.integers(0, n, size=random_pairs)
    b = rng.integers(0, n, size=random_pairs)
    keep = a != b
    if progress:
        progress(f"estimating u on {int(keep.sum()):,} random pairs")
    rand = compare_all(table, a[keep], b[keep], rules, progress)
    u = level_frequencies(rand.levels, None, rules)

    keys = [keys_of(p, rules) for p in patients]
    left, right, _ = candidate_pairs([k.index for k in keys], rules.max_block_size, [k.search for k in keys])
    if progress:
        progress(f"EM on {len(left):,} blocked pairs")
    blocked = compare_all(table, left, right, rules, None).levels
    core = [k for k, f in enumerate(rules.fields) if is_identity(f.path, f.params)]
    m = [np.asarray(f.m, dtype=float) for f in rules.fields]
    # Sessions (as Splink does): pairs agreeing exactly on one identity field; EM over the *other* identity
    # fields learns their m. A field's m is the mean over the sessions that did not condition on it.
    learned: dict[int, list[np.ndarray]] = {k: [] for k in core}
    for k_fix in core:
        if u[k_fix][0] > 0.05:
            continue  # agreeing on gender conditions on nothing useful
        sel = blocked[:, k_fix] == 1
        if sel.sum() < 50:
            continue
        others = [k for k in core if k != k_fix]
        mm, _, lam_s, _ = _em(blocked[sel], others, m, u, rules, iterations)
        if progress:
            progress(
                f"session on {rules.fields[k_fix].name} = exact: {int(sel.sum()):,} pairs, λ={lam_s:.3f}"
            )
        for k in others:
            learned[k].append(mm[k])
    for k in core:
        if learned[k]:
            m[k] = np.mean(learned[k], axis=0)
    # λ and household fields' m: one E-step with the learned identity m on all blocked pairs
    mm, _, lam, post = _em(blocked, core, m, u, rules, iterations, fixed_m=True)
    m_all = level_frequencies(blocked, post, rules)
    for k in range(len(rules.fields)):
        if k not in core:
            m[k] = m_all[k]
    total_pairs = n * (n - 1) / 2
    prior = float(np.clip(lam * len(left) / total_pairs, 1e-9, 0.5))
    doc = rules.to_dict()
    doc["prior"] = _round(prior)
    for k, f in enumerate(rules.fields):
        doc["fields"][f.name]["levels"] = {
            lv: {"m": _round(float(m[k][i])), "u": _round(float(u[k][i]))}
            for i, lv in enumerate(f.level_names[1:])
        }
    for f in rules.fields:
        if f.kind == "name" and "exact" in f.level_names:
            doc["fields"][f.name]["frequencies"] = frequencies(table.columns[f.name].values)
    cluster = doc.setdefault("clustering", {})
    doc["deterministic"], notes = review_guards(
        doc.get("deterministic", []), rules, m, u, blocked, cluster, progress
    )
    dependence = shared_family_dependence(rules, u, rand.levels)
    if progress and dependence is not None:
        progress(
            "different people sharing the family name agree beyond chance (bits): "
            + ", ".join(
                f"{f.name} {lv} {d[i + 1]:+.2f}"
                for f, d in zip(rules.fields, dependence, strict=True)
                for i, lv in enumerate(f.level_names[1:])
                if d[i + 1] >= 0.5
            )
        )
    auto = calibrated_auto_match(doc, table, left, right, dependence)
    if auto > float(doc["thresholds"]["auto_match"]):
        notes.append(
            f"train raised thresholds.auto_match {doc['thresholds']['auto_match']:g} -> {auto:g}: from there "
            f"the scores estimate at most {FALSE_MATCH_RATE:g} of auto-matches to be different people"
        )
        if progress:
            progress(notes[-1])
        doc["thresholds"]["auto_match"] = auto
    if notes:
        doc["description"] = " ".join(
            [str(doc.get("description", "")).strip(), *(f"[{x}]" for x in notes)]
        ).strip()
    return doc


def calibrated_auto_match(
    doc: Mapping[str, Any],
    table: Table,
    left: np.ndarray,
    right: np.ndarray,
    dependence: Sequence[np.ndarray] | None = None,
    step: float = 0.01,
) -> float:
    """The lowest ``auto_match`` (not below the document's, in ``step``s, at most 20) at which the blocked
    pairs the trained rules would auto-match are, by their own scores, at most :data:`FALSE_MATCH_RATE`
    different people: a score is log2 posterior odds, so a pair scoring s is two people with probability
    1 / (1 + 2^s).

    The scores add the fields' weights as if they were independent among different people. They are not
    where people share a family name: a family name comes from one region and one naming tradition, so
    unrelated people who share it also share the city and the given name far more often than two random
    people. ``dependence`` (:func:`shared_family_dependence`) holds those excess bits per field and level;
    for a pair sharing the family name the estimate takes its score less their sum (never more). On the
    10,000-person population (seed 8) the scores alone estimated 0.043 % two people among the pairs scoring
    6.5 or more, the truth was 0.22 %, the corrected estimate 0.24 % (at 8: 0.018 %, 0.073 %, 0.071 %); on
    3,000 people (seed 7) the corrected estimate errs high, 2–3 times the truth. Relatives are left to the
    guards (see :func:`shared_family_dependence`)."""
    trained = load_rules(doc)
    c = compare_all(table, left, right, trained, None)
    ok = c.capped_by < 0
    s = c.scores[ok]
    if dependence is not None:
        fam = _field_index(trained, "name.family", "exact")
        if fam is not None:
            levels = c.levels[ok].astype(np.int64)
            excess = np.zeros(len(s))
            for k, d in enumerate(dependence):
                excess += d[levels[:, k]]
            s = s - np.where(levels[:, fam] == 1, np.maximum(excess, 0.0), 0.0)
    p_false = 1.0 / (1.0 + np.exp2(s))
    order = np.argsort(-c.scores[ok])
    by_score = c.scores[ok][order]
    # pairs scoring at least t: the first ``count`` of ``order``; their mean estimated share of two people
    cum = np.concatenate([[0.0], np.cumsum(p_false[order])])
    auto = float(doc["thresholds"]["auto_match"])
    if auto >= 20.0:
        return auto
    grid = auto + step * np.arange(math.ceil((20.0 - auto) / step) + 1)
    count = np.searchsorted(-by_score, -grid, side="right")
    fine = (count == 0) | (cum[count] <= FALSE_MATCH_RATE * np.maximum(count, 1))
    return round(float(grid[int(np.argmax(fine))]) if fine.any() else 20.0, 2)


def shared_family_dependence(
    rules: Rules, u: Sequence[np.ndarray], rand: np.ndarray, pseudo: float = DEPENDENCE_PSEUDO_PAIRS
) -> list[np.ndarray] | None:
    """Per field, per level (index 0, ``null``: 0), log2 of how much more often random pairs of records
    that share the family name exactly, but no household contact (:func:`_contact_fields`), are at that
    level than random pairs are (``u``): what unrelated people with one family name have in common beyond
    chance (10,000-person population: given name exact +2.0 bits, close +1.7, city +1.9). ``rand``: levels
    of random pairs (almost all different people). Only the given name, gender and the fields that are
    neither identity, identifiers nor household contacts (the city) are measured, the others are zeros:
    what relatives share — a household's contact, twins' birth date, a parent's national id on a child's
    record — is the guards' concern (counted here it doubled the correction of true pairs agreeing on
    their birth date and pushed the threshold of 3,000 people, seed 7, from 8.4 to 10.2).
    Each level's rate among the n pairs sharing the family name
    is taken as (count + ``pseudo``) / (n + ``pseudo`` / u): as if ``pseudo`` / u more pairs had been seen
    at the level's overall rate, so a rare level seen once or twice stays near u. None without a
    family-name field with an ``exact`` level or with fewer than 50 such pairs."""
    fam = _field_index(rules, "name.family", "exact")
    if fam is None:
        return None
    contact = set(_contact_fields(rules, u))
    # not the same household: relatives are the guards' concern
    same = (rand[:, fam] == 1) & ~(rand[:, sorted(contact)] == 1).any(axis=1)
    if int(same.sum()) < 50:
        return None
    out = []
    for k, f in enumerate(rules.fields):
        n_levels = len(f.level_names)
        if k == fam or k in contact or f.path == "birthDate" or f.path == "identifier":
            out.append(np.zeros(n_levels))
            continue
        sel = same & (rand[:, k] > 0)
        counts = np.bincount(rand[sel, k].astype(np.int64), minlength=n_levels)[1:].astype(float)
        uk = np.maximum(np.asarray(u[k], dtype=float), FLOOR)
        u_same = (counts + pseudo) / (counts.sum() + pseudo / uk)
        out.append(np.concatenate([[0.0], np.log2(u_same / uk)]))
    return out


def review_guards(
    deterministic: Sequence[Mapping[str, Any]],
    rules: Rules,
    m: Sequence[np.ndarray],
    u: Sequence[np.ndarray],
    blocked: np.ndarray,
    cluster: dict[str, Any],
    progress: Progress | None = None,
) -> tuple[list[dict[str, Any]], list[str]]:
    """The ``at_most`` guards re-checked against what EM measured on the data. The guards stand on three
    premises about a population; each is a fact the data can confirm or refute.

    Relatives — parent and child, siblings, spouses — differ in given name *and* birth date at once. One
    person's records do so only as often as the two disagreements alone predict (m of the given name's
    ``else`` times m of the birth date's ``else``, EM's conditional independence). So among a set of
    blocked pairs (names and dates present on both sides, 50 or more), the share differing in both beyond
    that prediction — an upper bound, observed + 2 standard errors — is the share of relatives in the set
    (:func:`relatives_share`).

    1. "Families live here": the guards against twins, namesakes and siblings. Pairs that share the family
       name and a household's contact (a field not about identity, not an identifier, whose agreement is
       rare among random pairs: street line, phone, e-mail) are where relatives show. When at most
       :data:`NO_RELATIVES` of them look like relatives, the data hold no families and those guards (every
       guard whose ``when`` is not about a shared identifier) go.
    2. "A child's record may carry a parent's id", why the same national id makes guards step aside only
       with a compatible birth date, and not at all for ``birth-date-conflict`` / ``no-birth-date``. When
       at most :data:`PERSONAL_ID` of the pairs agreeing exactly on a shared id look like relatives, the id
       is personal in this data and every guard not about the id steps aside for the same id alone.
    3. "A different national id is proof of two people" (a guard whose ``when`` is the id at ``else``).
       When EM estimates that :data:`ID_CONFLICT` or more of the same person's record pairs carry different
       ids (m of ``else``), the guard goes and the level's weight keeps the evidence.

    With no families, ``clustering.min_cross_pair`` becomes ``no_match`` as well: a pair across two
    clusters that merely scores low (two heavily mistyped records of one person) no longer keeps them
    apart; a remaining guard still does. ``cluster`` is that mapping of the trained document, changed in
    place. ``then`` rules are kept. A guard that steps aside for more says so in its ``description``; the
    removed guards are returned as notes (the caller adds them to the rules' ``description``)."""
    out = [copy.deepcopy(dict(r)) for r in deterministic]
    notes: list[str] = []
    shared = [
        k
        for k, f in enumerate(rules.fields)
        if f.comparator_name == "identifier"
        and f.params.get("systems", "shared") != "local"
        and {"exact", "else"} <= set(f.level_names)
    ]
    shared_names = {rules.fields[k].name for k in shared}

    def remove(keep: Callable[[dict[str, Any]], bool], why: str) -> None:
        nonlocal out
        gone = [str(r.get("name")) for r in out if not keep(r)]
        out = [r for r in out if keep(r)]
        if gone:
            notes.append(f"train removed {', '.join(gone)}: {why}")
            if progress:
                progress(notes[-1])

    household = _household_pairs(rules, u, blocked)
    if household is not None:
        relatives = relatives_share(rules, m, blocked, household)
        if relatives is not None and relatives <= NO_RELATIVES:
            remove(
                lambda r: r.get("at_most") is None or bool(shared_names & set(r.get("when", {}))),
                f"at most {relatives:.2%} of the pairs sharing family name and household contact look like "
                "relatives (no families in this data)",
            )
            if cluster.get("min_cross_pair", "potential") != "no_match":
                cluster["min_cross_pair"] = "no_match"
                notes.append(
                    "train set clustering.min_cross_pair to no_match: only guards keep clusters apart"
                )
    for k in shared:
        f = rules.fields[k]
        relatives = relatives_share(rules, m, blocked, blocked[:, k] == 1)
        if relatives is not None and relatives <= PERSONAL_ID:
            for r in out:
                if r.get("at_most") is None or f.name in r.get("when", {}):
                    continue
                alts = r.get("unless")
                alts = [] if alts is None else [alts] if isinstance(alts, Mapping) else list(alts)
                alts = [a for a in alts if not (f.name in a and _levels(a[f.name]) == ["exact"])]
                r["unless"] = [*alts, {f.name: "exact"}]
                r["description"] = (
                    f"{str(r.get('description', '')).strip()} [train: steps aside for the same {f.name} "
                    f"alone: at most {relatives:.2%} of the pairs agreeing on it look like relatives]"
                ).strip()
            if progress:
                progress(
                    f"{f.name} is personal (at most {relatives:.2%} of pairs agreeing on it look like "
                    "relatives): guards step aside for it"
                )
        m_else = float(m[k][f.level_names.index("else") - 1])
        if m_else >= ID_CONFLICT:
            remove(
                lambda r, f=f: (
                    not (  # type: ignore[misc]
                        r.get("at_most") is not None
                        and set(r.get("when", {})) == {f.name}
                        and _levels(r["when"][f.name]) == ["else"]
                    )
                ),
                f"{m_else:.1%} of the same person's record pairs carry different {f.name} values",
            )
    return out, notes


def relatives_share(
    rules: Rules, m: Sequence[np.ndarray], blocked: np.ndarray, sel: np.ndarray
) -> float | None:
    """Upper bound (+2 standard errors) of the share of the pairs ``sel`` of ``blocked`` that differ in
    given name and birth date beyond what one person's records do; None without such fields or with
    fewer than 50 pairs having both."""
    g, d = _field_index(rules, "name.given"), _field_index(rules, "birthDate")
    if g is None or d is None:
        return None
    else_g, else_d = len(rules.fields[g].level_names) - 1, len(rules.fields[d].level_names) - 1
    sel = sel & (blocked[:, g] > 0) & (blocked[:, d] > 0)
    n = int(sel.sum())
    if n < 50:
        return None
    both = int(((blocked[sel, g] == else_g) & (blocked[sel, d] == else_d)).sum())
    expected = float(m[g][else_g - 1] * m[d][else_d - 1])
    return max(0.0, (both + 2.0 * math.sqrt(both)) / n - expected)


HOUSEHOLD_U = 0.01  # a household contact: a field whose exact agreement is rarer among random pairs


def _household_pairs(rules: Rules, u: Sequence[np.ndarray], blocked: np.ndarray) -> np.ndarray | None:
    """Blocked pairs with the same family name and the same household contact (None: no such fields)."""
    fam = _field_index(rules, "name.family", "exact")
    contact = _contact_fields(rules, u)
    if fam is None or not contact:
        return None
    same: np.ndarray = (blocked[:, fam] == 1) & (blocked[:, contact] == 1).any(axis=1)
    return same


def _contact_fields(rules: Rules, u: Sequence[np.ndarray]) -> list[int]:
    """A household's contact: fields not about identity, not identifiers, whose exact agreement is rare
    among random pairs (street line, phone, e-mail)."""
    return [
        k
        for k, f in enumerate(rules.fields)
        if not is_identity(f.path, f.params)
        and f.path != "identifier"
        and "exact" in f.level_names
        and u[k][f.level_names.index("exact") - 1] < HOUSEHOLD_U
    ]


def _field_index(rules: Rules, path: str, level: str = "else") -> int | None:
    return next((k for k, f in enumerate(rules.fields) if f.path == path and level in f.level_names), None)


def _levels(x: Any) -> list[str]:
    return [str(v) for v in x] if isinstance(x, list | tuple) else [str(x)]


def frequencies(
    values: Sequence[tuple[str, ...]], min_frequency: float = 0.002, top: int = 300
) -> dict[str, float]:
    """Share of records carrying each common token (the term-frequency table of a field)."""
    counts: dict[str, int] = {}
    for v in values:
        for tok in set(v):
            counts[tok] = counts.get(tok, 0) + 1
    n = max(len(values), 1)
    common = sorted(((c / n, t) for t, c in counts.items() if c / n >= min_frequency), reverse=True)[:top]
    return {t: _round(fr) for fr, t in common}


def _prior_and_frequencies(
    patients: Sequence[Mapping[str, Any]], rules: Rules, table: Table, progress: Progress | None
) -> dict[str, Any]:
    keys = [keys_of(p, rules) for p in patients]
    left, right, _ = candidate_pairs([k.index for k in keys], rules.max_block_size, [k.search for k in keys])
    blocked = compare_all(table, left, right, rules, None).levels
    # Splink's direct estimate: pairs agreeing exactly on given name, family name and full birth date are
    # almost all matches; they are a share STRICT_RECALL of all matches.
    strict = np.ones(len(blocked), dtype=bool)
    for path in ("name.given", "name.family", "birthDate"):
        ks = [k for k, f in enumerate(rules.fields) if f.path == path and "exact" in f.level_names]
        if not ks:
            raise ValueError(f"--keep-weights needs a field reading {path} with an 'exact' level")
        strict &= blocked[:, ks[0]] == 1
    n = len(patients)
    matches = max(int(strict.sum()), 1) / STRICT_RECALL
    prior = float(np.clip(matches / (n * (n - 1) / 2), 1e-9, 0.5))
    if progress:
        progress(f"{int(strict.sum()):,} pairs agree exactly on names and birth date -> prior {prior:.3g}")
    doc = rules.to_dict()
    doc["prior"] = _round(prior)
    for f in rules.fields:
        if f.kind == "name" and "exact" in f.level_names:
            doc["fields"][f.name]["frequencies"] = frequencies(table.columns[f.name].values)
    return doc


def _em(
    levels: np.ndarray,
    fields: list[int],
    m0: list[np.ndarray],
    u0: list[np.ndarray],
    rules: Rules,
    iterations: int,
    fixed_m: bool = False,
) -> tuple[list[np.ndarray], list[np.ndarray], float, np.ndarray]:
    """Two-class EM over ``fields`` of ``levels``; returns (m, blocked u, λ, posteriors)."""
    m = [x.copy() for x in m0]
    ub = [x.copy() for x in u0]
    lam = 0.1
    post = np.zeros(len(levels))
    for _ in range(iterations):
        logit = np.full(len(levels), math.log(lam) - math.log(1 - lam))
        for k in fields:
            lv = levels[:, k].astype(np.int64)
            pm = np.concatenate([[1.0], np.maximum(m[k], FLOOR)])
            pu = np.concatenate([[1.0], np.maximum(ub[k], FLOOR)])
            logit += np.log(pm[lv]) - np.log(pu[lv])
        post = 1.0 / (1.0 + np.exp(-np.clip(logit, -50, 50)))
        new_lam = float(np.clip(post.mean(), 1e-6, 1 - 1e-6))
        new_m = m if fixed_m else level_frequencies(levels, post, rules)
        ub = level_frequencies(levels, 1.0 - post, rules)
        delta = max(abs(new_lam - lam), *(float(np.abs(new_m[k] - m[k]).max()) for k in fields))
        lam, m = new_lam, [x.copy() for x in new_m]
        if delta < 1e-5:
            break
    return m, ub, lam, post


def is_identity(path: str, params: Mapping[str, Any]) -> bool:
    """Fields that identify a person rather than a household."""
    if path == "identifier":
        return bool(params.get("systems", "shared") != "local")
    return path.startswith("name.") or path in ("gender", "birthDate")


def _round(x: float) -> float:
    return float(f"{x:.4g}")


_LEVEL_LINE = re.compile(r"^(\s+)([A-Za-z_]+): \{m: ([0-9.e-]+), u: ([0-9.e-]+)\}$")


def dump(doc: Mapping[str, Any], header: str = "") -> str:
    """YAML a person can read: one line per level with its weight as a comment."""
    text = yaml.safe_dump(dict(doc), sort_keys=False, allow_unicode=True, width=110, default_flow_style=None)
    lines = []
    for line in text.splitlines():
        mm = _LEVEL_LINE.match(line)
        if mm:
            m, u = float(mm.group(3)), float(mm.group(4))
            w = math.log2(max(m, 1e-6) / max(u, 1e-6))
            line = f"{line}  # weight {w:+.2f}"
        lines.append(line)
    out = "\n".join(lines) + "\n"
    return (header + out) if header else out
