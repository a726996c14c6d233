"""The admin of `knowledge.memory`: pages render for staff, rows are read-only, deletes go through
the services (and leave audit rows)."""

from __future__ import annotations

import uuid

import pytest

from accounts.models import AuditLog
from knowledge.memory.models import Entity, EpisodicSummary, Relation
from knowledge.memory.services.graph import entity_upsert, relation_upsert
from tests.conftest import client_for
from tests.factories import UserFactory


@pytest.fixture
def staff_client(db):
    return client_for(UserFactory(is_staff=True, is_superuser=True))


def test_changelists_and_change_pages_render(staff_client, agent, member):
    a = entity_upsert(agent=agent, actor=None, name="Alice", aliases=["Ally"])[0]
    b = entity_upsert(agent=agent, actor=None, name="Bob")[0]
    relation = relation_upsert(agent=agent, actor=None, source=a, target=b, type="knows")[0]
    summary = EpisodicSummary.objects.create(
        org=agent.org, agent=agent, user=member, conversation_id=uuid.uuid4(), last_index=1, summary="s"
    )
    for model, pk in (("entity", a.pk), ("relation", relation.pk), ("episodicsummary", summary.pk)):
        assert staff_client.get(f"/admin/knowledge_memory/{model}/").status_code == 200
        assert staff_client.get(f"/admin/knowledge_memory/{model}/?q=a").status_code == 200
        assert staff_client.get(f"/admin/knowledge_memory/{model}/{pk}/change/").status_code == 200
    assert staff_client.get("/admin/knowledge_memory/memorydocument/").status_code == 200
    assert staff_client.get("/admin/knowledge_memory/entity/add/").status_code == 403


def test_deleting_an_entity_in_the_admin_goes_through_the_service(staff_client, agent):
    a = entity_upsert(agent=agent, actor=None, name="Alice")[0]
    b = entity_upsert(agent=agent, actor=None, name="Bob")[0]
    relation_upsert(agent=agent, actor=None, source=a, target=b, type="knows")
    response = staff_client.post(
        f"/admin/knowledge_memory/entity/{a.pk}/delete/", {"post": "yes"}, format="multipart"
    )
    assert response.status_code == 302
    assert not Entity.objects.filter(pk=a.pk).exists()
    assert not Relation.objects.exists()
    assert AuditLog.objects.filter(action="kg.entity.deleted", entity_id=str(a.pk)).exists()
