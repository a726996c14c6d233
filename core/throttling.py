"""Rate limits per API key, else per signed-in user, else per client IP, kept in the cache.

A fixed window counted in the cache (:func:`window_count`: one Redis round trip in production, so
every web process shares one count). Over the limit: 429 ``ERR_RATE_LIMITED`` with ``Retry-After``
= seconds left in the window. Limits come from ``RATE_LIMIT_KEY``, ``RATE_LIMIT_USER`` and
``RATE_LIMIT_ANON``.
"""

from __future__ import annotations

import time

from django.conf import settings
from django.core.cache import caches
from django.core.cache.backends.redis import RedisCache
from rest_framework.throttling import BaseThrottle

_PERIODS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_rate(rate: str) -> tuple[int, int]:
    """``"600/minute"`` → (600, 60). Accepts second/minute/hour/day or their first letter."""
    count, _, period = rate.partition("/")
    try:
        return int(count), _PERIODS[period.strip()[:1].lower()]
    except (KeyError, ValueError) as exc:
        raise ValueError(f"bad rate {rate!r}: expected e.g. '600/minute'") from exc


def window_count(key: str, timeout: int) -> int:
    """Count one more request in the counter ``key`` (created with ``timeout``); the new count.

    With Redis it is one round trip: ``SET NX EX`` (creates the counter with its expiry only if it
    is missing) and ``INCR`` in one pipeline. Django's ``cache.incr`` would be two (``EXISTS`` then
    ``INCRBY``), on the path of every API request. Other caches go through ``incr``/``add``.
    """
    backend = caches["default"]  # the object itself: ``cache`` is a proxy to it
    if isinstance(backend, RedisCache):
        full_key = backend.make_and_validate_key(key)
        pipe = backend._cache.get_client(full_key, write=True).pipeline(transaction=False)
        pipe.set(full_key, 0, ex=timeout, nx=True)
        pipe.incr(full_key)
        return int(pipe.execute()[1])
    try:
        return backend.incr(key)
    except ValueError:
        if backend.add(key, 1, timeout=timeout):
            return 1
        return backend.incr(key)  # another request created it meanwhile


def caller_identity(request, ident: str) -> tuple[str, str]:
    """(scope, id) of who is calling: the API key, else the user, else the IP."""
    key = getattr(request, "auth", None)
    if key is not None and getattr(key, "pk", None) is not None:
        return "key", str(key.pk)
    user = getattr(request, "user", None)
    if user is not None and user.is_authenticated:
        return "user", str(user.pk)
    return "anon", ident


class CallerRateThrottle(BaseThrottle):
    """The platform-wide limit; views may set ``throttle_scope_rates`` to tighten their own."""

    def allow_request(self, request, view) -> bool:
        if not settings.RATE_LIMIT_ENABLED:
            return True
        scope, ident = caller_identity(request, self.get_ident(request))
        rates = getattr(view, "throttle_scope_rates", None) or settings.RATE_LIMITS
        limit, period = parse_rate(rates.get(scope) or settings.RATE_LIMITS[scope])
        now = time.time()
        window = int(now // period)
        count = window_count(f"rl:{scope}:{ident}:{period}:{window}", period + 1)
        self._wait = (window + 1) * period - now
        return count <= limit

    def wait(self) -> float:
        return getattr(self, "_wait", 1.0)
