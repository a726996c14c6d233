"""The OpenAI-compatible surface (/v1/…) in process: shapes, the model rule, isolation, errors in
OpenAI's shape. The official SDK against a live server is in test_openai_sdk.py."""

from __future__ import annotations

import asyncio
import gc
import json

import pytest
from rest_framework.test import APIClient

from accounts.models import Role
from accounts.services.keys import api_key_create
from agents.models import Agent, AgentRun
from core.errors import ValidationError
from tests.chat.conftest import make_agent, make_provider
from tests.conftest import clear_cache
from tests.factories import MembershipFactory

pytestmark = pytest.mark.filterwarnings("ignore:StreamingHttpResponse must consume asynchronous iterators")

COMPLETIONS = "/v1/chat/completions"
RESPONSES = "/v1/responses"
MODELS = "/v1/models"
TOOL = {
    "type": "function",
    "function": {
        "name": "lookup",
        "description": "Looks a step up.",
        "parameters": {"type": "object", "properties": {"step": {"type": "integer"}}},
    },
}


def key_client(org, user, **fields) -> APIClient:
    _key, raw = api_key_create(org=org, actor=user, name="openai", **fields)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")
    return client


def assert_openai_error(response, status, code=None, param=None):
    assert response.status_code == status, response.content
    assert response["Content-Type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"}
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert isinstance(error["message"], str) and error["message"]
    if code:
        assert error["code"] == code
    if param:
        assert error["param"] == param
    return error


def post(client, path, body):
    return client.post(path, json.dumps(body), content_type="application/json")


@pytest.fixture
def member_key(org, member):
    return key_client(org, member)


@pytest.fixture
def provider(org, fake_upstream, allow_loopback):
    return make_provider(org, fake_upstream)


@pytest.fixture
def agent(org, provider):
    return make_agent(org, provider, system_prompt="You are terse.")


# --- chat completions --------------------------------------------------------------------------


def test_an_agent_completion_answers_the_last_user_message_with_usage(member_key, agent, member):
    body = {
        "model": f"agent:{agent.key}",
        "messages": [
            {"role": "user", "content": "first question"},
            {"role": "assistant", "content": "first answer"},
            {"role": "user", "content": [{"type": "text", "text": "second question"}]},
        ],
    }
    response = post(member_key, COMPLETIONS, body)

    assert response.status_code == 200, response.content
    data = response.json()
    assert data["object"] == "chat.completion"
    assert data["model"] == f"agent:{agent.key}"
    assert data["id"].startswith("chatcmpl-")
    choice = data["choices"][0]
    assert choice["message"] == {"role": "assistant", "content": "echo: second question", "refusal": None}
    assert choice["finish_reason"] == "stop"
    assert data["usage"]["prompt_tokens"] > 0
    assert (
        data["usage"]["total_tokens"] == data["usage"]["prompt_tokens"] + data["usage"]["completion_tokens"]
    )
    run = AgentRun.objects.get(agent=agent)
    assert run.trigger == "openai"
    assert run.input == "second question"
    assert run.user == member


def test_a_raw_model_completion_passes_tools_through(member_key, provider):
    body = {
        "model": "tools-1",
        "messages": [{"role": "user", "content": "call it"}],
        "tools": [TOOL],
        "tool_choice": "auto",
        "temperature": 0.2,
    }
    response = post(member_key, COMPLETIONS, body)

    assert response.status_code == 200, response.content
    choice = response.json()["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    call = choice["message"]["tool_calls"][0]
    assert call["type"] == "function"
    assert call["function"]["name"] == "lookup"
    assert json.loads(call["function"]["arguments"]) == {"step": 1}


def test_a_raw_model_completion_echoes_the_model(member_key, provider):
    response = post(
        member_key, COMPLETIONS, {"model": "fake-model-1", "messages": [{"role": "user", "content": "hi"}]}
    )

    assert response.status_code == 200, response.content
    assert response.json()["model"] == "fake-model-1"
    assert response.json()["choices"][0]["message"]["content"] == "echo: hi"


def test_a_streamed_completion_sends_role_deltas_finish_usage_and_done(member_key, agent):
    body = {
        "model": f"agent:{agent.key}",
        "messages": [{"role": "user", "content": "one two three"}],
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    response = post(member_key, COMPLETIONS, body)

    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/event-stream")
    lines = [line for line in b"".join(response).decode().split("\n") if line]
    assert lines[-1] == "data: [DONE]"
    chunks = [json.loads(line.removeprefix("data: ")) for line in lines[:-1]]
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert text == "echo: one two three"
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] > 0
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)


