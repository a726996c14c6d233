"""Walk every org-scoped route the URL conf registers and call it with another org's ids.

Org A's owner must get 404 for every row of org B, whatever the method: existence never leaks
and nothing of B changes. Routes of later apps are covered as soon as they are registered and the
world below holds rows of their models (every model with an ``org`` foreign key is collected).
"""

from __future__ import annotations

import re
import uuid

import pytest
from django.apps import apps
from django.conf import settings
from django.urls import URLPattern, URLResolver, get_resolver

from accounts.models import Role
from tests.conftest import client_for
from tests.factories import MembershipFactory, OrganizationFactory, UserFactory

# Routes whose ids are not tenant rows, with the reason.
NOT_TENANT_SCOPED = {
    "api/v1/admin/waitlist/<uuid:id>/approve": "platform-wide, staff only",
    "api/v1/admin/waitlist/<uuid:id>/reject": "platform-wide, staff only",
}
METHODS = ("get", "patch", "put", "delete", "post")
UUID_PARAM = re.compile(r"<uuid:(\w+)>")


def walk(patterns, prefix=""):
    for route, _callback in walk_views(patterns, prefix):
        yield route


def walk_views(patterns, prefix=""):
    for entry in patterns:
        route = prefix + str(entry.pattern)
        if isinstance(entry, URLResolver):
            yield from walk_views(entry.url_patterns, route)
        elif isinstance(entry, URLPattern):
            yield route, entry.callback


def allowed_methods(route: str) -> tuple[str, ...]:
    """The methods the route's view answers: calling the others only measures 405s. A viewset
    route knows its action map, an APIView its handlers; anything else is called with all."""
    callback = dict(walk_views(get_resolver().url_patterns)).get(route)
    actions = getattr(callback, "actions", None)
    if actions:
        return tuple(m for m in METHODS if m in actions)
    view_class = getattr(callback, "cls", None) or getattr(callback, "view_class", None)
    if view_class is not None:
        return tuple(m for m in METHODS if hasattr(view_class, m))
    return METHODS


def is_uuid(value: str) -> bool:
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True


def org_scoped_routes() -> list[str]:
    routes = sorted(
        {r for r in walk(get_resolver().url_patterns) if r.startswith("api/v1/") and UUID_PARAM.search(r)}
    )
    return [r for r in routes if r not in NOT_TENANT_SCOPED]


def tenant_models():
    for model in apps.get_models():
        field = next((f for f in model._meta.fields if f.name == "org"), None)
        if (
            field is not None
            and field.is_relation
            and field.related_model._meta.label == settings.TENANT_MODEL
        ):
            yield model


