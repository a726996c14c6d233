"""The LLM choke point (agents.llm.chokepoint) against the fake OpenAI-compatible upstream: retries,
Retry-After, failover and provider health, error mapping, streaming and cancellation, guards and
the usage event, the outbound guard, model lists, verification and the key-probe task.

The fake picks its behaviour from the model name (or a provider's ``X-Fake-Mode`` header, so that
one provider of a chain fails while the next answers the same model). Every provider gets its own
API key, so the fake's per-key counters (``requests_for`` / ``aborted_for``) belong to one test.
Sleeps of the retry loop are recorded, not slept.
"""

from __future__ import annotations

import json
import uuid
from contextlib import aclosing
from datetime import UTC, datetime, timedelta

import pytest
from asgiref.sync import async_to_sync
from django.utils import timezone

from agents import registries
from agents.llm import (
    LLMResult,
    ProviderAuthError,
    ProviderBadRequest,
    ProviderUnavailable,
    achat,
    aclose_clients,
    aembed,
    alist_models,
    astream,
    averify,
    chat,
    chokepoint,
    clear_resolution_cache,
    provider_resolved,
)
from agents.models import Agent, OrgAIConfig, Provider
from agents.tasks import verify_ai_keys
from core.errors import ApplicationError
from core.metrics import LLM_TOKENS
from core.outbound import OutboundBlocked
from tests.polling import await_for, wait_for

HELLO = [{"role": "user", "content": "hello there"}]
TOOLS = [
    {
        "type": "function",
        "function": {"name": "lookup", "description": "Look up", "parameters": {"type": "object"}},
    }
]


@pytest.fixture(autouse=True)
def _fresh(settings):
    settings.OPENAI_API_KEY = ""
    settings.OPENAI_BASE_URL = ""
    settings.LLM_RETRY_BASE_SECONDS = 0.001
    settings.LLM_MAX_RETRIES = 2
    clear_resolution_cache()
    yield
    clear_resolution_cache()


@pytest.fixture(autouse=True)
def sleeps(monkeypatch):
    """The delays the choke point asked to sleep, in order (nothing really sleeps)."""
    delays: list[float] = []

    async def record(seconds):
        delays.append(seconds)

    monkeypatch.setattr(chokepoint, "_sleep", record)
    return delays


@pytest.fixture
def up(fake_upstream, allow_loopback):
    return fake_upstream


@pytest.fixture
def events():
    """Usage events received by a listener registered for one test."""
    received: list[dict] = []
    registries.register_usage_listener(received.append)
    yield received
    registries._usage_listeners.remove(received.append)


def make_provider(
    org, up, *, mode=None, priority=100, key=None, base=None, headers=None, **fields
) -> Provider:
    extra = dict(headers or {})
    if mode:
        extra["X-Fake-Mode"] = mode
    return Provider.objects.create(
        org=org,
        name=fields.pop("name", f"p-{uuid.uuid4().hex[:8]}"),
        api_base=base or up.base_url,
        api_key=key or f"sk-{uuid.uuid4().hex}",
        priority=priority,
        extra_headers=json.dumps(extra) if extra else "",
        **fields,
    )


def auth(provider) -> str:
    return f"Bearer {provider.api_key}"


def run(make_coro):
    """Run a coroutine the way sync code does (async_to_sync), closing the loop's clients after."""

    async def wrapper():
        try:
            return await make_coro()
        finally:
            await aclose_clients()

    return async_to_sync(wrapper)()


def stream_all(**kwargs):
    """Every chunk of one astream call, and the exception that ended it (or None)."""

    async def go():
        chunks, error = [], None
        try:
            async with aclosing(astream(**kwargs)) as stream:
                async for chunk in stream:
                    chunks.append(chunk)
        except ApplicationError as exc:
            error = exc
        return chunks, error

    return run(go)


# --- the happy paths ----------------------------------------------------------------------------


def test_chat_returns_the_answer_tokens_and_who_served_it(org, member, up):
    provider = make_provider(org, up)

    result = chat(org=org, user=member, messages=HELLO, model="fake-model-1")

    assert isinstance(result, LLMResult)
    assert result.content == "echo: hello there"
    assert result.finish_reason == "stop"
    assert (result.prompt_tokens, result.completion_tokens) == (10, 3)
    assert result.usage_estimated is False
    assert (result.provider_id, result.provider_source, result.model) == (provider.pk, "org", "fake-model-1")
    assert result.latency_ms > 0


