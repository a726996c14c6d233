"""The tool registry, the built-in tools (current_time, web_fetch, memory_save / memory_search),
``/api/v1/tools/builtin``, ``/api/v1/tools/invoke`` and ``/api/v1/agents/{id}/tools``."""

from __future__ import annotations

import uuid

import pytest
from asgiref.sync import async_to_sync

from accounts.models import AuditLog, Role
from agents.models import Agent, BuiltinToolConfig
from agents.tools.html import html_to_text
from agents.tools.registry import (
    Tool,
    ToolContext,
    aexecute,
    get_tool,
    openai_tool_schemas,
    register_tool,
    tool_names,
    tools_for_agent,
    unregister_tool,
    validate_args,
)
from knowledge.memory.models import MemoryDocument
from tests.accounts.factories_orgs import client_with_role
from tests.conftest import client_for
from tests.core.test_errors import assert_envelope
from tests.factories import MembershipFactory

BUILTINS = {"current_time", "web_fetch", "memory_save", "memory_search"}


def make_agent(org, owner=None, **fields) -> Agent:
    fields.setdefault("key", f"agent-{uuid.uuid4().hex[:8]}")
    fields.setdefault("name", "Helper")
    fields.setdefault("model", "fake-model-1")
    return Agent.objects.create(org=org, owner=owner, **fields)


def run_tool(name, org, args, *, agent=None, user=None, config=None):
    tool = get_tool(name)
    ctx = ToolContext(org=org, agent=agent, user=user, config=config or {})
    return async_to_sync(aexecute)(tool, ctx, args)


# --- registry and validation -------------------------------------------------------------------


def test_builtins_are_registered_with_object_schemas():
    assert BUILTINS <= set(tool_names())
    for name in BUILTINS:
        schema = get_tool(name).openai_schema()
        assert schema["type"] == "function"
        assert schema["function"]["name"] == name
        assert schema["function"]["parameters"]["type"] == "object"


def test_a_tool_name_must_be_plain():
    with pytest.raises(ValueError):
        Tool(name="Bad Name", description="", parameters={"type": "object"}, handler=lambda c, a: None)
    with pytest.raises(ValueError):
        Tool(name="ok", description="", parameters={"type": "string"}, handler=lambda c, a: None)


def test_validation_reports_missing_keys_wrong_types_and_unknown_arguments():
    schema = get_tool("web_fetch").parameters
    assert validate_args(schema, {"url": "https://example.com"}) == []
    assert validate_args(schema, {}) == ["url: is required."]
    assert validate_args(schema, {"url": 5}) == ["url: expected string, got integer."]
    assert validate_args(schema, {"url": "x", "max_chars": True}) == [
        "max_chars: expected integer, got boolean."
    ]
    assert validate_args(schema, {"url": "x", "max_chars": 9}) == ["max_chars: must be at least 10."]
    assert validate_args(schema, {"url": "x", "depth": 2}) == ["depth: is not a known argument."]
    assert validate_args(schema, []) == ["arguments: expected object, got array."]
    tags = get_tool("memory_save").parameters
    assert validate_args(tags, {"content": "x", "tags": ["a", 3]}) == [
        "tags[1]: expected string, got integer."
    ]


def test_tools_for_agent_keeps_known_enabled_tools_in_the_agents_order(org):
    agent = make_agent(org, tools=["web_fetch", "nonexistent", "current_time", "memory_save", "web_fetch"])
    BuiltinToolConfig.objects.create(org=org, name="memory_save", enabled=False)
    tools = tools_for_agent(agent)
    assert [t.name for t in tools] == ["web_fetch", "current_time"]
    assert [s["function"]["name"] for s in openai_tool_schemas(tools)] == ["web_fetch", "current_time"]


def test_a_tool_that_defaults_to_off_needs_an_org_row(org):
    register_tool(
        Tool(
            name="test_off_by_default",
            description="",
            parameters={"type": "object", "properties": {}},
            handler=lambda ctx, args: {},
            default_enabled=False,
        )
    )
    try:
        agent = make_agent(org, tools=["test_off_by_default"])
        assert tools_for_agent(agent) == []
        BuiltinToolConfig.objects.create(org=org, name="test_off_by_default", enabled=True)
        assert [t.name for t in tools_for_agent(agent)] == ["test_off_by_default"]
    finally:
        unregister_tool("test_off_by_default")


