"""Usage metering: one priced UsageRecord per LLM call, the price catalogue and overrides, the
rollups, and the /usage and /model-pricing endpoints."""

from __future__ import annotations

import uuid
from contextlib import aclosing
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from asgiref.sync import async_to_sync

from agents.llm import aclose_clients, astream, chat
from billing.catalogue import catalogue_price
from billing.models import PriceOverride, UsageRecord, UsageRollup
from billing.selectors.usage import segments, usage_breakdown, usage_summary
from billing.services.usage import usage_record_from_event, usage_rollup
from core.context import channel_scope
from tests.billing.conftest import make_provider
from tests.core.test_errors import assert_envelope

HELLO = [{"role": "user", "content": "hello there"}]


def record(org, when, **fields):
    base = {
        "org_id": str(org.pk),
        "model": "gpt-4o-mini",
        "provider_type": "openai",
        "prompt_tokens": 100,
        "completion_tokens": 50,
        "status": "ok",
        "channel": "api",
    }
    row = usage_record_from_event({**base, **fields})
    UsageRecord.objects.filter(pk=row.pk).update(created_at=when)
    return row


# --- catalogue ------------------------------------------------------------------------------------


def test_catalogue_matches_exact_prefixed_and_dated_model_ids():
    assert catalogue_price("gpt-4o").input == Decimal("2.5")
    assert catalogue_price("gpt-4o-mini").input == Decimal("0.15")  # not gpt-4o
    assert catalogue_price("gpt-4o-2024-08-06").model == "gpt-4o"
    assert catalogue_price("gpt-4o-mini-2024-07-18").model == "gpt-4o-mini"
    assert catalogue_price("openai/gpt-4o-mini").model == "gpt-4o-mini"
    assert catalogue_price("claude-sonnet-4-5-20250929").model == "claude-sonnet-4-5"
    assert catalogue_price("text-embedding-3-small").output == 0
    assert catalogue_price("fake-model-1") is None
    assert catalogue_price("") is None


def test_cost_is_micro_dollars_rounded_up():
    price = catalogue_price("gpt-4o-mini")  # 0.15 / 0.60 per million
    assert price.cost_micros(1000, 1000) == 750
    assert price.cost_micros(1, 0) == 1  # 0.15 rounds up


# --- records from the choke point ------------------------------------------------------------------


def test_every_llm_call_writes_one_priced_record(org, member, up):
    provider = make_provider(org, up)
    PriceOverride.objects.create(org=org, model="fake-model-1", input_per_million=2, output_per_million=10)

    with channel_scope("cron"):
        chat(org=org, user=member, messages=HELLO, model="fake-model-1")

    row = UsageRecord.objects.get(org=org)
    assert (row.prompt_tokens, row.completion_tokens) == (10, 3)
    assert row.cost_micros == 10 * 2 + 3 * 10
    assert row.price_known and not row.usage_estimated
    assert row.status == "ok" and row.channel == "cron"
    assert row.user_id == member.pk and row.provider_id == provider.pk
    assert row.model == "fake-model-1" and row.latency_ms > 0


def _stream_on_a_server_loop(org, user) -> None:
    """One streamed call on a loop that stands for a server's (``asyncio.run``'s is one)."""
    import asyncio

    async def main():
        try:
            async with aclosing(astream(org=org, user=user, messages=HELLO, model="fake-model-1")) as chunks:
                async for _ in chunks:
                    pass
        finally:
            await aclose_clients()

    asyncio.run(main())


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("prices_in_memory", [True, False], ids=["prices-in-memory", "prices-not-in-memory"])
def test_on_a_server_loop_the_record_is_written_from_the_loop_when_the_prices_are_in_memory(
    org, member, up, monkeypatch, settings, prices_in_memory
):
    from billing.selectors.state import invalidate_org_state, org_state
    from billing.services import usage as usage_module

    make_provider(org, up)
    PriceOverride.objects.create(org=org, model="fake-model-1", input_per_million=2, output_per_million=10)
    invalidate_org_state(org.pk)
    on_threads = []
    insert_row = usage_module.hotpath.insert_row
    monkeypatch.setattr(
        usage_module.hotpath, "insert_row", lambda *args: (on_threads.append(args[0]), insert_row(*args))
    )
    if prices_in_memory:
        org_state(org.pk)  # as the call's guard leaves it (for a second)
    else:
        settings.USAGE_CAP_LOCAL_SECONDS = 0  # this process keeps no state in memory

    _stream_on_a_server_loop(org, member)

    row = UsageRecord.objects.get(org=org)
    assert (row.prompt_tokens, row.completion_tokens, row.cost_micros) == (10, 3, 10 * 2 + 3 * 10)
    assert row.status == "ok" and row.user_id == member.pk and row.price_known
    assert on_threads == ([] if prices_in_memory else [UsageRecord])


def test_a_model_without_price_is_recorded_with_cost_unknown(org, up):
    make_provider(org, up)
    chat(org=org, messages=HELLO, model="fake-model-1")
    row = UsageRecord.objects.get(org=org)
    assert row.cost_micros == 0 and row.price_known is False


