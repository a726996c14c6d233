"""The SDK client of a provider (``agents.llm.client``): a streamed chat completion sent as the choke
point built it and read as plain JSON fields, failing with the SDK's own exceptions; everything else
parsed as the SDK does, and a connection pool sized like the SDK's own."""

from __future__ import annotations

import asyncio
import copy
import pickle

import openai
import pytest
from openai.types.chat import ChatCompletion

from agents.llm.client import CONNECTION_LIMITS, Fields, ResolvedProvider, make_client, parse_fields


@pytest.fixture
def client(fake_upstream, allow_loopback):
    provider = ResolvedProvider(
        source="org", provider_type="openai_compat", api_base=fake_upstream.base_url, api_key="sk-test"
    )
    return make_client(provider)


def _collect(client, **params):
    async def go():
        try:
            stream = await client.stream_chat_completion(params)
            return [chunk async for chunk in stream]
        finally:
            await client.close()

    return asyncio.run(go())


def _provider_client(fake_upstream, *, api_key="sk-test", api_base=None, extra_headers=None):
    return make_client(
        ResolvedProvider(
            source="org",
            provider_type="openai_compat",
            api_base=api_base or fake_upstream.base_url,
            api_key=api_key,
            extra_headers=extra_headers or {},
        )
    )


def test_streamed_chunks_are_json_fields_read_like_the_sdk_models(client):
    chunks = _collect(client, model="fake", messages=[{"role": "user", "content": "two words"}])
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
    chunk = parse_fields('{"choices": [{"delta": {"content": "x"}}], "usage": null}')
    assert isinstance(chunk, Fields) and isinstance(chunk.choices[0].delta, Fields)
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


def test_a_refused_key_is_the_sdks_authentication_error_with_the_upstream_message(
    fake_upstream, allow_loopback
):
    client = _provider_client(fake_upstream, api_key="fail-401-stream")
    with pytest.raises(openai.AuthenticationError) as caught:
        _collect(client, model="fake", messages=[{"role": "user", "content": "hi"}])
    assert caught.value.status_code == 401
    assert caught.value.body["message"] == "Incorrect API key provided."


def test_a_busy_upstream_is_a_status_error_carrying_retry_after(fake_upstream, allow_loopback):
    client = _provider_client(fake_upstream)
    with pytest.raises(openai.RateLimitError) as caught:
        _collect(client, model="fail-429", messages=[{"role": "user", "content": "hi"}])
    assert caught.value.response.headers["Retry-After"] == "1"


def test_an_error_event_inside_the_stream_raises_api_error_after_the_deltas_before_it(
    fake_upstream, allow_loopback
):
    client = _provider_client(fake_upstream)
    seen = []

    async def go():
        try:
            stream = await client.stream_chat_completion(
                {"model": "error-midway", "messages": [{"role": "user", "content": "a b c d"}]}
            )
            async for chunk in stream:
                seen.append(chunk.choices[0].delta.content)
        finally:
            await client.close()

    with pytest.raises(openai.APIError) as caught:
        asyncio.run(go())
    assert not isinstance(caught.value, openai.APIStatusError)
    assert caught.value.message == "The server had an error mid-stream."
    assert seen == ["echo:", " a"]


def test_an_unreachable_upstream_is_the_sdks_connection_error(allow_loopback):
    import socket

    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    client = _provider_client(None, api_base=f"http://127.0.0.1:{port}/v1")
    with pytest.raises(openai.APIConnectionError):
        _collect(client, model="fake", messages=[{"role": "user", "content": "hi"}])


def test_closing_the_stream_stops_the_upstream(fake_upstream, allow_loopback):
    client = _provider_client(fake_upstream, api_key="sk-close-early")

    async def go():
        try:
            stream = await client.stream_chat_completion(
                {"model": "slow", "messages": [{"role": "user", "content": " ".join(["w"] * 40)}]}
            )
            async for _chunk in stream:
                break
            await stream.close()
        finally:
            await client.close()

    asyncio.run(go())
    assert asyncio.run(_wait_for_abort(fake_upstream, "Bearer sk-close-early")), "the stream never went away"


async def _wait_for_abort(fake_upstream, key: str) -> bool:
    for _ in range(100):
        if fake_upstream.stats["aborted_by_key"].get(key):
            return True
        await asyncio.sleep(0.05)
    return False


def test_a_stream_read_to_its_end_gives_its_connection_back_for_the_next_call(fake_upstream, allow_loopback):
    """A provider that keeps connections alive serves the next call on the same one: the stream is
    read past ``[DONE]`` to the end of its body before it is closed (a connection closed early is
    dropped, and the next call would pay a new one, a TLS handshake with a real provider)."""
    client = _provider_client(
        fake_upstream, api_key="sk-keep-alive", extra_headers={"X-Fake-Keep-Alive": "1"}
    )
    before = fake_upstream.stats["connections"]

    async def go():
        try:
            texts = []
            for word in ("one", "two", "three"):
                stream = await client.stream_chat_completion(
                    {"model": "fake", "messages": [{"role": "user", "content": word}]}
                )
                try:
                    texts.append(
                        "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
                    )
                finally:
                    await stream.close()
            return texts
        finally:
            await client.close()

    assert asyncio.run(go()) == ["echo: one", "echo: two", "echo: three"]
    assert fake_upstream.stats["connections"] - before == 1


