"""POST /api/v1/ai/execute: one completion with no conversation, or one run of an agent."""

from __future__ import annotations

import json
import uuid

import pytest

from accounts.models import Role
from agents.models import AgentRun
from chat.models import Conversation
from tests.chat import ai_fixtures
from tests.chat.conftest import make_agent, make_provider
from tests.conftest import client_for
from tests.core.test_errors import assert_envelope
from tests.factories import MembershipFactory

_fresh_llm = ai_fixtures._fresh_llm
provider = ai_fixtures.provider
usage_events = ai_fixtures.usage_events

EXECUTE = "/api/v1/ai/execute"


def test_a_prompt_gets_one_completion(member_client, member, provider, usage_events):
    response = member_client.post(EXECUTE, {"prompt": "summarise this"}, format="json")

    assert response.status_code == 200, response.content
    body = response.json()
    assert body["content"] == "echo: summarise this"
    assert body["finish_reason"] == "stop"
    assert body["model"] == "gpt-4o-mini"  # LLM_DEFAULT_MODEL: the org names none
    assert body["usage"] == {"prompt_tokens": 10, "completion_tokens": 3, "total_tokens": 13}
    assert body["run_id"] is None
    assert not Conversation.objects.exists()  # no conversation is kept
    (event,) = usage_events
    assert event["purpose"] == "execute" and event["user_id"] == str(member.pk)


def test_system_model_and_sampling_options_are_passed(member_client, provider):
    body = {
        "prompt": "hi",
        "system": "Be brief.",
        "model": "fake-model-2",
        "max_tokens": 20,
        "temperature": 0.2,
    }
    response = member_client.post(EXECUTE, body, format="json")

    assert response.status_code == 200, response.content
    assert response.json()["model"] == "fake-model-2"


def test_a_response_format_goes_upstream(member_client, provider):
    schema = {"type": "object", "properties": {"answer": {"type": "integer"}}}
    body = {
        "prompt": "what is six times seven",
        "model": "json-mini",
        "response_format": {"type": "json_schema", "json_schema": {"name": "a", "schema": schema}},
    }
    response = member_client.post(EXECUTE, body, format="json")

    assert response.status_code == 200, response.content
    assert json.loads(response.json()["content"]) == {"answer": 1}  # built by the fake from the schema


def test_an_agent_runs_with_its_own_settings(member_client, org, provider):
    agent = make_agent(org, provider, model="fake-agent-model")

    response = member_client.post(EXECUTE, {"prompt": "hello agent", "agent": str(agent.pk)}, format="json")

    assert response.status_code == 200, response.content
    body = response.json()
    assert body["content"] == "echo: hello agent"
    assert body["model"] == "fake-agent-model"
    run = AgentRun.objects.get(pk=body["run_id"])
    assert run.trigger == "execute" and run.status == AgentRun.Status.SUCCEEDED


def test_an_agent_with_tools_loops_until_done(member_client, org, provider):
    agent = make_agent(org, provider, model="tools-2", tools=["current_time"])

    response = member_client.post(EXECUTE, {"prompt": "what time", "agent": str(agent.pk)}, format="json")

    assert response.status_code == 200, response.content
    assert response.json()["content"] == "done after 2 tools"


def test_another_orgs_agent_is_404(member_client, other_org, fake_upstream, allow_loopback, provider):
    theirs = make_agent(other_org, make_provider(other_org, fake_upstream))

    response = member_client.post(EXECUTE, {"prompt": "hi", "agent": str(theirs.pk)}, format="json")

    assert_envelope(response, 404)
    assert not AgentRun.objects.exists()
    response = member_client.post(EXECUTE, {"prompt": "hi", "agent": str(uuid.uuid4())}, format="json")
    assert_envelope(response, 404)


def test_agent_settings_cannot_be_overridden(member_client, org, provider):
    agent = make_agent(org, provider)

    response = member_client.post(
        EXECUTE, {"prompt": "hi", "agent": str(agent.pk), "model": "other", "temperature": 1}, format="json"
    )

    error = assert_envelope(response, 400, "ERR_VALIDATION")
    assert set(error["details"]["fields"]) == {"model", "temperature"}


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"prompt": ""},
        {"prompt": "   "},
        {"prompt": "hi", "max_tokens": 0},
        {"prompt": "hi", "temperature": 3},
        {"prompt": "hi", "response_format": {"type": "xml"}},
        {"prompt": "hi", "response_format": "json"},
        {"prompt": "hi", "response_format": {"type": "json_schema"}},
        {"prompt": "hi", "agent": "not-a-uuid"},
    ],
)
def test_bad_input_is_400(member_client, provider, body):
    assert_envelope(member_client.post(EXECUTE, body, format="json"), 400, "ERR_VALIDATION")


def test_no_provider_is_424(member_client):
    assert_envelope(member_client.post(EXECUTE, {"prompt": "hi"}, format="json"), 424, "ERR_NO_PROVIDER")


def test_upstream_failures_are_mapped(member_client, provider):
    response = member_client.post(EXECUTE, {"prompt": "hi", "model": "fail-503"}, format="json")
    assert_envelope(response, 502, "ERR_PROVIDER_UNAVAILABLE")
    response = member_client.post(EXECUTE, {"prompt": "hi", "model": "fail-400"}, format="json")
    assert_envelope(response, 502, "ERR_PROVIDER_BAD_REQUEST")


def test_roles(org, owner_client, outsider_client, provider):
    assert owner_client.post(EXECUTE, {"prompt": "hi"}, format="json").status_code == 200
    viewer = MembershipFactory(org=org, role=Role.VIEWER).user
    assert_envelope(
        client_for(viewer).post(EXECUTE, {"prompt": "hi"}, format="json"), 403, "ERR_ROLE_REQUIRED"
    )
    # The outsider calls in their own org, which has no provider.
    assert_envelope(outsider_client.post(EXECUTE, {"prompt": "hi"}, format="json"), 424)