def test_stream_yields_deltas_in_order_then_done(org, up):
    make_provider(org, up)

    chunks, error = stream_all(org=org, messages=[{"role": "user", "content": "one two three four"}])

    assert error is None
    assert [c.type for c in chunks] == ["delta"] * 5 + ["done"]
    assert "".join(c.text for c in chunks) == "echo: one two three four"
    result = chunks[-1].result
    assert result.content == "echo: one two three four"
    assert (result.prompt_tokens, result.completion_tokens) == (10, 5)


def test_stream_assembles_tool_calls_and_emits_them_at_the_end(org, up):
    make_provider(org, up)

    chunks, _ = stream_all(org=org, messages=HELLO, model="tools-2-p2", tools=TOOLS)

    assert [c.type for c in chunks] == ["tool_call", "tool_call", "done"]
    calls = [c.tool_call for c in chunks[:2]]
    assert calls == [
        {"id": "call_1_1", "name": "lookup", "arguments": '{"step": 1}'},
        {"id": "call_1_2", "name": "lookup", "arguments": '{"step": 1}'},
    ]
    assert chunks[-1].result.tool_calls == calls
    assert chunks[-1].result.finish_reason == "tool_calls"


def test_chat_returns_tool_calls_and_the_fake_ends_the_loop(org, up):
    make_provider(org, up)
    messages = list(HELLO)
    for step in (1, 2, 3):
        result = chat(org=org, messages=messages, model="tools-3", tools=TOOLS)
        assert result.finish_reason == "tool_calls"
        (call,) = result.tool_calls
        assert json.loads(call["arguments"]) == {"step": step}
        messages += [
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [{"id": call["id"], "type": "function", "function": call}],
            },
            {"role": "tool", "tool_call_id": call["id"], "content": "ok"},
        ]

    final = chat(org=org, messages=messages, model="tools-3", tools=TOOLS)

    assert (final.content, final.tool_calls, final.finish_reason) == ("done after 3 tools", [], "stop")


def test_agent_temperature_and_max_tokens_are_used(org, up, events):
    provider = make_provider(org, up)
    agent = Agent.objects.create(
        org=org, key="a1", name="A", provider=provider, model="fake-model-1", max_tokens=64
    )

    result = chat(org=org, agent=agent, messages=HELLO)

    assert result.provider_source == "agent"
    assert events[0]["agent_id"] == str(agent.pk)


# --- retries --------------------------------------------------------------------------------------


def test_a_500_is_retried_then_succeeds(org, up, sleeps):
    provider = make_provider(org, up)

    result = chat(org=org, messages=HELLO, model="fail-500-once")

    assert result.content == "echo: hello there"
    assert up.requests_for(auth(provider)) == 2
    assert len(sleeps) == 1
    provider.refresh_from_db()
    assert provider.consecutive_failures == 0


def test_backoff_grows_between_retries(org, up, sleeps, settings):
    settings.LLM_RETRY_BASE_SECONDS = 0.5
    make_provider(org, up)

    chat(org=org, messages=HELLO, model="fail-503-x2", max_tokens=5)  # 503 sends Retry-After: 1

    assert len(sleeps) == 2
    assert sleeps[0] >= 1.0  # Retry-After wins over a 0.5-1.0 s first backoff
    assert 2.0 >= sleeps[1] >= 1.0


def test_429_waits_at_least_retry_after(org, up, sleeps):
    provider = make_provider(org, up)

    result = chat(org=org, messages=HELLO, model="fail-429-once")

    assert result.content == "echo: hello there"
    assert sleeps and sleeps[0] >= 1.0
    assert up.requests_for(auth(provider)) == 2


def test_retry_after_beyond_the_cap_fails_over_without_waiting(org, up, sleeps):
    slow = make_provider(org, up, mode="fail-429", priority=1, headers={"X-Fake-Retry-After": "120"})
    fallback = make_provider(org, up, priority=2)

    result = chat(org=org, messages=HELLO)

    assert result.provider_id == fallback.pk
    assert sleeps == []
    assert up.requests_for(auth(slow)) == 1


def test_retries_stop_after_llm_max_retries(org, up, sleeps, settings):
    settings.LLM_MAX_RETRIES = 1
    provider = make_provider(org, up)

    with pytest.raises(ProviderUnavailable) as caught:
        chat(org=org, messages=HELLO, model="fail-500")

    assert caught.value.status_code == 502 and caught.value.code == "ERR_PROVIDER_UNAVAILABLE"
    assert up.requests_for(auth(provider)) == 2
    assert len(sleeps) == 1
    assert caught.value.details["attempts"][0]["status"] == 500