def test_a_failure_inside_a_stream_is_an_error_event(member_key, org, provider):
    agent = make_agent(org, provider, model="fail-400")
    body = {"model": f"agent:{agent.key}", "messages": [{"role": "user", "content": "x"}], "stream": True}
    response = post(member_key, COMPLETIONS, body)

    lines = [line for line in b"".join(response).decode().split("\n") if line]
    error = json.loads(lines[-1].removeprefix("data: "))["error"]
    assert error["type"] == "invalid_request_error"
    assert error["code"] == "provider_bad_request"
    assert error["message"]
    assert "data: [DONE]" not in lines


def test_an_upstream_refusal_of_a_raw_call_is_a_400(member_key, provider):
    response = post(
        member_key, COMPLETIONS, {"model": "fail-400", "messages": [{"role": "user", "content": "x"}]}
    )
    assert_openai_error(response, 400, "provider_bad_request")


# --- the model rule, roles, isolation ----------------------------------------------------------


def test_another_orgs_agent_is_a_404_in_openai_shape(member_key, other_org, fake_upstream, allow_loopback):
    foreign = make_agent(other_org, make_provider(other_org, fake_upstream))
    response = post(
        member_key,
        COMPLETIONS,
        {"model": f"agent:{foreign.key}", "messages": [{"role": "user", "content": "x"}]},
    )
    error = assert_openai_error(response, 404, "model_not_found")
    assert error["type"] == "not_found_error"


def test_an_unknown_agent_is_a_404(member_key, provider):
    response = post(
        member_key, COMPLETIONS, {"model": "agent:nope", "messages": [{"role": "user", "content": "x"}]}
    )
    assert_openai_error(response, 404, "model_not_found")


def test_a_private_agent_of_someone_else_is_a_404(member_key, org, owner, provider):
    private = make_agent(org, provider, visibility=Agent.Visibility.PRIVATE, owner=owner)
    response = post(
        member_key,
        COMPLETIONS,
        {"model": f"agent:{private.key}", "messages": [{"role": "user", "content": "x"}]},
    )
    assert_openai_error(response, 404, "model_not_found")


def test_a_viewer_may_list_models_but_not_call_them(org, agent):
    viewer = MembershipFactory(org=org, role=Role.VIEWER).user
    client = key_client(org, viewer)

    assert client.get(MODELS).status_code == 200
    response = post(
        client, COMPLETIONS, {"model": f"agent:{agent.key}", "messages": [{"role": "user", "content": "x"}]}
    )
    assert_openai_error(response, 403, "role_required")


def test_an_agent_key_calls_its_own_agent_only(org, owner, agent, provider):
    other = make_agent(org, provider)
    client = key_client(org, owner, kind="agent", agent_id=agent.pk)
    message = [{"role": "user", "content": "x"}]

    assert post(client, COMPLETIONS, {"model": f"agent:{agent.key}", "messages": message}).status_code == 200
    assert_openai_error(post(client, COMPLETIONS, {"model": f"agent:{other.key}", "messages": message}), 404)
    raw = post(client, COMPLETIONS, {"model": "fake-model-1", "messages": message})
    assert_openai_error(raw, 403, "raw_model_not_allowed")
    assert [m["id"] for m in client.get(MODELS).json()["data"]] == [f"agent:{agent.key}"]