def test_a_crashing_handler_becomes_a_tool_error_not_an_exception(org):
    def boom(ctx, args):
        raise RuntimeError("secret internals")

    register_tool(Tool(name="test_boom", description="", parameters={"type": "object"}, handler=boom))
    try:
        outcome = run_tool("test_boom", org, {})
    finally:
        unregister_tool("test_boom")
    assert outcome["error"] == "The tool test_boom failed: RuntimeError."
    assert "secret" not in outcome["error"]


# --- current_time ------------------------------------------------------------------------------


def test_current_time_answers_in_the_asked_zone(org):
    outcome = run_tool("current_time", org, {"timezone": "Asia/Tokyo"})
    assert outcome["result"]["timezone"] == "Asia/Tokyo"
    assert outcome["result"]["iso"].endswith("+09:00")


def test_current_time_defaults_to_the_users_zone_then_utc(org, member):
    member.timezone = "Europe/Berlin"
    assert run_tool("current_time", org, {}, user=member)["result"]["timezone"] == "Europe/Berlin"
    assert run_tool("current_time", org, {})["result"]["timezone"] == "UTC"
    configured = run_tool("current_time", org, {}, config={"default_timezone": "America/New_York"})
    assert configured["result"]["timezone"] == "America/New_York"


def test_current_time_refuses_an_unknown_zone_as_a_tool_error(org):
    outcome = run_tool("current_time", org, {"timezone": "Mars/Olympus"})
    assert "Unknown time zone" in outcome["error"]
    assert outcome["code"] == "ERR_TOOL_FAILED"


# --- web_fetch ---------------------------------------------------------------------------------


def test_html_to_text_keeps_the_words_and_drops_the_markup():
    title, text = html_to_text(
        "<html><head><title> The  Title </title><style>p{color:red}</style></head><body>"
        "<script>alert('x')</script><h1>Heading</h1><p>One &amp; two<br>three</p>"
        "<ul><li>alpha</li><li>beta</li></ul></body></html>"
    )
    assert title == "The Title"
    assert text == "Heading\nOne & two\nthree\n- alpha\n- beta"


def test_web_fetch_refuses_loopback_without_the_allowlist(org, fake_upstream, settings):
    settings.OUTBOUND_ALLOWED_HOSTS = []
    outcome = run_tool("web_fetch", org, {"url": fake_upstream.base_url + "/models"})
    assert outcome["code"] == "ERR_OUTBOUND_BLOCKED"
    assert "127.0.0.1" in outcome["error"]


def test_web_fetch_refuses_the_cloud_metadata_address(org, allow_loopback):
    outcome = run_tool("web_fetch", org, {"url": "http://169.254.169.254/latest/meta-data/"})
    assert outcome["code"] == "ERR_OUTBOUND_BLOCKED"


def test_web_fetch_refuses_a_redirect_to_a_private_address(org, fake_upstream, allow_loopback):
    # The fake answers /redir/... with 307 to 127.0.0.2, which the allowlist does not name.
    base = fake_upstream.base_url.removesuffix("/v1")
    outcome = run_tool("web_fetch", org, {"url": base + "/redir/v1/models"})
    assert outcome["code"] == "ERR_OUTBOUND_BLOCKED"
    assert "127.0.0.2" in outcome["error"]


def test_web_fetch_refuses_other_schemes(org):
    outcome = run_tool("web_fetch", org, {"url": "file:///etc/passwd"})
    assert outcome["error"] == "Only absolute http:// and https:// URLs can be fetched."


def test_web_fetch_reads_an_allowlisted_page_as_text(org, fake_upstream, allow_loopback):
    outcome = run_tool("web_fetch", org, {"url": fake_upstream.base_url + "/models"})
    result = outcome["result"]
    assert result["status"] == 200
    assert result["content_type"] == "application/json"
    assert "fake-model-1" in result["text"]
    assert result["truncated"] is False


def test_web_fetch_cuts_the_text_at_max_chars(org, fake_upstream, allow_loopback):
    outcome = run_tool("web_fetch", org, {"url": fake_upstream.base_url + "/models", "max_chars": 20})
    result = outcome["result"]
    assert len(result["text"]) == 20
    assert result["truncated"] is True


