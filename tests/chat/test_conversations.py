"""/api/v1/conversations: the caller's own conversations, history with a cursor, appending,
branching, LLM titles, and feedback on assistant messages."""

from __future__ import annotations

import uuid

import pytest
from rest_framework.test import APIClient

from accounts.models import AuditLog, Role
from agents.models import Agent
from chat.models import Conversation, Message, MessageFeedback
from chat.selectors.conversations import history_loader
from chat.selectors.messages import encode_cursor
from chat.services.conversations import conversation_reset
from tests.accounts.factories_orgs import client_with_role, personal_key
from tests.chat.conftest import make_agent, make_conversation, make_provider
from tests.core.test_errors import assert_envelope

pytestmark = pytest.mark.django_db


def detail(conversation) -> str:
    return f"/api/v1/conversations/{conversation.pk}"


def _messages(n: int) -> list[tuple[str, str]]:
    return [("user" if i % 2 == 0 else "assistant", f"message {i}") for i in range(n)]


# --- collection and detail ---------------------------------------------------------------------


def test_create_with_an_agent_key_or_id_and_list_only_your_own(
    org, member, owner, member_client, owner_client
):
    agent = make_agent(org)
    by_key = member_client.post(
        "/api/v1/conversations", {"agent": agent.key, "title": " Plans "}, format="json"
    )
    assert by_key.status_code == 201, by_key.content
    body = by_key.json()
    assert body["agent"] == str(agent.pk) and body["agent_key"] == agent.key
    assert body["title"] == "Plans" and body["archived"] is False and body["message_count"] == 0
    by_id = member_client.post("/api/v1/conversations", {"agent": str(agent.pk)}, format="json")
    assert by_id.status_code == 201
    owner_client.post("/api/v1/conversations", {"title": "owner's"}, format="json")

    listed = member_client.get("/api/v1/conversations").json()
    assert listed["total"] == 2 and {c["id"] for c in listed["items"]} == {body["id"], by_id.json()["id"]}
    assert AuditLog.objects.filter(action="conversation.created", org=org).count() == 3


def test_create_with_an_agent_you_cannot_see_is_404(org, other_org, owner, member_client):
    foreign = make_agent(other_org)
    private = make_agent(org, visibility=Agent.Visibility.PRIVATE, owner=owner)
    for ref in (foreign.key, str(foreign.pk), private.key, "no-such-agent"):
        response = member_client.post("/api/v1/conversations", {"agent": ref}, format="json")
        assert_envelope(response, 404, "ERR_NOT_FOUND")
    assert Conversation.objects.count() == 0


def test_filters_archived_agent_and_search(org, member, member_client):
    a1, a2 = make_agent(org), make_agent(org)
    kept = make_conversation(org, member, a1, title="Quarterly budget")
    archived = make_conversation(org, member, a2, title="Holiday plans")
    member_client.patch(detail(archived), {"archived": True}, format="json")

    def ids(query):
        response = member_client.get(f"/api/v1/conversations?{query}")
        assert response.status_code == 200, response.content
        return {c["id"] for c in response.json()["items"]}

    assert ids("") == {str(kept.pk), str(archived.pk)}
    assert ids("archived=true") == {str(archived.pk)}
    assert ids("archived=false") == {str(kept.pk)}
    assert ids(f"agent={a1.pk}") == {str(kept.pk)}
    assert ids("q=budget") == {str(kept.pk)}
    assert_envelope(member_client.get("/api/v1/conversations?agent=nope"), 400)


