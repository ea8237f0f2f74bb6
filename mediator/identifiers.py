"""One identifier, one normal form: what the registry keys records by, searches HAPI with and stores.

Every identifier the registry receives (a Patient's, a conditional update's, a lookup's) goes through
:func:`normal_form` once, at the edge; keys, FHIR searches and stored values all use what it returns, so
two spellings that HAPI or a person would take for the same identifier are the same record, and a value
that cannot be made safe is refused. The rules and their reasons are in ``docs/identifiers.md``.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Mapping
from typing import Any

from confusable_homoglyphs import categories

# FHIR R4 ``id``: what may go into a URL as ``Type/<id>`` (anything else could add a path or a query)
FHIR_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")
# FHIR search syntax: these characters mean something in a token parameter and are escaped with ``\``
_SEARCH_SPECIAL = re.compile(r"([\\,|$])")
# Unicode categories never accepted in an identifier: format characters (zero-width space and joiners, the
# byte-order mark, bidirectional embeddings, overrides and isolates, soft hyphen), controls, line and
# paragraph separators, surrogates, private use and unassigned code points: invisible, or shown differently
# from what is stored
_REFUSED_CATEGORIES = {"Cf", "Cc", "Zl", "Zp", "Cs", "Co", "Cn"}
# Unicode's other default-ignorable code points (not format characters, and kept by NFKC): the combining
# grapheme joiner, Hangul fillers, Khmer inherent vowels, Mongolian and other variation selectors. Invisible:
# `12\u034f34` would be another record than `1234`, looking the same
_INVISIBLE = re.compile(
    "[\u034f\u115f\u1160\u17b4\u17b5\u180b-\u180d\u180f\u3164\ufe00-\ufe0f\uffa0\U000e0100-\U000e01ef]"
)
# characters a system or a value may hold (in normal form): an identifier accepted can be looked up, its
# every character escaped and percent-encoded (up to 12 bytes each) within the 8 KB request line of the
# mediator (aiohttp) and of HAPI; 8,000 characters were stored (201) but never found (HAPI refused the search)
MAX_LENGTH = 256
# script aliases that go with any script: digits, punctuation, combining marks
_NEUTRAL_SCRIPTS = {"COMMON", "INHERITED"}


class IdentifierRefused(ValueError):
    """An identifier (or a part of one) that has no safe normal form; the message says why, not what."""


def normal_text(text: str, part: str) -> str:
    """``text`` in the registry's normal form: NFKC (full-width and other compatibility forms folded),
    no leading or trailing whitespace (HAPI trims token values when it indexes and searches them).
    :class:`IdentifierRefused` for an empty result, one longer than :data:`MAX_LENGTH`, an invisible,
    control or bidirectional character, or letters of more than one script (look-alikes such as a Cyrillic
    ``А`` among Latin letters)."""
    normal = unicodedata.normalize("NFKC", text).strip()
    if not normal:
        raise IdentifierRefused(f"The identifier's {part} is empty.")
    if len(normal) > MAX_LENGTH:
        raise IdentifierRefused(f"The identifier's {part} is longer than {MAX_LENGTH} characters.")
    for position, char in enumerate(normal):
        category = unicodedata.category(char)
        if category in _REFUSED_CATEGORIES or (char.isspace() and char != " ") or _INVISIBLE.match(char):
            raise IdentifierRefused(
                f"The identifier's {part} holds U+{ord(char):04X} at position {position}: invisible, control "
                "and bidirectional characters are refused in identifiers."
            )
    scripts = {categories.alias(c) for c in normal if c.isalpha()} - _NEUTRAL_SCRIPTS
    if len(scripts) > 1:
        raise IdentifierRefused(
            f"The identifier's {part} mixes letters of several scripts ({', '.join(sorted(scripts))}); "
            "look-alike letters are refused in identifiers."
        )
    return normal


def normal_system(system: str) -> str:
    """The normal form of an identifier system (:func:`normal_text`); a system may hold neither whitespace
    nor ``|`` (it is a URI, and ``system|value`` must split one way only)."""
    normal = normal_text(system, "system")
    if "|" in normal or " " in normal:
        raise IdentifierRefused("The identifier's system is a URI: it may hold neither '|' nor spaces.")
    return normal


def normal_form(system: str, value: str) -> tuple[str, str]:
    """The normal form of ``system|value``: :func:`normal_system` and :func:`normal_text` of the value."""
    return normal_system(system), normal_text(value, "value")


def search_escape(text: str) -> str:
    """``text`` as a literal inside a FHIR search parameter (``\\`` ``,`` ``|`` ``$`` escaped)."""
    return _SEARCH_SPECIAL.sub(r"\\\1", text)


def _search_split(text: str, separator: str, most: int | None = None) -> list[str]:
    r"""``text`` split where ``separator`` is not escaped (at most ``most`` times; after that it is itself),
    with ``\\`` ``\,`` ``\|`` ``\$`` read as the character escaped (a ``\`` before any other stays)."""
    parts: list[str] = []
    current: list[str] = []
    chars = iter(text)
    for char in chars:
        if char == "\\":
            following = next(chars, "")
            current.extend((following,) if following in ("\\", ",", "|", "$") else (char, following))
        elif char == separator and (most is None or len(parts) < most):
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    return [*parts, "".join(current)]


def parse_token(text: str) -> tuple[str, str] | None:
    r"""``system|value`` as a FHIR search parameter writes it (``identifier=``, ``sourceIdentifier=``): split
    at the first ``|`` not escaped, and ``\\`` ``\,`` ``\|`` ``\$`` read as the character escaped, so
    ``urn:c|12\,345`` is the identifier ``12,345`` (what :func:`token` writes for it), never ``12\,345``.
    Leniently, a ``,`` ``|`` or ``$`` not escaped in the value is itself, and so is a ``\`` before any other
    character. None when there is no ``|`` to split at. The parts are not in normal form yet."""
    parts = _search_split(text, "|", most=1)
    return (parts[0], parts[1]) if len(parts) == 2 else None


def parse_list(text: str) -> list[str]:
    r"""A FHIR search parameter's list of values (``targetSystem=a,b``): split at each ``,`` not escaped,
    escapes read as in :func:`parse_token` (``urn:a\,b`` is one system)."""
    return _search_split(text, ",")


def token(system: str, value: str | None = None) -> str:
    """The FHIR token search value for ``system|value`` (``system|`` when ``value`` is None), escaped."""
    return f"{search_escape(system)}|" + ("" if value is None else search_escape(value))


def holds(identifiers: Iterable[Mapping[str, Any]], system: str | None, value: str) -> bool:
    """Whether ``identifiers`` (a stored record's) include ``system|value`` (in normal form; ``system``
    None: of any system), each compared in its normal form. FHIR searches only find candidates: HAPI trims
    and truncates the values it indexes, so what a search returns is checked with this."""
    for ident in identifiers:
        try:
            found = normal_form(str(ident.get("system", "")), str(ident.get("value", "")))
        except IdentifierRefused:  # stored before identifiers were normalised: never a normal form
            continue
        if found[1] == value and system in (None, found[0]):
            return True
    return False


def is_fhir_id(text: str) -> bool:
    """Whether ``text`` is a FHIR resource id, the only thing the registry puts after ``Type/`` in a URL.
    Not ``.`` or ``..``: FHIR's pattern allows them, but in a URL they are path steps (``Patient/..`` is the
    server's base, ``Patient/.`` a search of every Patient), never a record."""
    return FHIR_ID.fullmatch(text) is not None and text not in (".", "..")


__all__ = [
    "MAX_LENGTH",
    "IdentifierRefused",
    "holds",
    "is_fhir_id",
    "normal_form",
    "normal_system",
    "normal_text",
    "parse_list",
    "parse_token",
    "search_escape",
    "token",
]
