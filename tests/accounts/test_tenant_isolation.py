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
    for entry in patterns:
        route = prefix + str(entry.pattern)
        if isinstance(entry, URLResolver):
            yield from walk(entry.url_patterns, route)
        elif isinstance(entry, URLPattern):
            yield route


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
    from core.models import Job

    Job.objects.create(kind="test.echo", org=org_b, actor=owner_b)
    ids = {str(member_b.pk), str(owner_b.pk)}
    for model in tenant_models():
        ids |= {str(pk) for pk in model.objects.filter(org=org_b).values_list("pk", flat=True)}
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
    for route in org_scoped_routes():
        params = UUID_PARAM.findall(route)
        for candidate in world["ids"]:
            path = "/" + UUID_PARAM.sub(candidate, route)
            for method in METHODS:
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
