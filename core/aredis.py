"""An asyncio Redis client for the cache's Redis, one per event loop.

Django's cache API is synchronous: under ASGI each call is a thread hop, or blocks the loop. The few
cache reads on the path of a stream's first token (the API key's cached lookup and its rate-limit
count, ``accounts.loop_auth``) go through this client instead, on the server's loop, with the cache's
own URL and socket timeouts and its key and value formats (``core.throttling.aget_many_and_count``).
"""

from __future__ import annotations

import asyncio
import weakref

import redis.asyncio
from django.conf import settings

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
