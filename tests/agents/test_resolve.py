"""BYOK resolution (agents.llm.resolve): which provider serves a call, in which order the others
are tried, which model is asked for, and how quickly edits are seen through the cache."""

from __future__ import annotations

import json
import uuid
from datetime import timedelta

import pytest
from django.utils import timezone

from agents.llm import NoProviderError, chat, clear_resolution_cache, resolve_providers
from agents.llm import resolve as resolve_module
from agents.models import Agent, OrgAIConfig, PersonalAIConfig, Provider


@pytest.fixture(autouse=True)
def _clean_resolution(settings):
    settings.OPENAI_API_KEY = ""
    settings.OPENAI_BASE_URL = ""
    clear_resolution_cache()
    yield
    clear_resolution_cache()


def make_provider(
    org, *, base="https://llm.example.com/v1", priority=100, enabled=True, **fields
) -> Provider:
    return Provider.objects.create(
        org=org,
        name=fields.pop("name", f"p-{uuid.uuid4().hex[:8]}"),
        api_base=base,
        api_key=fields.pop("api_key", f"sk-{uuid.uuid4().hex}"),
        priority=priority,
        enabled=enabled,
        **fields,
    )


def make_agent(org, provider=None, model="") -> Agent:
    return Agent.objects.create(
        org=org, key=f"a-{uuid.uuid4().hex[:8]}", name="A", provider=provider, model=model
    )


def personal_key(user, *, base="https://personal.example.com/v1", model="") -> PersonalAIConfig:
    return PersonalAIConfig.objects.create(user=user, api_base=base, api_key="sk-personal-0001", model=model)


def sources(providers) -> list[tuple[str, object]]:
    return [(p.source, p.provider_id) for p in providers]


# --- precedence --------------------------------------------------------------------------------


def test_personal_key_comes_first_when_the_org_allows_it(org, member):
    primary = make_provider(org)
    OrgAIConfig.objects.create(org=org, primary_provider=primary, allow_personal_keys=True)
    personal_key(member)
    agent = make_agent(org, make_provider(org, priority=5))

    providers = resolve_providers(org=org, user=member, agent=agent)

    assert providers[0].source == "personal"
    assert providers[0].api_key == "sk-personal-0001"
    assert providers[0].provider_id is None
    assert [p.source for p in providers[1:]] == ["agent", "org"]


def test_personal_key_is_skipped_when_the_org_disallows_it(org, member):
    primary = make_provider(org)
    OrgAIConfig.objects.create(org=org, primary_provider=primary, allow_personal_keys=False)
    personal_key(member)

    providers = resolve_providers(org=org, user=member)

    assert sources(providers) == [("org", primary.pk)]


def test_agent_provider_comes_before_the_org_primary(org):
    primary = make_provider(org, priority=1)
    agents_own = make_provider(org, priority=50)
    OrgAIConfig.objects.create(org=org, primary_provider=primary)

    providers = resolve_providers(org=org, agent=make_agent(org, agents_own))

    assert sources(providers) == [("agent", agents_own.pk), ("org", primary.pk)]


def test_disabled_agent_provider_is_skipped(org):
    primary = make_provider(org)
    OrgAIConfig.objects.create(org=org, primary_provider=primary)
    disabled = make_provider(org, enabled=False)

    providers = resolve_providers(org=org, agent=make_agent(org, disabled))

    assert sources(providers) == [("org", primary.pk)]


def test_another_orgs_provider_on_an_agent_is_ignored(org, other_org):
    mine = make_provider(org)
    theirs = make_provider(other_org)
    agent = make_agent(org)
    Agent.objects.filter(pk=agent.pk).update(provider=theirs)
    agent.refresh_from_db()

    assert sources(resolve_providers(org=org, agent=agent)) == [("org", mine.pk)]


def test_org_primary_then_other_enabled_providers_by_priority(org):
    make_provider(org, priority=30, name="third")
    make_provider(org, priority=10, name="first")
    primary = make_provider(org, priority=99, name="primary")
    make_provider(org, priority=1, enabled=False, name="off")
    OrgAIConfig.objects.create(org=org, primary_provider=primary)

    providers = resolve_providers(org=org)

    assert [p.name for p in providers] == ["primary", "first", "third"]
    assert {p.source for p in providers} == {"org"}


def test_without_a_primary_the_first_provider_by_priority_serves(org):
    later = make_provider(org, priority=20)
    sooner = make_provider(org, priority=10)

    assert sources(resolve_providers(org=org)) == [("org", sooner.pk), ("org", later.pk)]


def test_disabled_primary_is_skipped(org):
    primary = make_provider(org, enabled=False)
    backup = make_provider(org)
    OrgAIConfig.objects.create(org=org, primary_provider=primary)

    assert sources(resolve_providers(org=org)) == [("org", backup.pk)]