def test_a_waiting_caller_learns_when_the_request_has_left_before_any_answer(fake_upstream, allow_loopback):
    """``agents.llm.sent``: with a signal open, the streamed call sets it once httpcore has sent
    the request's body, while the upstream (here holding its answer back) has not answered yet."""
    from agents.llm.sent import request_sent_signal, until_request_sent

    hanging = _provider_client(fake_upstream, extra_headers={"X-Fake-Mode": "hang", "X-Fake-Hang": "3"})

    async def go():
        params = {"model": "fake", "messages": [{"role": "user", "content": "hi"}]}
        try:
            with request_sent_signal() as sent:
                call = asyncio.ensure_future(hanging.stream_chat_completion(params))
            await until_request_sent(sent, call, timeout=2.0)
            state = (sent.done(), call.done())
            call.cancel()
            await asyncio.gather(call, return_exceptions=True)
            return state
        finally:
            await hanging.close()

    assert asyncio.run(go()) == (True, False)


def test_the_sent_trace_leaves_the_request_once_its_body_has_gone(client, monkeypatch):
    """httpcore calls a request's ``trace`` for every event of its response, every read of the
    stream's body included: the signal's trace takes itself off after the body was sent."""
    from agents.llm import sent as llm_sent

    events: list[str] = []

    class Recording(llm_sent.SentTrace):
        async def __call__(self, event, info):
            events.append(event)
            await super().__call__(event, info)

    monkeypatch.setattr(llm_sent, "SentTrace", Recording)

    async def go():
        params = {"model": "fake", "messages": [{"role": "user", "content": "several words to stream"}]}
        try:
            with llm_sent.request_sent_signal() as sent:
                stream = await client.stream_chat_completion(params)
            chunks = [chunk async for chunk in stream]
            return sent.done(), len(chunks)
        finally:
            await client.close()

    sent, chunks = asyncio.run(go())
    assert sent and chunks > 4
    assert events[-1] == "http11.send_request_body.complete"
    assert not any("receive_response" in event for event in events)


def test_waiting_for_a_request_nobody_sends_ends_at_the_timeout():
    from agents.llm.sent import request_sent_signal, until_request_sent

    async def go():
        with request_sent_signal() as sent:
            run = asyncio.ensure_future(asyncio.sleep(5))
        began = asyncio.get_running_loop().time()
        await until_request_sent(sent, run, timeout=0.05)
        waited = asyncio.get_running_loop().time() - began
        run.cancel()
        return sent.done(), waited

    done, waited = asyncio.run(go())
    assert not done and 0.04 <= waited < 2


def test_work_after_the_first_event_waits_a_little_more_only_once_that_event_is_out(monkeypatch):
    """``after_first_event``: an event that comes is followed by ``AFTER_FIRST_EVENT_SECONDS``; a run
    that ends first, or an event that does not come within ``FIRST_EVENT_HOLD_SECONDS``, are not."""
    from agents.llm import sent as llm_sent

    monkeypatch.setattr(llm_sent, "AFTER_FIRST_EVENT_SECONDS", 30.0)  # long enough to tell apart

    async def returns_soon(first_event, run=None) -> bool:
        try:
            await asyncio.wait_for(llm_sent.after_first_event(first_event, run), 1.0)
        except TimeoutError:
            return False
        return True

    async def go():
        loop = asyncio.get_running_loop()
        came = loop.create_future()
        loop.call_later(0.01, came.set_result, None)
        monkeypatch.setattr(llm_sent, "FIRST_EVENT_HOLD_SECONDS", 30.0)
        after_event = await returns_soon(came)  # it came: then the 30 s more

        ended = asyncio.ensure_future(asyncio.sleep(0.01))
        after_run = await returns_soon(loop.create_future(), ended)  # the run ended without one

        monkeypatch.setattr(llm_sent, "FIRST_EVENT_HOLD_SECONDS", 0.01)
        after_hold = await returns_soon(loop.create_future())  # none within the hold
        return after_event, after_run, after_hold

    assert asyncio.run(go()) == (False, True, True)


def test_every_streamed_request_is_the_one_the_clients_own_build_request_makes(client):
    """The request's parts that never change for a client are merged once: each call still sends
    the client's and the SDK's headers, the key, its own body length and the client's timeout; a
    client that has kept a cookie from a response sends it, as httpx would."""
    sent: list = []

    class Stop(Exception):
        pass

    async def capture(request):
        merged = {**client.default_headers, **client.auth_headers}
        headers = {name: value for name, value in merged.items() if isinstance(value, str)}
        url = f"{client.base_url}chat/completions"
        expected = client._client.build_request("POST", url, content=request.content, headers=headers)
        sent.append((request, expected))  # as the client would build it now
        raise Stop

    client._client.event_hooks["request"].append(capture)

    async def call(content: str):
        with pytest.raises(Stop):
            await client.stream_chat_completion(
                {"model": "fake", "messages": [{"role": "user", "content": content}]}
            )

    async def go():
        await call("one")
        await call("a longer second body")
        client._client.cookies.set("session", "kept")
        await call("three")

    asyncio.run(go())
    for request, expected in sent:
        assert sorted(request.headers.multi_items()) == sorted(expected.headers.multi_items())
        assert request.url == expected.url
        assert request.extensions["timeout"] == expected.extensions["timeout"]
    requests = [request for request, _ in sent]
    assert [int(r.headers["Content-Length"]) for r in requests] == [len(r.content) for r in requests]
    assert len({r.headers["Content-Length"] for r in requests}) == 3
    assert requests[0].headers["Authorization"] == "Bearer sk-test"
    assert "Cookie" not in requests[0].headers
    assert requests[2].headers["Cookie"] == "session=kept"