@pytest.fixture
def world(db):
    """Org B with one row of everything the API can create, made through the API by B's owner."""
    org_b = OrganizationFactory()
    owner_b = MembershipFactory(org=org_b, role=Role.OWNER).user
    member_b = MembershipFactory(org=org_b, role=Role.MEMBER).user
    client_b = client_for(owner_b)
    created = [
        client_b.post(
            "/api/v1/org/invites", {"email": "newcomer@example.com", "role": "MEMBER"}, format="json"
        ),
        client_b.post("/api/v1/org/groups", {"name": "Team B"}, format="json"),
        client_b.post("/api/v1/api-keys", {"name": "b-key"}, format="json"),
        client_b.post(
            "/api/v1/providers",
            {
                "name": "b-llm",
                "provider_type": "openai",
                "api_base": "https://api.openai.com/v1",
                "api_key": "sk-b",
            },
            format="json",
        ),
    ]
    for response in created:
        assert response.status_code == 201, response.content
    group_id = created[1].json()["id"]
    agent = client_b.post(
        "/api/v1/agents",
        {"key": "b-agent", "name": "B", "provider": created[3].json()["id"], "model": "gpt-x"},
        format="json",
    )
    assert agent.status_code == 201, agent.content
    assert client_b.post(
        f"/api/v1/agents/{agent.json()['id']}/shares", {"user_id": str(member_b.pk)}, format="json"
    ).status_code in (200, 201)
    assert (
        client_b.post(f"/api/v1/org/groups/{group_id}/members", {"user_id": str(member_b.pk)}, format="json")
    ).status_code in (200, 201)
    # chat /ai: a transcript, through POST /api/v1/ai/transcribe on the fake upstream, whose provider
    # is deleted again so that nothing later in this world talks to the stopped fake.
    from django.core.files.uploadedfile import SimpleUploadedFile
    from django.test import override_settings

    from tests.fakes.openai_upstream import FakeUpstream

    with FakeUpstream() as upstream, override_settings(OUTBOUND_ALLOWED_HOSTS=["127.0.0.1"]):
        audio_provider = client_b.post(
            "/api/v1/providers",
            {"name": "b-audio", "api_base": upstream.base_url, "api_key": "sk-b-audio", "priority": 0},
            format="json",
        )
        assert audio_provider.status_code == 201, audio_provider.content
        transcript = client_b.post(
            "/api/v1/ai/transcribe",
            {"file": SimpleUploadedFile("b.mp3", b"ID3\x04\x00SAY:org b", content_type="audio/mpeg")},
            format="multipart",
        )
        assert transcript.status_code == 201, transcript.content
        assert client_b.delete(f"/api/v1/providers/{audio_provider.json()['id']}").status_code == 204
    # chat: a conversation of B's owner with a user and an assistant message, and feedback on it.
    conversation_b = client_b.post("/api/v1/conversations", {"agent": "b-agent"}, format="json")
    assert conversation_b.status_code == 201, conversation_b.content
    appended = client_b.post(
        f"/api/v1/conversations/{conversation_b.json()['id']}/messages",
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]},
        format="json",
    )
    assert appended.status_code == 201, appended.content
    answer_id = appended.json()["messages"][1]["id"]
    feedback = client_b.post(f"/api/v1/chat/{answer_id}/feedback", {"rating": "up"}, format="json")
    assert feedback.status_code == 201, feedback.content
    # knowledge.memory: a memory document, two entities with a relation, an episodic summary.
    agent_b = agent.json()["id"]
    memory_doc = client_b.put(
        f"/api/v1/agents/{agent_b}/memory/documents/notes/b.md", {"content": "org b memory"}, format="json"
    )
    assert memory_doc.status_code == 201, memory_doc.content
    kg_ids = [
        client_b.post(f"/api/v1/agents/{agent_b}/kg/entities", {"name": name}, format="json").json()["id"]
        for name in ("B one", "B two")
    ]
    relation_b = client_b.post(
        f"/api/v1/agents/{agent_b}/kg/relations",
        {"source": kg_ids[0], "target": kg_ids[1], "type": "knows"},
        format="json",
    )
    assert relation_b.status_code == 201, relation_b.content
    from knowledge.memory.models import EpisodicSummary

    EpisodicSummary.objects.create(
        org=org_b,
        agent_id=agent_b,
        user=owner_b,
        conversation_id=uuid.uuid4(),
        first_index=0,
        last_index=1,
        summary="org b episode",
    )
    # knowledge: a knowledge base and an ingested document (chunks, index version) made through the API.
    kb_b = client_b.post("/api/v1/knowledge", {"name": "KB B"}, format="json")
    assert kb_b.status_code == 201, kb_b.content
    doc_b = client_b.post(
        f"/api/v1/knowledge/{kb_b.json()['id']}/documents",
        {"title": "B", "text": "org b words"},
        format="json",
    )
    assert doc_b.status_code == 202, doc_b.content
    from knowledge.services.ingest import ingest_document

    ingest_document(doc_b.json()["id"])
    # billing: a cap policy (with counter, reservation, event), a price override, credits, a plan, usage.
    for path, body, method in (
        ("/api/v1/usage-caps/policies", {"name": "b-cap", "window": "day", "max_tokens": 100000}, "post"),
        (
            "/api/v1/model-pricing/overrides",
            {"model": "b-model", "input_per_million": 1, "output_per_million": 2},
            "put",
        ),
        ("/api/v1/credits/grant", {"amount": 10}, "post"),
        ("/api/v1/billing/change-plan", {"plan": "pro"}, "post"),
    ):
        billing_row = getattr(client_b, method)(path, body, format="json")
        assert billing_row.status_code in (200, 201), billing_row.content
    assert (
        client_b.post("/api/v1/credits/consume", {"amount": 1, "action": "b"}, format="json").status_code
        == 200
    )
    from billing.services.caps import usage_reserve
    from billing.services.usage import usage_record_from_event

    usage_reserve(
        {"org_id": str(org_b.pk), "model": "b-model", "estimated_prompt_tokens": 5, "max_tokens": 5}
    )
    usage_record_from_event({"org_id": str(org_b.pk), "model": "b-model", "prompt_tokens": 3, "status": "ok"})
    from core.models import Job

    Job.objects.create(kind="test.echo", org=org_b, actor=owner_b)
    ids = {str(member_b.pk), str(owner_b.pk)}
    for model in tenant_models():
        # One row of each model is enough to catch a route that forgets the org filter; every
        # row of every model would only multiply the requests.
        first = model.objects.filter(org=org_b).values_list("pk", flat=True).first()
        if first is not None:
            ids.add(str(first))
    return {"org": org_b, "ids": sorted(ids), "user_ids": sorted({str(member_b.pk), str(owner_b.pk)})}