def test_a_failed_call_is_recorded_as_error_without_tokens(org, up):
    make_provider(org, up, mode="fail-400")
    with pytest.raises(Exception):  # noqa: B017 - the provider error itself is tested in agents
        chat(org=org, messages=HELLO, model="fake-model-1")
    row = UsageRecord.objects.get(org=org)
    assert row.status == "error" and row.error_code and row.prompt_tokens == 0


def test_a_cancelled_stream_records_what_was_generated_as_estimated(org, up):
    make_provider(org, up, mode="slow")

    async def go():
        try:
            async with aclosing(
                astream(org=org, messages=[{"role": "user", "content": "one two three four five six"}])
            ) as chunks:
                async for chunk in chunks:
                    if chunk.type == "delta":
                        break  # the caller goes away after the first delta
        finally:
            await aclose_clients()

    async_to_sync(go)()
    row = UsageRecord.objects.get(org=org)
    assert row.status == "cancelled"
    assert row.usage_estimated is True
    assert row.completion_tokens >= 1 and row.prompt_tokens > 0


def test_a_provider_reported_figure_is_kept_not_estimated(org, up):
    make_provider(org, up)
    chat(org=org, messages=HELLO, model="fake-model-1")
    row = UsageRecord.objects.get(org=org)
    assert row.usage_estimated is False and row.prompt_tokens == 10  # the fake's reported usage


# --- rollups and reports --------------------------------------------------------------------------


def test_reports_are_the_same_from_raw_records_and_from_rollups(org, other_org):
    now = datetime(2026, 3, 20, 12, 30, tzinfo=UTC)
    agent = uuid.uuid4()
    for day in range(10):
        for hour in (1, 7, 13, 22):
            when = datetime(2026, 3, 1 + day, hour, 15, tzinfo=UTC)
            record(org, when, agent_id=str(agent), model="gpt-4o" if hour == 7 else "gpt-4o-mini")
    record(other_org, datetime(2026, 3, 5, 10, tzinfo=UTC))
    start, end = datetime(2026, 3, 2, 3, 20, tzinfo=UTC), datetime(2026, 3, 9, 14, 10, tzinfo=UTC)

    before = usage_summary(org=org, start=start, end=end, filters={})
    assert UsageRollup.objects.count() == 0
    usage_rollup(now=now)
    assert [s[0] for s in segments(start, end)] == ["raw", "hour", "day", "hour", "raw"]
    after = usage_summary(org=org, start=start, end=end, filters={})
    assert before == after
    # 2 Mar 03:20 → 9 Mar 14:10: 2 on the 2nd (07, 13, 22 → 3), 6 full days × 4, 9th: 01, 07, 13 → 3
    assert after["requests"] == 3 + 6 * 4 + 3
    usage_rollup(now=now)  # idempotent
    assert usage_summary(org=org, start=start, end=end, filters={}) == after
    filtered = usage_summary(org=org, start=start, end=end, filters={"model": "gpt-4o"})
    assert filtered["requests"] == 8  # 07:15 on the 2nd to the 9th
    both = usage_summary(org=org, start=start, end=end, filters={"model": "gpt-4o", "agent": str(agent)})
    assert both == filtered  # two dimensions at once: read from the raw records
    by_model = usage_breakdown(org=org, start=start, end=end, group_by="model", filters={"agent": str(agent)})
    assert {row["key"]: row["requests"] for row in by_model} == {"gpt-4o": 8, "gpt-4o-mini": 22}
    by_model_rolled = usage_breakdown(org=org, start=start, end=end, group_by="model", filters={})
    assert by_model_rolled == by_model


def test_usage_endpoints_answer_totals_series_and_breakdowns(admin_client, org):
    now = datetime.now(UTC)
    agent = uuid.uuid4()
    record(org, now - timedelta(hours=3), agent_id=str(agent))
    record(org, now - timedelta(hours=2), model="gpt-4o")
    record(org, now - timedelta(days=2), status="error", prompt_tokens=0, completion_tokens=0)
    usage_rollup()

    summary = admin_client.get("/api/v1/usage/summary").json()
    assert summary["requests"] == 3 and summary["errors"] == 1
    assert summary["total_tokens"] == 300
    assert summary["cost_usd"] == pytest.approx((100 * 0.15 + 50 * 0.6 + 100 * 2.5 + 50 * 10) / 1e6)

    series = admin_client.get("/api/v1/usage/timeseries", {"bucket": "day"}).json()
    assert sum(point["requests"] for point in series["items"]) == 3
    assert len(series["items"]) in (30, 31)
    hourly = admin_client.get(
        "/api/v1/usage/timeseries",
        {"bucket": "hour", "from": (now - timedelta(hours=5)).isoformat(), "to": now.isoformat()},
    ).json()
    assert sum(point["requests"] for point in hourly["items"]) == 2

    by_model = admin_client.get("/api/v1/usage/breakdown", {"group_by": "model"}).json()["items"]
    assert by_model[0]["key"] == "gpt-4o"  # costliest first
    by_agent = admin_client.get("/api/v1/usage/breakdown", {"group_by": "agent"}).json()["items"]
    assert {item["key"] for item in by_agent} == {str(agent), None}
    filtered = admin_client.get("/api/v1/usage/summary", {"agent": str(agent)}).json()
    assert filtered["requests"] == 1
    for group in ("provider", "user", "channel", "key"):
        assert admin_client.get("/api/v1/usage/breakdown", {"group_by": group}).status_code == 200


