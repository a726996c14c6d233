"""Fixtures of the agent memory tests: an agent everyone in the org sees, one of another org, and
a provider on the fake upstream for the tests that call the LLM."""

from __future__ import annotations

import uuid

import pytest

from agents.models import Agent, Provider


def make_agent(org, owner=None, provider=None, model="fake-model-1", **fields) -> Agent:
    fields.setdefault("key", f"agent-{uuid.uuid4().hex[:8]}")
    fields.setdefault("name", "Rememberer")
    fields.setdefault("visibility", Agent.Visibility.ORG)
    return Agent.objects.create(org=org, owner=owner, provider=provider, model=model, **fields)


@pytest.fixture
def agent(org, owner):
    return make_agent(org, owner=owner)


@pytest.fixture
def foreign_agent(other_org, outsider):
    return make_agent(other_org, owner=outsider, name="Theirs")


@pytest.fixture
def provider(org, fake_upstream, allow_loopback):
    return Provider.objects.create(
        org=org,
        name="fake",
        provider_type="openai_compat",
        api_base=fake_upstream.base_url,
        api_key=f"sk-test-{uuid.uuid4().hex}",
    )