def test_raw_models_can_be_turned_off(member_key, provider, settings):
    settings.OPENAI_RAW_MODELS = False
    response = post(
        member_key, COMPLETIONS, {"model": "fake-model-1", "messages": [{"role": "user", "content": "x"}]}
    )
    error = assert_openai_error(response, 403, "raw_model_not_allowed")
    assert error["type"] == "permission_error"


def test_a_key_without_the_chat_scope_is_refused(org, member, agent):
    client = key_client(org, member, scopes=["models:read"])
    response = post(
        client, COMPLETIONS, {"model": f"agent:{agent.key}", "messages": [{"role": "user", "content": "x"}]}
    )
    assert_openai_error(response, 403, "scope_required")
    assert client.get(MODELS).status_code == 200


# --- authentication and bad input --------------------------------------------------------------


def test_no_key_is_a_401_in_openai_shape(anon_client, db):
    error = assert_openai_error(post(anon_client, COMPLETIONS, {}), 401, "invalid_api_key")
    assert error["type"] == "authentication_error"


def test_a_bad_key_is_a_401(db):
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION="Bearer pat_nothing_wrong")
    assert_openai_error(client.get(MODELS), 401, "invalid_api_key")


def test_a_session_is_not_enough(member_client):
    assert_openai_error(member_client.get(MODELS), 401)


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"messages": [{"role": "user", "content": "x"}]}, "model"),
        ({"model": "fake-model-1"}, "messages"),
        ({"model": "fake-model-1", "messages": []}, "messages"),
        ({"model": "fake-model-1", "messages": [{"role": "robot", "content": "x"}]}, "messages"),
        ({"model": "fake-model-1", "messages": [{"role": "user", "content": "x"}], "n": 2}, "n"),
        (
            {"model": "fake-model-1", "messages": [{"role": "user", "content": "x"}], "temperature": 9},
            "temperature",
        ),
        ({"model": "fake-model-1", "messages": [{"role": "user", "content": "x"}], "stop": [1]}, "stop"),
    ],
)
def test_bad_bodies_are_400_naming_the_field(member_key, provider, body, param):
    error = assert_openai_error(post(member_key, COMPLETIONS, body), 400, param=param)
    assert error["type"] == "invalid_request_error"


def test_malformed_json_is_a_400(member_key):
    response = member_key.post(COMPLETIONS, "{nope", content_type="application/json")
    assert_openai_error(response, 400, "parse_error")


def test_an_agent_call_must_end_with_a_user_message(member_key, agent):
    body = {
        "model": f"agent:{agent.key}",
        "messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}],
    }
    assert_openai_error(post(member_key, COMPLETIONS, body), 400, "validation", param="messages")


def test_unknown_v1_routes_and_wrong_methods_answer_in_openai_shape(member_key, anon_client, db):
    assert_openai_error(anon_client.get("/v1/no-such-route"), 404, "route_not_found")
    assert_openai_error(member_key.get(COMPLETIONS), 405, "method_not_allowed")


def test_no_provider_is_an_error_in_openai_shape(member_key, agent, org, settings):
    settings.OPENAI_API_KEY = ""
    settings.OPENAI_BASE_URL = ""
    lonely = Agent.objects.create(org=org, key="lonely", name="Lonely")
    agent.provider.delete()
    response = post(
        member_key,
        COMPLETIONS,
        {"model": f"agent:{lonely.key}", "messages": [{"role": "user", "content": "x"}]},
    )
    assert response.status_code >= 400
    assert set(response.json()["error"]) == {"message", "type", "param", "code"}


# --- responses ---------------------------------------------------------------------------------


