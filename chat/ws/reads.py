"""Reads the WebSocket methods need beyond the chat selectors: a conversation's JSON shape and the
last few messages of one (``sessions.preview``). Callers have already scoped the conversation to
the caller (``chat.selectors.conversations.conversation_get``)."""

from __future__ import annotations

from typing import Any

from chat.models import Conversation, Message
from chat.selectors.messages import message_dict


def _iso(value) -> str | None:
    return value.isoformat() if value else None


def conversation_dict(conversation: Conversation) -> dict[str, Any]:
    """One conversation as the socket shows it (JSON-safe; ``agent`` needs ``select_related``)."""
    agent = conversation.agent
    return {
        "id": str(conversation.pk),
        "title": conversation.title,
        "agent": {"id": str(agent.pk), "key": agent.key, "name": agent.name} if agent is not None else None,
        "channel": conversation.channel,
        "archived": conversation.archived_at is not None,
        "archived_at": _iso(conversation.archived_at),
        "message_count": conversation.message_count,
        "last_message_at": _iso(conversation.last_message_at),
        "branched_from": str(conversation.branched_from_id) if conversation.branched_from_id else None,
        "created_at": _iso(conversation.created_at),
        "updated_at": _iso(conversation.updated_at),
    }


def conversation_preview(*, conversation: Conversation, limit: int) -> list[dict[str, Any]]:
    """The last ``limit`` messages of ``conversation``, oldest of them first."""
    last = list(Message.objects.filter(conversation=conversation).order_by("-index")[:limit])
    return [message_dict(message) for message in reversed(last)]
