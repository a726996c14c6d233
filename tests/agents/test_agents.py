"""Agents through the API: CRUD, validation, the role matrix, who sees which agent, tenant
isolation (other orgs' agents answer 404 on every route), duplicate, publish, shares, the
system-prompt preview, the audit trail, and the Django admin of the agents app.

The lifecycle and status stream are in ``test_agent_lifecycle.py``, export/import in
``test_agent_export.py``, the public marketplace in ``test_marketplace.py``.
"""

from __future__ import annotations

import uuid

import pytest
from django.test import Client
from django.urls import reverse

from accounts.models import ApiKey, AuditLog, Role, User
from accounts.services.keys import api_key_create
from accounts.services.orgs import member_remove
from agents.models import (
    Agent,
    AgentMemoryEntry,
    AgentRun,
    AgentShare,
    BuiltinToolConfig,
    OrgAIConfig,
    PersonalAIConfig,
    Provider,
)
from agents.services.agents import agent_create
from agents.tools.registry import Tool, register_tool, unregister_tool
from tests.accounts.factories_orgs import client_with_role, user_with_role
from tests.conftest import client_for
from tests.core.test_errors import assert_envelope
from tests.factories import MembershipFactory

pytestmark = pytest.mark.django_db

URL = "/api/v1/agents"
TEST_TOOL = "test_lookup"


def detail(agent, suffix: str = "") -> str:
    agent_id = agent.pk if isinstance(agent, Agent) else agent
    return f"{URL}/{agent_id}{suffix}"


def make_agent(org, owner, **fields) -> Agent:
    """An agent made through the real service (so it is validated and audited like the API's)."""
    fields.setdefault("key", f"agent-{uuid.uuid4().hex[:8]}")
    fields.setdefault("name", "Helper")
    fields.setdefault("model", "fake-model-1")
    return agent_create(org=org, actor=owner, **fields)


def make_provider(org, name="main", api_key="sk-test-secret-0123456789abcd") -> Provider:
    return Provider.objects.create(org=org, name=name, api_key=api_key)


def agent_key(org, owner, agent) -> str:
    """A raw agent key bound to ``agent`` (made by ``owner``, who must be ADMIN+)."""
    _key, raw = api_key_create(org=org, actor=owner, name="bot", kind="agent", agent_id=agent.pk)
    return raw


def audit_actions(org) -> list[str]:
    return list(
        AuditLog.objects.filter(org=org).order_by("created_at", "id").values_list("action", flat=True)
    )


@pytest.fixture(autouse=True)
def registered_test_tool():
    """A registered tool that the tests may name, whatever other tools exist."""
    register_tool(
        Tool(
            name=TEST_TOOL,
            description="Looks something up.",
            parameters={"type": "object", "properties": {}},
            handler=lambda ctx, args: {"ok": True},
        )
    )
    yield TEST_TOOL
    unregister_tool(TEST_TOOL)


@pytest.fixture
def admin(org):
    return user_with_role(org, Role.ADMIN)


@pytest.fixture
def viewer(org):
    return user_with_role(org, Role.VIEWER)


@pytest.fixture
def other_member(org):
    return user_with_role(org, Role.MEMBER)


@pytest.fixture
def admin_client(admin):
    return client_for(admin)


@pytest.fixture
def viewer_client(viewer):
    return client_for(viewer)


@pytest.fixture
def other_member_client(other_member):
    return client_for(other_member)


def body(**overrides):
    data = {"key": "support", "name": "Support", "model": "fake-model-1"}
    data.update(overrides)
    return data


# --- create ------------------------------------------------------------------------------------


def test_member_creates_an_agent_and_owns_it(member_client, member, org):
    response = member_client.post(
        URL,
        body(system_prompt="You help {{ user_name }}.", tools=[TEST_TOOL], description="Answers tickets"),
        format="json",
    )

    assert response.status_code == 201, response.content
    data = response.json()
    assert {"id", "key", "name", "model", "system_prompt", "tools", "knowledge_bases"} <= set(data)
    assert data["key"] == "support"
    assert data["owner"] == str(member.pk)
    assert data["tools"] == [TEST_TOOL]
    assert data["can_edit"] is True
    agent = Agent.objects.get(pk=data["id"])
    assert agent.org == org and agent.owner == member
    log = AuditLog.objects.get(org=org, action="agent.created")
    assert log.actor == member and log.entity_id == str(agent.pk)
    assert log.after["key"] == "support"


def test_create_fills_the_documented_defaults(member_client):
    data = member_client.post(URL, body(), format="json").json()

    assert data["max_tool_iterations"] == 20
    assert data["visibility"] == "org"
    assert data["status"] == "stopped"
    assert data["online"] is False
    assert data["provider"] is None
    assert data["temperature"] is None
    assert data["published_at"] is None
    assert data["skills"] == [] and data["tools"] == [] and data["knowledge_bases"] == []


