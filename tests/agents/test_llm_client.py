"""The SDK client of a provider (``agents.llm.client``): streamed chunks read as plain JSON fields,
everything else parsed as the SDK does, and a connection pool sized like the SDK's own."""

from __future__ import annotations

import asyncio
import copy
import pickle

import pytest
from openai.types.chat import ChatCompletion

from agents.llm.client import CONNECTION_LIMITS, Fields, ResolvedProvider, as_fields, make_client


@pytest.fixture
def client(fake_upstream, allow_loopback):
    provider = ResolvedProvider(
        source="org", provider_type="openai_compat", api_base=fake_upstream.base_url, api_key="sk-test"
    )
    return make_client(provider)


def _collect(client, **params):
    async def go():
        try:
            stream = await client.chat.completions.create(**params, stream=True)
            return [chunk async for chunk in stream]
        finally:
            await client.close()

    return asyncio.run(go())


def test_streamed_chunks_are_json_fields_read_like_the_sdk_models(client):
    chunks = _collect(
        client,
        model="fake",
        messages=[{"role": "user", "content": "two words"}],
        stream_options={"include_usage": True},
    )
    assert all(isinstance(chunk, Fields) for chunk in chunks)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "echo: two words"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].usage.prompt_tokens > 0 and chunks[-1].usage.completion_tokens > 0
    assert chunks[0].choices[0].delta.tool_calls is None  # a field the upstream left out reads None


def test_streamed_tool_call_deltas_read_by_attribute(client):
    tools = [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}]
    chunks = _collect(client, model="tools-1", messages=[{"role": "user", "content": "go"}], tools=tools)
    parts = [p for c in chunks if c.choices for p in (c.choices[0].delta.tool_calls or [])]
    assert parts and parts[0].index == 0 and parts[0].function.name == "lookup"
    assert "".join(p.function.arguments or "" for p in parts) == '{"step": 1}'


def test_whole_completions_are_still_the_sdk_models(client):
    async def go():
        try:
            return await client.chat.completions.create(
                model="fake", messages=[{"role": "user", "content": "hi"}]
            )
        finally:
            await client.close()

    completion = asyncio.run(go())
    assert isinstance(completion, ChatCompletion)
    assert completion.choices[0].message.content == "echo: hi"


def test_fields_stay_a_plain_dict_for_copy_and_pickle():
    chunk = as_fields({"choices": [{"delta": {"content": "x"}}], "usage": None})
    assert chunk.choices[0].delta.content == "x" and chunk.usage is None and chunk.id is None
    assert copy.deepcopy(chunk) == chunk
    assert pickle.loads(pickle.dumps(chunk)) == chunk  # noqa: S301 - our own bytes
    with pytest.raises(AttributeError):
        chunk._private  # noqa: B018


def test_the_pool_has_the_sdk_limits_not_httpx_defaults(client):
    pool = client._client._transport._pool
    assert pool._max_connections == CONNECTION_LIMITS.max_connections == 1000
    assert pool._max_keepalive_connections == CONNECTION_LIMITS.max_keepalive_connections


def test_stream_chat_completion_sends_the_body_as_built_and_reports_usage(client, fake_upstream):
    """The choke point's own request (no SDK transform): the key authenticates, extra fields go
    upstream as they are, and the last chunk carries usage."""

    async def go():
        try:
            stream = await client.stream_chat_completion(
                {"model": "fake", "messages": [{"role": "user", "content": "as built"}], "seed": 7}
            )
            return [chunk async for chunk in stream]
        finally:
            await client.close()

    chunks = asyncio.run(go())
    assert all(isinstance(chunk, Fields) for chunk in chunks)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "echo: as built"
    assert chunks[-1].usage.completion_tokens > 0
    assert fake_upstream.stats["requests_by_key"]["Bearer sk-test"] >= 1
