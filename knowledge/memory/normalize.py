"""Normalised names: what makes "ACME, Inc." and "acme inc" the same knowledge-graph entity.

Case, accents, runs of whitespace and punctuation do not count. Dashes, underscores and slashes
separate words ("Jean-Luc" = "Jean Luc"); other punctuation and symbols vanish ("A.C.M.E." = "ACME").
"""

from __future__ import annotations

import re
import unicodedata

_SPACES = re.compile(r"\s+")
_SEPARATORS = {"Pd", "Pc"}  # dash and connector punctuation (-, _, ‐, –, —)
MAX_NAME = 200


def normalize_name(name: str) -> str:
    """The comparison key of an entity name or alias ("" when nothing but punctuation)."""
    decomposed = unicodedata.normalize("NFKD", str(name or "")).casefold()
    out = []
    for char in decomposed:
        category = unicodedata.category(char)
        if category == "Mn":  # combining accents: "café" = "cafe"
            continue
        if category in _SEPARATORS or char == "/":
            out.append(" ")
        elif category[0] in "PS":
            continue
        else:
            out.append(char)
    return _SPACES.sub(" ", "".join(out)).strip()[:MAX_NAME]


def normalize_relation_type(value: str) -> str:
    """Relation types as lower snake case: "Works for" → "works_for"."""
    key = normalize_name(value)
    return re.sub(r"[^\w]+", "_", key).strip("_")[:64]


def clean_label(value: str, limit: int = MAX_NAME) -> str:
    """A display name: whitespace collapsed, trimmed, capped."""
    return _SPACES.sub(" ", str(value or "")).strip()[:limit]
