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
