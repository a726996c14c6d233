"""POST /api/v1/agents/{id}/wake: one run of an agent through the API, against the fake upstream."""

from __future__ import annotations

import uuid

import pytest

from accounts.models import AuditLog, Role
from agents.models import Agent, AgentRun, Provider
from tests.accounts.factories_orgs import client_with_role
from tests.conftest import client_for
from tests.core.test_errors import assert_envelope


@pytest.fixture
def provider(org, fake_upstream, allow_loopback):
    return Provider.objects.create(
        org=org,
        name="fake",
        provider_type="openai_compat",
        api_base=fake_upstream.base_url,
        api_key=f"sk-test-{uuid.uuid4().hex}",
    )


@pytest.fixture
def no_platform_key(settings):
    settings.OPENAI_API_KEY = ""
    settings.OPENAI_BASE_URL = ""


def make_agent(org, provider=None, model="fake-model-1", **fields) -> Agent:
    return Agent.objects.create(
        org=org, key=f"agent-{uuid.uuid4().hex[:8]}", name="Waker", provider=provider, model=model, **fields
    )


def wake(client, agent, body):
    return client.post(f"/api/v1/agents/{agent.pk}/wake", body, format="json")


def test_wake_answers_with_content_run_and_usage(org, member, member_client, provider):
    agent = make_agent(org, provider)
    response = wake(member_client, agent, {"message": "ping"})
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["content"] == "echo: ping"
    assert "echo: ping" in response.content.decode()
    assert body["finish_reason"] == "stop"
    assert body["provider_source"] == "agent"
    usage = body["usage"]
    assert usage["prompt_tokens"] > 0 and usage["completion_tokens"] > 0
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]

    run = AgentRun.objects.get(pk=body["run_id"])
    assert run.org == org and run.agent == agent and run.user == member
    assert run.status == AgentRun.Status.SUCCEEDED
    assert run.output == "echo: ping"
    assert run.prompt_tokens == usage["prompt_tokens"]
    assert [s["type"] for s in run.steps] == ["llm"]
    audit = AuditLog.objects.get(org=org, action="agent.woken")
    assert audit.entity_id == str(agent.pk)
    assert audit.actor == member


def test_wake_with_a_tool_loop_reports_the_tool_calls(org, member_client, provider):
    agent = make_agent(org, provider, model="tools-2", tools=["current_time"])
    body = wake(member_client, agent, {"message": "what time is it"}).json()
    assert body["content"] == "done after 2 tools"
    assert body["tool_calls"] == 2
    run = AgentRun.objects.get(pk=body["run_id"])
    # current_time takes no "step": the fake's arguments come back as a tool error, the run goes on.
    assert [s["type"] for s in run.steps] == ["llm", "tool", "llm", "tool", "llm"]


def test_wake_keeps_the_conversation_id(org, member_client, provider):
    agent = make_agent(org, provider)
    conversation = uuid.uuid4()
    body = wake(member_client, agent, {"message": "hi", "conversation_id": str(conversation)}).json()
    assert AgentRun.objects.get(pk=body["run_id"]).conversation_id == conversation


def test_wake_without_any_provider_is_424_no_provider(org, member_client, no_platform_key):
    agent = make_agent(org)
    error = assert_envelope(wake(member_client, agent, {"message": "ping"}), 424, "ERR_NO_PROVIDER")
    assert "provider" in error["message"].lower()
    run = AgentRun.objects.get(agent=agent)
    assert run.status == AgentRun.Status.FAILED
    assert run.error["code"] == "ERR_NO_PROVIDER"


def test_wake_with_a_refused_key_is_424_and_a_failing_upstream_is_502(org, member_client, provider):
    assert_envelope(wake(member_client, make_agent(org, provider, model="fail-401"), {"message": "x"}), 424)
    response = wake(member_client, make_agent(org, provider, model="fail-400"), {"message": "x"})
    assert response.status_code == 502
    assert set(AgentRun.objects.values_list("status", flat=True)) == {AgentRun.Status.FAILED}