def test_create_with_a_provider_of_the_org(member_client, org):
    provider = make_provider(org)

    data = member_client.post(URL, body(provider=str(provider.pk)), format="json").json()

    assert data["provider"] == str(provider.pk)
    assert data["provider_name"] == "main"
    assert "sk-test" not in str(data)


def test_provider_of_another_org_is_a_400_and_writes_nothing(member_client, other_org):
    foreign = make_provider(other_org)

    response = member_client.post(URL, body(provider=str(foreign.pk)), format="json")

    error = assert_envelope(response, 400, "ERR_PROVIDER_NOT_FOUND")
    assert "provider" in error["details"]["fields"]
    assert not Agent.objects.exists()


def test_unknown_provider_id_is_a_400(member_client):
    response = member_client.post(URL, body(provider=str(uuid.uuid4())), format="json")

    assert_envelope(response, 400, "ERR_PROVIDER_NOT_FOUND")


def test_a_key_used_in_the_org_answers_409(member_client, org, owner):
    make_agent(org, owner, key="support")

    response = member_client.post(URL, body(), format="json")

    assert_envelope(response, 409, "ERR_AGENT_KEY_EXISTS")
    assert Agent.objects.filter(org=org).count() == 1


def test_the_same_key_in_another_org_is_fine(member_client, other_org, outsider):
    make_agent(other_org, outsider, key="support")

    assert member_client.post(URL, body(), format="json").status_code == 201


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"key": "Bad Key"}, "key"),
        ({"key": ""}, "key"),
        ({"key": "a" * 65}, "key"),
        ({"key": "ümlaut"}, "key"),
        ({"name": ""}, "name"),
        ({"model": ""}, "model"),
        ({"temperature": 2.5}, "temperature"),
        ({"temperature": -0.1}, "temperature"),
        ({"max_tool_iterations": 0}, "max_tool_iterations"),
        ({"max_tool_iterations": 51}, "max_tool_iterations"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"tools": "current_time"}, "tools"),
        ({"tools": ["x" * 65]}, "tools"),
        ({"knowledge_bases": ["not-a-uuid"]}, "knowledge_bases"),
        ({"visibility": "secret"}, "visibility"),
        ({"provider": "nope"}, "provider"),
    ],
)
def test_bad_input_is_a_400_and_writes_nothing(member_client, org, overrides, field):
    response = member_client.post(URL, body(**overrides), format="json")

    error = assert_envelope(response, 400, "ERR_VALIDATION")
    assert field in error["details"]["fields"]
    assert not Agent.objects.exists()
    assert not AuditLog.objects.filter(action="agent.created").exists()


@pytest.mark.parametrize("missing", ["key", "name", "model"])
def test_required_fields(member_client, missing):
    data = body()
    del data[missing]

    error = assert_envelope(member_client.post(URL, data, format="json"), 400, "ERR_VALIDATION")

    assert missing in error["details"]["fields"]


def test_unknown_tools_are_refused(member_client):
    response = member_client.post(URL, body(tools=[TEST_TOOL, "no_such_tool"]), format="json")

    error = assert_envelope(response, 400, "ERR_UNKNOWN_TOOL")
    assert error["details"]["unknown_tools"] == ["no_such_tool"]
    assert not Agent.objects.exists()


def test_tools_and_knowledge_bases_are_deduplicated(member_client):
    kb = str(uuid.uuid4())

    data = member_client.post(
        URL, body(tools=[TEST_TOOL, TEST_TOOL], knowledge_bases=[kb, kb]), format="json"
    ).json()

    assert data["tools"] == [TEST_TOOL]
    assert data["knowledge_bases"] == [kb]


def test_temperature_and_iteration_bounds_are_accepted(member_client):
    data = member_client.post(URL, body(temperature=2, max_tool_iterations=50), format="json").json()

    assert data["temperature"] == 2.0
    assert data["max_tool_iterations"] == 50


def test_skills_are_not_writable_through_the_agent(member_client):
    data = member_client.post(URL, body(skills=[str(uuid.uuid4())]), format="json").json()

    assert data["skills"] == []


# --- role matrix and authentication ------------------------------------------------------------


@pytest.mark.parametrize(
    ("role", "allowed"),
    [(Role.VIEWER, False), (Role.MEMBER, True), (Role.ADMIN, True), (Role.OWNER, True)],
)
def test_creating_needs_member(org, role, allowed):
    _user, client = client_with_role(org, role)

    response = client.post(URL, body(), format="json")

    if allowed:
        assert response.status_code == 201
    else:
        assert_envelope(response, 403, "ERR_ROLE_REQUIRED")