@pytest.mark.parametrize(
    ("path", "params"),
    [
        ("/api/v1/usage/summary", {"from": "2026-02-01T00:00:00Z", "to": "2026-01-01T00:00:00Z"}),
        ("/api/v1/usage/summary", {"from": "yesterday"}),
        ("/api/v1/usage/summary", {"from": "2020-01-01T00:00:00Z", "to": "2026-01-01T00:00:00Z"}),
        ("/api/v1/usage/breakdown", {"group_by": "colour"}),
        ("/api/v1/usage/timeseries", {"bucket": "minute"}),
        (
            "/api/v1/usage/timeseries",
            {"bucket": "hour", "from": "2026-01-01T00:00:00Z", "to": "2026-06-01T00:00:00Z"},
        ),
        ("/api/v1/usage/summary", {"agent": "not-a-uuid"}),
    ],
)
def test_bad_report_parameters_answer_400(admin_client, path, params):
    assert_envelope(admin_client.get(path, params), 400)


def test_usage_reports_need_admin(member_client, owner_client, outsider_client, org):
    record(org, datetime.now(UTC) - timedelta(hours=1))
    for path in ("/api/v1/usage/summary", "/api/v1/usage/timeseries", "/api/v1/usage/breakdown"):
        assert_envelope(member_client.get(path), 403, "ERR_ROLE_REQUIRED")
        assert owner_client.get(path).status_code == 200
    # The outsider sees their own org, where nothing happened.
    assert outsider_client.get("/api/v1/usage/summary").json()["requests"] == 0
    assert owner_client.get("/api/v1/usage/summary").json()["requests"] == 1


def test_reports_need_authentication(anon_client):
    assert anon_client.get("/api/v1/usage/summary").status_code in (401, 403)


# --- pricing endpoints ----------------------------------------------------------------------------


def test_catalogue_lists_shipped_prices(admin_client, member_client):
    body = admin_client.get("/api/v1/model-pricing").json()
    models = {item["model"] for item in body["items"]}
    assert {
        "gpt-4o",
        "claude-sonnet-4",
        "gemini-2.5-pro",
        "mistral-large-latest",
        "text-embedding-3-small",
    } <= models
    assert any("llama" in m for m in models)
    assert (
        admin_client.get("/api/v1/model-pricing", {"model": "claude"})
        .json()["items"][0]["model"]
        .startswith("claude")
    )
    assert_envelope(member_client.get("/api/v1/model-pricing"), 403)


def test_overrides_upsert_change_and_delete(admin_client, member_client, outsider_client, org):
    body = {"model": "fake-model-1", "input_per_million": "1.5", "output_per_million": "3"}
    created = admin_client.put("/api/v1/model-pricing/overrides", body, format="json")
    assert created.status_code == 201, created.content
    again = admin_client.put(
        "/api/v1/model-pricing/overrides", {**body, "output_per_million": "4"}, format="json"
    )
    assert again.status_code == 200 and again.json()["id"] == created.json()["id"]
    assert again.json()["output_per_million"] == 4.0
    override_id = created.json()["id"]
    listed = admin_client.get("/api/v1/model-pricing/overrides").json()
    assert listed["total"] == 1
    changed = admin_client.put(
        f"/api/v1/model-pricing/overrides/{override_id}", {**body, "input_per_million": "9"}, format="json"
    )
    assert changed.json()["input_per_million"] == 9.0
    assert_envelope(admin_client.put("/api/v1/model-pricing/overrides", {"model": "x"}, format="json"), 400)
    assert_envelope(
        admin_client.put(
            "/api/v1/model-pricing/overrides", {**body, "input_per_million": "-1"}, format="json"
        ),
        400,
    )
    assert_envelope(member_client.put("/api/v1/model-pricing/overrides", body, format="json"), 403)
    assert_envelope(outsider_client.get(f"/api/v1/model-pricing/overrides/{override_id}"), 404)
    assert_envelope(outsider_client.delete(f"/api/v1/model-pricing/overrides/{override_id}"), 404)
    assert admin_client.delete(f"/api/v1/model-pricing/overrides/{override_id}").status_code == 204
    assert not PriceOverride.objects.filter(org=org).exists()


def test_an_override_prices_new_records(admin_client, org, up):
    make_provider(org, up)
    admin_client.put(
        "/api/v1/model-pricing/overrides",
        {"model": "fake-model-1", "input_per_million": "100", "output_per_million": "200"},
        format="json",
    )
    chat(org=org, messages=HELLO, model="fake-model-1")
    assert UsageRecord.objects.get(org=org).cost_micros == 10 * 100 + 3 * 200