def test_wake_of_another_orgs_agent_is_404_and_runs_nothing(other_org, member_client, fake_upstream):
    foreign = make_agent(other_org)
    assert_envelope(wake(member_client, foreign, {"message": "ping"}), 404)
    assert_envelope(wake(member_client, foreign, {}), 404)  # looked up before the body is judged
    assert_envelope(
        member_client.post(f"/api/v1/agents/{uuid.uuid4()}/wake", {"message": "x"}, format="json"), 404
    )
    assert not AgentRun.objects.exists()


def test_wake_of_someone_elses_private_agent_is_404(org, owner, member_client, provider):
    private = make_agent(org, provider, owner=owner, visibility=Agent.Visibility.PRIVATE)
    assert_envelope(wake(member_client, private, {"message": "ping"}), 404)
    assert (
        client_for(owner)
        .post(f"/api/v1/agents/{private.pk}/wake", {"message": "ping"}, format="json")
        .status_code
        == 200
    )


def test_wake_validates_the_body(org, member_client, provider):
    agent = make_agent(org, provider)
    assert_envelope(wake(member_client, agent, {}), 400, "ERR_VALIDATION")
    assert_envelope(wake(member_client, agent, {"message": "   "}), 400, "ERR_VALIDATION")
    assert_envelope(
        wake(member_client, agent, {"message": "x", "conversation_id": "nope"}), 400, "ERR_VALIDATION"
    )
    assert not AgentRun.objects.exists()


def test_wake_needs_member_and_authentication(org, anon_client, provider):
    agent = make_agent(org, provider)
    _, viewer_client = client_with_role(org, Role.VIEWER)
    assert_envelope(wake(viewer_client, agent, {"message": "x"}), 403, "ERR_ROLE_REQUIRED")
    assert_envelope(wake(anon_client, agent, {"message": "x"}), 401)
    assert not AgentRun.objects.exists()


def test_wake_with_an_api_key(org, owner_client, provider):
    agent = make_agent(org, provider)
    key = owner_client.post("/api/v1/api-keys", {"name": "script", "kind": "service"}, format="json").json()[
        "key"
    ]
    from rest_framework.test import APIClient

    client = APIClient()
    response = client.post(
        f"/api/v1/agents/{agent.pk}/wake",
        {"message": "ping"},
        format="json",
        HTTP_AUTHORIZATION=f"Bearer {key}",
    )
    assert response.status_code == 200, response.content
    assert response.json()["content"] == "echo: ping"


@pytest.mark.django_db(transaction=True)
def test_wake_under_daphne_runs_tool_loops_side_by_side(tmp_path, org, owner, fake_upstream):
    """Under a real ASGI server the run goes onto the server's event loop (its rows written through
    sync_to_async); two wakes at once, each a tool loop over a database tool, both finish."""
    import httpx

    from accounts.services.keys import api_key_create
    from agents.models import AgentMemoryEntry
    from tests.support.asgi_server import run_asgi_server

    provider = Provider.objects.create(
        org=org, name="fake", api_base=fake_upstream.base_url, api_key=f"sk-test-{uuid.uuid4().hex}"
    )
    agents = [make_agent(org, provider, model="tools-2", tools=["memory_save"]) for _ in range(2)]
    _key, raw = api_key_create(org=org, actor=owner, name="k")
    env = {"OUTBOUND_ALLOWED_HOSTS": "127.0.0.1,localhost"}
    with run_asgi_server(log_dir=tmp_path, extra_env=env) as server:
        from concurrent.futures import ThreadPoolExecutor

        def call(agent):
            with httpx.Client(base_url=server.base_url, timeout=30) as http:
                return http.post(
                    f"/api/v1/agents/{agent.pk}/wake",
                    json={"message": "remember"},
                    headers={"Authorization": f"Bearer {raw}"},
                )

        with ThreadPoolExecutor(2) as pool:
            responses = list(pool.map(call, agents))
        log = server.log()
    for response in responses:
        assert response.status_code == 200, (response.text, log)
        assert response.json()["content"] == "done after 2 tools"
    # The fake's {"step": k} is not a memory_save call: each tool step is an error fed back.
    assert AgentMemoryEntry.objects.count() == 0
    assert AgentRun.objects.filter(status=AgentRun.Status.SUCCEEDED).count() == 2