@pytest.mark.parametrize("role", [Role.VIEWER, Role.MEMBER, Role.ADMIN, Role.OWNER])
def test_every_role_reads_org_agents(org, owner, role):
    agent = make_agent(org, owner)
    _user, client = client_with_role(org, role)

    assert client.get(URL).json()["total"] == 1
    assert client.get(detail(agent)).status_code == 200


def test_anonymous_callers_get_401(anon_client, org, owner):
    agent = make_agent(org, owner)

    assert_envelope(anon_client.get(URL), 401)
    assert_envelope(anon_client.post(URL, body(), format="json"), 401)
    assert_envelope(anon_client.get(detail(agent)), 401)


def test_api_key_scopes_are_enforced(org, owner):
    agent = make_agent(org, owner)
    _key, raw = api_key_create(org=org, actor=owner, name="ro", scopes=["agents:read"])
    client = Client(HTTP_AUTHORIZATION=f"Bearer {raw}")

    assert client.get(URL).status_code == 200
    response = client.patch(detail(agent), {"name": "x"}, content_type="application/json")
    assert_envelope(response, 403, "ERR_SCOPE_REQUIRED")


def test_a_personal_key_acts_as_its_user(org, member):
    _key, raw = api_key_create(org=org, actor=member, name="cli")
    client = Client(HTTP_AUTHORIZATION=f"Bearer {raw}")

    response = client.post(URL, body(), content_type="application/json")

    assert response.status_code == 201
    assert response.json()["owner"] == str(member.pk)


# --- visibility --------------------------------------------------------------------------------


@pytest.fixture
def spread(org, owner, member, other_member):
    """One agent of every kind the member may or may not see."""
    return {
        "org": make_agent(org, other_member, key="org-wide"),
        "public": make_agent(org, other_member, key="published", visibility="public"),
        "mine": make_agent(org, member, key="mine", visibility="private"),
        "hidden": make_agent(org, other_member, key="hidden", visibility="private"),
        "shared": make_agent(org, other_member, key="shared", visibility="private"),
    }


def test_list_shows_org_public_own_and_shared_agents(member_client, member, spread):
    AgentShare.objects.create(agent=spread["shared"], user=member)

    keys = {item["key"] for item in member_client.get(URL).json()["items"]}

    assert keys == {"org-wide", "published", "mine", "shared"}


def test_a_private_agent_of_another_member_answers_404(member_client, spread):
    hidden = spread["hidden"]

    assert_envelope(member_client.get(detail(hidden)), 404, "ERR_NOT_FOUND")
    assert_envelope(member_client.patch(detail(hidden), {"name": "x"}, format="json"), 404)
    assert_envelope(member_client.delete(detail(hidden)), 404)
    assert_envelope(member_client.post(detail(hidden, "/duplicate")), 404)


def test_a_shared_private_agent_is_visible_but_not_editable(member_client, member, spread):
    shared = spread["shared"]
    AgentShare.objects.create(agent=shared, user=member)

    data = member_client.get(detail(shared)).json()

    assert data["key"] == "shared" and data["can_edit"] is False
    response = member_client.patch(detail(shared), {"name": "x"}, format="json")
    assert_envelope(response, 403, "ERR_NOT_AGENT_OWNER")


@pytest.mark.parametrize("role", [Role.ADMIN, Role.OWNER])
def test_admins_see_every_agent_of_the_org(org, spread, role):
    _user, client = client_with_role(org, role)

    assert client.get(URL).json()["total"] == 5
    assert client.get(detail(spread["hidden"])).status_code == 200


def test_list_filters(member_client, org, member, spread):
    Agent.objects.filter(pk=spread["org"].pk).update(status="running")

    def keys(query):
        return {item["key"] for item in member_client.get(f"{URL}?{query}").json()["items"]}

    assert keys("status=running") == {"org-wide"}
    assert keys("visibility=private") == {"mine"}
    assert keys("q=PUB") == {"published"}
    assert keys(f"owner={member.pk}") == {"mine"}
    assert keys("q=") == {"org-wide", "published", "mine"}
    assert_envelope(member_client.get(f"{URL}?status=dancing"), 400, "ERR_VALIDATION")


def test_list_is_paginated_and_its_query_count_does_not_grow(
    member_client, org, owner, django_assert_max_num_queries
):
    provider = make_provider(org)
    for number in range(3):
        make_agent(org, owner, key=f"a{number}", provider=provider)
    member_client.get(URL)  # warm the session and auth lookups

    with django_assert_max_num_queries(12):
        first = member_client.get(f"{URL}?limit=2").json()
    for number in range(3, 9):
        make_agent(org, owner, key=f"a{number}", provider=provider)
    with django_assert_max_num_queries(12):
        bigger = member_client.get(f"{URL}?limit=50").json()

    assert first["total"] == 3 and len(first["items"]) == 2 and first["limit"] == 2
    assert bigger["total"] == 9 and len(bigger["items"]) == 9


