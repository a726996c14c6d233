"""Agent memory documents: ``/api/v1/agents/{id}/memory/documents[/{path}]`` and ``/memory/search``,
per-agent and per-user scopes, and the ``memory_save`` / ``memory_search`` tools over them."""

from __future__ import annotations

import pytest
from asgiref.sync import async_to_sync

from accounts.models import AuditLog, Role
from agents.models import Agent
from agents.tools.registry import ToolContext, aexecute, get_tool
from knowledge.memory.models import MemoryDocument
from knowledge.memory.services.documents import validate_path
from knowledge.models import Chunk, Document, KnowledgeBase
from tests.accounts.factories_orgs import client_with_role
from tests.core.test_errors import assert_envelope

from .conftest import make_agent


def url(agent, path=None, query=""):
    base = f"/api/v1/agents/{agent.pk}/memory/documents"
    return (f"{base}/{path}" if path else base) + query


def put(client, agent, path, content, query=""):
    return client.put(url(agent, path, query), {"content": content}, format="json")


def search(client, agent, query, **body):
    return client.post(f"/api/v1/agents/{agent.pk}/memory/search", {"query": query, **body}, format="json")


def test_put_creates_then_get_returns_the_document(agent, member_client):
    response = put(member_client, agent, "people/alice.md", "Alice prefers tea over coffee.")
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["path"] == "people/alice.md"
    assert body["scope"] == "agent" and body["user_id"] is None
    assert body["content"] == "Alice prefers tea over coffee."
    assert body["status"] == "ready"

    row = MemoryDocument.objects.get(agent=agent, path="people/alice.md")
    kb = row.document.kb
    assert kb.kind == KnowledgeBase.Kind.AGENT_MEMORY and kb.agent == agent
    assert Chunk.objects.filter(document=row.document).exists()

    one = member_client.get(url(agent, "people/alice.md"))
    assert one.status_code == 200
    assert one.json()["content"] == "Alice prefers tea over coffee."
    listed = member_client.get(url(agent)).json()
    assert listed["total"] == 1
    assert listed["items"][0]["path"] == "people/alice.md"
    assert "content" not in listed["items"][0]
    assert AuditLog.objects.filter(action="memory.document.created", entity_id=str(row.pk)).exists()


def test_put_replaces_the_old_chunks_and_search_finds_only_the_new_text(agent, member_client):
    put(member_client, agent, "projects/apollo.md", "The apollo deadline is in March.")
    first = MemoryDocument.objects.get(path="projects/apollo.md").document_id

    response = put(member_client, agent, "projects/apollo.md", "The apollo launch moved to September.")
    assert response.status_code == 200, response.content
    row = MemoryDocument.objects.get(path="projects/apollo.md")
    assert row.document_id != first
    assert not Document.objects.filter(pk=first).exists()
    assert not Chunk.objects.filter(document_id=first).exists()

    found = search(member_client, agent, "september launch").json()
    assert [hit["path"] for hit in found["items"]] == ["projects/apollo.md"]
    assert "September" in found["items"][0]["text"]
    assert search(member_client, agent, "march deadline").json()["items"] == []


def test_the_same_content_twice_writes_nothing(agent, member_client):
    put(member_client, agent, "a.md", "same words")
    row = MemoryDocument.objects.get(path="a.md")
    again = put(member_client, agent, "a.md", "same words")
    assert again.status_code == 200
    assert MemoryDocument.objects.get(path="a.md").document_id == row.document_id
    assert Document.objects.filter(kb__agent=agent).count() == 1


def test_delete_removes_the_document_and_its_chunks(agent, member_client):
    put(member_client, agent, "notes/x.md", "temporary note about zebras")
    document_id = MemoryDocument.objects.get(path="notes/x.md").document_id
    response = member_client.delete(url(agent, "notes/x.md"))
    assert response.status_code == 204
    assert not MemoryDocument.objects.filter(path="notes/x.md").exists()
    assert not Document.objects.filter(pk=document_id).exists()
    assert_envelope(member_client.get(url(agent, "notes/x.md")), 404)
    assert_envelope(member_client.delete(url(agent, "notes/x.md")), 404)
    assert search(member_client, agent, "zebras").json()["items"] == []


