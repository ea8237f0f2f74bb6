"""Comparators: each compares one field of many record pairs at once and returns an ordered level per pair.

Level 0 is always ``null`` (a value missing on either side: neither agreement nor disagreement); levels
1..n follow :attr:`Comparator.levels` from best to worst; the last one is always ``else``. Comparators are
vectorised over pairs (numpy + rapidfuzz's ``process.cpdist``): token pairs are de-duplicated and scored
once, then the best level over a pair's token combinations is kept (so "middle name used as given" and
"several family names" both work).
"""

from .base import NULL, REGISTRY, Column, Comparator, Context, Vocab, register
from .dates import ESTIMATED_DAYS, BirthDate
from .identifiers import Identifier
from .strings import AddressLine, DamerauCmp, Exact, JaroWinklerCmp, LevenshteinCmp, Name, Phonetic

__all__ = [
    "ESTIMATED_DAYS",
    "NULL",
    "REGISTRY",
    "AddressLine",
    "BirthDate",
    "Column",
    "Comparator",
    "Context",
    "DamerauCmp",
    "Exact",
    "Identifier",
    "JaroWinklerCmp",
    "LevenshteinCmp",
    "Name",
    "Phonetic",
    "Vocab",
    "register",
]