def test_rename_archive_unarchive_and_delete_removes_the_messages(org, member, member_client):
    conversation = make_conversation(org, member, messages=_messages(3))
    renamed = member_client.patch(detail(conversation), {"title": "New name"}, format="json")
    assert renamed.status_code == 200 and renamed.json()["title"] == "New name"
    archived = member_client.patch(detail(conversation), {"archived": True}, format="json").json()
    assert archived["archived"] is True and archived["archived_at"]
    unarchived = member_client.patch(detail(conversation), {"archived": False}, format="json").json()
    assert unarchived["archived"] is False and unarchived["archived_at"] is None
    assert_envelope(member_client.patch(detail(conversation), {"archived": "maybe"}, format="json"), 400)

    assert member_client.delete(detail(conversation)).status_code == 204
    assert not Conversation.objects.filter(pk=conversation.pk).exists()
    assert Message.objects.filter(conversation_id=conversation.pk).count() == 0
    assert AuditLog.objects.filter(action="conversation.deleted").count() == 1


def test_another_users_conversation_is_404_on_every_route(org, member, owner_client, outsider_client):
    conversation = make_conversation(org, member, messages=_messages(2))
    message = conversation.messages.get(index=1)
    for client in (owner_client, outsider_client):  # the owner of the org, and another org's owner
        assert_envelope(client.get(detail(conversation)), 404)
        assert_envelope(client.patch(detail(conversation), {"title": "x"}, format="json"), 404)
        assert_envelope(client.delete(detail(conversation)), 404)
        assert_envelope(client.get(f"{detail(conversation)}/messages"), 404)
        assert_envelope(
            client.post(
                f"{detail(conversation)}/messages",
                {"messages": [{"role": "user", "content": "x"}]},
                format="json",
            ),
            404,
        )
        assert_envelope(client.post(f"{detail(conversation)}/branch", {"up_to_index": 1}, format="json"), 404)
        assert_envelope(client.post(f"{detail(conversation)}/title"), 404)
        assert_envelope(
            client.post(f"/api/v1/chat/{message.pk}/feedback", {"rating": "up"}, format="json"), 404
        )
        assert_envelope(client.post(f"/api/v1/chat/{message.pk}/cancel"), 404)
        assert_envelope(client.get(f"/api/v1/chat/{message.pk}/stream"), 404)
    conversation.refresh_from_db()
    assert conversation.title == "" and conversation.messages.count() == 2


def test_viewers_and_anonymous_callers_are_refused(org, anon_client):
    _viewer, viewer_client = client_with_role(org, Role.VIEWER)
    assert_envelope(viewer_client.get("/api/v1/conversations"), 403, "ERR_ROLE_REQUIRED")
    assert anon_client.get("/api/v1/conversations").status_code in (401, 403)


def test_api_key_scopes_gate_reads_and_writes(org, member):
    _key, raw = personal_key(org, member, scopes=["conversations:read"])
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")
    assert client.get("/api/v1/conversations").status_code == 200
    assert_envelope(client.post("/api/v1/conversations", {}, format="json"), 403, "ERR_SCOPE_REQUIRED")
    _key, raw = personal_key(org, member, scopes=["conversations:write"])
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")
    created = client.post("/api/v1/conversations", {}, format="json")
    assert created.status_code == 201 and created.json()["channel"] == "api"


# --- history -------------------------------------------------------------------------------------


def test_history_pages_with_an_opaque_cursor_to_the_end(org, member, member_client):
    conversation = make_conversation(org, member, messages=_messages(5))
    first = member_client.get(f"{detail(conversation)}/messages?limit=2").json()
    assert [m["index"] for m in first["messages"]] == [0, 1]
    assert first["total"] == 5 and first["reset"] is False and first["next_cursor"]
    second = member_client.get(
        f"{detail(conversation)}/messages?limit=2&cursor={first['next_cursor']}"
    ).json()
    assert [m["index"] for m in second["messages"]] == [2, 3]
    third = member_client.get(
        f"{detail(conversation)}/messages?limit=2&cursor={second['next_cursor']}"
    ).json()
    assert [m["index"] for m in third["messages"]] == [4]
    assert third["next_cursor"] is None
    message = third["messages"][0]
    assert message["role"] == "user" and message["content"] == "message 4" and message["status"] == "complete"