def test_the_walker_finds_the_org_scoped_routes():
    routes = org_scoped_routes()
    assert "api/v1/jobs/<uuid:job_id>" in routes
    assert "api/v1/api-keys/<uuid:id>" in routes
    assert "api/v1/org/members/<uuid:user_id>" in routes
    assert "api/v1/providers/<uuid:id>" in routes
    assert "api/v1/agents/<uuid:id>/wake" in routes


def test_every_org_scoped_route_answers_404_for_another_orgs_ids(world):
    org_a = OrganizationFactory()
    owner_a = MembershipFactory(org=org_a, role=Role.OWNER).user
    client_a = client_for(owner_a)
    # Org A has rows too, so a route that forgot the org filter could not pass by being empty.
    client_a.post("/api/v1/org/groups", {"name": "Team A"}, format="json")
    before = {model._meta.label: model.objects.filter(org=world["org"]).count() for model in tenant_models()}
    leaks = []
    # Integer keys can never match a <uuid:> route: only UUID ids are candidates.
    candidates = [value for value in world["ids"] if is_uuid(value)]
    for route in org_scoped_routes():
        params = UUID_PARAM.findall(route)
        methods = allowed_methods(route)
        for candidate in candidates:
            path = "/" + UUID_PARAM.sub(candidate, route)
            for method in methods:
                response = getattr(client_a, method)(path, {}, format="json")
                if response.status_code not in (404, 405):
                    leaks.append(f"{method.upper()} {path} ({route}, {params}) → {response.status_code}")
    assert leaks == []
    after = {model._meta.label: model.objects.filter(org=world["org"]).count() for model in tenant_models()}
    assert after == before


def test_unknown_ids_answer_404_too(owner_client):
    for route in org_scoped_routes():
        path = "/" + UUID_PARAM.sub(str(uuid.uuid4()), route)
        response = owner_client.get(path)
        assert response.status_code in (404, 405), f"GET {path} → {response.status_code}"
        if response.status_code == 404:
            assert response.json()["error"]["code"].startswith("ERR_")


def test_an_outsider_without_any_membership_gets_no_org_rows(world):
    loner = UserFactory()
    client = client_for(loner)
    for route in org_scoped_routes():
        path = "/" + UUID_PARAM.sub(world["ids"][0], route)
        assert client.get(path).status_code in (403, 404, 405)
