"""Rate limits per API key, user or IP: the call over the limit answers 429 with Retry-After, and
the count starts again in the next window.

The clock of ``core.throttling`` is frozen at the start of a random window: counters live in the
cache, which outlives a test (and, with Redis, a test run), so each test counts in its own windows.
"""

from __future__ import annotations

import random
from types import SimpleNamespace

import pytest
from django.urls import path
from rest_framework.permissions import AllowAny
from rest_framework.response import Response
from rest_framework.views import APIView

from core import throttling
from core.throttling import caller_identity, parse_rate
from tests.core.test_errors import assert_envelope
from tests.core.urls import handler400, handler403, handler404, handler500  # noqa: F401 - this URL conf's
from tests.core.urls import urlpatterns as core_test_urlpatterns

JOBS = "/api/v1/_test/jobs"
OPEN = "/api/v1/_test/open"
SECONDS_INTO_WINDOW = 5


class OpenView(APIView):
    """Anonymous callers meet the throttle only on views that let them past the permission check
    (DRF checks permissions first); no real endpoint of that kind exists yet."""

    permission_classes = [AllowAny]

    def get(self, request):
        return Response({"ok": True})


urlpatterns = [path(OPEN.lstrip("/"), OpenView.as_view()), *core_test_urlpatterns]


class FrozenClock:
    def __init__(self, now: float) -> None:
        self.now = now

    def time(self) -> float:
        return self.now


@pytest.fixture(autouse=True)
def _urls(_test_urls, settings):
    settings.ROOT_URLCONF = __name__


@pytest.fixture(autouse=True)
def clock(monkeypatch) -> FrozenClock:
    # Whole days since the epoch, so the moment is a window start for every period.
    frozen = FrozenClock(random.randrange(10**6, 10**7) * 86400 + SECONDS_INTO_WINDOW)
    monkeypatch.setattr(throttling, "time", frozen)
    return frozen


@pytest.fixture
def small_limits(settings):
    settings.RATE_LIMITS = {"key": "3/minute", "user": "3/minute", "anon": "3/minute"}
    settings.RATE_LIMIT_ENABLED = True


def random_ip() -> str:
    return "10.{}.{}.{}".format(*(random.randrange(1, 255) for _ in range(3)))


def assert_throttled(response) -> None:
    error = assert_envelope(response, 429, "ERR_RATE_LIMITED")
    retry_after = int(response["Retry-After"])
    assert 1 <= retry_after <= 60
    assert retry_after == 60 - SECONDS_INTO_WINDOW
    assert error["details"]["retry_after"] == retry_after


def test_user_over_the_limit_is_429_with_retry_after(small_limits, owner_client):
    for _ in range(3):
        assert owner_client.get(JOBS).status_code == 200
    assert_throttled(owner_client.get(JOBS))


def test_another_user_is_not_affected(small_limits, owner_client, member_client):
    for _ in range(4):
        owner_client.get(JOBS)
    assert owner_client.get(JOBS).status_code == 429
    assert member_client.get(JOBS).status_code == 200


def test_counter_starts_again_in_the_next_window(small_limits, owner_client, clock):
    for _ in range(3):
        assert owner_client.get(JOBS).status_code == 200
    assert owner_client.get(JOBS).status_code == 429
    clock.now += 60 - SECONDS_INTO_WINDOW - 0.5  # still the same window
    assert owner_client.get(JOBS).status_code == 429
    clock.now += 1  # the next one
    for _ in range(3):
        assert owner_client.get(JOBS).status_code == 200
    assert owner_client.get(JOBS).status_code == 429


def test_anonymous_callers_are_limited_per_ip(small_limits, anon_client, db):
    ip, other_ip = random_ip(), random_ip()
    for _ in range(3):
        assert anon_client.get(OPEN, REMOTE_ADDR=ip).status_code == 200
    assert_throttled(anon_client.get(OPEN, REMOTE_ADDR=ip))
    assert anon_client.get(OPEN, REMOTE_ADDR=other_ip).status_code == 200


def test_a_forged_x_forwarded_for_does_not_escape_the_ip_limit(small_limits, anon_client, db):
    ip = random_ip()
    for _ in range(3):
        assert anon_client.get(OPEN, REMOTE_ADDR=ip, HTTP_X_FORWARDED_FOR=random_ip()).status_code == 200
    assert_throttled(anon_client.get(OPEN, REMOTE_ADDR=ip, HTTP_X_FORWARDED_FOR=random_ip()))


def test_behind_trusted_proxies_the_forwarded_client_is_limited(small_limits, settings, anon_client, db):
    settings.REST_FRAMEWORK = {**settings.REST_FRAMEWORK, "NUM_PROXIES": 1}
    proxy, client_a, client_b = random_ip(), random_ip(), random_ip()
    for _ in range(3):
        assert anon_client.get(OPEN, REMOTE_ADDR=proxy, HTTP_X_FORWARDED_FOR=client_a).status_code == 200
    assert_throttled(anon_client.get(OPEN, REMOTE_ADDR=proxy, HTTP_X_FORWARDED_FOR=client_a))
    assert anon_client.get(OPEN, REMOTE_ADDR=proxy, HTTP_X_FORWARDED_FOR=client_b).status_code == 200