def test_a_cursor_past_the_end_or_into_a_reset_history_starts_over(org, member, member_client):
    conversation = make_conversation(org, member, messages=_messages(3))
    past = encode_cursor(index=10, last_id=None)
    page = member_client.get(f"{detail(conversation)}/messages?cursor={past}").json()
    assert page["reset"] is True and [m["index"] for m in page["messages"]] == [0, 1, 2]

    cursor = member_client.get(f"{detail(conversation)}/messages?limit=2").json()["next_cursor"]
    conversation_reset(conversation=conversation, actor=member)
    # The history is rewritten: new messages at the same indexes.
    Message.objects.bulk_create(
        [
            Message(org=org, conversation=conversation, index=i, role="user", content=f"new {i}")
            for i in range(3)
        ]
    )
    page = member_client.get(f"{detail(conversation)}/messages?cursor={cursor}").json()
    assert page["reset"] is True and page["messages"][0]["content"] == "new 0"


def test_a_malformed_cursor_or_limit_is_400(org, member, member_client):
    conversation = make_conversation(org, member, messages=_messages(1))
    assert_envelope(
        member_client.get(f"{detail(conversation)}/messages?cursor=garbage!"), 400, "ERR_INVALID_CURSOR"
    )
    assert_envelope(member_client.get(f"{detail(conversation)}/messages?limit=0"), 400)


def test_append_messages_in_order_with_content_parts(org, member, member_client):
    conversation = make_conversation(org, member, messages=_messages(1))
    body = {
        "messages": [
            {"role": "system", "content": "Be brief."},
            {
                "role": "user",
                "content": [{"type": "text", "text": "look"}, {"type": "image_url", "image_url": {}}],
            },
            {"role": "tool", "content": "42"},
        ]
    }
    response = member_client.post(f"{detail(conversation)}/messages", body, format="json")
    assert response.status_code == 201, response.content
    appended = response.json()["messages"]
    assert [(m["index"], m["role"]) for m in appended] == [(1, "system"), (2, "user"), (3, "tool")]
    assert appended[1]["content"] == "look" and appended[1]["parts"][1]["type"] == "image_url"
    conversation.refresh_from_db()
    assert conversation.message_count == 4 and conversation.last_message_at is not None


@pytest.mark.parametrize(
    "body",
    [
        {"messages": []},
        {"messages": [{"role": "robot", "content": "x"}]},
        {"messages": [{"role": "user", "content": 5}]},
        {"messages": [{"role": "user", "content": [{"text": "no type"}]}]},
        {"nothing": True},
    ],
)
def test_append_rejects_bad_messages_and_writes_nothing(org, member, member_client, body):
    conversation = make_conversation(org, member, messages=_messages(1))
    assert_envelope(member_client.post(f"{detail(conversation)}/messages", body, format="json"), 400)
    assert conversation.messages.count() == 1


# --- branch ----------------------------------------------------------------------------------------


def test_branch_copies_the_first_messages_into_a_new_conversation(org, member, member_client):
    agent = make_agent(org)
    conversation = make_conversation(org, member, agent, messages=_messages(4), title="Trip")
    response = member_client.post(
        f"{detail(conversation)}/branch", {"up_to_index": 3, "label": "alt"}, format="json"
    )
    assert response.status_code == 201, response.content
    branch = response.json()
    assert branch["branched_from"] == str(conversation.pk) and branch["branch_point"] == 3
    assert (
        branch["branch_label"] == "alt" and branch["agent"] == str(agent.pk) and branch["message_count"] == 3
    )
    copies = member_client.get(f"/api/v1/conversations/{branch['id']}/messages").json()["messages"]
    assert [m["content"] for m in copies] == ["message 0", "message 1", "message 2"]
    assert conversation.messages.count() == 4  # the parent is untouched
    assert {m["id"] for m in copies}.isdisjoint(set(conversation.messages.values_list("pk", flat=True)))


@pytest.mark.parametrize("up_to_index", [0, 5, -1, "two", None])
def test_branch_out_of_range_is_400_and_creates_nothing(org, member, member_client, up_to_index):
    conversation = make_conversation(org, member, messages=_messages(4))
    response = member_client.post(
        f"{detail(conversation)}/branch", {"up_to_index": up_to_index}, format="json"
    )
    assert_envelope(response, 400)
    assert Conversation.objects.count() == 1


