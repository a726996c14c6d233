"""Episodic summaries: the beat task summarises idle conversations (chat's source registered as
the lead wires it), ``GET /api/v1/agents/{id}/episodic`` and ``POST …/episodic/search``."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from accounts.models import AuditLog, Role
from chat.models import Conversation, Message
from chat.selectors.episodic_source import idle_conversations
from knowledge.memory.models import EpisodicSummary
from knowledge.memory.registries import register_conversation_source, unregister_conversation_source
from knowledge.memory.services.episodic import episodic_summarise_idle
from knowledge.memory.tasks import summarise_idle_conversations
from knowledge.models import Chunk, Document, KnowledgeBase
from tests.accounts.factories_orgs import client_with_role
from tests.core.test_errors import assert_envelope

from .conftest import make_agent


@pytest.fixture(autouse=True)
def chat_source():
    register_conversation_source(idle_conversations)
    yield
    unregister_conversation_source(idle_conversations)


@pytest.fixture
def llm_agent(org, owner, provider):
    return make_agent(org, owner=owner, provider=provider)


def conversation(org, user, agent, lines, *, idle_minutes=120):
    """A conversation whose messages alternate user/assistant, the last one ``idle_minutes`` ago."""
    last = timezone.now() - timedelta(minutes=idle_minutes)
    conv = Conversation.objects.create(
        org=org, user=user, agent=agent, last_message_at=last, message_count=len(lines)
    )
    for index, text in enumerate(lines):
        role = Message.Role.USER if index % 2 == 0 else Message.Role.ASSISTANT
        Message.objects.create(org=org, conversation=conv, index=index, role=role, content=text)
    return conv


def add_messages(conv, lines, *, idle_minutes=60):
    start = conv.messages.count()
    for offset, text in enumerate(lines):
        index = start + offset
        role = Message.Role.USER if index % 2 == 0 else Message.Role.ASSISTANT
        Message.objects.create(org=conv.org, conversation=conv, index=index, role=role, content=text)
    conv.last_message_at = timezone.now() - timedelta(minutes=idle_minutes)
    conv.save()


def test_an_idle_conversation_is_summarised_into_the_episodic_kb(org, member, llm_agent):
    conv = conversation(org, member, llm_agent, ["I am planning a trip to Lisbon", "Lisbon is lovely in May"])
    busy = conversation(org, member, llm_agent, ["still talking"], idle_minutes=1)

    counts = summarise_idle_conversations()
    assert counts["summarised"] == 1, counts
    row = EpisodicSummary.objects.get(conversation_id=conv.pk)
    assert (row.first_index, row.last_index, row.message_count) == (0, 1, 2)
    assert row.user == member and row.agent == llm_agent
    assert "Lisbon" in row.summary and row.summary.startswith("echo:")
    assert row.document.kb.kind == KnowledgeBase.Kind.EPISODIC and row.document.kb.agent == llm_agent
    assert row.document.status == Document.Status.READY
    assert Chunk.objects.filter(document=row.document).exists()
    assert not EpisodicSummary.objects.filter(conversation_id=busy.pk).exists()
    assert AuditLog.objects.filter(action="episodic.summarised", entity_id=str(row.pk)).exists()

    # Nothing new: the next pass leaves it alone (and does not even read its messages).
    assert summarise_idle_conversations()["summarised"] == 0
    assert EpisodicSummary.objects.get(pk=row.pk).document_id == row.document_id


def test_new_messages_make_the_summary_stale_and_it_is_rewritten(org, member, llm_agent):
    conv = conversation(org, member, llm_agent, ["hello there", "hi"])
    summarise_idle_conversations()
    first = EpisodicSummary.objects.get(conversation_id=conv.pk)

    add_messages(conv, ["my budget is 900 euros", "noted"])
    counts = summarise_idle_conversations()
    assert counts["summarised"] == 1, counts
    row = EpisodicSummary.objects.get(conversation_id=conv.pk)
    assert (row.first_index, row.last_index, row.message_count) == (0, 3, 4)
    assert "Summary so far" in row.summary and "900 euros" in row.summary  # old summary + new messages only
    assert "[0] user: hello there" not in row.summary.split("New messages since then:")[1]
    assert row.document_id != first.document_id
    assert not Document.objects.filter(pk=first.document_id).exists()
    assert EpisodicSummary.objects.count() == 1


def test_a_conversation_that_is_not_idle_yet_waits(org, member, llm_agent, settings):
    settings.EPISODIC_IDLE_MINUTES = 180
    conv = conversation(org, member, llm_agent, ["a", "b"], idle_minutes=120)
    assert episodic_summarise_idle()["summarised"] == 0
    assert not EpisodicSummary.objects.filter(conversation_id=conv.pk).exists()
    settings.EPISODIC_IDLE_MINUTES = 60
    assert episodic_summarise_idle()["summarised"] == 1


def test_a_failing_llm_leaves_no_summary_and_is_retried(org, member, provider, owner):
    failing = make_agent(org, owner=owner, provider=provider, model="fail-401")
    conv = conversation(org, member, failing, ["hello", "hi"])
    assert summarise_idle_conversations()["failed"] == 1
    row = EpisodicSummary.objects.get(conversation_id=conv.pk)
    assert row.last_index is None and row.summary == "" and row.claimed_at is None
    assert row.error.startswith("ERR_")
    failing.model = "fake-model-1"
    failing.save()
    assert summarise_idle_conversations()["summarised"] == 1


def test_a_claimed_conversation_is_skipped(org, member, llm_agent):
    conv = conversation(org, member, llm_agent, ["hello", "hi"])
    EpisodicSummary.objects.create(
        org=org, agent=llm_agent, conversation_id=conv.pk, claimed_at=timezone.now()
    )
    assert summarise_idle_conversations()["busy"] == 1
    assert EpisodicSummary.objects.get(conversation_id=conv.pk).last_index is None


def test_conversations_without_an_agent_or_text_are_skipped(org, member, llm_agent):
    Conversation.objects.create(
        org=org, user=member, agent=None, last_message_at=timezone.now() - timedelta(hours=2)
    )
    conversation(org, member, llm_agent, [])
    counts = summarise_idle_conversations()
    assert counts["summarised"] == 0 and counts["skipped"] == 1
    assert not EpisodicSummary.objects.exclude(last_index=None).exists()


# --- the API -----------------------------------------------------------------------------------


def episodic(client, agent, query=""):
    return client.get(f"/api/v1/agents/{agent.pk}/episodic{query}")


def episodic_search(client, agent, query, **body):
    return client.post(f"/api/v1/agents/{agent.pk}/episodic/search", {"query": query, **body}, format="json")


def test_list_and_search_show_the_callers_own_summaries(org, member, member_client, owner_client, llm_agent):
    mine = conversation(org, member, llm_agent, ["I am planning a trip to Lisbon", "Lisbon is lovely"])
    someone, someone_client = client_with_role(org, Role.MEMBER)
    theirs = conversation(org, someone, llm_agent, ["my dentist appointment is on Friday", "ok"])
    summarise_idle_conversations()

    listed = episodic(member_client, llm_agent).json()
    assert [i["conversation_id"] for i in listed["items"]] == [str(mine.pk)]
    assert listed["items"][0]["last_index"] == 1 and "Lisbon" in listed["items"][0]["summary"]
    assert {i["conversation_id"] for i in episodic(owner_client, llm_agent).json()["items"]} == {
        str(mine.pk),
        str(theirs.pk),
    }
    only = episodic(owner_client, llm_agent, f"?conversation_id={theirs.pk}").json()
    assert [i["conversation_id"] for i in only["items"]] == [str(theirs.pk)]

    found = episodic_search(member_client, llm_agent, "Lisbon trip").json()
    assert [hit["conversation_id"] for hit in found["items"]] == [str(mine.pk)]
    assert episodic_search(member_client, llm_agent, "dentist").json()["items"] == []
    assert [
        h["conversation_id"] for h in episodic_search(someone_client, llm_agent, "dentist").json()["items"]
    ] == [str(theirs.pk)]
    assert len(episodic_search(owner_client, llm_agent, "dentist").json()["items"]) == 1


def test_bad_input_answers_400(llm_agent, member_client):
    assert_envelope(episodic(member_client, llm_agent, "?conversation_id=nope"), 400)
    assert_envelope(episodic_search(member_client, llm_agent, ""), 400)
    assert_envelope(episodic_search(member_client, llm_agent, "x", top_k=51), 400)


def test_the_member_owner_outsider_trio(
    org, member, llm_agent, foreign_agent, member_client, outsider_client
):
    conversation(org, member, llm_agent, ["hello", "hi"])
    summarise_idle_conversations()
    assert episodic(member_client, llm_agent).json()["total"] == 1
    assert_envelope(episodic(outsider_client, llm_agent), 404)
    assert_envelope(episodic_search(outsider_client, llm_agent, "hello"), 404)
    assert_envelope(episodic(member_client, foreign_agent), 404)
    assert_envelope(episodic_search(member_client, foreign_agent, "hello"), 404)
    _, viewer_client = client_with_role(org, Role.VIEWER)
    assert_envelope(episodic(viewer_client, llm_agent), 403, "ERR_ROLE_REQUIRED")


def test_the_beat_runs_the_task_every_10_minutes_with_expiry(settings):
    from config.celery_app import app

    entry = settings.CELERY_BEAT_SCHEDULE["episodic-summaries"]
    assert entry["task"] == "knowledge.memory.tasks.summarise_idle_conversations"
    assert entry["task"] in app.tasks
    assert entry["schedule"].minute == set(range(0, 60, 10))
    assert 0 < entry["options"]["expires"] < 10 * 60
