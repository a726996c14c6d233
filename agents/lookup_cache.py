"""A shared cache of the agent rows that runs name (by key or id), which can never outlive a change
to an agent.

Every chat turn and every ``agent:<key>`` call reads its agent before anything else happens; this
keeps that read to one cache round trip. It works like the API-key cache (``accounts.auth_cache``):
each entry carries the *generation* it was read under, and any save or delete of an agent bumps
the generation (at once, and again when the transaction commits), so an edited, deleted or
re-permissioned agent is read afresh on the very next call, in every process. Only the row is
cached; who may see it is decided per call (``agents.selectors.agents.agent_for_run``).
``AGENT_CACHE_SECONDS`` bounds an entry's life (0 turns the cache off).

Each process also keeps the rows it read (:func:`local_get`), under the generation they were read
under. A request whose API key was looked up on the loop read the current generation in that same
round trip (``core.aredis.ride_with_key_reads``), so a row kept under that generation is as good as
the shared entry, without a round trip of its own. It keeps them pickled, as the shared cache
does: each run gets its own row from the bytes, in a fifth of the time a deep copy of the row
took (15 against 72 us, on the path to the model call).
"""

from __future__ import annotations

import pickle
import time
from typing import Any

from django.conf import settings
from django.core.cache import cache
from django.db import transaction

GENERATION_KEY = "agents:lookup:generation"
LOCAL_MAX_ENTRIES = 2048

_local: dict[tuple[str, str], tuple[int, bytes, float]] = {}


def _entry_key(org_id: Any, ref: str) -> str:
    return f"agents:lookup:{org_id}:{ref}"


def cached_agent(org_id: Any, ref: str) -> tuple[Any, int | None]:
    """(cached agent row or None, current generation) in one cache round trip."""
    if settings.AGENT_CACHE_SECONDS <= 0:
        return None, None
    return lookup_from(cache.get_many(lookup_keys(org_id, ref)), org_id, ref)


def lookup_keys(org_id: Any, ref: str) -> list[str]:
    """The cache keys one lookup reads (the generation and the entry)."""
    return [GENERATION_KEY, _entry_key(org_id, ref)]


def lookup_from(found: dict, org_id: Any, ref: str) -> tuple[Any, int | None]:
    """(cached agent row or None, current generation) from what :func:`lookup_keys` read."""
    generation = found.get(GENERATION_KEY)
    entry = found.get(_entry_key(org_id, ref))
    if generation is not None and entry is not None and entry[0] == generation:
        return entry[1], generation
    return None, generation


def store(org_id: Any, ref: str, agent: Any, generation: int | None) -> None:
    """Remember a row read under ``generation`` (read *before* the database was queried)."""
    if settings.AGENT_CACHE_SECONDS <= 0:
        return
    if generation is None:
        cache.add(GENERATION_KEY, 1, timeout=None)
        return  # the generation was unknown when we read: do not trust this read
    cache.set(_entry_key(org_id, ref), (generation, agent), timeout=settings.AGENT_CACHE_SECONDS)


def _bump() -> None:
    try:
        cache.incr(GENERATION_KEY)
    except ValueError:  # not there yet (or evicted): any new value invalidates every entry
        cache.set(GENERATION_KEY, 1, timeout=None)


def invalidate() -> None:
    """Forget every cached agent row, now and again when the current transaction commits."""
    _bump()
    transaction.on_commit(_bump)


def local_get(org_id: Any, ref: str, generation: Any) -> Any:
    """A copy of the row this process kept for ``(org_id, ref)`` under ``generation`` (the current
    one, as the request read it), or None; entries live ``AGENT_CACHE_SECONDS`` at most."""
    entry = _local.get((str(org_id), ref))
    if generation is None or entry is None or entry[0] != generation:
        return None
    if time.monotonic() - entry[2] > settings.AGENT_CACHE_SECONDS:
        return None
    return pickle.loads(entry[1])  # noqa: S301 - bytes this process pickled; each run its own row


def local_store(org_id: Any, ref: str, generation: Any, agent: Any) -> None:
    """Keep a row read (from the shared cache or the database) under ``generation``."""
    if settings.AGENT_CACHE_SECONDS <= 0 or generation is None:
        return
    if len(_local) >= LOCAL_MAX_ENTRIES:
        _local.clear()  # a process sees few agents; one that sees many starts over
    _local[(str(org_id), ref)] = (generation, pickle.dumps(agent, pickle.HIGHEST_PROTOCOL), time.monotonic())
