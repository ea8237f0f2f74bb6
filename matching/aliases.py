"""Given-name equivalences: the ``nicknames`` package (English) plus shipped and implementer-supplied CSV
files of cross-language variants (one group a line, comma-separated; ``#`` starts a comment)."""

from __future__ import annotations

import pathlib
from collections.abc import Iterable
from functools import lru_cache

from nicknames import NickNamer

from .normalise import fold

SHIPPED = pathlib.Path(__file__).with_name("data") / "aliases.csv"


@lru_cache(maxsize=1)
def _nicknamer() -> NickNamer:
    return NickNamer()


class Aliases:
    def __init__(self, files: Iterable[pathlib.Path] = (SHIPPED,), english_nicknames: bool = True) -> None:
        self.groups: dict[str, set[str]] = {}
        self.english = english_nicknames
        for path in files:
            self.add_file(path)

    def add_file(self, path: pathlib.Path) -> None:
        for line in path.read_text(encoding="utf-8").splitlines():
            line = line.split("#", 1)[0]
            names = {fold(x).replace(" ", "") for x in line.split(",")} - {""}
            for n in names:
                self.groups.setdefault(n, set()).update(names)

    @lru_cache(maxsize=100_000)  # noqa: B019 - instances live as long as the rules
    def _related(self, name: str) -> frozenset[str]:
        out = set(self.groups.get(name, ()))
        if self.english:
            nn = _nicknamer()
            out |= nn.canonicals_of(name) | nn.nicknames_of(name)
        return frozenset(out)

    def equivalent(self, a: str, b: str) -> bool:
        return a == b or b in self._related(a) or a in self._related(b)