def test_a_response_has_output_text_and_usage(member_key, agent):
    body = {"model": f"agent:{agent.key}", "input": "hello there", "instructions": "Be brief."}
    response = post(member_key, RESPONSES, body)

    assert response.status_code == 200, response.content
    data = response.json()
    assert data["object"] == "response" and data["status"] == "completed"
    assert data["id"].startswith("resp_")
    message = data["output"][0]
    assert message["type"] == "message" and message["role"] == "assistant"
    assert message["content"][0] == {
        "type": "output_text",
        "text": "echo: hello there",
        "annotations": [],
        "logprobs": [],
    }
    usage = data["usage"]
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"] > 0
    assert data["instructions"] == "Be brief."


def test_a_response_takes_a_list_of_items_and_function_tools(member_key, provider):
    body = {
        "model": "tools-1",
        "input": [{"role": "user", "content": [{"type": "input_text", "text": "go"}]}],
        "tools": [{"type": "function", "name": "lookup", "parameters": {"type": "object"}}],
    }
    data = post(member_key, RESPONSES, body).json()
    call = data["output"][0]
    assert call["type"] == "function_call" and call["name"] == "lookup"
    assert json.loads(call["arguments"]) == {"step": 1}

    body["input"] += [
        {
            "type": "function_call",
            "call_id": call["call_id"],
            "name": "lookup",
            "arguments": call["arguments"],
        },
        {"type": "function_call_output", "call_id": call["call_id"], "output": '{"ok": true}'},
    ]
    data = post(member_key, RESPONSES, body).json()
    assert data["output"][0]["content"][0]["text"] == "done after 1 tools"


def test_a_streamed_response_sends_the_event_sequence(member_key, agent):
    body = {"model": f"agent:{agent.key}", "input": "a b", "stream": True}
    response = post(member_key, RESPONSES, body)

    text = b"".join(response).decode()
    events = []
    for block in text.strip().split("\n\n"):
        name, data = block.split("\n", 1)
        payload = json.loads(data.removeprefix("data: "))
        assert name == f"event: {payload['type']}"
        events.append(payload)
    types = [e["type"] for e in events]
    assert types[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert types[-4:] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    deltas = "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta")
    assert deltas == "echo: a b"
    assert events[-1]["response"]["output"][0]["content"][0]["text"] == "echo: a b"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": "fake-model-1"}, "input"),
        ({"model": "fake-model-1", "input": [{"type": "image"}]}, "input"),
        ({"model": "fake-model-1", "input": "x", "tools": [{"type": "web_search"}]}, "tools"),
        ({"model": "fake-model-1", "input": "x", "previous_response_id": "resp_1"}, "previous_response_id"),
    ],
)
def test_bad_response_bodies_are_400(member_key, provider, body, param):
    assert_openai_error(post(member_key, RESPONSES, body), 400, param=param)


# --- models ------------------------------------------------------------------------------------


def test_models_lists_the_agents_the_caller_may_call(member_key, org, owner, agent, provider, other_org):
    make_agent(org, provider, key="zz-private", visibility=Agent.Visibility.PRIVATE, owner=owner)
    Agent.objects.create(org=other_org, key="foreign", name="Foreign")

    data = member_key.get(MODELS).json()

    assert data["object"] == "list"
    assert [m["id"] for m in data["data"]] == [f"agent:{agent.key}"]
    model = data["data"][0]
    assert model["object"] == "model" and model["owned_by"] == org.slug and isinstance(model["created"], int)


def test_one_model_by_id(member_key, agent):
    assert member_key.get(f"{MODELS}/agent:{agent.key}").json()["id"] == f"agent:{agent.key}"
    assert_openai_error(member_key.get(f"{MODELS}/agent:missing"), 404, "model_not_found")
    assert_openai_error(member_key.get(f"{MODELS}/gpt-4o"), 404, "model_not_found")


def test_an_outsider_sees_none_of_the_orgs_models(other_org, outsider, agent):
    client = key_client(other_org, outsider)
    assert client.get(MODELS).json()["data"] == []
    assert_openai_error(client.get(f"{MODELS}/agent:{agent.key}"), 404)