def test_view_may_tighten_its_own_limit(small_limits, owner_client, monkeypatch):
    monkeypatch.setattr(OpenView, "throttle_scope_rates", {"user": "1/minute"}, raising=False)
    assert owner_client.get(OPEN).status_code == 200
    assert owner_client.get(OPEN).status_code == 429
    # Scopes the view does not name fall back to the platform limits.
    ip = random_ip()
    APIClient = type(owner_client)
    for _ in range(3):
        assert APIClient().get(OPEN, REMOTE_ADDR=ip).status_code == 200
    assert APIClient().get(OPEN, REMOTE_ADDR=ip).status_code == 429


@pytest.fixture
def key_client(org, owner):
    from rest_framework.test import APIClient

    from accounts.services.keys import api_key_create

    _key, raw = api_key_create(org=org, actor=owner, name="throttled")
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")
    return client


def _redis_only():
    from django.core.cache import caches
    from django.core.cache.backends.redis import RedisCache

    if not isinstance(caches["default"], RedisCache):
        pytest.skip("needs the Redis cache")


def test_an_api_key_is_counted_in_the_round_trip_of_its_lookup(small_limits, key_client, monkeypatch):
    _redis_only()

    def no_second_trip(*args, **kwargs):
        raise AssertionError("the throttle made a round trip of its own")

    monkeypatch.setattr(throttling, "window_count", no_second_trip)
    for _ in range(3):
        assert key_client.get(JOBS).status_code == 200
    assert_throttled(key_client.get(JOBS))


def test_an_api_key_is_limited_on_other_caches_too(small_limits, key_client, settings):
    settings.CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
    from django.core.cache import caches

    try:
        for _ in range(3):
            assert key_client.get(JOBS).status_code == 200
        assert_throttled(key_client.get(JOBS))
    finally:
        caches["default"].clear()


def test_a_view_limit_with_its_own_period_applies_to_api_keys(small_limits, key_client, monkeypatch):
    monkeypatch.setattr(OpenView, "throttle_scope_rates", {"key": "2/hour"}, raising=False)
    assert [key_client.get(OPEN).status_code for _ in range(3)] == [200, 200, 429]
    assert key_client.get(JOBS).status_code == 200  # the platform limit counts apart


def test_disabled_rate_limit_lets_everything_through(small_limits, settings, owner_client):
    settings.RATE_LIMIT_ENABLED = False
    for _ in range(10):
        assert owner_client.get(JOBS).status_code == 200


def test_health_is_never_throttled(settings, anon_client, db):
    settings.RATE_LIMITS = {"key": "1/minute", "user": "1/minute", "anon": "1/minute"}
    ip = random_ip()
    for _ in range(5):
        response = anon_client.get("/health", REMOTE_ADDR=ip)
        assert response.status_code != 429
        assert "Retry-After" not in response


@pytest.mark.parametrize(
    ("rate", "parsed"),
    [
        ("10/s", (10, 1)),
        ("5/minute", (5, 60)),
        ("100/hour", (100, 3600)),
        ("1/day", (1, 86400)),
        ("7/m", (7, 60)),
    ],
)
def test_parse_rate_reads_count_and_period(rate, parsed):
    assert parse_rate(rate) == parsed


@pytest.mark.parametrize("rate", ["abc", "10/fortnight", "ten/minute", "10", ""])
def test_parse_rate_rejects_nonsense(rate):
    with pytest.raises(ValueError, match="bad rate"):
        parse_rate(rate)


def test_api_key_outranks_the_user_and_the_ip():
    user = SimpleNamespace(pk=7, is_authenticated=True)
    with_key = SimpleNamespace(auth=SimpleNamespace(pk=42), user=user)
    assert caller_identity(with_key, "10.0.0.1") == ("key", "42")
    assert caller_identity(SimpleNamespace(auth=None, user=user), "10.0.0.1") == ("user", "7")
    anonymous = SimpleNamespace(auth=None, user=SimpleNamespace(pk=None, is_authenticated=False))
    assert caller_identity(anonymous, "10.0.0.1") == ("anon", "10.0.0.1")


def test_the_window_counter_is_one_round_trip_on_redis_and_expires(settings):
    from django.core.cache import caches
    from django.core.cache.backends.redis import RedisCache

    backend = caches["default"]
    if not isinstance(backend, RedisCache):
        pytest.skip("needs the Redis cache")
    key = f"rl:test:{random.getrandbits(64)}"
    client = backend._cache.get_client(backend.make_and_validate_key(key), write=True)
    sent = []
    original = client.connection_pool.get_connection

    def counting(*args, **kwargs):
        sent.append(args)
        return original(*args, **kwargs)

    client.connection_pool.get_connection = counting
    try:
        assert [throttling.window_count(key, 7) for _ in range(3)] == [1, 2, 3]
    finally:
        del client.connection_pool.get_connection
    assert len(sent) == 3  # one connection checkout, one pipeline, per request
    assert 0 < client.ttl(backend.make_and_validate_key(key)) <= 7  # created with its expiry, kept
    assert backend.get(key) == 3  # readable through Django's cache API


def test_the_window_counter_works_on_other_caches(settings):
    settings.CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
    from django.core.cache import caches

    key = f"rl:test:{random.getrandbits(64)}"
    try:
        assert [throttling.window_count(key, 7) for _ in range(3)] == [1, 2, 3]
    finally:
        caches["default"].clear()
