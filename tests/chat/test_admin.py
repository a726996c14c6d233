"""The chat admin: every page loads, conversations are found by user email, agent key and title,
messages show inline and read-only, history rows cannot be edited, archiving leaves an audit row."""

from __future__ import annotations

import pytest
from django.test import Client
from django.urls import reverse

from accounts.models import AuditLog, User
from chat.models import Conversation, Message, MessageFeedback, Transcript
from tests.chat.conftest import make_agent, make_conversation

pytestmark = pytest.mark.django_db


@pytest.fixture
def staff_client(db):
    superuser = User.objects.create_superuser(email="ops@example.com", password="pw-Ops-123")
    client = Client()
    client.force_login(superuser)
    return client


def admin_url(model, view: str, *args) -> str:
    return reverse(f"admin:chat_{model._meta.model_name}_{view}", args=args)


@pytest.fixture
def rows(org, member):
    agent = make_agent(org, key="helpdesk")
    conversation = make_conversation(
        org,
        member,
        agent,
        messages=[("user", "Where is my parcel?"), ("assistant", "On its way.")],
        title="Parcel",
    )
    answer = conversation.messages.get(index=1)
    MessageFeedback.objects.create(org=org, message=answer, user=member, rating="up", comment="thanks")
    Transcript.objects.create(
        org=org, user=member, filename="memo.wav", content_type="audio/wav", text="hello"
    )
    return {"conversation": conversation, "answer": answer}


@pytest.mark.parametrize("model", [Conversation, Message, MessageFeedback, Transcript])
def test_admin_pages_load(staff_client, rows, model):
    assert staff_client.get(admin_url(model, "changelist")).status_code == 200
    assert staff_client.get(admin_url(model, "changelist") + "?q=a").status_code == 200
    row = model.objects.first()
    assert staff_client.get(admin_url(model, "change", row.pk)).status_code == 200


@pytest.mark.parametrize("query", ["helpdesk", "Parcel", "{email}"])
def test_conversations_are_found_by_agent_key_title_and_user_email(staff_client, rows, member, query):
    response = staff_client.get(
        admin_url(Conversation, "changelist"), {"q": query.format(email=member.email)}
    )
    assert response.status_code == 200
    assert str(rows["conversation"].pk) in response.content.decode()
    missing = staff_client.get(admin_url(Conversation, "changelist"), {"q": "no-such-thing"})
    assert str(rows["conversation"].pk) not in missing.content.decode()


def test_the_conversation_page_shows_its_messages_inline_read_only(staff_client, rows):
    page = staff_client.get(admin_url(Conversation, "change", rows["conversation"].pk)).content.decode()
    assert "Where is my parcel?" in page and "On its way." in page
    assert 'name="messages-0-content"' not in page  # shown, not editable


def test_messages_and_feedback_are_read_only(staff_client, rows):
    response = staff_client.post(admin_url(Message, "change", rows["answer"].pk), {"content": "changed"})
    assert response.status_code == 403
    assert Message.objects.get(pk=rows["answer"].pk).content == "On its way."
    assert staff_client.get(admin_url(MessageFeedback, "add")).status_code == 403


def test_archive_action_goes_through_the_service(staff_client, rows):
    conversation = rows["conversation"]
    response = staff_client.post(
        admin_url(Conversation, "changelist"),
        {"action": "archive", "_selected_action": [str(conversation.pk)]},
    )
    assert response.status_code == 302
    conversation.refresh_from_db()
    assert conversation.archived_at is not None
    assert AuditLog.objects.filter(action="conversation.updated", entity_id=str(conversation.pk)).exists()
    filtered = staff_client.get(admin_url(Conversation, "changelist"), {"archived": "yes"})
    assert str(conversation.pk) in filtered.content.decode()
