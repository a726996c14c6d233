"""Idle conversations for episodic summaries, in the shape ``knowledge.memory`` asks of a source.

`chat` and `knowledge` never import each other: the wiring (``config`` or ``ChatConfig.ready()``)
passes :func:`idle_conversations` to ``knowledge.memory.registries.register_conversation_source``.
This module knows nothing of summaries; it only reads conversations and messages.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any

from chat.models import Conversation, Message

DEFAULT_LIMIT = 200
MAX_MESSAGES = 500  # the newest ones; a summary never needs more in one pass


def idle_conversations(
    *,
    idle_since: datetime,
    since: datetime | None = None,
    limit: int | None = DEFAULT_LIMIT,
    is_current: Callable[[Any, datetime], bool] | None = None,
) -> Iterator[dict[str, Any]]:
    """Conversations bound to an agent whose last message is at or before ``idle_since`` (and
    after ``since`` when given), least recently active first, each with its finished user and
    assistant messages (at most the newest ``MAX_MESSAGES``) in order.

    Yields ``{conversation_id, org_id, agent_id, user_id, last_message_at, messages: [{role,
    content, index}]}``; messages are read one conversation at a time, as the caller consumes.
    ``is_current(conversation_id, last_message_at)`` lets the caller skip conversations it has
    already dealt with before their messages are read; skipped ones do not count against ``limit``.
    """
    conversations = Conversation.objects.filter(
        agent__isnull=False, last_message_at__isnull=False, last_message_at__lte=idle_since
    )
    if since is not None:
        conversations = conversations.filter(last_message_at__gt=since)
    conversations = conversations.order_by("last_message_at", "id").values(
        "id", "org_id", "agent_id", "user_id", "last_message_at"
    )
    yielded = 0
    for row in conversations.iterator(chunk_size=500):
        if limit and yielded >= limit:
            return
        if is_current is not None and is_current(row["id"], row["last_message_at"]):
            continue
        yielded += 1
        messages = list(
            Message.objects.filter(
                conversation_id=row["id"],
                role__in=[Message.Role.USER, Message.Role.ASSISTANT],
                status=Message.Status.COMPLETE,
            )
            .exclude(content="")
            .order_by("-index")
            .values("role", "content", "index")[:MAX_MESSAGES]
        )
        messages.reverse()
        yield {
            "conversation_id": row["id"],
            "org_id": row["org_id"],
            "agent_id": row["agent_id"],
            "user_id": row["user_id"],
            "last_message_at": row["last_message_at"],
            "messages": messages,
        }