def test_web_fetch_reports_an_http_error_status_as_a_tool_error(org, fake_upstream, allow_loopback):
    outcome = run_tool("web_fetch", org, {"url": fake_upstream.base_url + "/nowhere"})
    assert "HTTP 404" in outcome["error"]


def test_web_fetch_honours_the_orgs_domain_allowlist(org, fake_upstream, allow_loopback):
    outcome = run_tool(
        "web_fetch",
        org,
        {"url": fake_upstream.base_url + "/models"},
        config={"allowed_domains": ["example.com"]},
    )
    assert "not among the domains" in outcome["error"]


# --- memory ------------------------------------------------------------------------------------


def test_memory_save_then_search_finds_the_best_match_first(org, member):
    agent = make_agent(org, owner=member)
    for content, tags in [
        ("The customer prefers email over phone calls.", ["contact"]),
        ("Project Apollo deadline is the 3rd of March.", ["apollo", "deadline"]),
        ("Apollo budget was approved.", []),
    ]:
        outcome = run_tool("memory_save", org, {"content": content, "tags": tags}, agent=agent, user=member)
        assert outcome["result"]["saved"] is True
    # knowledge.memory replaces the built-in memory tools with memory documents.
    assert MemoryDocument.objects.filter(agent=agent, user=member).count() == 3
    assert AuditLog.objects.filter(org=org, action="memory.document.created").count() == 3

    found = run_tool("memory_search", org, {"query": "apollo deadline"}, agent=agent, user=member)["result"]
    contents = [item["content"] for item in found["items"]]
    # Memory documents keep the tags as a first line; the saved text follows it.
    assert [text.splitlines()[-1] for text in contents] == [
        "Project Apollo deadline is the 3rd of March.",
        "Apollo budget was approved.",
    ]
    assert found["items"][0]["score"] > found["items"][1]["score"]

    limited = run_tool("memory_search", org, {"query": "apollo", "limit": 1}, agent=agent, user=member)
    assert len(limited["result"]["items"]) == 1
    nothing = run_tool("memory_search", org, {"query": "zebra"}, agent=agent, user=member)
    assert nothing["result"]["items"] == []


def test_memory_of_one_user_is_not_searched_for_another(org, member):
    agent = make_agent(org, owner=member)
    someone = MembershipFactory(org=org, role=Role.MEMBER).user
    run_tool("memory_save", org, {"content": "my secret plan"}, agent=agent, user=member)
    theirs = run_tool("memory_search", org, {"query": "secret plan"}, agent=agent, user=someone)
    assert theirs["result"]["items"] == []
    mine = run_tool("memory_search", org, {"query": "secret plan"}, agent=agent, user=member)
    assert len(mine["result"]["items"]) == 1


def test_memory_tools_need_an_agent(org, member):
    outcome = run_tool("memory_save", org, {"content": "x"}, user=member)
    assert "need" in outcome["error"] or "agent" in outcome["error"]
    assert MemoryDocument.objects.count() == 0


# --- /api/v1/tools/builtin ---------------------------------------------------------------------


def test_builtin_list_shows_every_tool_with_its_org_state(org):
    _, viewer_client = client_with_role(org, Role.VIEWER)
    BuiltinToolConfig.objects.create(org=org, name="web_fetch", enabled=False, config={"max_chars": 500})
    response = viewer_client.get("/api/v1/tools/builtin")
    assert response.status_code == 200, response.content
    body = response.json()
    assert set(body) == {"items", "total", "limit", "offset"}
    rows = {row["name"]: row for row in body["items"]}
    assert BUILTINS <= set(rows)
    assert rows["web_fetch"]["enabled"] is False
    assert rows["web_fetch"]["config"] == {"max_chars": 500}
    assert rows["current_time"]["enabled"] is True
    assert rows["current_time"]["config"] == {}
    assert rows["memory_save"]["parameters"]["required"] == ["content"]


def test_builtin_list_needs_authentication(anon_client):
    assert_envelope(anon_client.get("/api/v1/tools/builtin"), 401)


