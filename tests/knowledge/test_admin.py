"""Django admin of knowledge: lists with state filters, and the "retry failed" action."""

from __future__ import annotations

import pytest
from django.test import Client

from knowledge.models import Document
from knowledge.services.documents import document_create_from_upload
from tests.factories import UserFactory

from .conftest import run_pending_jobs


@pytest.fixture
def staff_client(db):
    user = UserFactory(is_staff=True, is_superuser=True)
    client = Client()
    client.force_login(user)
    return client


def test_admin_lists_filter_by_state_and_retry_failed(staff_client, kb, owner):
    created = document_create_from_upload(kb=kb, actor=owner, data=b"%PDF-1.4 junk", filename="x.pdf")
    run_pending_jobs()
    assert Document.objects.get(pk=created.document.pk).status == "failed"

    assert staff_client.get("/admin/knowledge/knowledgebase/").status_code == 200
    page = staff_client.get("/admin/knowledge/document/?status__exact=failed")
    assert page.status_code == 200 and b"x.pdf" in page.content

    response = staff_client.post(
        "/admin/knowledge/document/",
        {"action": "retry_failed", "_selected_action": [str(created.document.pk)]},
    )
    assert response.status_code == 302
    document = Document.objects.get(pk=created.document.pk)
    assert (document.status, document.attempts) == ("pending", 0)
    assert staff_client.get(f"/admin/knowledge/document/{document.pk}/change/").status_code == 200
