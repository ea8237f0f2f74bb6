"""Clustering auto-matched pairs without chaining different people together.

Plain connected components chain: A~B and B~C put A and C together even when A and C are clearly different
people (a father and his namesake son both resembling a badly typed record). Here auto-match edges are
processed best score first, and two clusters are merged only if **every** cross pair is *compatible*: its
outcome is at least ``potential`` and no safety guard (an ``at_most`` rule) fired on it. Pairs not compared
during blocking are compared on demand (clusters are small). An edge refused this way is reported for
review. The result is deterministic for a given input order.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

PairCheck = Callable[[np.ndarray, np.ndarray], np.ndarray]  # (left, right) -> compatible (bool array)


def cluster(
    n: int,
    left: np.ndarray,
    right: np.ndarray,
    scores: np.ndarray,
    compatible: dict[tuple[int, int], bool],
    check: PairCheck,
) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """Cluster ``n`` records given auto-match edges ``left[i]~right[i]`` with ``scores``.

    ``compatible`` holds the verdict for pairs already compared (key ``(min, max)``); ``check`` compares more.
    Returns ``(label per record, refused edges)``; a label is the smallest record index of its cluster.
    """
    members: dict[int, list[int]] = {i: [i] for i in range(n)}
    label = np.arange(n)
    refused: list[tuple[int, int]] = []
    for e in np.argsort(-scores, kind="stable"):
        a, b = int(left[e]), int(right[e])
        ca, cb = int(label[a]), int(label[b])
        if ca == cb:
            continue
        ma, mb = members[ca], members[cb]
        cross = [(min(x, y), max(x, y)) for x in ma for y in mb]
        unknown = [p for p in cross if p not in compatible]
        if unknown:
            arr = np.array(unknown, dtype=np.int64)
            for p, ok in zip(unknown, check(arr[:, 0], arr[:, 1]).tolist(), strict=True):
                compatible[p] = bool(ok)
        if not all(compatible[p] for p in cross):
            refused.append((a, b))
            continue
        keep, gone = (ca, cb) if ca < cb else (cb, ca)
        members[keep].extend(members.pop(gone))
        label[members[keep]] = keep
    return label, refused