def test_builtin_detail_and_unknown_name(owner_client):
    response = owner_client.get("/api/v1/tools/builtin/current_time")
    assert response.status_code == 200
    assert response.json()["name"] == "current_time"
    assert_envelope(owner_client.get("/api/v1/tools/builtin/nope"), 404, "ERR_UNKNOWN_TOOL")
    assert_envelope(owner_client.put("/api/v1/tools/builtin/nope", {"enabled": False}, format="json"), 404)


def test_admin_disables_and_configures_a_tool_and_it_is_audited(org, owner_client):
    response = owner_client.put(
        "/api/v1/tools/builtin/web_fetch", {"enabled": False, "config": {"max_chars": 1000}}, format="json"
    )
    assert response.status_code == 200, response.content
    assert response.json()["enabled"] is False
    row = BuiltinToolConfig.objects.get(org=org, name="web_fetch")
    assert (row.enabled, row.config) == (False, {"max_chars": 1000})
    audit = AuditLog.objects.get(org=org, action="tool.configured")
    assert audit.entity_id == "web_fetch"
    assert audit.changes["enabled"] == [True, False]

    # Leaving a field out keeps it.
    response = owner_client.put("/api/v1/tools/builtin/web_fetch", {"enabled": True}, format="json")
    assert response.json()["config"] == {"max_chars": 1000}
    assert response.json()["enabled"] is True


def test_a_config_that_breaks_the_tools_schema_is_refused(org, owner_client):
    response = owner_client.put(
        "/api/v1/tools/builtin/web_fetch", {"config": {"max_chars": "lots"}}, format="json"
    )
    error = assert_envelope(response, 400, "ERR_VALIDATION")
    assert "max_chars" in error["message"]
    assert_envelope(owner_client.put("/api/v1/tools/builtin/web_fetch", {}, format="json"), 400)
    assert_envelope(
        owner_client.put("/api/v1/tools/builtin/web_fetch", {"config": [1]}, format="json"),
        400,
        "ERR_VALIDATION",
    )
    assert not BuiltinToolConfig.objects.filter(org=org).exists()


@pytest.mark.parametrize("role", [Role.MEMBER, Role.VIEWER])
def test_only_admins_configure_tools(org, role):
    _, client = client_with_role(org, role)
    response = client.put("/api/v1/tools/builtin/web_fetch", {"enabled": False}, format="json")
    assert_envelope(response, 403, "ERR_ROLE_REQUIRED")
    assert not BuiltinToolConfig.objects.filter(org=org).exists()


def test_tool_settings_are_per_org(org, owner_client, outsider_client, other_org):
    owner_client.put("/api/v1/tools/builtin/web_fetch", {"enabled": False}, format="json")
    rows = {r["name"]: r for r in outsider_client.get("/api/v1/tools/builtin").json()["items"]}
    assert rows["web_fetch"]["enabled"] is True
    assert not BuiltinToolConfig.objects.filter(org=other_org).exists()


# --- /api/v1/tools/invoke ----------------------------------------------------------------------


def test_invoke_dry_run_returns_the_schema_without_running(org, member_client):
    response = member_client.post(
        "/api/v1/tools/invoke",
        {"tool": "memory_save", "args": {"content": "x"}, "dry_run": True},
        format="json",
    )
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["valid"] is True
    assert body["schema"]["function"]["name"] == "memory_save"
    assert "errors" not in body and "result" not in body
    assert MemoryDocument.objects.count() == 0


def test_invoke_dry_run_lists_argument_errors(member_client):
    response = member_client.post(
        "/api/v1/tools/invoke",
        {"tool": "web_fetch", "args": {"max_chars": "9"}, "dry_run": True},
        format="json",
    )
    body = response.json()
    assert response.status_code == 200
    assert body["valid"] is False
    assert "url: is required." in body["errors"]


def test_invoke_runs_the_tool_and_audits(org, member_client):
    response = member_client.post(
        "/api/v1/tools/invoke", {"tool": "current_time", "args": {"timezone": "UTC"}}, format="json"
    )
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["tool"] == "current_time"
    assert body["result"]["timezone"] == "UTC"
    assert AuditLog.objects.filter(org=org, action="tool.invoked", entity_id="current_time").exists()


def test_invoke_answers_a_tool_failure_as_an_error_field(member_client, settings):
    settings.OUTBOUND_ALLOWED_HOSTS = []
    response = member_client.post(
        "/api/v1/tools/invoke", {"tool": "web_fetch", "args": {"url": "http://10.0.0.1/"}}, format="json"
    )
    assert response.status_code == 200
    assert response.json()["error"]["code"] == "ERR_OUTBOUND_BLOCKED"