def test_a_stream_that_fails_before_any_text_is_retried(org, up):
    provider = make_provider(org, up)

    chunks, error = stream_all(org=org, messages=HELLO, model="fail-502-once")

    assert error is None
    assert "".join(c.text for c in chunks) == "echo: hello there"
    assert up.requests_for(auth(provider)) == 2


@pytest.mark.parametrize(
    ("header", "expected"),
    [("7", 7.0), ("0.25", 0.25), ("-3", 0.0), ("soon", None), ("", None)],
)
def test_retry_after_seconds_are_parsed(header, expected):
    assert chokepoint.parse_retry_after({"retry-after": header}) == expected


def test_retry_after_http_date_and_milliseconds_are_parsed():
    now = datetime(2030, 1, 1, 12, 0, 0, tzinfo=UTC)
    date = "Tue, 01 Jan 2030 12:00:09 GMT"

    assert chokepoint.parse_retry_after({"retry-after": date}, now=now) == 9.0
    assert chokepoint.parse_retry_after({"retry-after-ms": "1500", "retry-after": "9"}) == 1.5


# --- failover and health --------------------------------------------------------------------------


def test_failover_to_the_next_provider_marks_the_first_unhealthy_after_three(org, up):
    down = make_provider(org, up, mode="fail-500", priority=1, name="down")
    backup = make_provider(org, up, priority=2, name="backup")

    for round_ in (1, 2, 3):
        result = chat(org=org, messages=HELLO)
        assert result.provider_id == backup.pk
        down.refresh_from_db()
        assert down.consecutive_failures == round_
        assert "500" in down.last_error
    assert down.unhealthy_until is not None and down.unhealthy_until > timezone.now()
    assert up.requests_for(auth(down)) == 9  # 3 calls x (1 try + 2 retries)

    chat(org=org, messages=HELLO)  # parked: the backup serves without asking the sick one

    assert up.requests_for(auth(down)) == 9


def test_a_success_resets_the_health_record(org, up):
    provider = make_provider(org, up)
    Provider.objects.filter(pk=provider.pk).update(
        consecutive_failures=2, unhealthy_until=timezone.now() - timedelta(seconds=5)
    )
    clear_resolution_cache()

    chat(org=org, messages=HELLO)

    provider.refresh_from_db()
    assert (provider.consecutive_failures, provider.unhealthy_until) == (0, None)


def test_a_parked_provider_still_serves_when_nothing_else_can(org, up):
    only = make_provider(org, up)
    Provider.objects.filter(pk=only.pk).update(
        consecutive_failures=3, unhealthy_until=timezone.now() + timedelta(seconds=60)
    )
    clear_resolution_cache()

    assert chat(org=org, messages=HELLO).provider_id == only.pk


def test_every_candidate_down_is_502_with_each_attempt(org, up):
    make_provider(org, up, mode="fail-503", priority=1)
    make_provider(org, up, mode="fail-500", priority=2)

    with pytest.raises(ProviderUnavailable) as caught:
        chat(org=org, messages=HELLO)

    assert [a["status"] for a in caught.value.details["attempts"]] == [503, 500]


def test_a_hanging_provider_times_out_and_fails_over(org, up, settings):
    settings.OUTBOUND_READ_TIMEOUT = 0.3
    settings.LLM_MAX_RETRIES = 0
    hung = make_provider(org, up, mode="hang", priority=1, headers={"X-Fake-Hang": "5"})
    backup = make_provider(org, up, priority=2)

    result = chat(org=org, messages=HELLO)

    assert result.provider_id == backup.pk
    assert wait_for(lambda: up.aborted_for(auth(hung)) == 1)  # the fake saw the client leave


# --- error mapping --------------------------------------------------------------------------------


def test_401_is_provider_auth_error_and_clears_verified(org, up, sleeps):
    provider = make_provider(org, up, key=f"fail-401-{uuid.uuid4().hex}", is_verified=True)

    with pytest.raises(ProviderAuthError) as caught:
        chat(org=org, messages=HELLO)

    assert (caught.value.status_code, caught.value.code) == (424, "ERR_PROVIDER_AUTH")
    assert "Incorrect API key" in caught.value.message
    assert sleeps == []  # auth errors are not retried
    provider.refresh_from_db()
    assert provider.is_verified is False and provider.consecutive_failures == 1


