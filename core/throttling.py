"""Rate limits per API key, else per signed-in user, else per client IP, kept in the cache.

A fixed window counted in the cache (:func:`window_count`: one Redis round trip in production, so
every web process shares one count). Over the limit: 429 ``ERR_RATE_LIMITED`` with ``Retry-After``
= seconds left in the window. Limits come from ``RATE_LIMIT_KEY``, ``RATE_LIMIT_USER`` and
``RATE_LIMIT_ANON``.

A request made with an API key is counted in the same round trip as the key's cached lookup
(:func:`key_counter` names the counter from the key's public id, which the presented key carries;
:func:`get_many_and_count` reads and counts at once; the throttle then uses that count): on the
path of every API request, one Redis round trip instead of two.
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


def get_many_and_count(keys: list[str], counter: tuple[str, int] | None) -> tuple[dict, int | None]:
    """``cache.get_many(keys)`` and, when ``counter`` = (key, timeout) is given, its
    :func:`window_count` as well: in one pipeline (one round trip) on Redis."""
    backend = caches["default"]
    if counter is None:
        return backend.get_many(keys), None
    if not isinstance(backend, RedisCache):
        return backend.get_many(keys), window_count(*counter)
    full_counter = backend.make_and_validate_key(counter[0])
    full_keys = {backend.make_and_validate_key(key): key for key in keys}
    client = backend._cache
    pipe = client.get_client(full_counter, write=True).pipeline(transaction=False)
    pipe.mget(list(full_keys))
    pipe.set(full_counter, 0, ex=counter[1], nx=True)
    pipe.incr(full_counter)
    values, _created, count = pipe.execute()
    found = {
        key: client._serializer.loads(value)
        for key, value in zip(full_keys.values(), values, strict=True)
        if value is not None
    }
    return found, int(count)


def _window(rates: dict, scope: str) -> tuple[int, int, int, float]:
    """(limit, period, window number, seconds left in it) of ``scope`` now."""
    limit, period = parse_rate(rates.get(scope) or settings.RATE_LIMITS[scope])
    now = time.time()
    window = int(now // period)
    return limit, period, window, (window + 1) * period - now


def _counter_key(scope: str, ident: str, period: int, window: int) -> str:
    return f"rl:{scope}:{ident}:{period}:{window}"


def _throttled(view) -> bool:
    return settings.RATE_LIMIT_ENABLED and any(
        issubclass(cls, CallerRateThrottle) for cls in getattr(view, "throttle_classes", ())
    )


def key_counter(request, public_id: str) -> tuple[str, int] | None:
    """The (counter key, timeout) this request of the API key ``public_id`` will be counted under,
    for authentication to count it with the key's lookup; None when its view is not rate limited."""
    view = (getattr(request, "parser_context", None) or {}).get("view")
    return None if view is None else key_counter_for(view, public_id)


def key_counter_for(view, public_id: str) -> tuple[str, int] | None:
    """:func:`key_counter` for a view (class or instance) rather than a request."""
    if not _throttled(view):
        return None
    rates = getattr(view, "throttle_scope_rates", None) or settings.RATE_LIMITS
    _limit, period, window, _left = _window(rates, "key")
    return _counter_key("key", public_id, period, window), period + 1


def remember_count(request, counter: tuple[str, int], count: int) -> None:
    """Hand the count :func:`get_many_and_count` made to this request's throttle."""
    request._rate_counted = (counter[0], count)


def already_counted(request, counter: tuple[str, int]) -> bool:
    """Whether this request was counted under ``counter`` already (its throttle will use that)."""
    counted = getattr(request, "_rate_counted", None)
    return counted is not None and counted[0] == counter[0]


def key_limit_allows(view, count: int) -> bool:
    """Whether ``count`` requests of an API key are within the key limit of ``view``'s window."""
    if not _throttled(view):
        return True
    rates = getattr(view, "throttle_scope_rates", None) or settings.RATE_LIMITS
    limit, _period, _window_number, _left = _window(rates, "key")
    return count <= limit


def caller_identity(request, ident: str) -> tuple[str, str]:
    """(scope, id) of who is calling: the API key (its public id), else the user, else the IP."""
    key = getattr(request, "auth", None)
    if key is not None and getattr(key, "pk", None) is not None:
        return "key", str(getattr(key, "public_id", None) or key.pk)
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
        limit, period, window, self._wait = _window(rates, scope)
        key = _counter_key(scope, ident, period, window)
        counted = getattr(request, "_rate_counted", None)
        if counted is not None and counted[0] == key:  # counted with the API key's lookup
            request._rate_counted = None
            count = counted[1]
        else:
            count = window_count(key, period + 1)
        return count <= limit

    def wait(self) -> float:
        return getattr(self, "_wait", 1.0)