# --- tenant isolation --------------------------------------------------------------------------

ID_ROUTES = [
    ("get", ""),
    ("patch", ""),
    ("delete", ""),
    ("post", "/duplicate"),
    ("post", "/publish"),
    ("get", "/shares"),
    ("post", "/shares"),
    ("get", "/system-prompt-preview"),
    ("post", "/start"),
    ("post", "/stop"),
    ("post", "/restart"),
    ("post", "/heartbeat"),
    ("get", "/export"),
]


@pytest.mark.parametrize(("method", "suffix"), ID_ROUTES)
def test_another_orgs_agent_answers_404_on_every_route(outsider_client, org, owner, method, suffix):
    agent = make_agent(org, owner, visibility="public")
    payload = {"user_id": str(owner.pk)} if suffix == "/shares" else {"name": "x"}

    response = getattr(outsider_client, method)(detail(agent, suffix), payload, format="json")

    assert_envelope(response, 404)
    agent.refresh_from_db()
    assert agent.name == "Helper" and agent.status == "stopped"
    assert not AgentShare.objects.exists()


def test_another_orgs_share_route_answers_404(outsider_client, org, owner, member):
    agent = make_agent(org, owner)
    AgentShare.objects.create(agent=agent, user=member)

    assert_envelope(outsider_client.delete(detail(agent, f"/shares/{member.pk}")), 404)
    assert AgentShare.objects.count() == 1


def test_outsiders_list_shows_none_of_the_orgs_agents(outsider_client, org, owner):
    make_agent(org, owner, visibility="public")

    assert outsider_client.get(URL).json()["total"] == 0


def test_unknown_id_answers_404(member_client):
    assert_envelope(member_client.get(detail(uuid.uuid4())), 404)


# --- update ------------------------------------------------------------------------------------


def test_owner_updates_only_given_fields_and_it_is_audited(member_client, org, member):
    agent = make_agent(org, member, system_prompt="Old", temperature=0.5)

    response = member_client.patch(
        detail(agent), {"name": "Renamed", "temperature": 1.5, "tools": [TEST_TOOL]}, format="json"
    )

    assert response.status_code == 200, response.content
    data = response.json()
    assert data["name"] == "Renamed" and data["temperature"] == 1.5 and data["tools"] == [TEST_TOOL]
    assert data["system_prompt"] == "Old"
    log = AuditLog.objects.get(org=org, action="agent.updated")
    assert log.changes["name"] == ["Helper", "Renamed"]
    assert "system_prompt" not in log.changes


def test_an_update_that_changes_nothing_is_not_audited(member_client, org, member):
    agent = make_agent(org, member)

    assert member_client.patch(detail(agent), {"name": "Helper"}, format="json").status_code == 200

    assert not AuditLog.objects.filter(action="agent.updated").exists()


def test_another_member_may_see_but_not_edit_an_org_agent(other_member_client, org, member):
    agent = make_agent(org, member)

    assert other_member_client.get(detail(agent)).json()["can_edit"] is False
    assert_envelope(
        other_member_client.patch(detail(agent), {"name": "x"}, format="json"), 403, "ERR_NOT_AGENT_OWNER"
    )
    assert_envelope(other_member_client.delete(detail(agent)), 403, "ERR_NOT_AGENT_OWNER")
    assert Agent.objects.get(pk=agent.pk).name == "Helper"


def test_an_admin_edits_any_agent(admin_client, org, member):
    agent = make_agent(org, member, visibility="private")

    response = admin_client.patch(detail(agent), {"model": "other-model"}, format="json")

    assert response.status_code == 200
    assert response.json()["model"] == "other-model"


def test_a_viewer_cannot_edit_even_their_own_agent(org, viewer, viewer_client):
    agent = make_agent(org, viewer)

    assert_envelope(
        viewer_client.patch(detail(agent), {"name": "x"}, format="json"), 403, "ERR_ROLE_REQUIRED"
    )


def test_renaming_to_a_used_key_answers_409(member_client, org, member):
    make_agent(org, member, key="taken")
    agent = make_agent(org, member, key="free")

    assert_envelope(
        member_client.patch(detail(agent), {"key": "taken"}, format="json"), 409, "ERR_AGENT_KEY_EXISTS"
    )
    assert member_client.patch(detail(agent), {"key": "free"}, format="json").status_code == 200


