"""The public marketplace (``GET /api/v1/marketplace/agents``): published agents of every org for
anyone, paginated, showing only what a visitor needs and nothing org-internal or secret."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.test import Client
from django.utils import timezone

from agents.models import Agent
from tests.agents.test_agents import detail, make_agent, make_provider
from tests.core.test_errors import assert_envelope

pytestmark = pytest.mark.django_db

MARKET = "/api/v1/marketplace/agents"
PUBLIC_FIELDS = {"id", "key", "name", "description", "org", "model", "tools", "published_at"}


@pytest.fixture
def catalogue(org, owner, other_org, outsider):
    """Published agents in two orgs, next to unpublished ones that must not show."""
    provider = make_provider(org, api_key="sk-market-secret-QXZV")
    return {
        "ours": make_agent(
            org,
            owner,
            key="translator",
            name="Translator",
            description="Translates text",
            provider=provider,
            system_prompt="INTERNAL INSTRUCTIONS",
            visibility="public",
            knowledge_bases=["2b1f7a52-0d8e-4a38-9b7e-3f4c7a1d9e10"],
        ),
        "theirs": make_agent(other_org, outsider, key="poet", name="Poet", visibility="public"),
        "org_only": make_agent(org, owner, key="internal", visibility="org"),
        "private": make_agent(org, owner, key="secret", visibility="private"),
    }


def test_anyone_sees_published_agents_of_every_org(anon_client, catalogue, org, other_org):
    response = anon_client.get(MARKET)

    assert response.status_code == 200
    data = response.json()
    assert set(data) == {"items", "total", "limit", "offset"}
    assert data["total"] == 2
    by_key = {item["key"]: item for item in data["items"]}
    assert set(by_key) == {"translator", "poet"}
    assert by_key["translator"]["org"] == {"name": org.name, "slug": org.slug}
    assert by_key["poet"]["org"]["name"] == other_org.name


def test_only_public_fields_are_shown(anon_client, catalogue):
    item = next(i for i in anon_client.get(MARKET).json()["items"] if i["key"] == "translator")

    assert set(item) == PUBLIC_FIELDS
    text = anon_client.get(MARKET).content.decode()
    for hidden in ("INTERNAL INSTRUCTIONS", "sk-market", "secret-QXZV", str(catalogue["ours"].provider_id)):
        assert hidden not in text
    assert str(catalogue["ours"].owner_id) not in text
    assert "2b1f7a52" not in text


def test_newest_publications_come_first_and_the_list_is_paginated(anon_client, catalogue):
    Agent.objects.filter(pk=catalogue["ours"].pk).update(published_at=timezone.now() - timedelta(days=1))

    first = anon_client.get(f"{MARKET}?limit=1").json()
    second = anon_client.get(f"{MARKET}?limit=1&offset=1").json()

    assert [i["key"] for i in first["items"]] == ["poet"]
    assert [i["key"] for i in second["items"]] == ["translator"]
    assert first["total"] == 2 and first["limit"] == 1


def test_search_matches_name_or_description(anon_client, catalogue):
    assert [i["key"] for i in anon_client.get(f"{MARKET}?q=translates").json()["items"]] == ["translator"]
    assert [i["key"] for i in anon_client.get(f"{MARKET}?q=POET").json()["items"]] == ["poet"]
    assert anon_client.get(f"{MARKET}?q=").json()["total"] == 2


def test_publishing_and_unpublishing_through_the_api_show_on_the_marketplace(
    owner_client, anon_client, catalogue
):
    internal = catalogue["org_only"]

    owner_client.post(detail(internal, "/publish"))
    assert "internal" in {i["key"] for i in anon_client.get(MARKET).json()["items"]}

    owner_client.patch(detail(internal), {"visibility": "private"}, format="json")
    assert "internal" not in {i["key"] for i in anon_client.get(MARKET).json()["items"]}


def test_agents_of_an_org_being_deleted_leave_the_marketplace(anon_client, catalogue, other_org):
    other_org.deletion_requested_at = timezone.now()
    other_org.save(update_fields=["deletion_requested_at"])

    assert [i["key"] for i in anon_client.get(MARKET).json()["items"]] == ["translator"]


def test_credentials_are_ignored_not_refused(catalogue):
    response = Client(HTTP_AUTHORIZATION="Bearer pat_garbage_garbage").get(MARKET)

    assert response.status_code == 200
    assert response.json()["total"] == 2


def test_a_signed_in_member_sees_the_same_public_list(member_client, catalogue):
    assert member_client.get(MARKET).json()["total"] == 2


def test_bad_pagination_or_search_is_a_400_not_a_500(anon_client, catalogue):
    assert_envelope(anon_client.get(f"{MARKET}?q={'x' * 201}"), 400, "ERR_VALIDATION")
    assert anon_client.get(f"{MARKET}?limit=abc").status_code == 200  # DRF falls back to the default


def test_the_marketplace_is_read_only(anon_client):
    assert_envelope(anon_client.post(MARKET, {}, format="json"), 405)
