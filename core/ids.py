"""Ids that say when they were minted: UUID version 7 (RFC 9562), a millisecond Unix timestamp in
the first 48 bits and random bits after it.

A chat turn that opens a conversation hands its ids to the client before their rows are committed
(``chat.services.turns``). A lookup that finds no row for such an id can tell from the id alone
whether it may still be on its way (minted a moment ago) and wait for it, while any other unknown
id answers 404 at once. They are as unguessable as version 4 ids apart from the timestamp, and
they sort by creation time, which keeps B-tree inserts at the index's end.
"""

from __future__ import annotations

import os
import time
import uuid
from typing import Any

_VERSION = 7


def uuid7() -> uuid.UUID:
    """A new version 7 UUID: now, in milliseconds, then 74 random bits (``uuid.uuid7`` from 3.14)."""
    millis = time.time_ns() // 1_000_000
    rand = int.from_bytes(os.urandom(10), "big")
    value = (millis & ((1 << 48) - 1)) << 80
    value |= _VERSION << 76
    value |= ((rand >> 62) & 0xFFF) << 64  # rand_a: 12 bits
    value |= 0b10 << 62  # the RFC 4122 / 9562 variant
    value |= rand & ((1 << 62) - 1)  # rand_b: 62 bits
    return uuid.UUID(int=value)


def minted_seconds_ago(value: Any) -> float | None:
    """How long ago a version 7 id was minted (negative if its clock was ahead of ours); None for
    anything else (another version, not a UUID at all)."""
    try:
        parsed = value if isinstance(value, uuid.UUID) else uuid.UUID(str(value))
    except (TypeError, ValueError, AttributeError):
        return None
    if parsed.version != _VERSION:
        return None
    return time.time() - (parsed.int >> 80) / 1000
