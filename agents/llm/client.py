"""OpenAI SDK clients for a resolved provider: default base URLs and quirks per provider type.

Every provider type is spoken to through the OpenAI-compatible protocol; they differ in their
default base URL and a few headers. The SDK's own retries are off: the choke point retries
(honouring Retry-After) and fails over itself. All traffic goes through the guarded outbound
client, so a provider URL cannot reach private addresses unless the operator allows it.

Three things differ from a stock ``AsyncOpenAI`` because they sit on the path of every token:

- the connection pool has the SDK's own limits (1,000 connections, 100 kept alive), not httpx's
  defaults (100 and 20) that a client passed in as ``http_client`` would otherwise get: with more
  streams open than that, new calls queued for a free connection before sending anything;
- a streamed chat completion (:meth:`StreamingOpenAI.stream_chat_completion`, the choke point's
  only streaming call) is sent with the client's own httpx client and read by :class:`ChunkStream`,
  not through the SDK's request machinery (options, typed-dict transform, retry and auth-retry
  wrappers, URL merging): that machinery cost about 1.6 ms of CPU per call, a third of what a bare
  relay spends on a whole stream (``bench/stream_fanout.py``). Failures still surface as the SDK's
  own exceptions (``APIStatusError`` subclasses built by the SDK from the response,
  ``APIConnectionError``, ``APITimeoutError``, ``APIError`` for an error inside the stream), so
  the choke point classifies them as before;
- the chunks of a streamed chat completion are not built into the SDK's pydantic models (about
  half a millisecond of CPU each, on the event loop, per chunk of every stream) but returned as
  :class:`Fields`, the chunk's own JSON read by attribute (``chunk.choices[0].delta.content``,
  ``chunk.usage.prompt_tokens``): a field the upstream left out reads ``None``, as the models'
  optional fields do. Everything else (whole completions, embeddings, models) goes through the
  SDK as usual.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from uuid import UUID

import httpx
import openai
from openai import AsyncOpenAI

from agents.llm.sent import SentTrace, trace_for_sent
from core.outbound import guarded_async_client

DEFAULT_BASES = {
    "openai_compat": "https://api.openai.com/v1",
    "openai": "https://api.openai.com/v1",
    "anthropic": "https://api.anthropic.com/v1",
    "gemini": "https://generativelanguage.googleapis.com/v1beta/openai",
    "ollama": "http://127.0.0.1:11434/v1",
    "openrouter": "https://openrouter.ai/api/v1",
}

# Headers some providers want beside the bearer key.
TYPE_HEADERS = {
    "openrouter": {"HTTP-Referer": "https://github.com/agent-platform", "X-Title": "Agent Platform"},
    "anthropic": {"anthropic-version": "2023-06-01"},
}


@dataclass(frozen=True)
class ResolvedProvider:
    """Where one LLM call goes, and which level of BYOK chose it."""

    source: str  # "personal", "agent", "org" or "platform"
    provider_type: str
    api_base: str
    api_key: str
    model: str = ""
    provider_id: UUID | None = None
    name: str = ""
    extra_headers: dict[str, str] = field(default_factory=dict)

    @property
    def base_url(self) -> str:
        return (self.api_base or DEFAULT_BASES.get(self.provider_type, DEFAULT_BASES["openai"])).rstrip("/")


def parse_headers(raw: str) -> dict[str, str]:
    """The stored JSON object of extra headers ('' → {})."""
    if not raw:
        return {}
    value = json.loads(raw)
    return {str(k): str(v) for k, v in value.items()} if isinstance(value, dict) else {}


# The SDK's own defaults (openai._constants.DEFAULT_CONNECTION_LIMITS).
CONNECTION_LIMITS = httpx.Limits(max_connections=1000, max_keepalive_connections=100)


# How long a finished stream may take to send the rest of its body (see ChunkStream._drain).
DRAIN_SECONDS = 0.5


class Fields(dict):
    """A JSON object whose fields read as attributes; a missing field reads ``None``."""

    __slots__ = ()

    def __getattr__(self, name: str):
        if name.startswith("_"):  # copy, pickle and friends probe dunders: stay a plain dict
            raise AttributeError(name)
        return self.get(name)


_fields_decoder = json.JSONDecoder(object_hook=Fields)


def parse_fields(text: str):
    """``text`` (JSON) parsed with every object as :class:`Fields`, built by the C decoder as it
    reads (a chunk of a stream is parsed this way, tens of times a second per stream)."""
    return _fields_decoder.decode(text)


class ChunkStream:
    """The chunks of one streamed chat completion, as :class:`Fields`, read off the response's
    server-sent events the way the SDK's ``AsyncStream`` reads them: ``data: [DONE]`` ends it, an
    ``error`` (an ``event: error`` or a chunk carrying ``error``) raises ``openai.APIError``.
    :meth:`close` closes the response, which stops the upstream at once."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response

    def _chunk(self, event: str | None, payload: str):
        data = parse_fields(payload)
        if event == "error" or (isinstance(data, dict) and data.get("error")):
            error = data.get("error", data) if isinstance(data, dict) else data
            message = error.get("message") if isinstance(error, dict) else None
            raise openai.APIError(
                message if isinstance(message, str) and message else "An error occurred during streaming",
                request=self.response.request,
                body=error,
            )
        return data

    async def __aiter__(self) -> AsyncIterator[Fields]:
        event: str | None = None
        data: list[str] = []
        lines = self.response.aiter_lines()
        async for line in lines:
            if line:
                field_name, _, value = line.partition(":")
                value = value[1:] if value.startswith(" ") else value
                if field_name == "data":
                    data.append(value)
                elif field_name == "event":
                    event = value
                continue  # comments (":") and other fields
            if data:
                payload = "\n".join(data)
                if payload.startswith("[DONE]"):
                    await self._drain(lines)
                    return
                yield self._chunk(event, payload)
            event, data = None, []
        if data and not data[0].startswith("[DONE]"):  # a last event with no blank line after it
            yield self._chunk(event, "\n".join(data))

    async def _drain(self, lines: AsyncIterator[str]) -> None:
        """Read what follows ``[DONE]`` (the end of the chunked body, normally already received),
        for a little while at most: a response read to its end gives its connection back to the
        pool, one closed early takes it down, and the next call pays a new connection (a TLS
        handshake to a real provider) before its first token."""
        try:
            async with asyncio.timeout(DRAIN_SECONDS):
                async for _line in lines:
                    pass
        except (TimeoutError, httpx.HTTPError):
            pass  # close() drops the connection instead

    async def close(self) -> None:
        await self.response.aclose()


