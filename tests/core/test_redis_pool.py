"""Django's cache objects share one Redis connection pool per process (``core.redis_pool``)."""

from __future__ import annotations

import asyncio

import pytest
from django.conf import settings
from django.core.cache import caches

from core.redis_pool import SharedConnectionPool

pytestmark = pytest.mark.skipif(not settings.REDIS_URL, reason="needs Redis")


def _pool_of(cache):
    return cache._cache._get_connection_pool(write=True)


def test_the_same_url_and_options_give_the_same_pool():
    first = SharedConnectionPool.from_url("redis://127.0.0.1:6379/15", socket_timeout=5)
    assert SharedConnectionPool.from_url("redis://127.0.0.1:6379/15", socket_timeout=5) is first
    assert SharedConnectionPool.from_url("redis://127.0.0.1:6379/15", socket_timeout=6) is not first


def test_cache_objects_of_different_request_contexts_share_one_pool():
    """Under ASGI each request gets its own cache object (context-local); all use one pool."""

    async def pool_in_a_new_context():
        return await asyncio.get_running_loop().run_in_executor(None, lambda: _pool_of(caches["default"]))

    async def two():
        return await asyncio.gather(
            asyncio.create_task(pool_in_a_new_context()), asyncio.create_task(pool_in_a_new_context())
        )

    here = _pool_of(caches["default"])
    assert all(pool is here for pool in asyncio.run(two()))
    caches["default"].set("redis-pool-probe", 1)
    assert caches["default"].get("redis-pool-probe") == 1