def test_per_user_memory_is_seen_only_by_its_user(org, agent, member, member_client, owner_client):
    response = put(member_client, agent, "prefs.md", "I like window seats on trains", "?scope=user")
    assert response.status_code == 201, response.content
    assert response.json()["scope"] == "user"
    assert response.json()["user_id"] == str(member.pk)
    put(member_client, agent, "prefs.md", "The team likes aisle seats")  # shared, same path

    mine = member_client.get(url(agent, query="?user=me")).json()
    assert [(i["path"], i["scope"]) for i in mine["items"]] == [("prefs.md", "user")]
    shared = member_client.get(url(agent)).json()
    assert [(i["path"], i["scope"]) for i in shared["items"]] == [("prefs.md", "agent")]
    assert (
        member_client.get(url(agent, "prefs.md", "?scope=user")).json()["content"].startswith("I like window")
    )
    assert member_client.get(url(agent, "prefs.md")).json()["content"].startswith("The team")

    # The owner has no per-user document there, and never sees the member's.
    assert_envelope(owner_client.get(url(agent, "prefs.md", "?scope=user")), 404)
    assert owner_client.get(url(agent, query="?scope=user")).json()["total"] == 0
    assert search(owner_client, agent, "window").json()["items"] == []
    assert {hit["scope"] for hit in search(owner_client, agent, "seats").json()["items"]} == {"agent"}
    assert search(member_client, agent, "window").json()["items"][0]["scope"] == "user"
    both = search(member_client, agent, "seats").json()["items"]
    assert {hit["scope"] for hit in both} == {"user", "agent"}
    only_shared = search(member_client, agent, "seats", scope="agent").json()["items"]
    assert {hit["scope"] for hit in only_shared} == {"agent"}


@pytest.mark.parametrize(
    "bad",
    [
        "../etc/passwd",
        "a/../b",
        "has space.md",
        "semi;colon",
        "trailing/",
        "a//b",
        "./x",
        "x" * 256,
        "ümlaut",
    ],
)
def test_bad_paths_are_refused(bad):
    from core.errors import ValidationError

    with pytest.raises(ValidationError):
        validate_path(bad)


def test_a_bad_path_answers_400_and_writes_nothing(agent, member_client):
    body = assert_envelope(put(member_client, agent, "a/../b.md", "x"), 400, "ERR_INVALID_PATH")
    assert "path" in body["details"]
    assert_envelope(put(member_client, agent, "x" * 256, "x"), 400, "ERR_INVALID_PATH")
    assert_envelope(put(member_client, agent, "a%20b", "x"), 400, "ERR_INVALID_PATH")
    assert MemoryDocument.objects.count() == 0


def test_a_nested_path_and_dots_in_names_are_fine(agent, member_client):
    assert put(member_client, agent, "a/b/c/v1.2_final-notes.md", "fine").status_code == 201


def test_bad_bodies_answer_400(agent, member_client):
    assert_envelope(member_client.put(url(agent, "a.md"), {}, format="json"), 400)
    assert_envelope(member_client.put(url(agent, "a.md"), {"content": ""}, format="json"), 400)
    assert_envelope(member_client.get(url(agent, query="?scope=everyone")), 400)
    assert_envelope(member_client.get(url(agent, query="?user=someone")), 400)
    assert_envelope(search(member_client, agent, ""), 400)
    assert_envelope(search(member_client, agent, "x", top_k=0), 400)
    assert_envelope(search(member_client, agent, "x", mode="fuzzy"), 400)
    assert_envelope(search(member_client, agent, "x", scope="nobody"), 400)
    assert MemoryDocument.objects.count() == 0


def test_search_of_an_empty_memory_is_empty(agent, member_client):
    response = search(member_client, agent, "anything")
    assert response.status_code == 200
    assert response.json()["items"] == []


def test_the_member_owner_outsider_trio(agent, foreign_agent, owner_client, member_client, outsider_client):
    assert put(owner_client, agent, "o.md", "owner wrote").status_code == 201
    assert member_client.get(url(agent, "o.md")).status_code == 200
    for client_response in (
        outsider_client.get(url(agent)),
        outsider_client.get(url(agent, "o.md")),
        put(outsider_client, agent, "o.md", "overwrite"),
        outsider_client.delete(url(agent, "o.md")),
        search(outsider_client, agent, "owner"),
    ):
        assert_envelope(client_response, 404)
    assert MemoryDocument.objects.get(path="o.md").content == "owner wrote"
    # Another org's agent id answers 404 to this org's members.
    assert_envelope(member_client.get(url(foreign_agent)), 404)
    assert_envelope(put(member_client, foreign_agent, "x.md", "x"), 404)


def test_a_viewer_is_refused_and_anonymous_is_401(org, agent, anon_client):
    _, viewer_client = client_with_role(org, Role.VIEWER)
    assert_envelope(viewer_client.get(url(agent)), 403, "ERR_ROLE_REQUIRED")
    assert_envelope(put(viewer_client, agent, "v.md", "x"), 403, "ERR_ROLE_REQUIRED")
    assert anon_client.get(url(agent)).status_code in (401, 403)