def test_403_fails_over_to_the_next_provider(org, up):
    make_provider(org, up, mode="fail-403", priority=1)
    backup = make_provider(org, up, priority=2)

    assert chat(org=org, messages=HELLO).provider_id == backup.pk


def test_400_is_a_bad_request_with_the_upstream_message_and_no_failover(org, up, events):
    first = make_provider(org, up, priority=1)
    second = make_provider(org, up, priority=2)

    with pytest.raises(ProviderBadRequest) as caught:
        chat(org=org, messages=HELLO, model="fail-400")

    assert (caught.value.status_code, caught.value.code) == (502, "ERR_PROVIDER_BAD_REQUEST")
    assert "the fake was told to refuse it" in caught.value.message
    assert up.requests_for(auth(first)) == 1
    assert up.requests_for(auth(second)) == 0
    assert [(e["status"], e["error_code"]) for e in events] == [("error", "ERR_PROVIDER_BAD_REQUEST")]
    assert (events[0]["prompt_tokens"], events[0]["completion_tokens"]) == (0, 0)  # nothing was spent
    first.refresh_from_db()
    assert first.consecutive_failures == 0  # the request was bad, not the provider


# --- streaming: partial failures and cancellation ---------------------------------------------------


def test_a_stream_dropped_midway_reports_an_error_after_the_partial_text(org, up, events):
    first = make_provider(org, up, priority=1)
    second = make_provider(org, up, priority=2)

    chunks, error = stream_all(
        org=org, messages=[{"role": "user", "content": "a b c d e f"}], model="drop-midway"
    )

    assert [c.text for c in chunks] == ["echo:", " a"]
    assert isinstance(error, ProviderUnavailable)
    assert error.details["partial"] is True
    assert up.requests_for(auth(first)) == 1  # neither retried nor failed over
    assert up.requests_for(auth(second)) == 0
    assert len(events) == 1
    assert events[0]["status"] == "error" and events[0]["completion_tokens"] > 0


def test_closing_the_stream_closes_the_upstream_connection(org, up, events):
    provider = make_provider(org, up)
    words = " ".join(f"w{i}" for i in range(200))

    async def read_two_then_stop():
        received = []
        async with aclosing(
            astream(org=org, messages=[{"role": "user", "content": words}], model="slow")
        ) as s:
            async for chunk in s:
                received.append(chunk.text)
                if len(received) == 2:
                    break
        # Still inside the loop, before the SDK client is closed: the stream's own close did it.
        seen = await await_for(lambda: up.aborted_for(auth(provider)) == 1)
        return received, seen

    assert run(read_two_then_stop) == (["echo:", " w0"], True)
    assert len(events) == 1
    assert (events[0]["status"], events[0]["error_code"]) == ("cancelled", "ERR_CANCELLED")


def test_cancelling_the_consuming_task_closes_the_upstream_connection(org, up):
    import asyncio

    provider = make_provider(org, up)
    words = " ".join(f"w{i}" for i in range(200))
    first_delta = None

    async def consume(started):
        async with aclosing(
            astream(org=org, messages=[{"role": "user", "content": words}], model="slow")
        ) as s:
            async for _chunk in s:
                started.set()

    async def cancel_after_first_delta():
        nonlocal first_delta
        started = asyncio.Event()
        task = asyncio.create_task(consume(started))
        await started.wait()
        first_delta = True
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return await await_for(lambda: up.aborted_for(auth(provider)) == 1)

    assert run(cancel_after_first_delta) is True
    assert first_delta


# --- usage events and guards ------------------------------------------------------------------------


def test_one_usage_event_per_call_with_tokens(org, member, up, events):
    provider = make_provider(org, up)
    before = LLM_TOKENS.labels("completion", "openai_compat")._value.get()

    chat(org=org, user=member, messages=HELLO, purpose="title")
    stream_all(org=org, user=member, messages=HELLO)

    assert len(events) == 2
    event = events[0]
    assert event == {
        "org_id": str(org.pk),
        "user_id": str(member.pk),
        "agent_id": None,
        "provider_id": str(provider.pk),
        "provider_type": "openai_compat",
        "provider_source": "org",
        "model": "gpt-4o-mini",
        "purpose": "title",
        "prompt_tokens": 10,
        "completion_tokens": 3,
        "latency_ms": event["latency_ms"],
        "status": "ok",
        "channel": "",
        "api_key_id": None,
        "request_id": None,
        "usage_estimated": False,
    }
    assert events[1]["purpose"] == "chat" and events[1]["completion_tokens"] == 3
    assert LLM_TOKENS.labels("completion", "openai_compat")._value.get() == before + 6


