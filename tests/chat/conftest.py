"""Shared chat fixtures: a provider on the fake upstream, agents, conversations with messages, and
SSE helpers. Other chat test modules reuse these; keep the names stable."""

from __future__ import annotations

import json
import uuid
from contextlib import contextmanager
from typing import Any

import pytest

from agents.models import Agent, Provider
from chat.models import Conversation, Message


def make_provider(org, fake_upstream, **fields) -> Provider:
    """A provider of ``org`` on the fake upstream, with its own API key (so the fake's per-key
    counters, e.g. ``aborted_for(f"Bearer {provider.api_key}")``, count only this test)."""
    values = {
        "name": f"fake-{uuid.uuid4().hex[:6]}",
        "provider_type": "openai_compat",
        "api_base": fake_upstream.base_url,
        "api_key": f"sk-test-{uuid.uuid4().hex}",
        **fields,
    }
    return Provider.objects.create(org=org, **values)


def make_agent(org, provider=None, model: str = "fake-model-1", **fields) -> Agent:
    """An org-visible agent of ``org`` on ``provider`` with ``model`` (the fake's modes: ``slow``,
    ``hang-midway``, ``tools-N``, ``fail-<status>``…)."""
    values = {"key": f"agent-{uuid.uuid4().hex[:8]}", "name": "Chatter", "provider": provider, "model": model}
    values.update(fields)
    return Agent.objects.create(org=org, **values)


def make_conversation(org, user, agent=None, messages: list[tuple[str, str]] = (), **fields) -> Conversation:
    """A conversation of ``user`` with complete messages ``[(role, text), …]`` at indexes 0…n-1."""
    conversation = Conversation.objects.create(org=org, user=user, agent=agent, **fields)
    Message.objects.bulk_create(
        [
            Message(
                org=org,
                conversation=conversation,
                index=i,
                role=role,
                content=text,
                parts=[{"type": "text", "text": text}],
            )
            for i, (role, text) in enumerate(messages)
        ]
    )
    conversation.message_count = len(messages)
    conversation.save(update_fields=["message_count"])
    return conversation


def parse_sse(text: str) -> list[dict[str, Any]]:
    """Events of an SSE body: ``[{"id", "event", "data"}]`` (comments skipped)."""
    events = []
    for block in text.replace("\r\n", "\n").split("\n\n"):
        fields: dict[str, list[str]] = {}
        for line in block.split("\n"):
            if not line or line.startswith(":"):
                continue
            name, _, value = line.partition(":")
            fields.setdefault(name, []).append(value.removeprefix(" "))
        if "event" in fields or "data" in fields:
            data = "\n".join(fields.get("data", []))
            events.append(
                {
                    "id": (fields.get("id") or [None])[-1],
                    "event": (fields.get("event") or [None])[-1],
                    "data": json.loads(data) if data else None,
                }
            )
    return events


@pytest.fixture
def chat_provider(org, fake_upstream, allow_loopback) -> Provider:
    return make_provider(org, fake_upstream)


@pytest.fixture
def chat_agent(org, chat_provider) -> Agent:
    return make_agent(org, chat_provider)


@pytest.fixture
def no_platform_key(settings):
    """No platform-wide LLM key: an org without providers has no provider at all."""
    settings.OPENAI_API_KEY = ""
    settings.OPENAI_BASE_URL = ""


@contextmanager
def post_event_stream(url: str, *, body: dict, headers: dict[str, str], read_timeout: float = 60.0):
    """POST ``body`` to ``url`` and read the answer as an event stream (``SseStream``); leaving the
    block closes the connection, as a client that goes away does."""
    import threading

    import httpx

    from tests.support.asgi_server import SseStream, _shutdown_socket

    timeout = httpx.Timeout(10.0, read=read_timeout)
    request_headers = {"Accept": "text/event-stream", **headers}
    with (
        httpx.Client(timeout=timeout) as client,
        client.stream("POST", url, json=body, headers=request_headers) as response,
    ):
        if response.status_code != 200:
            response.read()
            raise AssertionError(f"POST {url} answered {response.status_code}: {response.text}")
        assert response.headers["content-type"].startswith("text/event-stream")
        stream = SseStream(response=response)
        reader = threading.Thread(target=stream._read, name="sse-reader", daemon=True)
        reader.start()
        try:
            yield stream
        finally:
            _shutdown_socket(response)
            reader.join(timeout=10)


def read_until_end(stream, timeout: float = 30.0) -> list:
    """Events of ``stream`` up to and including ``message.end`` or ``error``."""
    events = []
    while True:
        event = stream.next_event(timeout=timeout)
        events.append(event)
        if event.event in ("message.end", "error"):
            return events


def api_key_for(org, user) -> str:
    """A personal API key (the raw secret) of ``user`` in ``org``, for servers in another process."""
    from accounts.services.keys import api_key_create

    _key, raw = api_key_create(org=org, actor=user, name=f"chat-{uuid.uuid4().hex[:6]}")
    return raw
