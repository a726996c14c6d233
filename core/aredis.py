"""The default cache read from the event loop: a few Redis connections per loop.

Django's cache API is synchronous: under ASGI each call is a thread hop, or blocks the loop. The few
cache reads on the path of a stream's first token (the API key's cached lookup and its rate-limit
count, ``accounts.loop_auth``; the agent a run names, ``agents.selectors.agents.aagent_for_run``;
an org's billing state) go through :func:`cache_get_many_and_count` instead, on the server's loop,
with the cache's own URL, timeouts, key and value formats.

Each read is one round trip on a connection of the loop's own (:class:`LoopConnections`): the
commands go out in one write and their replies are read back, under one timeout. redis-py's
pipeline and pool do more around the same round trip (a lock and a health check on every
checkout, a task for a write under a timeout, a timer per reply, connection metrics), and on the
loop that was 0.5 ms more before the key was known, on every request (``bench/stream_fanout.py``).
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
# trip) rather than opening hundreds.
MAX_CONNECTIONS = 32
DEFAULT_TIMEOUT = 5.0  # seconds, when the cache's OPTIONS set no socket_timeout


class LoopConnections:
    """Connections of one event loop to the default cache's Redis, one round trip at a time each.

    Connections are made by redis-py from the cache's URL (TLS, password, database and RESP
    handshake included) and kept while they work: one that fails, times out or is cancelled
    mid-reply is closed, never reused, so an idle one holds no unread reply; a kept one that
    Redis has closed meanwhile is replaced once, within the same round trip. A round trip that
    waits longer than the cache's ``socket_timeout`` for a free connection, or for Redis, fails with
    ``RedisError`` like any other Redis failure.
    """

    def __init__(self, url: str, *, timeout: float, connect_timeout: float | None) -> None:
        # Only a factory: its connections have no timeout of their own, a round trip has one.
        self._factory = redis.asyncio.ConnectionPool.from_url(
            url, socket_connect_timeout=connect_timeout, socket_timeout=None
        )
        self.timeout = timeout
        self._idle: list[redis.asyncio.Connection] = []
        self._slots = asyncio.Semaphore(MAX_CONNECTIONS)

    async def round_trip(self, commands: list[tuple]) -> list:
        """The replies of ``commands``, sent together on one connection."""
        try:
            async with asyncio.timeout(self.timeout):
                async with self._slots:
                    reused = bool(self._idle)
                    try:
                        return await self._send_and_read(commands, reuse=True)
                    except redis.exceptions.ConnectionError:
                        if not reused:
                            raise
                        # Redis closed that idle connection (a restart, its idle timeout): once more
                        # on a new one, as redis-py's own retry would.
                        return await self._send_and_read(commands, reuse=False)
        except TimeoutError as exc:
            raise redis.exceptions.TimeoutError(f"no reply from Redis within {self.timeout} s") from exc

    async def _send_and_read(self, commands: list[tuple], *, reuse: bool) -> list:
        connection = self._idle.pop() if reuse and self._idle else self._factory.make_connection()
        try:
            if not connection.is_connected:
                await connection.connect()
            await connection.send_packed_command(connection.pack_commands(commands), check_health=False)
            replies = [await connection.read_response() for _ in commands]
        except BaseException:
            await connection.disconnect(nowait=True)
            raise
        self._idle.append(connection)
        return replies

    async def aclose(self) -> None:
        """Close the idle connections (a test's loop, before it ends)."""
        idle, self._idle = self._idle, []
        for connection in idle:
            await connection.disconnect()


_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, LoopConnections] = weakref.WeakKeyDictionary()


def client() -> LoopConnections:
    """The running loop's connections to the default cache's Redis (made on first use)."""
    loop = asyncio.get_running_loop()
    found = _clients.get(loop)
    if found is None:
        config = settings.CACHES["default"]
        options = config.get("OPTIONS", {})
        found = _clients[loop] = LoopConnections(
            config["LOCATION"],
            timeout=options.get("socket_timeout") or DEFAULT_TIMEOUT,
            connect_timeout=options.get("socket_connect_timeout"),
        )
    return found


async def cache_get_many_and_count(
    keys: list[str], counter: tuple[str, int] | None = None
) -> tuple[dict, int | None] | None:
    """``cache.get_many(keys)`` and, with ``counter`` = (key, timeout), that counter counted as
    ``core.throttling.get_many_and_count`` counts it, from the event loop: on Redis in one round
    trip of this module's connections, on the in-memory cache directly (nothing to wait for). None
    for any other cache (its calls would block the loop) and when Redis fails: the caller then
    goes the synchronous way."""
    backend = caches["default"]
    if isinstance(backend, LocMemCache):
        from core.throttling import get_many_and_count

        return get_many_and_count(keys, counter)
    if not isinstance(backend, RedisCache):
        return None
    full_keys = {backend.make_and_validate_key(key): key for key in keys}
    commands: list[tuple] = [("MGET", *full_keys)] if full_keys else []
    if counter is not None:
        full_counter = backend.make_and_validate_key(counter[0])
        commands += [("SET", full_counter, 0, "EX", counter[1], "NX"), ("INCR", full_counter)]
    if not commands:
        return {}, None
    try:
        replies = await client().round_trip(commands)
    except (RedisError, OSError):
        logger.warning("the cache could not be read from the loop; reading it from a thread", exc_info=True)
        return None
    loads = backend._cache._serializer.loads
    values = zip(full_keys.values(), replies[0] if full_keys else (), strict=True)
    found = {key: loads(value) for key, value in values if value is not None}
    return found, (int(replies[-1]) if counter is not None else None)


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