@pytest.mark.parametrize(
    "payload",
    [
        {"temperature": 3},
        {"max_tool_iterations": 99},
        {"tools": ["nope"]},
        {"name": ""},
        {"provider": str(uuid.uuid4())},
    ],
)
def test_bad_updates_are_400_and_change_nothing(member_client, org, member, payload):
    agent = make_agent(org, member)

    response = member_client.patch(detail(agent), payload, format="json")

    assert response.status_code == 400
    agent.refresh_from_db()
    assert agent.temperature is None and agent.max_tool_iterations == 20 and agent.tools == []
    assert not AuditLog.objects.filter(action="agent.updated").exists()


def test_provider_can_be_set_and_cleared(member_client, org, member):
    provider = make_provider(org)
    agent = make_agent(org, member)

    assert member_client.patch(detail(agent), {"provider": str(provider.pk)}, format="json").json()[
        "provider"
    ]
    assert member_client.patch(detail(agent), {"provider": None}, format="json").json()["provider"] is None


# --- delete ------------------------------------------------------------------------------------


def test_owner_deletes_an_agent_and_its_agent_keys_stop_working(member_client, org, owner, member):
    agent = make_agent(org, member)
    raw = agent_key(org, owner, agent)

    assert member_client.delete(detail(agent)).status_code == 204

    assert not Agent.objects.filter(pk=agent.pk).exists()
    key = ApiKey.objects.get(agent_id=agent.pk)
    assert key.revoked_at is not None
    assert Client(HTTP_X_AGENT_TOKEN=raw).get(URL).status_code == 401
    assert "agent.deleted" in audit_actions(org)
    assert "api_key.revoked" in audit_actions(org)


def test_an_admin_deletes_any_agent(admin_client, org, member):
    agent = make_agent(org, member, visibility="private")

    assert admin_client.delete(detail(agent)).status_code == 204
    assert not Agent.objects.exists()


# --- duplicate ---------------------------------------------------------------------------------


def test_a_member_duplicates_an_agent_they_can_see(other_member_client, other_member, org, member):
    provider = make_provider(org)
    source = make_agent(
        org,
        member,
        key="writer",
        provider=provider,
        system_prompt="Write well.",
        tools=[TEST_TOOL],
        temperature=0.3,
    )
    Agent.objects.filter(pk=source.pk).update(status="running", skills=[str(uuid.uuid4())])

    response = other_member_client.post(detail(source, "/duplicate"))

    assert response.status_code == 201, response.content
    copy = response.json()
    assert copy["id"] != str(source.pk)
    assert copy["key"] == "writer-copy"
    assert copy["name"] == "Helper (copy)"
    assert copy["owner"] == str(other_member.pk)
    assert copy["forked_from"] == str(source.pk)
    assert copy["status"] == "stopped"
    assert copy["provider"] == str(provider.pk)
    assert copy["system_prompt"] == "Write well." and copy["tools"] == [TEST_TOOL]
    assert copy["temperature"] == 0.3
    assert copy["skills"] == []
    log = AuditLog.objects.get(action="agent.duplicated")
    assert log.after["source"] == str(source.pk)


def test_duplicates_get_numbered_keys(member_client, org, member):
    source = make_agent(org, member, key="writer")

    keys = [member_client.post(detail(source, "/duplicate")).json()["key"] for _ in range(3)]

    assert keys == ["writer-copy", "writer-copy-2", "writer-copy-3"]


def test_a_long_key_is_shortened_to_fit_the_copy_suffix(member_client, org, member):
    source = make_agent(org, member, key="k" * 64)

    key = member_client.post(detail(source, "/duplicate")).json()["key"]

    assert key == "k" * 59 + "-copy" and len(key) == 64


def test_a_published_agent_is_copied_unpublished(member_client, org, owner):
    source = make_agent(org, owner, visibility="public")

    copy = member_client.post(detail(source, "/duplicate")).json()

    assert copy["visibility"] == "org" and copy["published_at"] is None


def test_a_viewer_cannot_duplicate(viewer_client, org, owner):
    source = make_agent(org, owner)

    assert_envelope(viewer_client.post(detail(source, "/duplicate")), 403, "ERR_ROLE_REQUIRED")


# --- publish -----------------------------------------------------------------------------------


def test_owner_publishes_and_publishing_again_changes_nothing(member_client, org, member):
    agent = make_agent(org, member)

    first = member_client.post(detail(agent, "/publish"))
    second = member_client.post(detail(agent, "/publish"))

    assert first.status_code == 200 and second.status_code == 200
    assert first.json()["visibility"] == "public"
    assert first.json()["published_at"] is not None
    assert second.json()["published_at"] == first.json()["published_at"]
    assert audit_actions(org).count("agent.published") == 1


