"""Reads of conversations: always the caller's own (org and user), never another's."""

from __future__ import annotations

from typing import Any

from django.db.models import Q, QuerySet

from chat.models import Conversation, Message
from chat.selectors.messages import message_history as _message_history
from chat.selectors.messages import row_on_its_way
from core.errors import NotFoundError


def conversation_list(
    *,
    org,
    user,
    archived: bool | None = None,
    agent_id: Any = None,
    search: str | None = None,
) -> QuerySet[Conversation]:
    """The user's conversations in the org, most recently updated first, optionally filtered."""
    conversations = (
        Conversation.objects.filter(org=org, user=user).select_related("agent").order_by("-updated_at", "-pk")
    )
    if archived is True:
        conversations = conversations.filter(archived_at__isnull=False)
    elif archived is False:
        conversations = conversations.filter(archived_at__isnull=True)
    if agent_id:
        conversations = conversations.filter(agent_id=agent_id)
    if search:
        conversations = conversations.filter(Q(title__icontains=search) | Q(branch_label__icontains=search))
    return conversations


def conversation_get(*, org, user, conversation_id: Any) -> Conversation:
    """One of the user's conversations; anything else (another user's, another org's) is 404. One
    that a turn is still opening is waited for (``chat.selectors.messages.row_on_its_way``)."""
    mine = Conversation.objects.filter(org=org, user=user, pk=conversation_id).select_related("agent")
    conversation = mine.first()
    if conversation is None and row_on_its_way(Conversation, conversation_id):
        conversation = mine.first()
    if conversation is None:
        raise NotFoundError("Conversation not found.")
    return conversation


def message_history(*, conversation: Conversation, cursor: str | None, limit: int) -> dict:
    """``{messages, next_cursor, total, reset}`` of the conversation (see ``chat.selectors.messages``)."""
    return _message_history(conversation=conversation, cursor=cursor, limit=limit)


def conversation_llm_history(
    *, conversation_id: Any, before_index: int | None = None
) -> list[dict[str, Any]]:
    """The conversation as LLM messages: completed user, assistant and system messages with text,
    in order (tool rounds are summarised by the assistant's text); ``before_index`` stops early."""
    rows = Message.objects.filter(
        conversation_id=conversation_id,
        status=Message.Status.COMPLETE,
        role__in=[Message.Role.USER, Message.Role.ASSISTANT, Message.Role.SYSTEM],
    ).order_by("index")
    if before_index is not None:
        rows = rows.filter(index__lt=before_index)
    return [
        {"role": role, "content": content}
        for role, content in rows.values_list("role", "content")
        if (content or "").strip()
    ]


def history_loader(*, org, agent, user, conversation_id: Any) -> list[dict[str, Any]]:
    """The agent runtime's history loader (registered in ``ChatConfig.ready``): the conversation
    so far when it belongs to the org (and to the user, when the run has one)."""
    conversations = Conversation.objects.filter(org=org, pk=conversation_id)
    if user is not None and getattr(user, "is_authenticated", False):
        conversations = conversations.filter(user=user)
    if not conversations.exists():
        return []
    return conversation_llm_history(conversation_id=conversation_id)
