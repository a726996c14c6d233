"""The official ``openai`` Python SDK against a live server (Daphne in a subprocess) with the fake
upstream behind it: what a client of OpenAI's API sees when it points ``base_url`` at the platform.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest

from accounts.services.keys import api_key_create
from agents.models import AgentRun
from tests.chat.conftest import make_agent, make_provider
from tests.polling import wait_for
from tests.support.asgi_server import run_asgi_server

pytestmark = pytest.mark.django_db(transaction=True)

TOOL = {
    "type": "function",
    "function": {
        "name": "lookup",
        "parameters": {"type": "object", "properties": {"step": {"type": "integer"}}},
    },
}


@pytest.fixture(scope="module")
def server(tmp_path_factory, django_db_setup, django_db_blocker):
    """One server for the module: it only reads what each test commits."""
    env = {"OUTBOUND_ALLOWED_HOSTS": "127.0.0.1,localhost"}
    with (
        django_db_blocker.unblock(),
        run_asgi_server(log_dir=tmp_path_factory.mktemp("daphne"), extra_env=env) as running,
    ):
        yield running


@pytest.fixture
def provider(org, fake_upstream):
    return make_provider(org, fake_upstream)


@pytest.fixture
def agent(org, provider):
    return make_agent(org, provider)


@pytest.fixture
def raw_key(org, member):
    return api_key_create(org=org, actor=member, name="sdk")[1]


@pytest.fixture
def client(server, raw_key):
    with openai.OpenAI(base_url=f"{server.base_url}/v1", api_key=raw_key, max_retries=0, timeout=30) as sdk:
        yield sdk


def test_a_completion_with_usage(client, agent):
    completion = client.chat.completions.create(
        model=f"agent:{agent.key}", messages=[{"role": "user", "content": "hello sdk"}]
    )

    assert completion.choices[0].message.content == "echo: hello sdk"
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage.prompt_tokens > 0 and completion.usage.completion_tokens > 0
    assert completion.model == f"agent:{agent.key}"


def test_a_streamed_completion_honours_include_usage(client, agent):
    stream = client.chat.completions.create(
        model=f"agent:{agent.key}",
        messages=[{"role": "user", "content": "stream me please"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)

    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "echo: stream me please"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage.total_tokens > 0
    assert all(c.usage is None for c in chunks[:-1])


def test_a_streamed_completion_without_include_usage_has_no_usage_chunk(client, agent):
    chunks = list(
        client.chat.completions.create(
            model=f"agent:{agent.key}", messages=[{"role": "user", "content": "x"}], stream=True
        )
    )
    assert all(c.choices for c in chunks)


def test_tools_pass_through_on_a_raw_model_call(client, provider):
    completion = client.chat.completions.create(
        model="tools-1", messages=[{"role": "user", "content": "use it"}], tools=[TOOL], tool_choice="auto"
    )
    call = completion.choices[0].message.tool_calls[0]
    assert completion.choices[0].finish_reason == "tool_calls"
    assert call.function.name == "lookup" and json.loads(call.function.arguments) == {"step": 1}

    chunks = list(
        client.chat.completions.create(
            model="tools-1", messages=[{"role": "user", "content": "use it"}], tools=[TOOL], stream=True
        )
    )
    deltas = [tc for c in chunks if c.choices for tc in (c.choices[0].delta.tool_calls or [])]
    assert deltas[0].function.name == "lookup" and deltas[0].index == 0
    assert json.loads("".join(d.function.arguments or "" for d in deltas)) == {"step": 1}
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


def test_models_list(client, agent):
    assert [m.id for m in client.models.list()] == [f"agent:{agent.key}"]
    assert client.models.retrieve(f"agent:{agent.key}").id == f"agent:{agent.key}"


def test_a_response_and_a_streamed_response(client, agent):
    response = client.responses.create(model=f"agent:{agent.key}", input="hi there", instructions="Short.")
    assert response.output_text == "echo: hi there"
    assert response.usage.total_tokens == response.usage.input_tokens + response.usage.output_tokens > 0

    events = list(client.responses.create(model=f"agent:{agent.key}", input="a b c", stream=True))
    types = [e.type for e in events]
    for expected in (
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ):
        assert expected in types
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == "echo: a b c"
    assert events[-1].response.output_text == "echo: a b c"


def test_errors_are_the_sdks_exception_classes(
    server, client, agent, org, other_org, outsider, fake_upstream
):
    message = [{"role": "user", "content": "x"}]
    with pytest.raises(openai.NotFoundError) as missing:
        client.chat.completions.create(model="agent:missing", messages=message)
    assert missing.value.body["code"] == "model_not_found"

    foreign = make_agent(other_org, make_provider(other_org, fake_upstream))
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model=f"agent:{foreign.key}", messages=message)

    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(model=f"agent:{agent.key}", messages=[])
    assert bad.value.body["param"] == "messages"

    with openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="pat_wrong_key", max_retries=0) as wrong:
        with pytest.raises(openai.AuthenticationError):
            wrong.models.list()

    outsider_key = api_key_create(org=other_org, actor=outsider, name="o", role="VIEWER")[1]
    with openai.OpenAI(base_url=f"{server.base_url}/v1", api_key=outsider_key, max_retries=0) as viewer:
        with pytest.raises(openai.PermissionDeniedError):
            viewer.chat.completions.create(model=f"agent:{foreign.key}", messages=message)


def test_a_disconnect_mid_stream_cancels_the_upstream_call(client, org, fake_upstream):
    provider = make_provider(org, fake_upstream)
    agent = make_agent(org, provider, model="hang-midway")
    stream = client.chat.completions.create(
        model=f"agent:{agent.key}", messages=[{"role": "user", "content": "one two three four"}], stream=True
    )
    received = ""
    for chunk in stream:
        received += chunk.choices[0].delta.content or ""
        if received.startswith("echo: one"):
            break
    stream.close()

    assert wait_for(lambda: fake_upstream.aborted_for(f"Bearer {provider.api_key}") == 1)
    assert wait_for(lambda: AgentRun.objects.filter(agent=agent, status=AgentRun.Status.CANCELLED).exists())


def test_a_disconnect_cancels_a_raw_stream_too(client, org, fake_upstream):
    provider = make_provider(org, fake_upstream)
    stream = client.chat.completions.create(
        model="hang-midway", messages=[{"role": "user", "content": "one two three"}], stream=True
    )
    next(iter(stream))
    next(iter(stream))
    stream.close()

    assert wait_for(lambda: fake_upstream.aborted_for(f"Bearer {provider.api_key}") == 1)


@pytest.fixture(scope="module")
def limited_server(tmp_path_factory, django_db_setup, django_db_blocker):
    """A server whose API keys may make three requests a minute."""
    env = {"OUTBOUND_ALLOWED_HOSTS": "127.0.0.1,localhost", "TEST_RATE_LIMIT_KEY": "3/minute"}
    with (
        django_db_blocker.unblock(),
        run_asgi_server(log_dir=tmp_path_factory.mktemp("daphne-limited"), extra_env=env) as running,
    ):
        yield running


def test_streams_served_on_the_loop_match_the_threads_and_count_once_each(limited_server, raw_key, agent):
    """The first streams of a key run in the view's thread (until its lookup is cached); the next
    ones on the server's loop (``chat.api.own_thread``). They answer alike, each request counts once
    against the key's limit whichever way it went, and the one over the limit gets OpenAI's 429."""
    with openai.OpenAI(
        base_url=f"{limited_server.base_url}/v1", api_key=raw_key, max_retries=0, timeout=30
    ) as sdk:
        answers = []
        for model in ("fake", f"agent:{agent.key}", "fake"):
            stream = sdk.chat.completions.create(
                model=model, messages=[{"role": "user", "content": "on the loop"}], stream=True,
                stream_options={"include_usage": True},
            )  # fmt: skip
            chunks = list(stream)
            answers.append(
                ("".join(c.choices[0].delta.content or "" for c in chunks if c.choices), chunks[-1])
            )
        with pytest.raises(openai.RateLimitError) as refused:
            sdk.chat.completions.create(
                model="fake", messages=[{"role": "user", "content": "one too many"}], stream=True
            )

    assert [text for text, _last in answers] == ["echo: on the loop"] * 3
    assert all(last.usage is not None and last.usage.completion_tokens > 0 for _text, last in answers)
    assert refused.value.status_code == 429
    assert refused.value.body["code"] == "rate_limit_exceeded"


def test_a_body_read_while_the_key_is_checked_keeps_drf_order_and_counts_once(limited_server, raw_key, agent):
    """On the loop the body is validated while the key's cache read is in flight
    (``chat.api.own_thread``); what the client sees is still DRF's order: a bad key is a 401
    whatever the body, a bad body with a good key the 400, and that request counts once against
    the key's limit like any other (three a minute here: two more pass, the next is refused)."""
    url = f"{limited_server.base_url}/v1/chat/completions"
    bad_body = {"model": "fake", "messages": [], "stream": True}
    good_body = {"model": "fake", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    with httpx.Client(timeout=30) as http:
        unknown = http.post(url, json=bad_body, headers={"Authorization": "Bearer sk-not-a-key"})
        refused_body = http.post(url, json=bad_body, headers={"Authorization": f"Bearer {raw_key}"})
        passed = [
            http.post(url, json=good_body, headers={"Authorization": f"Bearer {raw_key}"}).status_code
            for _ in range(2)
        ]
        over = http.post(url, json=good_body, headers={"Authorization": f"Bearer {raw_key}"})

    assert unknown.status_code == 401 and unknown.json()["error"]["code"]
    assert refused_body.status_code == 400
    assert "messages" in refused_body.json()["error"]["message"]
    assert passed == [200, 200]
    assert over.status_code == 429 and over.json()["error"]["code"] == "rate_limit_exceeded"


def test_bodies_read_on_the_loop_answer_as_drfs_parser_does(server, raw_key, agent):
    """Once the key's lookup is cached, streams are served on the loop, which reads a UTF-8 JSON
    body itself (``chat.api.own_thread``): a body that DRF's parser refuses is still refused the
    same way, and a body in another charset goes DRF's way and streams."""
    url = f"{server.base_url}/v1/chat/completions"
    auth = {"Authorization": f"Bearer {raw_key}"}
    good = {"model": "fake", "messages": [{"role": "user", "content": "héllo"}], "stream": True}

    def post(content: bytes, content_type: str) -> httpx.Response:
        return http.post(url, content=content, headers={**auth, "Content-Type": content_type})

    with httpx.Client(timeout=30) as http:
        assert http.post(url, json=good, headers=auth).status_code == 200  # the key is cached now
        streamed = post(json.dumps(good).encode(), "application/json; charset=UTF-8")
        in_latin1 = json.dumps(good, ensure_ascii=False).encode("latin-1")
        latin = post(in_latin1, "application/json; charset=latin-1")
        tool = {"type": "function", "function": {"name": "f", "parameters": {"default": float("nan")}}}
        nan = post(json.dumps({**good, "tools": [tool]}).encode(), "application/json")  # JSON has no NaN
        not_utf8 = post(in_latin1, "application/json")
        broken = post(b'{"model": "fake", ', "application/json")
        text = post(json.dumps(good).encode(), "text/plain")

    assert streamed.status_code == 200 and "echo: héllo" in _sse_text(streamed)
    assert latin.status_code == 200 and "echo: héllo" in _sse_text(latin)
    for refused in (nan, not_utf8, broken):
        assert refused.status_code == 400, refused.text
        assert "JSON parse error" in refused.json()["error"]["message"]
    assert text.status_code == 415 and text.json()["error"]["message"]


def _sse_text(response: httpx.Response) -> str:
    """The text of a streamed completion's chunks."""
    chunks = [line[6:] for line in response.text.splitlines() if line.startswith("data: {")]
    deltas = [choice["delta"] for chunk in map(json.loads, chunks) for choice in chunk["choices"]]
    return "".join(delta.get("content") or "" for delta in deltas)


def _admission_count(base_url: str) -> float:
    text = httpx.get(f"{base_url}/metrics", timeout=10).text
    for line in text.splitlines():
        if line.startswith("platform_stream_admission_wait_seconds_count"):
            return float(line.split()[-1])
    return 0.0


def test_streams_started_at_once_pass_the_admission_gate_and_each_gets_its_answer(server, raw_key, agent):
    """Six streams started together go through ``core.admission`` (two slots, the server's
    default): each is let in once, in turn, and each gets its own whole answer."""
    before = _admission_count(server.base_url)

    def one(index: int) -> str:
        base_url = f"{server.base_url}/v1"
        with openai.OpenAI(base_url=base_url, api_key=raw_key, max_retries=0, timeout=30) as sdk:
            model = "fake" if index % 2 else f"agent:{agent.key}"
            stream = sdk.chat.completions.create(
                model=model, messages=[{"role": "user", "content": f"stream {index}"}], stream=True
            )
            return "".join(c.choices[0].delta.content or "" for c in stream if c.choices)

    with ThreadPoolExecutor(max_workers=6) as pool:
        answers = list(pool.map(one, range(6)))

    assert answers == [f"echo: stream {index}" for index in range(6)]
    assert _admission_count(server.base_url) - before == 6