def test_unpublish_by_changing_visibility(member_client, org, member):
    agent = make_agent(org, member)
    member_client.post(detail(agent, "/publish"))

    data = member_client.patch(detail(agent), {"visibility": "org"}, format="json").json()

    assert data["visibility"] == "org" and data["published_at"] is None


def test_setting_visibility_public_publishes(member_client, org, member):
    agent = make_agent(org, member)

    data = member_client.patch(detail(agent), {"visibility": "public"}, format="json").json()

    assert data["published_at"] is not None


def test_only_the_owner_or_an_admin_publishes(org, member, other_member_client, admin_client, viewer_client):
    agent = make_agent(org, member)

    assert_envelope(other_member_client.post(detail(agent, "/publish")), 403, "ERR_NOT_AGENT_OWNER")
    assert_envelope(viewer_client.post(detail(agent, "/publish")), 403, "ERR_ROLE_REQUIRED")
    assert admin_client.post(detail(agent, "/publish")).status_code == 200


# --- shares ------------------------------------------------------------------------------------


def test_owner_shares_a_private_agent_and_the_member_then_sees_it(
    member_client, other_member_client, org, member, other_member
):
    agent = make_agent(org, member, visibility="private")
    assert other_member_client.get(detail(agent)).status_code == 404

    response = member_client.post(detail(agent, "/shares"), {"user_id": str(other_member.pk)}, format="json")

    assert response.status_code == 201, response.content
    assert response.json()["user_id"] == str(other_member.pk)
    assert other_member_client.get(detail(agent)).status_code == 200
    listed = member_client.get(detail(agent, "/shares")).json()
    assert listed["total"] == 1
    assert listed["items"][0]["email"] == other_member.email
    assert AuditLog.objects.get(action="agent.shared").after["user"] == str(other_member.pk)


def test_sharing_twice_answers_200_with_the_same_share(member_client, org, member, other_member):
    agent = make_agent(org, member, visibility="private")
    url = detail(agent, "/shares")

    member_client.post(url, {"user_id": str(other_member.pk)}, format="json")
    again = member_client.post(url, {"user_id": str(other_member.pk)}, format="json")

    assert again.status_code == 200
    assert AgentShare.objects.count() == 1
    assert audit_actions(org).count("agent.shared") == 1


def test_removing_a_share_hides_the_agent_again(
    member_client, other_member_client, org, member, other_member
):
    agent = make_agent(org, member, visibility="private")
    AgentShare.objects.create(agent=agent, user=other_member)

    assert member_client.delete(detail(agent, f"/shares/{other_member.pk}")).status_code == 204

    assert other_member_client.get(detail(agent)).status_code == 404
    assert "agent.unshared" in audit_actions(org)
    assert_envelope(
        member_client.delete(detail(agent, f"/shares/{other_member.pk}")), 404, "ERR_SHARE_NOT_FOUND"
    )


@pytest.mark.parametrize("who", ["outsider", "stranger", "owner_self"])
def test_sharing_needs_a_member_of_the_org_other_than_the_owner(member_client, org, member, outsider, who):
    agent = make_agent(org, member, visibility="private")
    user_id = {"outsider": outsider.pk, "stranger": uuid.uuid4(), "owner_self": member.pk}[who]

    response = member_client.post(detail(agent, "/shares"), {"user_id": str(user_id)}, format="json")

    error = assert_envelope(response, 400)
    assert "user_id" in error["details"]["fields"]
    assert not AgentShare.objects.exists()


def test_sharing_needs_a_user_id(member_client, org, member):
    agent = make_agent(org, member)

    assert_envelope(member_client.post(detail(agent, "/shares"), {}, format="json"), 400, "ERR_VALIDATION")


def test_only_the_owner_or_an_admin_manages_shares(
    org, member, other_member, other_member_client, admin_client
):
    agent = make_agent(org, member)  # org-visible: the other member sees it
    url = detail(agent, "/shares")

    assert_envelope(other_member_client.get(url), 403, "ERR_NOT_AGENT_OWNER")
    assert_envelope(
        other_member_client.post(url, {"user_id": str(other_member.pk)}, format="json"),
        403,
        "ERR_NOT_AGENT_OWNER",
    )
    assert admin_client.post(url, {"user_id": str(other_member.pk)}, format="json").status_code == 201
    assert_envelope(other_member_client.delete(f"{url}/{other_member.pk}"), 403, "ERR_NOT_AGENT_OWNER")
    assert admin_client.get(url).json()["total"] == 1


def test_a_member_who_leaves_loses_their_shares(org, owner, member, other_member):
    agent = make_agent(org, member, visibility="private")
    AgentShare.objects.create(agent=agent, user=other_member)

    member_remove(org=org, actor=owner, actor_role=Role.OWNER, user_id=other_member.pk)

    assert not AgentShare.objects.exists()
    MembershipFactory(org=org, user=other_member, role=Role.MEMBER)
    assert client_for(other_member).get(detail(agent)).status_code == 404