def test_rate_limited_calls_are_429_in_openai_shape_with_retry_after(member_key, agent, settings):
    clear_cache()
    settings.RATE_LIMITS = {**settings.RATE_LIMITS, "key": "1/minute"}
    assert member_key.get(MODELS).status_code == 200
    response = member_key.get(MODELS)
    error = assert_openai_error(response, 429, "rate_limit_exceeded")
    assert error["type"] == "rate_limit_error"
    assert int(response["Retry-After"]) >= 1


def test_a_body_over_the_limit_is_413_in_openai_shape(member_key, settings):
    settings.MAX_REQUEST_BODY_BYTES = 100
    body = {"model": "fake-model-1", "messages": [{"role": "user", "content": "x" * 200}]}
    error = assert_openai_error(post(member_key, COMPLETIONS, body), 413, "payload_too_large")
    assert error["type"] == "invalid_request_error"


def test_a_streamed_response_with_a_function_call(member_key, provider):
    body = {
        "model": "tools-1",
        "input": "go",
        "tools": [{"type": "function", "name": "lookup", "parameters": {"type": "object"}}],
        "stream": True,
    }
    text = b"".join(post(member_key, RESPONSES, body)).decode()
    events = [
        json.loads(block.split("\n", 1)[1].removeprefix("data: ")) for block in text.strip().split("\n\n")
    ]
    types = [e["type"] for e in events]
    assert "response.function_call_arguments.done" in types
    done = next(e for e in events if e["type"] == "response.function_call_arguments.done")
    assert json.loads(done["arguments"]) == {"step": 1}
    final = events[-1]
    assert final["type"] == "response.completed"
    assert final["response"]["output"][0]["type"] == "function_call"


def test_a_failure_inside_a_streamed_response_ends_with_response_failed(member_key, provider):
    body = {"model": "fail-400", "input": "go", "stream": True}
    text = b"".join(post(member_key, RESPONSES, body)).decode()
    events = [
        json.loads(block.split("\n", 1)[1].removeprefix("data: ")) for block in text.strip().split("\n\n")
    ]
    assert [e["type"] for e in events][-2:] == ["error", "response.failed"]
    assert events[-2]["code"] == "provider_bad_request"
    assert events[-1]["response"]["status"] == "failed"


def test_from_a_view_thread_the_run_starts_before_reading_and_an_unread_stream_is_cancelled(monkeypatch):
    """Under an ASGI server the run starts on the server's loop while the view returns; a stream
    whose response never starts is cancelled after ``UNCLAIMED_STREAM_SECONDS``."""
    import threading

    from asgiref.sync import SyncToAsync

    from chat.services import openai_compat

    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, daemon=True).start()
    started, cancelled = threading.Event(), threading.Event()

    async def fake_run(*args, **kwargs):
        started.set()
        try:
            yield "delta", "hi"
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    monkeypatch.setattr(openai_compat, "run_events", fake_run)
    monkeypatch.setattr(openai_compat, "UNCLAIMED_STREAM_SECONDS", 0.2)
    monkeypatch.setattr(SyncToAsync.threadlocal, "main_event_loop", loop, raising=False)
    try:
        target = openai_compat.Target(org=None, user=None, label="m", model="m")
        events = openai_compat.stream_events(target, [{"role": "user", "content": "x"}])
        assert started.wait(5)  # nobody reads yet: the run is already under way
        assert cancelled.wait(5)  # and nobody ever will: called off
        assert events is not None
    finally:
        loop.call_soon_threadsafe(loop.stop)