class StreamingOpenAI(AsyncOpenAI):
    """AsyncOpenAI with a lean streamed chat completion (see the module doc)."""

    async def stream_chat_completion(self, params: dict) -> ChunkStream:
        """``chat.completions.create(**params, stream=True)`` with usage in the last chunk: the body
        exactly as the choke point built it, the client's headers (key, provider headers) and
        timeout, and the SDK's exceptions for failures."""
        body = {**params, "stream": True, "stream_options": {"include_usage": True}}
        trace = trace_for_sent()  # a caller waits for the request to leave (``agents.llm.sent``)
        request = self._stream_request(json.dumps(body).encode(), trace)
        if trace is not None:
            trace.watch(request.extensions)
        try:
            response = await self._client.send(request, stream=True)
        except httpx.TimeoutException as exc:
            raise openai.APITimeoutError(request=request) from exc
        except httpx.TransportError as exc:
            raise openai.APIConnectionError(request=request) from exc
        if response.status_code >= 400:
            try:
                await response.aread()
            finally:
                await response.aclose()
            raise self._make_status_error_from_response(response)
        return ChunkStream(response)

    def _stream_request(self, content: bytes, trace: SentTrace | None) -> httpx.Request:
        """The request of a streamed completion: what ``self._client.build_request`` makes (the
        client's and the SDK's headers, the key, the client's timeout), from the parts that are
        the same for every call of this client, merged once. Merging them again on every call
        took 0.29 ms of the loop's CPU per stream that starts, in place, against 0.13 ms now
        (``bench/stream_inprocess.py``). A client that has kept cookies from a response merges
        as httpx does."""
        template = self.__dict__.get("_stream_template")
        if template is None or self._client.cookies:
            headers = {
                name: value
                for name, value in {**self.default_headers, **self.auth_headers}.items()
                if isinstance(value, str)  # the SDK's Omit markers for unset headers
            }
            built = self._client.build_request(
                "POST",
                f"{self.base_url}chat/completions",  # the SDK keeps base_url ending in "/"
                content=content,
                headers=headers,
            )  # the timeout is the client's own: the guarded client's, as the SDK's calls use it
            if self._client.cookies:
                if trace is not None:
                    built.extensions["trace"] = trace
                return built
            del built.headers["Content-Length"]  # the body's own, set per request below
            template = self.__dict__["_stream_template"] = (built.url, built.headers, built.extensions)
        url, headers, extensions = template
        extensions = {**extensions, "trace": trace} if trace is not None else extensions
        return httpx.Request("POST", url, content=content, headers=headers, extensions=extensions)


def make_client(provider: ResolvedProvider, *, read_timeout: float | None = None) -> AsyncOpenAI:
    """An AsyncOpenAI client for one provider (no SDK retries; guarded transport)."""
    headers = {**TYPE_HEADERS.get(provider.provider_type, {}), **provider.extra_headers}
    return StreamingOpenAI(
        api_key=provider.api_key or "not-needed",  # Ollama and some gateways take no key
        base_url=provider.base_url,
        max_retries=0,
        default_headers=headers,
        http_client=guarded_async_client(read_timeout=read_timeout, limits=CONNECTION_LIMITS),
    )