# --- system prompt preview ---------------------------------------------------------------------


def test_preview_renders_the_context_variables(member_client, org, member):
    member.display_name = "Ada"
    member.save(update_fields=["display_name"])
    prompt = (
        "You are {{ agent_name }} of {{org_name}} talking to {{ user_name }} on {{ date }} at {{ time }} "
        "({{ now }}). Tools: {{ tools }}. Model {{ model }}."
    )
    agent = make_agent(org, member, name="Scribe", system_prompt=prompt, tools=[TEST_TOOL])

    response = member_client.get(detail(agent, "/system-prompt-preview"))

    assert response.status_code == 200
    data = response.json()
    rendered = data["system_prompt"]
    assert rendered.startswith(f"You are Scribe of {org.name} talking to Ada on ")
    assert f"Tools: {TEST_TOOL}. Model fake-model-1." in rendered
    assert data["variables"]["date"] in rendered
    assert data["variables"]["now"].endswith("Z")
    assert data["template"] == prompt
    assert data["unknown_variables"] == []
    assert "org_name" in data["available_variables"]


def test_preview_renders_unknown_variables_empty_and_leaves_other_braces_alone(member_client, org, member):
    prompt = 'Hi {{ missing }}{{ agent_name.__class__ }}! Reply as {"ok": true}. {% debug %} {{ }} {x}'
    agent = make_agent(org, member, name="Bot", system_prompt=prompt)

    data = member_client.get(detail(agent, "/system-prompt-preview")).json()

    assert data["system_prompt"] == 'Hi ! Reply as {"ok": true}. {% debug %} {{ }} {x}'
    assert data["unknown_variables"] == ["missing", "agent_name.__class__"]


def test_preview_of_an_empty_prompt_is_empty(member_client, org, member):
    agent = make_agent(org, member)

    assert member_client.get(detail(agent, "/system-prompt-preview")).json()["system_prompt"] == ""


def test_preview_needs_member_and_visibility(viewer_client, other_member_client, org, member):
    agent = make_agent(org, member, visibility="private")

    assert_envelope(viewer_client.get(detail(agent, "/system-prompt-preview")), 403, "ERR_ROLE_REQUIRED")
    assert_envelope(other_member_client.get(detail(agent, "/system-prompt-preview")), 404)


# --- the Django admin --------------------------------------------------------------------------


@pytest.fixture
def superuser(db):
    return User.objects.create_superuser(email="ops@example.com", password="pw-Ops-123")


@pytest.fixture
def staff_client(superuser):
    client = Client()
    client.force_login(superuser)
    return client


def admin_url(model, view: str, *args) -> str:
    return reverse(f"admin:agents_{model._meta.model_name}_{view}", args=args)


@pytest.fixture
def every_row(org, owner, member):
    provider = make_provider(org, api_key="sk-live-supersecret-9876wxyz")
    agent = make_agent(org, owner, provider=provider)
    AgentShare.objects.create(agent=agent, user=member)
    AgentRun.objects.create(org=org, agent=agent, user=owner, status="succeeded", input="hi", output="hello")
    BuiltinToolConfig.objects.create(org=org, name="web_fetch", enabled=False)
    OrgAIConfig.objects.create(org=org, primary_provider=provider, primary_model="m")
    PersonalAIConfig.objects.create(user=member, api_key="sk-personal-hidden-5555")
    AgentMemoryEntry.objects.create(org=org, agent=agent, content="likes tea")
    return {"provider": provider, "agent": agent}


MODELS = [
    Provider,
    Agent,
    AgentShare,
    AgentRun,
    BuiltinToolConfig,
    OrgAIConfig,
    PersonalAIConfig,
    AgentMemoryEntry,
]


@pytest.mark.parametrize("model", MODELS)
def test_admin_pages_load_and_never_show_a_key(staff_client, every_row, model):
    changelist = staff_client.get(admin_url(model, "changelist"))
    assert changelist.status_code == 200
    row = model.objects.first()
    change = staff_client.get(admin_url(model, "change", row.pk))
    assert change.status_code == 200
    searched = staff_client.get(admin_url(model, "changelist") + "?q=a")
    assert searched.status_code == 200
    for page in (changelist, change):
        text = page.content.decode()
        assert "supersecret" not in text and "sk-personal-hidden" not in text
    if model is Provider:
        assert "wxyz" in changelist.content.decode()  # the masked tail is shown