def test_a_private_agent_of_someone_else_answers_404(org, owner, member_client):
    private = make_agent(org, owner=owner, visibility=Agent.Visibility.PRIVATE)
    assert_envelope(member_client.get(url(private)), 404)
    assert_envelope(put(member_client, private, "p.md", "x"), 404)


# --- the memory tools --------------------------------------------------------------------------


def run_tool(name, org, args, *, agent=None, user=None):
    ctx = ToolContext(org=org, agent=agent, user=user, config={})
    return async_to_sync(aexecute)(get_tool(name), ctx, args)


def test_memory_save_writes_a_memory_document_that_memory_search_finds(org, agent, member):
    saved = run_tool(
        "memory_save",
        org,
        {"content": "The customer prefers email.", "tags": ["Contact"]},
        agent=agent,
        user=member,
    )
    assert saved["result"]["saved"] is True, saved
    assert saved["result"]["scope"] == "user"
    row = MemoryDocument.objects.get(pk=saved["result"]["id"])
    assert row.user == member and row.path.startswith("notes/")
    assert "Tags: contact" in row.content

    named = run_tool(
        "memory_save",
        org,
        {"content": "Office closes at six.", "path": "office.md", "scope": "agent"},
        agent=agent,
    )
    assert named["result"]["path"] == "office.md" and named["result"]["scope"] == "agent"

    found = run_tool("memory_search", org, {"query": "customer email"}, agent=agent, user=member)["result"]
    assert found["items"][0]["content"].endswith("The customer prefers email.")
    someone_else = run_tool("memory_search", org, {"query": "customer email"}, agent=agent)["result"]
    assert someone_else["items"] == []
    shared = run_tool("memory_search", org, {"query": "office"}, agent=agent)["result"]
    assert [i["path"] for i in shared["items"]] == ["office.md"]


def test_memory_tools_need_an_agent_and_a_valid_path(org, agent, member):
    assert "agent" in run_tool("memory_save", org, {"content": "x"}, user=member)["error"]
    bad = run_tool("memory_save", org, {"content": "x", "path": "../up"}, agent=agent, user=member)
    assert bad["code"] == "ERR_INVALID_PATH"
    assert MemoryDocument.objects.count() == 0


def test_memory_search_ranks_like_the_old_built_in(org, agent, member):
    """The scenario of the agents app's memory test, on memory documents."""
    for content, tags in [
        ("The customer prefers email over phone calls.", ["contact"]),
        ("Project Apollo deadline is the 3rd of March.", ["apollo", "deadline"]),
        ("Apollo budget was approved.", []),
    ]:
        outcome = run_tool("memory_save", org, {"content": content, "tags": tags}, agent=agent, user=member)
        assert outcome["result"]["saved"] is True
    assert MemoryDocument.objects.filter(agent=agent, user=member).count() == 3
    assert AuditLog.objects.filter(org=org, action="memory.document.created").count() == 3

    found = run_tool("memory_search", org, {"query": "apollo deadline"}, agent=agent, user=member)["result"]
    contents = [item["content"].split("\n\n")[-1] for item in found["items"]]
    assert contents == ["Project Apollo deadline is the 3rd of March.", "Apollo budget was approved."]
    assert found["items"][0]["score"] > found["items"][1]["score"]
    limited = run_tool("memory_search", org, {"query": "apollo", "limit": 1}, agent=agent, user=member)
    assert len(limited["result"]["items"]) == 1
    nothing = run_tool("memory_search", org, {"query": "zebra"}, agent=agent, user=member)
    assert nothing["result"]["items"] == []


def test_the_document_list_does_not_query_per_row(agent, member_client):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    def queries():
        with CaptureQueriesContext(connection) as captured:
            assert member_client.get(url(agent)).status_code == 200
        return len(captured)

    put(member_client, agent, "one.md", "one")
    small = queries()
    for index in range(5):
        put(member_client, agent, f"more/{index}.md", f"text {index}")
    assert queries() == small


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_concurrent_puts_of_one_new_path_make_one_document():
    import threading

    from django.db import connection

    from knowledge.memory.services.documents import memory_document_put
    from tests.factories import OrganizationFactory

    agent = make_agent(OrganizationFactory())
    barrier = threading.Barrier(3)
    errors = []

    def write(text):
        try:
            barrier.wait(timeout=10)
            memory_document_put(agent=agent, user=None, path="race.md", content=text, actor=None)
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=write, args=(f"version {n}",)) for n in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    row = MemoryDocument.objects.get(agent=agent, path="race.md")
    assert Document.objects.filter(kb__agent=agent).count() == 1
    assert Document.objects.get(kb__agent=agent).pk == row.document_id
    assert KnowledgeBase.objects.filter(agent=agent).count() == 1
