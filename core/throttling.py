"""Rate limits per API key, else per signed-in user, else per client IP, kept in the cache.

A fixed window counted with the cache's atomic ``incr`` (Redis in production, so every web process
shares one count). Over the limit: 429 ``ERR_RATE_LIMITED`` with ``Retry-After`` = seconds left in
the window. Limits come from ``RATE_LIMIT_KEY``, ``RATE_LIMIT_USER`` and ``RATE_LIMIT_ANON``.
"""

from __future__ import annotations

import time

from django.conf import settings
from django.core.cache import cache
from rest_framework.throttling import BaseThrottle

_PERIODS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_rate(rate: str) -> tuple[int, int]:
    """``"600/minute"`` → (600, 60). Accepts second/minute/hour/day or their first letter."""
    count, _, period = rate.partition("/")
    try:
        return int(count), _PERIODS[period.strip()[:1].lower()]
    except (KeyError, ValueError) as exc:
        raise ValueError(f"bad rate {rate!r}: expected e.g. '600/minute'") from exc


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
        cache_key = f"rl:{scope}:{ident}:{period}:{window}"
        # incr() is atomic in Redis; only the first request of a window creates the counter
        # (with its expiry), so a busy caller costs one counter update per request.
        try:
            count = cache.incr(cache_key)
        except ValueError:
            if cache.add(cache_key, 1, timeout=period + 1):
                count = 1
            else:  # another request created it meanwhile
                count = cache.incr(cache_key)
        self._wait = (window + 1) * period - now
        return count <= limit

    def wait(self) -> float:
        return getattr(self, "_wait", 1.0)