def test_agent_runs_are_read_only_in_the_admin(staff_client, every_row):
    run = AgentRun.objects.get()

    response = staff_client.post(admin_url(AgentRun, "change", run.pk), {"status": "failed"})

    assert response.status_code == 403
    assert AgentRun.objects.get().status == "succeeded"


def provider_form(org, **overrides):
    form = {
        "org": str(org.pk),
        "name": "main",
        "provider_type": "openai_compat",
        "api_base": "",
        "enabled": "on",
        "priority": "100",
        "new_api_key": "",
        "new_extra_headers": "",
    }
    form.update(overrides)
    return form


def test_a_provider_key_changed_in_the_admin_goes_through_the_service(staff_client, org, every_row):
    provider = every_row["provider"]
    Provider.objects.filter(pk=provider.pk).update(is_verified=True)
    form = provider_form(org, new_api_key="sk-brand-new-key-1111", new_extra_headers='{"X-Team": "blue"}')

    response = staff_client.post(admin_url(Provider, "change", provider.pk), form)

    assert response.status_code == 302, response.content.decode()[:2000]
    provider.refresh_from_db()
    assert provider.api_key == "sk-brand-new-key-1111"
    assert provider.extra_headers == '{"X-Team": "blue"}'
    assert provider.is_verified is False  # a new endpoint must be verified again
    log = AuditLog.objects.get(action="provider.updated")
    assert "sk-brand-new" not in str(log.before) + str(log.after) + str(log.changes)
    assert log.after["api_key_masked"].endswith("1111")
    assert log.after["extra_header_names"] == ["X-Team"]


def test_a_blank_key_in_the_admin_keeps_the_stored_one(staff_client, org, every_row):
    provider = every_row["provider"]

    response = staff_client.post(
        admin_url(Provider, "change", provider.pk), provider_form(org, name="renamed")
    )

    assert response.status_code == 302
    provider.refresh_from_db()
    assert provider.name == "renamed"
    assert provider.api_key == "sk-live-supersecret-9876wxyz"


def test_the_admin_creates_a_provider_through_the_service(staff_client, org, superuser):
    form = provider_form(org, name="second", new_api_key="sk-created-in-admin-2222")

    response = staff_client.post(admin_url(Provider, "add"), form)

    assert response.status_code == 302, response.content.decode()[:2000]
    provider = Provider.objects.get(org=org, name="second")
    assert provider.api_key == "sk-created-in-admin-2222"
    assert provider.created_by == superuser
    assert AuditLog.objects.filter(action="provider.created", entity_id=str(provider.pk)).exists()


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"api_base": "http://10.0.0.1/v1"}, "api_base"),
        ({"api_base": "ftp://example.com"}, "api_base"),
        ({"new_extra_headers": "{not json"}, "new_extra_headers"),
        ({"new_extra_headers": '{"Host": "evil"}'}, "new_extra_headers"),
        ({"name": "MAIN"}, "name"),
    ],
)
def test_the_admin_applies_the_provider_rules(staff_client, org, every_row, overrides, field):
    response = staff_client.post(admin_url(Provider, "add"), provider_form(org, **overrides))

    assert response.status_code == 200  # the form again, with the error
    assert field in response.context["adminform"].form.errors
    assert Provider.objects.filter(org=org).count() == 1


def test_the_admin_deletes_a_provider_through_the_service(staff_client, every_row):
    provider = every_row["provider"]

    response = staff_client.post(admin_url(Provider, "delete", provider.pk), {"post": "yes"})

    assert response.status_code == 302
    assert not Provider.objects.exists()
    assert AuditLog.objects.filter(action="provider.deleted").exists()


def test_a_personal_key_can_be_cleared_but_never_read(staff_client, member, every_row):
    config = PersonalAIConfig.objects.get(user=member)
    form = {
        "user": str(member.pk),
        "provider_type": "openai_compat",
        "api_base": "",
        "model": "",
        "clear_api_key": "on",
    }

    response = staff_client.post(admin_url(PersonalAIConfig, "change", config.pk), form)

    assert response.status_code == 302, response.content.decode()[:2000]
    config.refresh_from_db()
    assert config.api_key == ""
    log = AuditLog.objects.get(action="personalaiconfig.admin_updated")
    assert log.after == {"api_key": "(secret changed)"}


def test_the_admin_stop_action_goes_through_the_service(staff_client, org, every_row):
    agent = every_row["agent"]
    Agent.objects.filter(pk=agent.pk).update(status="running")

    response = staff_client.post(
        admin_url(Agent, "changelist"), {"action": "stop_agents", "_selected_action": [str(agent.pk)]}
    )

    assert response.status_code == 302
    assert Agent.objects.get(pk=agent.pk).status == "stopped"
    assert AuditLog.objects.filter(action="agent.stopped").exists()