def test_the_usage_event_follows_the_done_chunk_off_the_stream(org, up, events):
    make_provider(org, up)

    async def stop_at_done():
        async with aclosing(astream(org=org, messages=HELLO)) as stream:
            async for chunk in stream:
                if chunk.type == "done":
                    at_done = len(events)
                    break
        return at_done, len(events)

    assert run(stop_at_done) == (0, 1)


def test_a_failover_call_still_sends_one_event(org, up, events):
    make_provider(org, up, mode="fail-500", priority=1)
    backup = make_provider(org, up, priority=2)

    chat(org=org, messages=HELLO)

    assert [(e["status"], e["provider_id"]) for e in events] == [("ok", str(backup.pk))]


def test_a_failing_listener_is_logged_not_raised(org, up, events, caplog):
    make_provider(org, up)

    def broken(event):
        raise RuntimeError("listener down")

    registries.register_usage_listener(broken)
    try:
        result = chat(org=org, messages=HELLO)
    finally:
        registries._usage_listeners.remove(broken)

    assert result.content == "echo: hello there"
    assert len(events) == 1
    assert "usage listener failed" in caplog.text


@pytest.fixture
def guard_log():
    log: list[tuple] = []

    def before(call):
        log.append(("before", call))
        return "reservation-1"

    def after(call, usage, reservation):
        log.append(("after", call, usage, reservation))

    registries.register_llm_guard(before, after)
    yield log
    registries._guards.remove((before, after))


def test_guards_run_before_and_after_each_call(org, member, up, guard_log):
    provider = make_provider(org, up)

    stream_all(org=org, user=member, messages=HELLO, max_tokens=50)

    (_, call), (_, after_call, usage, reservation) = guard_log
    assert after_call is call
    assert call["org_id"] == str(org.pk) and call["user_id"] == str(member.pk)
    assert call["provider_id"] == str(provider.pk) and call["provider_source"] == "org"
    assert call["model"] == "gpt-4o-mini" and call["purpose"] == "chat" and call["max_tokens"] == 50
    assert call["estimated_tokens"] == call["estimated_prompt_tokens"] + 50
    assert (usage["prompt_tokens"], usage["completion_tokens"], reservation) == (10, 3, "reservation-1")


def test_guards_settle_a_failed_candidate_with_no_usage(org, up, guard_log):
    make_provider(org, up, mode="fail-500", priority=1)
    make_provider(org, up, priority=2)

    chat(org=org, messages=HELLO)

    afters = [entry for entry in guard_log if entry[0] == "after"]
    assert [a[2] is None for a in afters] == [True, False]


def test_a_refusing_guard_stops_the_call_before_any_upstream_request(org, up, guard_log, events):
    provider = make_provider(org, up)

    def refuse(call):
        raise ApplicationError("Cap reached.", code="ERR_USAGE_CAP_EXCEEDED", status_code=429)

    def never(call, usage, reservation):
        raise AssertionError("after of a refusing guard must not run")

    registries.register_llm_guard(refuse, never)
    try:
        with pytest.raises(ApplicationError) as caught:
            chat(org=org, messages=HELLO)
    finally:
        registries._guards.remove((refuse, never))

    assert caught.value.code == "ERR_USAGE_CAP_EXCEEDED"
    assert up.requests_for(auth(provider)) == 0
    # The guard that had reserved is released with no usage.
    assert [(e[0], e[2] if e[0] == "after" else None) for e in guard_log] == [
        ("before", None),
        ("after", None),
    ]
    assert [(e["status"], e["error_code"]) for e in events] == [("error", "ERR_USAGE_CAP_EXCEEDED")]


# --- the outbound guard -----------------------------------------------------------------------------


@pytest.mark.parametrize("base", ["http://10.0.0.1:9/v1", "http://169.254.169.254/v1"])
def test_provider_on_a_private_or_metadata_address_is_refused(org, base, settings):
    settings.OUTBOUND_ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
    Provider.objects.create(org=org, name="internal", api_base=base, api_key="sk-x")

    with pytest.raises(OutboundBlocked) as caught:
        chat(org=org, messages=HELLO)

    assert (caught.value.status_code, caught.value.code) == (400, "ERR_OUTBOUND_BLOCKED")


