"""Turn a FHIR R4 Patient (a plain dict) into the normalised values the comparators use.

Every extractor returns a tuple of strings (possibly empty: the value is missing); dates are returned as one
``YYYY-MM-DD`` string with ``00`` for unknown parts. Normalisation is deliberately boring and predictable:
accents folded, lower case, punctuation to spaces, honorifics and generational suffixes dropped. Identifier
values are the exception: kept as the registry keys them (:func:`identifiers`), folded where compared.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Iterable, Mapping, Sequence
from functools import lru_cache
from typing import Any

DROP_TOKENS = frozenset(
    {"mr", "mrs", "ms", "miss", "dr", "prof", "rev", "sr", "jr", "ii", "iii", "iv", "mme", "mlle", "me"}
    | {"dona", "dom", "sra", "sro", "bibi", "mzee", "alhaji", "hajia", "hajiya"}
)
_NON_ALNUM = re.compile(r"[^a-z0-9]+")
_DIGITS = re.compile(r"\D+")


@lru_cache(maxsize=200_000)
def fold(text: str) -> str:
    """Lower case, strip accents, keep only [a-z0-9] separated by single spaces."""
    decomposed = unicodedata.normalize("NFKD", text)
    ascii_only = "".join(c for c in decomposed if not unicodedata.combining(c)).lower()
    return _NON_ALNUM.sub(" ", ascii_only.replace("'", "")).strip()


def name_tokens(parts: Iterable[str]) -> tuple[str, ...]:
    """Fold name parts into distinct tokens, in order, without honorifics/suffixes."""
    out: list[str] = []
    for part in parts:
        if not isinstance(part, str):
            continue
        for tok in fold(part).split():
            if tok not in DROP_TOKENS and not tok.isdigit() and tok not in out:
                out.append(tok)
    return tuple(out)


def _names(patient: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    names = [n for n in patient.get("name") or () if isinstance(n, Mapping)]
    # official / usual first, old/maiden last: earlier tokens are the "primary" ones
    order = {"official": 0, "usual": 1, None: 2, "nickname": 3, "maiden": 4, "old": 5, "anonymous": 6}
    return sorted(names, key=lambda n: order.get(n.get("use"), 2))


def given(patient: Mapping[str, Any]) -> tuple[str, ...]:
    return name_tokens(g for n in _names(patient) for g in (n.get("given") or ()))


def family(patient: Mapping[str, Any]) -> tuple[str, ...]:
    return name_tokens(n.get("family") or "" for n in _names(patient))


def gender(patient: Mapping[str, Any]) -> tuple[str, ...]:
    g = patient.get("gender")
    return (g,) if g in ("male", "female") else ()


_DATE = re.compile(r"^(\d{4})(?:-(\d{2})(?:-(\d{2}))?)?")


def birth_date(patient: Mapping[str, Any]) -> tuple[str, ...]:
    raw = patient.get("birthDate")
    if not isinstance(raw, str):
        return ()
    m = _DATE.match(raw)
    if not m:
        return ()
    y, mo, d = int(m.group(1)), int(m.group(2) or 0), int(m.group(3) or 0)
    if not 1800 <= y <= 2200 or mo > 12 or d > 31:
        return ()
    return (f"{y:04d}-{mo:02d}-{d:02d}",)


def identifier_value(value: str) -> str:
    """An identifier value as the registry keys a source record by it (``mediator.identifiers.normal_text``,
    without its refusals): NFKC, no leading or trailing whitespace; case and punctuation kept."""
    return unicodedata.normalize("NFKC", value).strip()


@lru_cache(maxsize=200_000)
def folded_identifier(value: str) -> str:
    """``value`` folded to [a-z0-9] (accents, case, spaces, dashes and other punctuation dropped): the form
    shared (national) ids are compared in, one id typed with and without dashes being one id."""
    return fold(value).replace(" ", "")


def split_identifier(entry: str) -> tuple[str, str]:
    """An entry of :func:`identifiers` as (system, value): split at the first ``|`` (a system holds none: it
    is a URI, and the registry refuses one that does), so a value may hold ``|``. Without a ``|``, no
    system: ``("", entry)``."""
    system, bar, value = entry.partition("|")
    return (system, value) if bar else ("", entry)


def identifiers(patient: Mapping[str, Any]) -> tuple[str, ...]:
    """``system|value`` strings, the value as the registry keys it (:func:`identifier_value`: NFKC, trimmed,
    no case or punctuation folding). A value without a letter or digit is left out. Which values agree is
    the comparator's concern: it folds the values of shared systems (:func:`folded_identifier`), and so do
    the blocking keys of every system."""
    out = []
    for ident in patient.get("identifier") or ():
        if not isinstance(ident, Mapping):
            continue
        system, value = ident.get("system"), ident.get("value")
        if isinstance(system, str) and isinstance(value, str):
            v = identifier_value(value)
            if folded_identifier(v):
                out.append(f"{system}|{v}")
    return tuple(dict.fromkeys(out))


def _telecom(patient: Mapping[str, Any], system: str) -> list[str]:
    return [
        t["value"]
        for t in patient.get("telecom") or ()
        if isinstance(t, Mapping) and t.get("system") == system and isinstance(t.get("value"), str)
    ]


def phones(patient: Mapping[str, Any]) -> tuple[str, ...]:
    """Last 9 digits of each phone number (drops country codes and trunk zeros)."""
    out = []
    for value in _telecom(patient, "phone"):
        digits = _DIGITS.sub("", value)
        if len(digits) >= 6:
            out.append(digits[-9:])
    return tuple(dict.fromkeys(out))


def emails(patient: Mapping[str, Any]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(v.strip().lower() for v in _telecom(patient, "email") if "@" in v))


def _address_part(patient: Mapping[str, Any], key: str) -> tuple[str, ...]:
    out = []
    for a in patient.get("address") or ():
        if isinstance(a, Mapping):
            v = a.get(key)
            if key == "line":
                v = " ".join(x for x in (v or ()) if isinstance(x, str))
            if isinstance(v, str) and fold(v):
                out.append(fold(v))
    return tuple(dict.fromkeys(out))


def _part(key: str) -> Callable[[Mapping[str, Any]], tuple[str, ...]]:
    def extract(patient: Mapping[str, Any]) -> tuple[str, ...]:
        return _address_part(patient, key)

    return extract


#: FHIR path (as written in a rules file) -> (extractor, kind). Kinds: "name", "text", "date", "identifier".
EXTRACTORS: dict[str, tuple[Callable[[Mapping[str, Any]], tuple[str, ...]], str]] = {
    "name.given": (given, "name"),
    "name.family": (family, "name"),
    "gender": (gender, "text"),
    "birthDate": (birth_date, "date"),
    "identifier": (identifiers, "identifier"),
    "telecom.phone": (phones, "text"),
    "telecom.email": (emails, "text"),
    "address.line": (_part("line"), "text"),
    "address.city": (_part("city"), "text"),
    "address.district": (_part("district"), "text"),
    "address.state": (_part("state"), "text"),
    "address.postalCode": (_part("postalCode"), "text"),
    "address.country": (_part("country"), "text"),
}


def digits_only(values: Sequence[str]) -> tuple[str, ...]:
    return tuple(_DIGITS.sub("", v) for v in values)


# -- phonetics -----------------------------------------------------------------------------------
_FOLDS = (
    ("tch", "s"),
    ("sch", "s"),
    ("ch", "s"),
    ("sh", "s"),
    ("dj", "j"),
    ("dz", "z"),
    ("ph", "f"),
    ("gh", "g"),
    ("kh", "k"),
    ("ck", "k"),
    ("q", "k"),
    ("c", "k"),
    ("ou", "u"),
    ("oo", "u"),
    ("w", "u"),
    ("y", "i"),
    ("x", "ks"),
    ("v", "f"),
    ("z", "s"),
    ("th", "t"),
    ("h", ""),
)


@lru_cache(maxsize=200_000)
def phonetic(token: str) -> str:
    """A skeleton code tolerant of spelling conventions in English, French, Portuguese, Swahili, Yoruba,
    Akan and Arabic transliteration: Mohamed/Muhammad/Mouhammed -> ``md``, Ouedraogo/Wedraogo -> ``udrg``,
    Tchoumi/Choumi. First sound kept, other vowels dropped, repeated letters collapsed."""
    s = token
    for a, b in _FOLDS:
        s = s.replace(a, b)
    if not s:
        return token[:1]
    head, tail = s[0], re.sub(r"[aeiou]", "", s[1:])
    out = head
    for ch in tail:
        if ch != out[-1]:
            out += ch
    return out
