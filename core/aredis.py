"""The default cache read from the event loop: an asyncio Redis client per loop.

Django's cache API is synchronous: under ASGI each call is a thread hop, or blocks the loop. The few
cache reads on the path of a stream's first token (the API key's cached lookup and its rate-limit
count, ``accounts.loop_auth``; the agent a run names, ``agents.selectors.agents.aagent_for_run``)
go through :func:`cache_get_many_and_count` instead, on the server's loop, with the cache's own URL,
socket timeouts, key and value formats.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time
import weakref
from typing import Any

import redis.asyncio
from django.conf import settings
from django.core.cache import caches
from django.core.cache.backends.locmem import LocMemCache
from django.core.cache.backends.redis import RedisCache
from redis.exceptions import RedisError

logger = logging.getLogger(__name__)

# Connections per loop: a burst of requests waits for one of these (each holds it for one round
# trip) rather than opening hundreds; redis-py's own pool refuses the request past its limit.
MAX_CONNECTIONS = 32

_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, redis.asyncio.Redis] = (
    weakref.WeakKeyDictionary()
)


def client() -> redis.asyncio.Redis:
    """The running loop's client of the default cache's Redis (made on first use)."""
    loop = asyncio.get_running_loop()
    found = _clients.get(loop)
    if found is None:
        config = settings.CACHES["default"]
        options = config.get("OPTIONS", {})
        pool = redis.asyncio.BlockingConnectionPool.from_url(
            config["LOCATION"],
            max_connections=MAX_CONNECTIONS,
            timeout=options.get("socket_timeout") or 5,
            socket_connect_timeout=options.get("socket_connect_timeout"),
            socket_timeout=options.get("socket_timeout"),
        )
        found = _clients[loop] = redis.asyncio.Redis(connection_pool=pool)
    return found


async def cache_get_many_and_count(
    keys: list[str], counter: tuple[str, int] | None = None
) -> tuple[dict, int | None] | None:
    """``cache.get_many(keys)`` and, with ``counter`` = (key, timeout), that counter counted as
    ``core.throttling.get_many_and_count`` counts it, from the event loop: on Redis in one round
    trip of this module's client, on the in-memory cache directly (nothing to wait for). None for
    any other cache (its calls would block the loop) and when Redis fails: the caller then goes
    the synchronous way."""
    backend = caches["default"]
    if isinstance(backend, LocMemCache):
        from core.throttling import get_many_and_count

        return get_many_and_count(keys, counter)
    if not isinstance(backend, RedisCache):
        return None
    full_keys = {backend.make_and_validate_key(key): key for key in keys}
    pipe = client().pipeline(transaction=False)
    pipe.mget(list(full_keys))
    if counter is not None:
        full_counter = backend.make_and_validate_key(counter[0])
        pipe.set(full_counter, 0, ex=counter[1], nx=True)
        pipe.incr(full_counter)
    try:
        replies = await pipe.execute()
    except RedisError:
        logger.warning("the cache could not be read from the loop; reading it from a thread", exc_info=True)
        return None
    loads = backend._cache._serializer.loads
    values = zip(full_keys.values(), replies[0], strict=True)
    found = {key: loads(value) for key, value in values if value is not None}
    return found, (int(replies[2]) if counter is not None else None)


# --- keys read along with the API key's lookup ----------------------------------------------------

READ_WITH_KEY_SECONDS = 1.0  # how long a request may go by what its key lookup read
_riders: list[str] = []
_read: contextvars.ContextVar[tuple[dict, float] | None] = contextvars.ContextVar(
    "aredis_read_with_key", default=None
)


def ride_with_key_reads(key: str) -> None:
    """Read the cache key ``key`` in the same round trip as every API key's lookup on the loop
    (``accounts.loop_auth``): a value the request's later reads can then check without a round
    trip of their own (an app's cache generation; at start-up, from an ``AppConfig.ready``)."""
    if key not in _riders:
        _riders.append(key)


def riders() -> list[str]:
    """The keys :func:`ride_with_key_reads` registered."""
    return list(_riders)


def adopt_reads(found: dict | None) -> None:
    """Keep what the request's key lookup read (riders included) for the rest of this context,
    for ``READ_WITH_KEY_SECONDS``: the work of the request itself, not a run that outlives it."""
    _read.set(None if found is None else (found, time.monotonic()))


def read_with_key(key: str) -> Any:
    """The value of ``key`` as the request's key lookup read it (see :func:`adopt_reads`); None
    when it was not read (no lookup on the loop, not a rider, or not in the cache)."""
    read = _read.get()
    if read is None or time.monotonic() - read[1] > READ_WITH_KEY_SECONDS:
        return None
    return read[0].get(key)
