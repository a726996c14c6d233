"""Fixtures of the billing tests: an ADMIN client, providers on the fake upstream, a fresh
guard-state cache per test."""

from __future__ import annotations

import json
import uuid

import pytest

from accounts.models import Role
from agents.llm import clear_resolution_cache
from agents.models import Provider
from tests.conftest import clear_cache, client_for
from tests.factories import MembershipFactory


@pytest.fixture(autouse=True)
def _fresh_state(settings):
    settings.OPENAI_API_KEY = ""
    settings.OPENAI_BASE_URL = ""
    settings.LLM_RETRY_BASE_SECONDS = 0.001
    clear_cache()
    clear_resolution_cache()
    yield
    clear_cache()
    clear_resolution_cache()


@pytest.fixture
def admin(org):
    return MembershipFactory(org=org, role=Role.ADMIN).user


@pytest.fixture
def admin_client(admin):
    return client_for(admin)


@pytest.fixture
def up(fake_upstream, allow_loopback):
    return fake_upstream


def make_provider(org, up, *, mode=None, provider_type="openai_compat", **fields) -> Provider:
    headers = {"X-Fake-Mode": mode} if mode else {}
    return Provider.objects.create(
        org=org,
        name=fields.pop("name", f"p-{uuid.uuid4().hex[:8]}"),
        provider_type=provider_type,
        api_base=up.base_url,
        api_key=f"sk-{uuid.uuid4().hex}",
        extra_headers=json.dumps(headers) if headers else "",
        **fields,
    )