# --- title -----------------------------------------------------------------------------------------


def test_title_is_regenerated_by_the_llm(org, member, member_client, fake_upstream, allow_loopback):
    agent = make_agent(org, make_provider(org, fake_upstream))
    conversation = make_conversation(
        org, member, agent, messages=[("user", "Plan a trip"), ("assistant", "Sure")]
    )
    response = member_client.post(f"{detail(conversation)}/title")
    assert response.status_code == 200, response.content
    title = response.json()["title"]
    assert title.startswith("echo:") and response.json()["title_generated"] is True
    conversation.refresh_from_db()
    assert conversation.title == title[:200]


@pytest.mark.parametrize(("model", "status"), [("fail-401", 424), ("fail-500", 502)])
def test_a_failing_llm_answers_its_error_and_keeps_the_title(
    org, member, member_client, fake_upstream, allow_loopback, model, status
):
    agent = make_agent(org, make_provider(org, fake_upstream), model=model)
    conversation = make_conversation(org, member, agent, messages=[("user", "hi")], title="Old")
    response = member_client.post(f"{detail(conversation)}/title")
    assert_envelope(response, status)
    conversation.refresh_from_db()
    assert conversation.title == "Old" and conversation.title_generated is False


def test_title_of_an_empty_conversation_is_400(org, member, member_client):
    conversation = make_conversation(org, member)
    assert_envelope(member_client.post(f"{detail(conversation)}/title"), 400, "ERR_EMPTY_CONVERSATION")


# --- feedback --------------------------------------------------------------------------------------


def test_feedback_is_one_per_user_and_replaced_when_sent_again(org, member, member_client):
    conversation = make_conversation(org, member, messages=_messages(2))
    answer = conversation.messages.get(index=1)
    url = f"/api/v1/chat/{answer.pk}/feedback"
    first = member_client.post(url, {"rating": "up"}, format="json")
    assert first.status_code == 201, first.content
    assert first.json()["rating"] == "up" and first.json()["message_id"] == str(answer.pk)
    second = member_client.post(url, {"rating": "down", "comment": "wrong date"}, format="json")
    assert second.status_code == 200 and second.json()["id"] == first.json()["id"]
    feedback = MessageFeedback.objects.get()
    assert (feedback.rating, feedback.comment, feedback.org_id) == ("down", "wrong date", org.pk)


def test_feedback_on_a_user_message_or_with_a_bad_rating_is_400(org, member, member_client):
    conversation = make_conversation(org, member, messages=_messages(2))
    question, answer = conversation.messages.order_by("index")
    response = member_client.post(f"/api/v1/chat/{question.pk}/feedback", {"rating": "up"}, format="json")
    assert_envelope(response, 400, "ERR_NOT_ASSISTANT_MESSAGE")
    assert_envelope(
        member_client.post(f"/api/v1/chat/{answer.pk}/feedback", {"rating": "meh"}, format="json"), 400
    )
    assert_envelope(
        member_client.post(f"/api/v1/chat/{uuid.uuid4()}/feedback", {"rating": "up"}, format="json"), 404
    )
    assert MessageFeedback.objects.count() == 0


# --- the runtime's history loader -------------------------------------------------------------------


def test_history_loader_gives_runs_the_completed_messages_of_the_users_conversation(org, member, owner):
    conversation = make_conversation(org, member, messages=_messages(3))
    Message.objects.create(
        org=org, conversation=conversation, index=3, role="assistant", content="partial", status="streaming"
    )
    history = history_loader(org=org, agent=None, user=member, conversation_id=conversation.pk)
    assert history == [
        {"role": "user", "content": "message 0"},
        {"role": "assistant", "content": "message 1"},
        {"role": "user", "content": "message 2"},
    ]
    assert history_loader(org=org, agent=None, user=owner, conversation_id=conversation.pk) == []