def test_platform_default_is_used_last(org, settings):
    settings.OPENAI_API_KEY = "sk-platform"
    settings.OPENAI_BASE_URL = "https://platform.example.com/v1"
    own = make_provider(org)

    providers = resolve_providers(org=org)

    assert sources(providers) == [("org", own.pk), ("platform", None)]
    assert providers[-1].api_key == "sk-platform"
    assert providers[-1].base_url == "https://platform.example.com/v1"


def test_platform_default_serves_an_org_without_providers(org, settings):
    settings.OPENAI_API_KEY = "sk-platform"

    providers = resolve_providers(org=org)

    assert sources(providers) == [("platform", None)]
    assert providers[0].base_url == "https://api.openai.com/v1"


def test_no_provider_anywhere_is_424_with_a_hint(org):
    with pytest.raises(NoProviderError) as caught:
        resolve_providers(org=org)

    assert caught.value.status_code == 424
    assert caught.value.code == "ERR_NO_PROVIDER"
    assert "POST /api/v1/providers" in caught.value.message
    assert "OPENAI_API_KEY" in caught.value.message


def test_only_disabled_providers_is_no_provider(org):
    make_provider(org, enabled=False)

    with pytest.raises(NoProviderError):
        resolve_providers(org=org)


def test_unhealthy_provider_is_tried_after_the_healthy_ones(org, settings):
    settings.OPENAI_API_KEY = "sk-platform"
    sick = make_provider(org, priority=1, name="sick")
    make_provider(org, priority=2, name="well")
    Provider.objects.filter(pk=sick.pk).update(unhealthy_until=timezone.now() + timedelta(seconds=60))
    clear_resolution_cache()

    assert [p.name for p in resolve_providers(org=org)] == ["well", "platform default", "sick"]

    Provider.objects.filter(pk=sick.pk).update(unhealthy_until=timezone.now() - timedelta(seconds=1))
    clear_resolution_cache()
    assert [p.name for p in resolve_providers(org=org)] == ["sick", "well", "platform default"]


# --- model precedence ---------------------------------------------------------------------------


def test_model_explicit_beats_agent_beats_org_beats_personal(org, member):
    primary = make_provider(org)
    OrgAIConfig.objects.create(
        org=org, primary_provider=primary, primary_model="org-model", allow_personal_keys=True
    )
    personal_key(member, model="personal-model")
    agent = make_agent(org, model="agent-model")

    assert {p.model for p in resolve_providers(org=org, user=member, agent=agent, model="explicit")} == {
        "explicit"
    }
    assert {p.model for p in resolve_providers(org=org, user=member, agent=agent)} == {"agent-model"}
    assert {p.model for p in resolve_providers(org=org, user=member)} == {"org-model"}
    OrgAIConfig.objects.filter(org=org).update(primary_model="")
    clear_resolution_cache()
    assert {p.model for p in resolve_providers(org=org, user=member)} == {"personal-model"}


def test_model_falls_back_to_the_default(org, settings):
    settings.LLM_DEFAULT_MODEL = "house-model"
    make_provider(org)

    assert resolve_providers(org=org)[0].model == "house-model"


def test_extra_headers_and_type_are_carried(org):
    make_provider(org, provider_type="openrouter", extra_headers=json.dumps({"X-Team": "a"}))

    (provider,) = resolve_providers(org=org)

    assert provider.provider_type == "openrouter"
    assert provider.extra_headers == {"X-Team": "a"}


# --- cache ---------------------------------------------------------------------------------------


def test_saving_a_provider_is_seen_at_once(org):
    provider = make_provider(org)
    assert resolve_providers(org=org)[0].api_key == provider.api_key

    provider.api_key = "sk-rotated-key-1234"
    provider.save()

    assert resolve_providers(org=org)[0].api_key == "sk-rotated-key-1234"


def test_saving_the_org_config_and_personal_key_is_seen_at_once(org, member):
    primary = make_provider(org)
    config = OrgAIConfig.objects.create(org=org, primary_provider=primary)
    personal = personal_key(member)
    assert resolve_providers(org=org, user=member)[0].source == "org"

    config.allow_personal_keys = True
    config.save()
    assert resolve_providers(org=org, user=member)[0].source == "personal"

    personal.delete()
    assert resolve_providers(org=org, user=member)[0].source == "org"


