"""Token-aware chunking with overlap, keeping each chunk's page and heading for citations.

Tokens are counted with ``bpe-openai`` (the cl100k_base encoding, shipped inside the package: no
download at run time, unlike tiktoken). A section is cut into windows of ``chunk_size`` tokens
that share ``overlap`` tokens with their neighbour; window edges are moved back to the last
sentence or word boundary when one is near, so a chunk rarely ends mid-word.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from functools import cache
from typing import Any

from knowledge.parsing import Section

_SENTENCE_END = re.compile(r"[.!?。]\s|\n")


@cache
def _encoding():
    import bpe_openai

    return bpe_openai.get_encoding("cl100k_base")


def count_tokens(text: str) -> int:
    """Tokens of ``text`` in the cl100k_base encoding."""
    return len(_encoding().encode(text))


@dataclass
class ChunkDraft:
    """A chunk before it is stored."""

    seq: int
    text: str
    token_count: int
    page: int | None = None
    section: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def content_hash(self) -> str:
        return hashlib.sha256(self.text.encode("utf-8")).hexdigest()


def _snap(text: str, minimum: int) -> int:
    """A cut position in ``text`` at a sentence, else word, boundary past ``minimum``; else its end."""
    best = -1
    for match in _SENTENCE_END.finditer(text, minimum):
        best = match.end()
    if best > minimum:
        return best
    space = text.rfind(" ", minimum)
    return space + 1 if space > minimum else len(text)


def split_section(text: str, *, chunk_size: int, overlap: int) -> list[tuple[str, int]]:
    """``(text, tokens)`` windows of at most ``chunk_size`` tokens sharing about ``overlap`` tokens."""
    encoding = _encoding()
    tokens = encoding.encode(text)
    if len(tokens) <= chunk_size:
        return [(text, len(tokens))] if text.strip() else []
    pieces: list[tuple[str, int]] = []
    start = 0
    stride = max(1, chunk_size - overlap)
    while start < len(tokens):
        window = tokens[start : start + chunk_size]
        piece = encoding.decode(window)
        if start + chunk_size < len(tokens):
            cut = _snap(piece, len(piece) * 2 // 3)  # keep at least two thirds of the window
            piece = piece[:cut]
            used = len(encoding.encode(piece))
        else:
            used = len(window)
        piece = piece.strip()
        if piece:
            pieces.append((piece, min(used, chunk_size)))
        if start + chunk_size >= len(tokens):
            break
        start += max(1, min(stride, used - overlap) if used > overlap else stride)
    return pieces


def chunk_sections(sections: list[Section], *, chunk_size: int, overlap: int) -> list[ChunkDraft]:
    """The chunks of a document's sections, numbered in reading order."""
    drafts: list[ChunkDraft] = []
    for section in sections:
        for text, tokens in split_section(section.text, chunk_size=chunk_size, overlap=overlap):
            drafts.append(
                ChunkDraft(
                    seq=len(drafts),
                    text=text,
                    token_count=tokens,
                    page=section.page,
                    section=section.heading[:300],
                    metadata=dict(section.metadata),
                )
            )
    return drafts
