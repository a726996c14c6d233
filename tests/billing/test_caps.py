"""Spend caps: the policy API, and enforcement at the choke point by reserve then settle."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest
from django.utils import timezone

from agents.llm import chat
from agents.models import Agent
from billing.models import (
    PriceOverride,
    UsageCapCounter,
    UsageCapEvent,
    UsageCapPolicy,
    UsageRecord,
    UsageReservation,
)
from billing.services.caps import budgets_reconcile, reservation_settle, usage_reserve, usage_settle
from billing.services.usage import window_bounds
from core.errors import ApplicationError
from tests.billing.conftest import make_provider
from tests.core.test_errors import assert_envelope

HELLO = [{"role": "user", "content": "hello there"}]  # estimated prompt: 7 tokens; the fake reports 10 + 3


def policy(org, **fields) -> UsageCapPolicy:
    fields.setdefault("window", "day")
    return UsageCapPolicy.objects.create(org=org, **fields)


def counter(p: UsageCapPolicy) -> UsageCapCounter:
    return UsageCapCounter.objects.get(policy=p)


def call(org, **fields) -> dict:
    base = {
        "org_id": str(org.pk),
        "user_id": None,
        "agent_id": None,
        "model": "gpt-4o-mini",
        "provider_id": None,
        "provider_type": "openai",
        "provider_source": "org",
        "purpose": "chat",
        "channel": "api",
        "api_key_id": None,
        "request_id": None,
        "stream": False,
        "estimated_prompt_tokens": 100,
        "max_tokens": 100,
        "estimated_tokens": 200,
    }
    return {**base, **fields}


# --- the policy API ----------------------------------------------------------------------------------


def test_admin_creates_lists_changes_and_deletes_a_policy(admin_client, org):
    created = admin_client.post(
        "/api/v1/usage-caps/policies",
        {"name": "daily", "window": "day", "max_tokens": 1000, "max_cost_usd": "2.5"},
        format="json",
    )
    assert created.status_code == 201, created.content
    body = created.json()
    assert body["scope"] == "org" and body["max_cost_usd"] == 2.5 and body["enabled"] is True
    assert body["managed"] is False and body["priority"] == 100
    assert admin_client.get("/api/v1/usage-caps/policies").json()["total"] == 1
    changed = admin_client.patch(
        f"/api/v1/usage-caps/policies/{body['id']}", {"max_tokens": 5}, format="json"
    )
    assert changed.status_code == 200 and changed.json()["max_tokens"] == 5
    assert admin_client.get(f"/api/v1/usage-caps/policies/{body['id']}").json()["max_tokens"] == 5
    assert admin_client.delete(f"/api/v1/usage-caps/policies/{body['id']}").status_code == 204
    assert not UsageCapPolicy.objects.filter(org=org).exists()


@pytest.mark.parametrize(
    "body",
    [
        {"window": "day"},  # no limit at all
        {"window": "year", "max_tokens": 1},
        {"window": "day", "max_tokens": -1},
        {"window": "day", "max_tokens": 1, "scope": "agent"},  # no scope_value
        {"window": "day", "max_tokens": 1, "scope": "agent", "scope_value": "not-an-id"},
        {"window": "day", "max_tokens": 1, "scope": "galaxy", "scope_value": "x"},
        {"window": "day", "max_cost_usd": "abc"},
    ],
)
def test_invalid_policies_answer_400_and_write_nothing(admin_client, org, body):
    assert_envelope(admin_client.post("/api/v1/usage-caps/policies", body, format="json"), 400)
    assert not UsageCapPolicy.objects.filter(org=org).exists()


def test_patch_that_removes_every_limit_is_refused(admin_client, org):
    p = policy(org, max_tokens=10)
    response = admin_client.patch(f"/api/v1/usage-caps/policies/{p.pk}", {"max_tokens": None}, format="json")
    assert_envelope(response, 400)
    p.refresh_from_db()
    assert p.max_tokens == 10


def test_managed_policies_answer_409(admin_client, org):
    p = policy(org, max_tokens=10, managed=True, managed_key="plan_monthly_tokens")
    assert_envelope(
        admin_client.patch(f"/api/v1/usage-caps/policies/{p.pk}", {"max_tokens": 99}, format="json"),
        409,
        "ERR_POLICY_MANAGED",
    )
    assert_envelope(admin_client.delete(f"/api/v1/usage-caps/policies/{p.pk}"), 409, "ERR_POLICY_MANAGED")
    assert UsageCapPolicy.objects.get(pk=p.pk).max_tokens == 10


def test_policies_need_admin_and_hide_other_orgs(member_client, outsider_client, owner_client, org):
    p = policy(org, max_tokens=10)
    assert_envelope(member_client.get("/api/v1/usage-caps/policies"), 403)
    assert_envelope(
        member_client.post("/api/v1/usage-caps/policies", {"window": "day", "max_tokens": 1}, format="json"),
        403,
    )
    for method in ("get", "patch", "delete"):
        assert_envelope(
            getattr(outsider_client, method)(f"/api/v1/usage-caps/policies/{p.pk}", {}, format="json"), 404
        )
    assert outsider_client.get("/api/v1/usage-caps/policies").json()["total"] == 0
    assert owner_client.get("/api/v1/usage-caps/policies").json()["total"] == 1
    assert_envelope(owner_client.get(f"/api/v1/usage-caps/policies/{uuid.uuid4()}"), 404)


# --- windows -------------------------------------------------------------------------------------------


def test_windows_are_utc_aligned():
    moment = datetime(2026, 11, 25, 13, 42, 7, tzinfo=UTC)  # a Wednesday
    assert window_bounds("hour", moment) == (
        datetime(2026, 11, 25, 13, tzinfo=UTC),
        datetime(2026, 11, 25, 14, tzinfo=UTC),
    )
    assert window_bounds("day", moment)[0] == datetime(2026, 11, 25, tzinfo=UTC)
    assert window_bounds("week", moment) == (
        datetime(2026, 11, 23, tzinfo=UTC),
        datetime(2026, 11, 30, tzinfo=UTC),
    )
    assert window_bounds("month", datetime(2026, 12, 31, 23, tzinfo=UTC)) == (
        datetime(2026, 12, 1, tzinfo=UTC),
        datetime(2027, 1, 1, tzinfo=UTC),
    )


# --- reserve and settle ----------------------------------------------------------------------------------


def test_an_org_without_policies_does_no_work(org, django_assert_num_queries):
    usage_reserve(call(org))  # loads and caches the state
    with django_assert_num_queries(0):
        assert usage_reserve(call(org)) is None


def test_a_call_reserves_the_worst_case_and_settles_to_actual(org, up):
    make_provider(org, up)
    p = policy(org, max_tokens=1000)
    chat(org=org, messages=HELLO, model="fake-model-1", max_tokens=50)
    c = counter(p)
    assert (c.used_tokens, c.reserved_tokens) == (13, 0)
    reservation = UsageReservation.objects.get(org=org)
    assert reservation.status == "settled" and reservation.tokens == 7 + 50
    assert UsageCapEvent.objects.filter(org=org, decision="allow", policy=p).count() == 1


def test_without_max_tokens_the_default_worst_case_is_reserved(org, settings):
    settings.USAGE_CAP_DEFAULT_MAX_OUTPUT_TOKENS = 321
    policy(org, max_tokens=10_000)
    reservation = usage_reserve(call(org, max_tokens=None, estimated_prompt_tokens=9))
    assert UsageReservation.objects.get(pk=reservation["id"]).tokens == 330


def test_a_call_over_the_cap_is_refused_before_the_upstream_and_names_the_policy(org, up):
    make_provider(org, up)
    p = policy(org, name="tiny", window="hour", max_tokens=20)
    before = up.stats["requests"]
    with pytest.raises(ApplicationError) as caught:
        chat(org=org, messages=HELLO, model="fake-model-1", max_tokens=50)
    error = caught.value
    assert (error.status_code, error.code) == (429, "ERR_USAGE_CAP_EXCEEDED")
    assert error.details["policy_id"] == str(p.pk) and error.details["window"] == "hour"
    assert error.details["resets_at"] == window_bounds("hour", timezone.now())[1].isoformat()
    assert "tiny" in error.message and int(error.headers["Retry-After"]) > 0
    assert up.stats["requests"] == before
    assert UsageCapEvent.objects.get(org=org, decision="block").policy == p
    assert not UsageCapCounter.objects.filter(policy=p, reserved_tokens__gt=0).exists()
    assert UsageRecord.objects.get(org=org).error_code == "ERR_USAGE_CAP_EXCEEDED"


def test_the_http_answer_of_a_blocked_call_is_429_with_the_envelope(member_client, org, up):
    provider = make_provider(org, up)
    agent = Agent.objects.create(
        org=org, key="capped", name="Capped", provider=provider, model="fake-model-1"
    )
    policy(org, max_tokens=1)
    response = member_client.post(f"/api/v1/agents/{agent.pk}/wake", {"message": "hi"}, format="json")
    error = assert_envelope(response, 429, "ERR_USAGE_CAP_EXCEEDED")
    assert error["details"]["policy_id"] and error["details"]["resets_at"]


def test_every_matching_policy_must_pass(org):
    roomy = policy(org, name="org", max_tokens=10_000, priority=1)
    strict = policy(org, name="model", scope="model", scope_value="gpt-4o-mini", max_tokens=150, priority=5)
    with pytest.raises(ApplicationError) as caught:
        usage_reserve(call(org))
    assert caught.value.details["policy_id"] == str(strict.pk)
    assert not UsageCapCounter.objects.filter(policy=roomy, reserved_tokens__gt=0).exists()  # rolled back
    # another model is not under the strict cap
    assert usage_reserve(call(org, model="gpt-4o")) is not None


@pytest.mark.parametrize(
    ("scope", "field"),
    [("agent", "agent_id"), ("user", "user_id"), ("api_key", "api_key_id"), ("provider", "provider_id")],
)
def test_scoped_policies_only_see_their_calls(org, scope, field):
    target = str(uuid.uuid4())
    p = policy(org, scope=scope, scope_value=target, max_tokens=150)
    assert usage_reserve(call(org, **{field: str(uuid.uuid4())})) is None
    with pytest.raises(ApplicationError):
        usage_reserve(call(org, **{field: target}))
    assert UsageCapEvent.objects.get(decision="block").policy == p


def test_provider_scope_accepts_a_provider_type(org):
    policy(org, scope="provider", scope_value="anthropic", max_tokens=150)
    assert usage_reserve(call(org, provider_type="openai")) is None
    with pytest.raises(ApplicationError):
        usage_reserve(call(org, provider_type="anthropic"))


def test_a_cost_cap_on_an_unpriced_model_blocks_instead_of_guessing(org):
    policy(org, max_cost_micros=1_000_000)
    with pytest.raises(ApplicationError) as caught:
        usage_reserve(call(org, model="mystery-model"))
    assert (caught.value.status_code, caught.value.code) == (422, "ERR_PRICING_UNKNOWN")
    assert UsageCapEvent.objects.get(decision="block").reason == "pricing_unknown"
    # a token-only cap does not need a price
    UsageCapPolicy.objects.all().delete()
    from billing.selectors.state import invalidate_org_state

    invalidate_org_state(org.pk)
    policy(org, max_tokens=1000)
    assert usage_reserve(call(org, model="mystery-model")) is not None


def test_a_cost_cap_counts_priced_cost(org):
    PriceOverride.objects.create(
        org=org, model="house-model", input_per_million=1000, output_per_million=1000
    )
    p = policy(org, max_cost_micros=250_000)  # 0.25 USD: one worst case (200 tokens × 1000 µ$) fits
    reservation = usage_reserve(call(org, model="house-model"))
    assert counter(p).reserved_cost_micros == 200_000
    with pytest.raises(ApplicationError):
        usage_reserve(call(org, model="house-model"))
    usage_settle(call(org), {"prompt_tokens": 10, "completion_tokens": 5, "estimated": False}, reservation)
    c = counter(p)
    assert (c.used_cost_micros, c.reserved_cost_micros) == (15_000, 0)


def test_a_failed_call_settles_to_zero(org, up):
    make_provider(org, up, mode="fail-400")
    p = policy(org, max_tokens=1000)
    with pytest.raises(ApplicationError):
        chat(org=org, messages=HELLO, model="fake-model-1", max_tokens=50)
    c = counter(p)
    assert (c.used_tokens, c.reserved_tokens) == (0, 0)


def test_settling_twice_books_once(org):
    p = policy(org, max_tokens=1000)
    reservation = usage_reserve(call(org))
    usage = {"prompt_tokens": 10, "completion_tokens": 5, "estimated": False}
    usage_settle(call(org), usage, reservation)
    usage_settle(call(org), usage, reservation)
    assert counter(p).used_tokens == 15


def test_a_crashed_workers_reservation_expires_and_a_late_settle_still_books_once(org):
    p = policy(org, max_tokens=250)
    reservation = usage_reserve(call(org))
    with pytest.raises(ApplicationError):
        usage_reserve(call(org))  # the first hold leaves no room
    report = budgets_reconcile(now=timezone.now() + timedelta(hours=1, seconds=1))
    assert report["expired_reservations"] == 1
    assert counter(p).reserved_tokens == 0
    assert reservation_settle(reservation_id=reservation["id"], tokens=30, cost_micros=0) is True
    assert reservation_settle(reservation_id=reservation["id"], tokens=30, cost_micros=0) is False
    c = counter(p)
    assert (c.used_tokens, c.reserved_tokens) == (30, 0)


def test_reconcile_repairs_drift_from_the_records(org, up):
    make_provider(org, up)
    p = policy(org, max_tokens=10_000)
    chat(org=org, messages=HELLO, model="fake-model-1")
    UsageCapCounter.objects.filter(policy=p).update(used_tokens=999, reserved_tokens=7)
    report = budgets_reconcile(settle_grace_seconds=-5)
    assert report["counters_repaired"][0]["drift"]["used_tokens"] == 13 - 999
    c = counter(p)
    assert (c.used_tokens, c.reserved_tokens) == (13, 0)
    assert budgets_reconcile(settle_grace_seconds=-5)["counters_repaired"] == []


def test_a_new_policy_applies_to_the_next_call(admin_client, org):
    assert usage_reserve(call(org)) is None  # cached: nothing to enforce
    admin_client.post("/api/v1/usage-caps/policies", {"window": "day", "max_tokens": 10}, format="json")
    with pytest.raises(ApplicationError):
        usage_reserve(call(org))


# --- utilisation and events ---------------------------------------------------------------------


def test_utilization_and_events(admin_client, member_client, outsider_client, org):
    p = policy(org, name="daily", max_tokens=1000)
    reservation = usage_reserve(call(org))
    usage_settle(call(org), {"prompt_tokens": 100, "completion_tokens": 150, "estimated": False}, reservation)
    policy(org, name="strict", max_tokens=10, scope="model", scope_value="gpt-4o-mini")
    from billing.selectors.state import invalidate_org_state

    invalidate_org_state(org.pk)
    with pytest.raises(ApplicationError):
        usage_reserve(call(org))

    items = admin_client.get("/api/v1/usage-caps/utilization").json()["items"]
    daily = next(item for item in items if item["policy"]["id"] == str(p.pk))
    assert daily["used_tokens"] == 250 and daily["utilization"] == 0.25 and daily["resets_at"]
    events = admin_client.get("/api/v1/usage-caps/events").json()
    assert events["total"] == 2
    blocks = admin_client.get("/api/v1/usage-caps/events", {"decision": "block"}).json()["items"]
    assert [e["policy_name"] for e in blocks] == ["strict"]
    assert admin_client.get("/api/v1/usage-caps/events", {"policy": str(p.pk)}).json()["total"] == 1
    assert_envelope(admin_client.get("/api/v1/usage-caps/events", {"decision": "maybe"}), 400)
    assert_envelope(admin_client.get("/api/v1/usage-caps/events", {"policy": "nope"}), 400)
    assert_envelope(member_client.get("/api/v1/usage-caps/utilization"), 403)
    assert_envelope(member_client.get("/api/v1/usage-caps/events"), 403)
    assert outsider_client.get("/api/v1/usage-caps/events").json()["total"] == 0
    assert outsider_client.get("/api/v1/usage-caps/utilization").json()["items"] == []


def test_reconcile_prunes_old_counters_and_settled_reservations(org):
    p = policy(org, max_tokens=10_000)
    reservation = usage_reserve(call(org))
    usage_settle(call(org), {"prompt_tokens": 1, "completion_tokens": 1}, reservation)
    later = timezone.now() + timedelta(days=70)
    report = budgets_reconcile(now=later)
    assert report["pruned"] == {"counters": 1, "reservations": 1}
    assert not UsageCapCounter.objects.filter(policy=p).exists()


# --- the hot path ---------------------------------------------------------------------------------


def test_on_postgresql_a_reserve_and_settle_take_one_statement_each(org, django_assert_num_queries):
    from django.db import connection

    if connection.vendor != "postgresql":
        pytest.skip("the one-statement hot path is PostgreSQL's; SQLite takes the general path")
    p = policy(org, max_tokens=1000)
    usage_settle(call(org), None, usage_reserve(call(org)))  # creates the window's counter
    with django_assert_num_queries(1):
        reservation = usage_reserve(call(org))
    usage = {"prompt_tokens": 30, "completion_tokens": 20, "estimated": False}
    with django_assert_num_queries(1):
        usage_settle(call(org), usage, reservation)
    row = counter(p)
    assert (row.used_tokens, row.reserved_tokens) == (50, 0)
    assert UsageReservation.objects.get(pk=reservation["id"]).status == UsageReservation.Status.SETTLED
    assert UsageCapEvent.objects.filter(org=org, decision="allow").count() == 2
    # A call that does not fit holds nothing and is refused with the policy named.
    with pytest.raises(ApplicationError) as refused:
        usage_reserve(call(org, max_tokens=5000))
    assert refused.value.code == "ERR_USAGE_CAP_EXCEEDED"
    assert counter(p).reserved_tokens == 0
    # Settling again books nothing.
    usage_settle(call(org), usage, reservation)
    assert counter(p).used_tokens == 50


def test_the_guard_is_skipped_without_a_trip_when_the_state_in_memory_says_nothing_to_enforce(org):
    from agents.registries import llm_guards_for
    from billing.services.caps import usage_guard_applies

    assert usage_guard_applies(call(org)) is None  # nothing in memory yet: run the guard
    assert usage_reserve(call(org)) is None  # loads the state
    assert usage_guard_applies(call(org)) is False
    assert usage_reserve not in [before for before, _ in llm_guards_for(call(org))]
    policy(org, max_tokens=1000, scope="model", scope_value="gpt-4o")
    from billing.selectors.state import invalidate_org_state

    invalidate_org_state(org.pk)
    usage_reserve(call(org))  # reloads
    assert usage_guard_applies(call(org)) is False  # the policy does not match this model
    assert usage_guard_applies(call(org, model="gpt-4o")) is True


@pytest.mark.django_db(transaction=True)
def test_on_a_server_loop_a_just_expired_state_answers_while_the_loop_refetches_it(settings, monkeypatch):
    import asyncio
    import dataclasses
    import time

    from django.core.cache import cache

    from billing.selectors import state as state_module
    from core.db_threads import started
    from tests.factories import OrganizationFactory

    org = OrganizationFactory()
    key = state_module._KEY.format(org.pk)
    settings.USAGE_CAP_LOCAL_SECONDS = 0.05
    fresh = state_module.org_state(org.pk)
    time.sleep(0.1)  # past its second: a sync caller (a test, a task) no longer gets it
    assert state_module.org_state_if_local(org.pk) is None
    # Another process stored a newer state in the shared cache meanwhile.
    newer = dataclasses.replace(fresh, plan="newer")
    cache.set(key, newer, 30)

    threads = []
    run_db = state_module.run_db
    monkeypatch.setattr(state_module, "run_db", lambda fn, *args: (threads.append(fn), run_db(fn, *args))[1])
    in_flight = []

    async def refetched():
        stale = state_module.org_state_if_local(org.pk)  # answers, and starts a refetch on this loop
        for _ in range(200):
            await asyncio.sleep(0.005)
            if state_module._local[key][0] > time.monotonic():
                break
        await asyncio.sleep(0)  # the refetch's task has ended
        in_flight.append(started(("billing-org-state", key)))
        return stale, state_module.org_state_if_local(org.pk)

    assert asyncio.run(refetched()) == (fresh, newer)  # the stale one, then the cache's
    assert not threads  # read from the loop
    assert in_flight == [False]

    # Not in the shared cache either: loaded from the database on a thread.
    time.sleep(0.1)
    cache.delete(key)
    assert asyncio.run(refetched()) == (newer, fresh)
    assert len(threads) == 1
    assert cache.get(key) == fresh  # and stored there again

    settings.USAGE_CAP_LOCAL_STALE_SECONDS = 0
    time.sleep(0.1)

    async def on_the_loop():
        return state_module.org_state_if_local(org.pk)

    assert asyncio.run(on_the_loop()) is None  # too old to answer
