"""One Redis connection pool per process for Django's cache, instead of one per request.

Django keeps its cache objects in a context-local store, and under ASGI every request runs in a
context of its own, so every request builds a fresh ``RedisCache``, a fresh connection pool and
therefore a fresh TCP connection to Redis (with redis-py's ``CLIENT SETINFO`` handshake) before
its first cache call: API-key authentication, rate limiting and idempotency each paid it on the
path to a response. ``SharedConnectionPool`` (``CACHES[…]["OPTIONS"]["pool_class"]``) hands every
cache object of the process the same pool for the same URL and options; redis-py pools are
thread-safe and re-create their connections after a fork.
"""

from __future__ import annotations

import os
import threading
from typing import Any

import redis

_lock = threading.Lock()
_pools: dict[tuple, redis.ConnectionPool] = {}


class SharedConnectionPool(redis.ConnectionPool):
    """``from_url`` returns the process's pool for that URL and options (made on first use)."""

    @classmethod
    def from_url(cls, url: str, **kwargs: Any) -> redis.ConnectionPool:
        key = (os.getpid(), url, tuple(sorted((name, repr(value)) for name, value in kwargs.items())))
        pool = _pools.get(key)
        if pool is None:
            with _lock:
                pool = _pools.get(key)
                if pool is None:
                    pool = _pools[key] = super().from_url(url, **kwargs)
        return pool