def test_on_the_loop_the_run_goes_to_its_first_event_before_reading_and_the_reader_takes_over(monkeypatch):
    """``stream_events_here`` (async views on the server's loop): the run is under way before the
    response is read; the reader gets every event in order and, closing early, closes the run."""
    from chat.services import openai_compat

    steps: list[str] = []

    async def fake_run(*args, **kwargs):
        try:
            for n in range(3):
                steps.append(f"sent {n}")
                yield "delta", str(n)
            await asyncio.sleep(60)
        finally:
            steps.append("closed")

    monkeypatch.setattr(openai_compat, "run_events", fake_run)
    target = openai_compat.Target(org=None, user=None, label="m", model="m")

    async def main():
        events = await openai_compat.stream_events_here(target, [{"role": "user", "content": "x"}])
        before_reading = list(steps)
        read = [await anext(events) for _ in range(3)]
        await events.aclose()
        return before_reading, read

    before_reading, read = asyncio.run(main())
    assert before_reading == ["sent 0"]
    assert read == [("delta", "0"), ("delta", "1"), ("delta", "2")]
    assert steps[-1] == "closed"


def test_on_the_loop_the_reader_comes_back_once_the_runs_request_has_left(monkeypatch):
    """The view gets its reader (and makes its response) once the run's model call has sent its
    request (``agents.llm.sent``), not before, and not only at the first event."""
    from agents.llm import sent as llm_sent
    from chat.services import openai_compat

    steps: list[str] = []

    async def fake_run(*args, **kwargs):
        trace = llm_sent.trace_for_sent()  # what the choke point's streamed call passes to httpcore
        await asyncio.sleep(0.05)  # opening the connection
        await trace("http11.send_request_body.started", {})
        steps.append("body started")
        await trace("http11.send_request_body.complete", {})
        steps.append("sent")
        await asyncio.sleep(60)  # the upstream thinks
        yield "delta", "late"

    monkeypatch.setattr(openai_compat, "run_events", fake_run)
    monkeypatch.setattr(llm_sent, "REQUEST_SENT_WAIT_SECONDS", 5.0)
    target = openai_compat.Target(org=None, user=None, label="m", model="m")

    async def main():
        events = await openai_compat.stream_events_here(target, [{"role": "user", "content": "x"}])
        seen = list(steps)
        await events.aclose()
        return seen

    assert asyncio.run(main()) == ["body started", "sent"]


@pytest.mark.parametrize("first_event", [True, False], ids=["after-its-first-event", "before-it"])
def test_on_the_loop_a_run_nobody_reads_is_called_off(monkeypatch, first_event):
    from chat.services import openai_compat

    closed = []

    async def fake_run(*args, **kwargs):
        try:
            if first_event:
                yield "delta", "hi"
            await asyncio.sleep(60)
            yield "delta", "never"
        finally:
            closed.append(True)

    monkeypatch.setattr(openai_compat, "run_events", fake_run)
    monkeypatch.setattr(openai_compat, "UNCLAIMED_STREAM_SECONDS", 0.1)
    target = openai_compat.Target(org=None, user=None, label="m", model="m")

    async def main():
        await openai_compat.stream_events_here(target, [{"role": "user", "content": "x"}])
        for _ in range(200):
            await asyncio.sleep(0.01)
            if closed:
                break
        return list(closed)  # before asyncio.run cancels what is left

    assert asyncio.run(main()) == [True]


def test_on_the_loop_a_run_that_failed_before_anyone_read_it_is_left_alone(monkeypatch, caplog):
    from chat.services import openai_compat

    async def fake_run(*args, **kwargs):
        raise ValidationError("bad")
        yield  # an async generator

    monkeypatch.setattr(openai_compat, "run_events", fake_run)
    monkeypatch.setattr(openai_compat, "UNCLAIMED_STREAM_SECONDS", 0.05)
    target = openai_compat.Target(org=None, user=None, label="m", model="m")

    async def main():
        await openai_compat.stream_events_here(target, [{"role": "user", "content": "x"}])
        await asyncio.sleep(0.2)  # past the unclaimed timer
        gc.collect()

    asyncio.run(main())
    assert "exception was never retrieved" not in caplog.text
