"""OpenAI SDK clients for a resolved provider: default base URLs and quirks per provider type.

Every provider type is spoken to through the OpenAI-compatible protocol; they differ in their
default base URL and a few headers. The SDK's own retries are off: the choke point retries
(honouring Retry-After) and fails over itself. All traffic goes through the guarded outbound
client, so a provider URL cannot reach private addresses unless the operator allows it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from uuid import UUID

from openai import AsyncOpenAI

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


def make_client(provider: ResolvedProvider, *, read_timeout: float | None = None) -> AsyncOpenAI:
    """An AsyncOpenAI client for one provider (no SDK retries; guarded transport)."""
    headers = {**TYPE_HEADERS.get(provider.provider_type, {}), **provider.extra_headers}
    return AsyncOpenAI(
        api_key=provider.api_key or "not-needed",  # Ollama and some gateways take no key
        base_url=provider.base_url,
        max_retries=0,
        default_headers=headers,
        http_client=guarded_async_client(read_timeout=read_timeout),
    )