def test_the_fake_on_loopback_is_refused_without_the_allowlist(org, fake_upstream, settings):
    settings.OUTBOUND_ALLOWED_HOSTS = []
    provider = make_provider(org, fake_upstream)

    with pytest.raises(OutboundBlocked):
        chat(org=org, messages=HELLO)

    assert fake_upstream.requests_for(auth(provider)) == 0


def test_a_blocked_provider_fails_over_to_an_allowed_one(org, up):
    Provider.objects.create(org=org, name="metadata", api_base="http://169.254.169.254/v1", priority=1)
    allowed = make_provider(org, up, priority=2)

    assert chat(org=org, messages=HELLO).provider_id == allowed.pk


# --- models, verify, key probes -----------------------------------------------------------------------


def test_models_are_listed_and_cached(org, up):
    provider = make_provider(org, up)
    resolved = provider_resolved(provider)

    assert run(lambda: alist_models(resolved=resolved)) == ["fake-model-1"]
    assert run(lambda: alist_models(resolved=resolved)) == ["fake-model-1"]

    assert up.requests_for(auth(provider)) == 1


def test_models_with_a_refused_key_is_auth_error(org, up):
    resolved = provider_resolved(make_provider(org, up, key=f"fail-403-{uuid.uuid4().hex}"))

    with pytest.raises(ProviderAuthError):
        run(lambda: alist_models(resolved=resolved))


def test_verify_checks_reachability_and_a_one_token_completion(org, up):
    resolved = provider_resolved(make_provider(org, up))

    reach = run(lambda: averify(resolved=resolved, model=None))
    completion = run(lambda: averify(resolved=resolved, model="fake-model-1"))

    assert reach["valid"] is True and reach["latency_ms"] >= 0
    assert completion["valid"] is True


def test_verify_reports_a_refused_key_and_a_broken_model(org, up):
    refused = provider_resolved(make_provider(org, up, key=f"fail-401-{uuid.uuid4().hex}"))
    working = provider_resolved(make_provider(org, up))

    bad_key = run(lambda: averify(resolved=refused, model=None))
    bad_model = run(lambda: averify(resolved=working, model="fail-404"))

    assert (bad_key["valid"], bad_key["error_code"]) == (False, "ERR_PROVIDER_AUTH")
    assert "Incorrect API key" in bad_key["error"]
    assert (bad_model["valid"], bad_model["error_code"]) == (False, "ERR_PROVIDER_BAD_REQUEST")


def test_key_probe_clears_verified_only_for_refused_keys(org, up):
    good = make_provider(org, up, is_verified=True)
    refused = make_provider(org, up, key=f"fail-401-{uuid.uuid4().hex}", is_verified=True)
    down = make_provider(org, up, base="http://10.0.0.1:9/v1", is_verified=True)

    summary = verify_ai_keys()

    for row in (good, refused, down):
        row.refresh_from_db()
    assert (good.is_verified, refused.is_verified, down.is_verified) == (True, False, True)
    assert "Incorrect API key" in refused.last_error
    assert summary["refused"] >= 1 and summary["unreachable"] >= 1


def test_achat_runs_inside_an_event_loop(org, up):
    make_provider(org, up)
    OrgAIConfig.objects.create(org=org, primary_model="fake-model-1")

    result = run(lambda: achat(org=org, messages=HELLO))

    assert result.model == "fake-model-1" and result.content == "echo: hello there"


# --- embeddings --------------------------------------------------------------------------------------


def test_embeddings_come_back_in_input_order_with_one_usage_event(org, up, events):
    provider = make_provider(org, up)

    result = run(lambda: aembed(org=org, inputs=["sea otters", "hold hands"], model="fake-embed"))

    assert len(result.embeddings) == 2 and len(result.embeddings[0]) == 64
    assert result.embeddings[0] != result.embeddings[1]
    assert (result.prompt_tokens, result.completion_tokens) == (10, 0)
    assert result.provider_id == provider.pk
    assert [(e["purpose"], e["prompt_tokens"], e["status"]) for e in events] == [("embedding", 10, "ok")]


def test_embeddings_fail_over_like_completions(org, up, sleeps):
    down = make_provider(org, up, mode="fail-500", priority=1, name="down")
    backup = make_provider(org, up, priority=2, name="backup")

    result = run(lambda: aembed(org=org, inputs=["x"], model="fake-embed"))

    assert result.provider_id == backup.pk and result.embeddings
    assert up.requests_for(auth(down)) == 3  # one try and two retries before the failover