def test_an_update_without_signals_is_seen_when_the_short_ttl_expires(org, monkeypatch):
    provider = make_provider(org)
    assert resolve_providers(org=org)[0].base_url == "https://llm.example.com/v1"
    Provider.objects.filter(pk=provider.pk).update(api_base="https://moved.example.com/v1")

    assert resolve_providers(org=org)[0].base_url == "https://llm.example.com/v1"  # cached
    now = resolve_module.time.monotonic()
    monkeypatch.setattr(resolve_module.time, "monotonic", lambda: now + 6)

    assert resolve_providers(org=org)[0].base_url == "https://moved.example.com/v1"


def test_the_cache_can_be_turned_off(org, settings):
    settings.LLM_RESOLVE_CACHE_SECONDS = 0
    provider = make_provider(org)
    resolve_providers(org=org)
    Provider.objects.filter(pk=provider.pk).update(api_base="https://moved.example.com/v1")

    assert resolve_providers(org=org)[0].base_url == "https://moved.example.com/v1"


# --- the answer says which level served it -------------------------------------------------------


@pytest.fixture
def live(org, fake_upstream, allow_loopback):
    """Every level of BYOK points at the fake, each with its own key."""
    return fake_upstream


def test_each_byok_level_serves_and_says_so(org, member, live, settings):
    settings.OPENAI_API_KEY = "sk-platform-live"
    settings.OPENAI_BASE_URL = live.base_url
    messages = [{"role": "user", "content": "who serves"}]

    assert chat(org=org, messages=messages).provider_source == "platform"

    primary = make_provider(org, base=live.base_url)
    config = OrgAIConfig.objects.create(org=org, primary_provider=primary)
    result = chat(org=org, messages=messages)
    assert (result.provider_source, result.provider_id) == ("org", primary.pk)

    agents_own = make_provider(org, base=live.base_url)
    agent = make_agent(org, agents_own)
    result = chat(org=org, messages=messages, agent=agent)
    assert (result.provider_source, result.provider_id) == ("agent", agents_own.pk)

    personal_key(member, base=live.base_url)
    config.allow_personal_keys = True
    config.save()
    result = chat(org=org, messages=messages, agent=agent, user=member)
    assert (result.provider_source, result.provider_id) == ("personal", None)
    assert result.content == "echo: who serves"


@pytest.mark.django_db(transaction=True)
def test_on_a_server_loop_a_just_expired_resolution_answers_while_a_thread_reloads_it(settings):
    import asyncio
    import time

    from core.db_threads import started
    from tests.factories import OrganizationFactory

    org = OrganizationFactory()
    provider = make_provider(org)
    settings.LLM_RESOLVE_CACHE_SECONDS = 0.05
    assert resolve_providers(org=org)[0].base_url == "https://llm.example.com/v1"
    Provider.objects.filter(pk=provider.pk).update(api_base="https://moved.example.com/v1")  # no signal
    time.sleep(0.1)

    async def on_the_loop():
        return [c.provider.base_url for c in await resolve_module.aresolve_candidates(org=org)]

    reload_key = resolve_module.refresh_key(org.pk)

    async def reloaded():
        answer = await on_the_loop()
        pending = started(reload_key)
        for _ in range(400):
            await asyncio.sleep(0.005)
            if resolve_module._cached_or_stale(("org", str(org.pk)))[1]:
                break
        await asyncio.sleep(0)  # the reload's task has ended
        still_pending = started(reload_key)
        settings.LLM_RESOLVE_CACHE_SECONDS = 60
        return answer, pending, await on_the_loop(), still_pending

    # asyncio.run's loop is a server's loop (not one async_to_sync made): the expired answer serves
    # once more, and a pool thread reads the edit a moment later.
    answer, pending, after, still_pending = asyncio.run(reloaded())
    assert answer == ["https://llm.example.com/v1"]
    assert pending is True
    assert after == ["https://moved.example.com/v1"]
    assert still_pending is False

    settings.LLM_RESOLVE_CACHE_SECONDS = 0.05
    settings.LLM_RESOLVE_STALE_SECONDS = 0
    Provider.objects.filter(pk=provider.pk).update(api_base="https://third.example.com/v1")
    time.sleep(0.1)
    assert asyncio.run(on_the_loop()) == ["https://third.example.com/v1"]  # too old: read afresh


def test_a_sync_caller_never_gets_an_expired_resolution(org, monkeypatch):
    provider = make_provider(org)
    resolve_providers(org=org)
    Provider.objects.filter(pk=provider.pk).update(api_base="https://moved.example.com/v1")
    now = resolve_module.time.monotonic()
    monkeypatch.setattr(resolve_module.time, "monotonic", lambda: now + 6)  # expired, within stale

    from asgiref.sync import async_to_sync

    candidates = async_to_sync(resolve_module.aresolve_candidates)(org=org)  # a test's / task's loop
    assert candidates[0].provider.base_url == "https://moved.example.com/v1"
