"""API-key authentication on the event loop (``accounts.loop_auth``): it answers a key only when the
cache settles everything the thread would check, counts the request once, and leaves every doubt to
the view's thread (which then does not count the request again)."""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta

import pytest
from django.core.cache import cache, caches
from django.test import RequestFactory
from django.utils import timezone
from rest_framework.exceptions import AuthenticationFailed
from rest_framework.request import Request

from accounts import auth_cache, authentication, loop_auth
from accounts.models import ApiKey, Role
from accounts.selectors import api_key_for_auth
from accounts.services.keys import api_key_create
from chat.api.openai_views import ChatCompletionsView
from core import aredis, throttling

pytestmark = pytest.mark.django_db

VIEW = ChatCompletionsView


@pytest.fixture(autouse=True)
def limits(settings):
    settings.RATE_LIMIT_ENABLED = True
    settings.RATE_LIMITS = {"key": "3/minute", "user": "3/minute", "anon": "3/minute"}


def _request(raw: str, **headers):
    return RequestFactory().post(
        "/v1/chat/completions", data="{}", content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {raw}", **headers,
    )  # fmt: skip


def _settle(request):
    async def run():
        try:
            return await loop_auth.aauthenticate(request, VIEW)
        finally:
            if isinstance(caches["default"], throttling.RedisCache):
                await aredis.client().aclose()

    return asyncio.run(run())


def _count(key: ApiKey, request) -> int | None:
    counted = getattr(request, "_rate_counted", None)
    return None if counted is None else counted[1]


@pytest.fixture
def issued(org, member):
    key, raw = api_key_create(org=org, actor=member, name="loop")
    return key, raw


def _warm(key: ApiKey, raw: str) -> None:
    """The thread's first authentication: reads the database, caches the lookup, stamps last use."""
    authentication.authenticate_key(raw)
    assert api_key_for_auth(public_id=key.public_id) is not None


def test_a_cached_key_is_settled_on_the_loop_and_the_request_counted_once(issued, org):
    key, raw = issued
    _warm(key, raw)

    first, second = _request(raw), _request(raw)
    settled_first, settled_second = _settle(first), _settle(second)

    assert settled_first.pk == key.pk and settled_second.pk == key.pk
    assert settled_first.org == org and settled_first.member_role == Role.MEMBER
    assert (_count(key, first), _count(key, second)) == (1, 2)


@pytest.mark.django_db(transaction=True)
def test_a_burst_that_misses_the_cache_reads_the_key_once_and_is_settled_on_the_loop(
    issued, org, monkeypatch
):
    key, raw = issued
    auth_cache.invalidate()  # nothing cached for this generation (an edit elsewhere, an expiry)
    reads = []

    def counted(**kwargs):
        reads.append(kwargs["public_id"])
        return api_key_for_auth(**kwargs)

    monkeypatch.setattr(loop_auth, "api_key_for_auth", counted)
    requests = [_request(raw) for _ in range(3)]

    async def burst():
        try:
            return await asyncio.gather(*(loop_auth.aauthenticate(r, VIEW) for r in requests))
        finally:
            if isinstance(caches["default"], throttling.RedisCache):
                await aredis.client().aclose()

    settled = asyncio.run(burst())

    assert reads == [key.public_id]  # one database read for the three requests
    assert [k.pk for k in settled] == [key.pk] * 3 and settled[0].org == org
    assert len({id(k) for k in settled}) == 3  # each request its own rows
    assert sorted(_count(key, r) for r in requests) == [1, 2, 3]  # each counted once
    assert auth_cache.cached_lookup(key.public_id)[0].pk == key.pk  # and cached again


@pytest.mark.django_db(transaction=True)
def test_a_key_the_database_does_not_know_is_left_to_the_thread_which_does_not_count_it_again(issued):
    key, raw = issued
    ApiKey.objects.filter(pk=key.pk).delete()
    auth_cache.invalidate()
    request = _request(raw)

    assert _settle(request) is None
    assert _count(key, request) == 1

    drf_request = Request(request)
    drf_request.parser_context = {"view": VIEW()}
    with pytest.raises(AuthenticationFailed):
        authentication.authenticate_key(raw, request=drf_request)
    assert _count(key, request) == 1  # the thread took the count made on the loop


def _settle_after_warm(raw: str):
    request = _request(raw)
    _settle(request)
    return request


@pytest.mark.parametrize(
    "spoil",
    ["wrong_secret", "revoked", "expired", "other_org", "over_limit", "malformed", "no_bearer"],
)
def test_every_doubt_is_left_to_the_thread(issued, spoil, settings):
    key, raw = issued
    _warm(key, raw)
    headers = {}
    if spoil == "wrong_secret":
        raw = raw[:-4] + ("aaaa" if not raw.endswith("aaaa") else "bbbb")
    elif spoil == "revoked":
        ApiKey.objects.filter(pk=key.pk).update(revoked_at=timezone.now(), is_active=False)
        auth_cache.invalidate()
        _warm_anyway(key)
    elif spoil == "expired":
        ApiKey.objects.filter(pk=key.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
        auth_cache.invalidate()
        _warm_anyway(key)
    elif spoil == "other_org":
        headers["HTTP_X_ORG_ID"] = "00000000-0000-0000-0000-000000000000"
    elif spoil == "over_limit":
        settings.RATE_LIMITS = {"key": "0/minute", "user": "3/minute", "anon": "3/minute"}
    request = _request(raw, **headers)
    if spoil == "malformed":
        request = _request("not-a-key")
    elif spoil == "no_bearer":
        request = RequestFactory().post("/v1/chat/completions", data="{}", content_type="application/json")

    assert _settle(request) is None


def _warm_anyway(key: ApiKey) -> None:
    """Cache the (spoiled) row, as the thread's next lookup would."""
    assert api_key_for_auth(public_id=key.public_id) is not None


def test_another_cache_backend_is_never_called_from_the_loop(issued, settings):
    key, raw = issued
    settings.CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.db.DatabaseCache",
            "LOCATION": "unused_cache_table",
        }
    }
    assert _settle(_request(raw)) is None


@pytest.mark.django_db(transaction=True)
def test_a_due_stamp_of_last_use_is_written_off_the_loop_once_and_the_key_still_settled(issued):
    key, raw = issued
    _warm(key, raw)
    ApiKey.objects.filter(pk=key.pk).update(last_used_at=None)
    cache.delete(f"auth:last-used:{key.pk}")
    authentication._last_used_asked.pop(key.pk, None)  # a minute has passed

    settled = [_settle(_request(raw)) for _ in range(3)]

    assert all(found is not None and found.pk == key.pk for found in settled)
    stamped = None
    for _ in range(100):  # written on a pool thread the loop did not wait for
        stamped = ApiKey.objects.get(pk=key.pk).last_used_at
        if stamped is not None:
            break
        time.sleep(0.05)
    assert stamped is not None


def test_the_keys_other_apps_ride_along_are_read_in_the_same_round_trip(issued):
    from agents import lookup_cache

    key, raw = issued
    _warm(key, raw)
    lookup_cache.invalidate()  # the agents' generation now exists in the cache
    request = _request(raw)
    assert _settle(request).pk == key.pk
    assert lookup_cache.GENERATION_KEY in aredis.riders()  # AgentsConfig.ready registered it
    assert request.cache_reads[lookup_cache.GENERATION_KEY] == cache.get(lookup_cache.GENERATION_KEY)
    assert request.cache_reads[auth_cache.GENERATION_KEY] == cache.get(auth_cache.GENERATION_KEY)
