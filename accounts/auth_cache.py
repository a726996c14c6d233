"""A cache of API-key lookups that can never outlive a change to what they were built from.

Every cached lookup carries the *generation* it was read under. Any save or delete of an API key,
membership, user or organisation bumps the generation (once at once, and once more after the
transaction commits, so a reader that raced the uncommitted change cannot store stale data under
the new generation); a lookup whose generation differs is ignored. A revoked, rolled, expired or
deleted key, a removed or demoted member and a deactivated user therefore take effect on the very
next request. ``AUTH_CACHE_SECONDS`` bounds how long an entry may live even if a change slipped
past every signal (e.g. raw SQL by an operator).

Without Redis the cache is per process: in the embedded default only the web process
authenticates keys, and it is where the API, admin and services make their changes.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.cache import cache
from django.db import transaction

from core.throttling import get_many_and_count

GENERATION_KEY = "auth:keys:generation"


def _entry_key(public_id: str) -> str:
    return f"auth:key:{public_id}"


def cached_lookup(public_id: str) -> tuple[Any, int | None]:
    """(cached key row or None, current generation) in one cache round trip."""
    key, generation, _count = cached_lookup_counting(public_id, None)
    return key, generation


def cached_lookup_counting(
    public_id: str, counter: tuple[str, int] | None
) -> tuple[Any, int | None, int | None]:
    """:func:`cached_lookup` plus the rate-limit count of ``counter`` (see
    ``core.throttling.get_many_and_count``), still in one cache round trip."""
    found, count = get_many_and_count(lookup_keys(public_id), counter)
    key, generation = lookup_from(found, public_id)
    return key, generation, count


def lookup_keys(public_id: str) -> list[str]:
    """The cache keys one lookup reads (the generation and the entry)."""
    return [GENERATION_KEY, _entry_key(public_id)]


def lookup_from(found: dict, public_id: str) -> tuple[Any, int | None]:
    """(cached key row or None, current generation) from what :func:`lookup_keys` read."""
    generation = found.get(GENERATION_KEY)
    entry = found.get(_entry_key(public_id))
    if generation is not None and entry is not None and entry[0] == generation:
        return entry[1], generation
    return None, generation


def store(public_id: str, key: Any, generation: int | None) -> None:
    """Remember a lookup read under ``generation`` (read *before* the database was queried)."""
    if settings.AUTH_CACHE_SECONDS <= 0:
        return
    if generation is None:
        cache.add(GENERATION_KEY, 1, timeout=None)
        return  # the generation was unknown when we read: do not trust this read
    cache.set(_entry_key(public_id), (generation, key), timeout=settings.AUTH_CACHE_SECONDS)


def _bump() -> None:
    try:
        cache.incr(GENERATION_KEY)
    except ValueError:  # not there yet (or evicted): any new value invalidates every entry
        cache.set(GENERATION_KEY, 1, timeout=None)


def invalidate() -> None:
    """Forget every cached lookup, now and again when the current transaction commits."""
    _bump()
    transaction.on_commit(_bump)
