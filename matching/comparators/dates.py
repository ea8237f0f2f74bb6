"""Birth dates: exact, day-month swap, estimated dates, one-keystroke typos."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np

from .base import NULL, Column, Comparator, register

ESTIMATED_DAYS = frozenset({(1, 1), (6, 15), (7, 1), (6, 30)})


@register
class BirthDate(Comparator):
    """Dates ``YYYY-MM-DD`` (``00`` = unknown part). exact; swapped (day and month swapped); estimated
    (either side partial or a default like 01-01 / 06-15 / 07-01 and years within ``estimated_years``);
    one_part (two of year/month/day equal, the third a typo: year +-1 or last digit, any month/day); else."""

    name = "date"
    kinds = frozenset({"date"})
    levels = ("exact", "swapped", "estimated", "one_part", "else")
    defaults: ClassVar[Mapping[str, Any]] = {"estimated_years": 1}

    def compare(self, left: Column, right: Column, li: np.ndarray, ri: np.ndarray) -> np.ndarray:
        ly, lm, ld = _date_parts(left)
        ry, rm, rd = _date_parts(right)
        y1, m1, d1, y2, m2, d2 = ly[li], lm[li], ld[li], ry[ri], rm[ri], rd[ri]
        est1 = (d1 == 0) | _is_default(m1, d1)
        est2 = (d2 == 0) | _is_default(m2, d2)
        dy = np.abs(y1 - y2)
        out = np.full(len(li), 5, dtype=np.int8)
        one_part = (
            ((y1 == y2) & (m1 == m2) & _digit_typo(d1, d2))
            | ((y1 == y2) & (d1 == d2) & _digit_typo(m1, m2))
            | ((m1 == m2) & (d1 == d2) & ((dy <= 1) | (y1 // 10 == y2 // 10)))
        )
        out[one_part] = 4
        out[(est1 | est2) & (dy <= self.params["estimated_years"])] = 3
        out[(y1 == y2) & (m1 == d2) & (d1 == m2) & (m1 != d1) & (d1 > 0)] = 2
        out[(y1 == y2) & (m1 == m2) & (d1 == d2) & ~est1 & ~est2] = 1
        out[(y1 == 0) | (y2 == 0)] = NULL
        return out


def _digit_typo(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Two-digit numbers one keystroke apart: one digit differs, digits transposed, or +-1."""
    ta, oa, tb, ob = a // 10, a % 10, b // 10, b % 10
    typo: np.ndarray = (ta == tb) | (oa == ob) | ((ta == ob) & (oa == tb)) | (np.abs(a - b) <= 1)
    return typo


def _is_default(m: np.ndarray, d: np.ndarray) -> np.ndarray:
    out = np.zeros(m.shape, dtype=bool)
    for mm, dd in ESTIMATED_DAYS:
        out |= (m == mm) & (d == dd)
    return out


def _date_parts(col: Column) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    cache = getattr(col, "_date_parts", None)
    if cache is None:
        n = len(col.values)
        y, m, d = np.zeros(n, np.int32), np.zeros(n, np.int32), np.zeros(n, np.int32)
        for i, v in enumerate(col.values):
            if v:
                y[i], m[i], d[i] = int(v[0][:4]), int(v[0][5:7]), int(v[0][8:10])
        cache = (y, m, d)
        col._date_parts = cache  # type: ignore[attr-defined]
    return cache