def test_invoke_memory_as_a_visible_agent(org, member, member_client):
    agent = make_agent(org, owner=member)
    response = member_client.post(
        "/api/v1/tools/invoke",
        {"tool": "memory_save", "args": {"content": "remember me"}, "agent": str(agent.pk)},
        format="json",
    )
    assert response.status_code == 200, response.content
    assert MemoryDocument.objects.get(agent=agent).content == "remember me"


def test_invoke_as_another_orgs_agent_is_404(other_org, member_client):
    foreign = make_agent(other_org)
    response = member_client.post(
        "/api/v1/tools/invoke",
        {"tool": "memory_save", "args": {"content": "x"}, "agent": str(foreign.pk)},
        format="json",
    )
    assert_envelope(response, 404)
    assert MemoryDocument.objects.count() == 0


def test_invoke_a_disabled_tool_is_403(org, member_client):
    BuiltinToolConfig.objects.create(org=org, name="current_time", enabled=False)
    response = member_client.post("/api/v1/tools/invoke", {"tool": "current_time", "args": {}}, format="json")
    assert_envelope(response, 403, "ERR_TOOL_DISABLED")


def test_invoke_an_unknown_tool_is_404(member_client):
    response = member_client.post("/api/v1/tools/invoke", {"tool": "rm_rf", "args": {}}, format="json")
    assert_envelope(response, 404, "ERR_UNKNOWN_TOOL")


def test_invoke_with_invalid_arguments_is_400_with_details(member_client):
    response = member_client.post("/api/v1/tools/invoke", {"tool": "web_fetch", "args": {}}, format="json")
    error = assert_envelope(response, 400, "ERR_TOOL_ARGUMENTS")
    assert error["details"]["errors"] == ["url: is required."]
    bad_body = member_client.post("/api/v1/tools/invoke", {"tool": "web_fetch", "args": [1]}, format="json")
    assert_envelope(bad_body, 400, "ERR_VALIDATION")
    assert_envelope(member_client.post("/api/v1/tools/invoke", {}, format="json"), 400, "ERR_VALIDATION")


def test_invoke_needs_member(org):
    _, viewer_client = client_with_role(org, Role.VIEWER)
    response = viewer_client.post("/api/v1/tools/invoke", {"tool": "current_time"}, format="json")
    assert_envelope(response, 403, "ERR_ROLE_REQUIRED")


# --- /api/v1/agents/{id}/tools -----------------------------------------------------------------


def test_agent_tools_lists_resolved_tools_and_why_others_are_missing(org, member, member_client):
    agent = make_agent(org, owner=member, tools=["current_time", "memory_search", "knowledge_search"])
    BuiltinToolConfig.objects.create(org=org, name="memory_search", enabled=False)
    response = member_client.get(f"/api/v1/agents/{agent.pk}/tools")
    assert response.status_code == 200, response.content
    body = response.json()
    # knowledge_search is registered by the knowledge app, so it resolves like a built-in.
    assert [item["name"] for item in body["items"]] == ["current_time", "knowledge_search"]
    assert body["items"][0]["schema"]["function"]["name"] == "current_time"
    unavailable = {row["name"]: row["reason"] for row in body["unavailable"]}
    assert unavailable == {"memory_search": "disabled"}


def test_agent_tools_of_another_org_or_a_private_agent_is_404(org, other_org, member_client, owner):
    foreign = make_agent(other_org)
    assert_envelope(member_client.get(f"/api/v1/agents/{foreign.pk}/tools"), 404)
    private = make_agent(org, owner=owner, visibility=Agent.Visibility.PRIVATE)
    assert_envelope(member_client.get(f"/api/v1/agents/{private.pk}/tools"), 404)
    assert client_for(owner).get(f"/api/v1/agents/{private.pk}/tools").status_code == 200


def test_agent_tools_needs_member(org):
    agent = make_agent(org)
    _, viewer_client = client_with_role(org, Role.VIEWER)
    assert_envelope(viewer_client.get(f"/api/v1/agents/{agent.pk}/tools"), 403, "ERR_ROLE_REQUIRED")
