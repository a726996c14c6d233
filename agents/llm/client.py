"""OpenAI SDK clients for a resolved provider: default base URLs and quirks per provider type.

Every provider type is spoken to through the OpenAI-compatible protocol; they differ in their
default base URL and a few headers. The SDK's own retries are off: the choke point retries
(honouring Retry-After) and fails over itself. All traffic goes through the guarded outbound
client, so a provider URL cannot reach private addresses unless the operator allows it.

Two things differ from a stock ``AsyncOpenAI`` because they sit on the path of every token:

- the connection pool has the SDK's own limits (1,000 connections, 100 kept alive), not httpx's
  defaults (100 and 20) that a client passed in as ``http_client`` would otherwise get: with more
  streams open than that, new calls queued for a free connection before sending anything;
- a streamed chat completion's request body goes out as the choke point built it, without the
  SDK's typed-dict transform (:meth:`StreamingOpenAI.stream_chat_completion`);
- the chunks of a streamed chat completion are not built into the SDK's pydantic models (about
  half a millisecond of CPU each, on the event loop, per chunk of every stream) but returned as
  :class:`Fields`, the chunk's own JSON read by attribute (``chunk.choices[0].delta.content``,
  ``chunk.usage.prompt_tokens``): a field the upstream left out reads ``None``, as the models'
  optional fields do. Everything else (whole completions, embeddings, models) is parsed as usual.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from uuid import UUID

import httpx
from openai import AsyncOpenAI, AsyncStream
from openai._base_client import make_request_options
from openai.types.chat import ChatCompletion, ChatCompletionChunk

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


class Fields(dict):
    """A JSON object whose fields read as attributes; a missing field reads ``None``."""

    __slots__ = ()

    def __getattr__(self, name: str):
        if name.startswith("_"):  # copy, pickle and friends probe dunders: stay a plain dict
            raise AttributeError(name)
        return self.get(name)


def as_fields(value):
    """``value`` (parsed JSON) with every object turned into :class:`Fields`."""
    if isinstance(value, dict):
        return Fields({key: as_fields(item) for key, item in value.items()})
    if isinstance(value, list):
        return [as_fields(item) for item in value]
    return value


class StreamingOpenAI(AsyncOpenAI):
    """AsyncOpenAI whose streamed chat-completion chunks are :class:`Fields` (see the module doc)."""

    async def stream_chat_completion(self, params: dict) -> AsyncStream:
        """``chat.completions.create(**params, stream=True)`` with usage in the last chunk, minus
        the SDK's walk of the request through its typed-dict transform (the body here is plain
        JSON already, built by the choke point): a few hundred microseconds of every call."""
        body = {**params, "stream": True, "stream_options": {"include_usage": True}}
        return await self.post(
            "/chat/completions",
            body=body,
            options=make_request_options(security={"bearer_auth": True}),
            cast_to=ChatCompletion,
            stream=True,
            stream_cls=AsyncStream[ChatCompletionChunk],
        )

    def _process_response_data(self, *, data, cast_to, response):
        if cast_to is ChatCompletionChunk and isinstance(data, dict):
            return as_fields(data)
        return super()._process_response_data(data=data, cast_to=cast_to, response=response)


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
