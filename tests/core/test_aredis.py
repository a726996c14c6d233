"""The default cache read from the event loop (``core.aredis``): the same keys and values as the
synchronous cache, a burst waiting for the loop's few connections, and a Redis failure answered
with None (the caller then reads from a thread)."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from django.core.cache import cache, caches
from django.core.cache.backends.redis import RedisCache

from core import aredis

needs_redis = pytest.mark.skipif(
    not isinstance(caches["default"], RedisCache), reason="the Redis cache (REDIS_URL) is not configured"
)


def _on_a_loop(coroutine_function):
    async def run():
        try:
            return await coroutine_function()
        finally:
            if isinstance(caches["default"], RedisCache):
                await aredis.client().aclose()

    return asyncio.run(run())


def test_it_reads_what_the_cache_holds_and_counts_like_the_sync_counter():
    one, two, none, counter = (f"aredis:{uuid.uuid4().hex}" for _ in range(4))
    cache.set(one, {"a": 1})
    cache.set(two, [2])

    found, count = _on_a_loop(lambda: aredis.cache_get_many_and_count([one, two, none]))
    _found, first = _on_a_loop(lambda: aredis.cache_get_many_and_count([], (counter, 60)))
    _found, second = _on_a_loop(lambda: aredis.cache_get_many_and_count([], (counter, 60)))

    assert found == {one: {"a": 1}, two: [2]}
    assert count is None
    assert (first, second) == (1, 2)


@needs_redis
def test_a_burst_larger_than_the_pool_waits_for_a_connection(monkeypatch):
    monkeypatch.setattr(aredis, "MAX_CONNECTIONS", 2)

    counter = f"aredis:{uuid.uuid4().hex}"

    async def burst():
        reads = [aredis.cache_get_many_and_count([], (counter, 60)) for _ in range(50)]
        return await asyncio.gather(*reads)

    results = _on_a_loop(burst)

    assert all(result is not None for result in results)
    assert sorted(count for _found, count in results) == list(range(1, 51))


@needs_redis
def test_an_unreachable_redis_answers_none(settings):
    settings.CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": "redis://127.0.0.1:1/0",
            "OPTIONS": {"socket_connect_timeout": 0.5, "socket_timeout": 0.5},
        }
    }

    assert _on_a_loop(lambda: aredis.cache_get_many_and_count(["x"], ("y", 60))) is None


def test_another_cache_backend_is_never_read_from_the_loop(settings):
    settings.CACHES = {"default": {"BACKEND": "django.core.cache.backends.dummy.DummyCache"}}

    assert _on_a_loop(lambda: aredis.cache_get_many_and_count(["x"])) is None


@needs_redis
def test_sequential_reads_share_one_connection():
    counter = f"aredis:{uuid.uuid4().hex}"

    async def reads():
        for _ in range(5):
            await aredis.cache_get_many_and_count([], (counter, 60))
        return len(aredis.client()._idle)

    assert _on_a_loop(reads) == 1
    assert cache.get(counter) == 5


@needs_redis
def test_a_round_trip_that_times_out_or_is_cancelled_leaves_no_reply_behind(monkeypatch):
    """The connection of a round trip that did not read all its replies is closed: the next read
    gets its own replies, never the late ones of the earlier call."""
    counter, waiting = (f"aredis:{uuid.uuid4().hex}" for _ in range(2))
    full_waiting = caches["default"].make_and_validate_key(waiting)

    async def reads():
        connections = aredis.client()
        connections.timeout = 0.2
        with pytest.raises(Exception) as timed_out:
            await connections.round_trip([("BLPOP", full_waiting, 1)])
        blocked = asyncio.ensure_future(connections.round_trip([("BLPOP", full_waiting, 1)]))
        await asyncio.sleep(0.05)
        blocked.cancel()
        with pytest.raises(asyncio.CancelledError):
            await blocked
        cache.set(waiting, "late")  # a reply the closed connections would have read next
        after = await aredis.cache_get_many_and_count([], (counter, 60))
        return timed_out.value, after, len(connections._idle)

    error, after, idle = _on_a_loop(reads)

    assert "no reply from Redis within 0.2 s" in str(error)
    assert after == ({}, 1)
    assert idle == 1  # the new connection only


@needs_redis
def test_an_error_reply_answers_none_and_the_next_read_is_whole():
    counter = f"aredis:{uuid.uuid4().hex}"
    cache.set(counter, "not a number")

    async def reads():
        refused = await aredis.cache_get_many_and_count([], (counter, 60))
        cache.delete(counter)
        return refused, await aredis.cache_get_many_and_count([], (counter, 60))

    assert _on_a_loop(reads) == (None, ({}, 1))


@needs_redis
def test_a_kept_connection_that_redis_closed_is_replaced_within_the_read():
    counter = f"aredis:{uuid.uuid4().hex}"

    async def reads():
        connections = aredis.client()
        [client_id] = await connections.round_trip([("CLIENT", "ID")])
        caches["default"]._cache.get_client(write=True).execute_command("CLIENT", "KILL", "ID", client_id)
        return await aredis.cache_get_many_and_count([], (counter, 60)), len(connections._idle)

    assert _on_a_loop(reads) == (({}, 1), 1)
