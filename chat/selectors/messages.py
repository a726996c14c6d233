"""Reads of messages and of the turn event log: the serialised shape every surface shares, the
opaque history cursor, and the log rows a follower replays."""

from __future__ import annotations

import base64
import binascii
import json
import time
from typing import Any
from uuid import UUID

from django.db import models

from chat.models import Conversation, Message, MessageEvent
from core.errors import NotFoundError, ValidationError
from core.ids import minted_seconds_ago

MAX_HISTORY_LIMIT = 200
DEFAULT_HISTORY_LIMIT = 50
# A turn that opens a conversation answers with its ids before its rows are committed
# (``chat.services.turns``): a lookup of such an id waits this long at most for its row.
OPENING_GRACE_SECONDS = 5.0
OPENING_POLL_SECONDS = 0.02


def row_on_its_way(model: type[models.Model], pk: Any) -> bool:
    """Whether a row that a scoped lookup did not find exists now, having waited for it when its id
    was minted a moment ago (a version 7 id younger than ``OPENING_GRACE_SECONDS``): the caller
    then looks again, with its scope. Any other id answers at once, so an unknown or foreign id
    costs one more indexed read, never a wait; a foreign id that exists is found at once too."""
    age = minted_seconds_ago(pk)
    if age is None or not -1.0 < age < OPENING_GRACE_SECONDS:
        return False
    deadline = time.monotonic() + OPENING_GRACE_SECONDS - max(age, 0.0)
    while True:
        if model.objects.filter(pk=pk).exists():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(OPENING_POLL_SECONDS)  # a view thread, waiting for a commit it was promised


def message_dict(message: Message) -> dict[str, Any]:
    """One message as every API surface shows it (JSON-safe)."""
    return {
        "id": str(message.pk),
        "conversation_id": str(message.conversation_id),
        "index": message.index,
        "role": message.role,
        "content": message.content,
        "parts": message.parts,
        "status": message.status,
        "finish_reason": message.finish_reason,
        "error": message.error,
        "citations": message.citations,
        "model": message.model,
        "prompt_tokens": message.prompt_tokens,
        "completion_tokens": message.completion_tokens,
        "cost_usd": float(message.cost_usd or 0),
        "usage_estimated": message.usage_estimated,
        "run_id": str(message.run_id) if message.run_id else None,
        "reply_to": str(message.reply_to_id) if message.reply_to_id else None,
        "last_seq": message.last_seq,
        "created_at": message.created_at.isoformat() if message.created_at else None,
        "updated_at": message.updated_at.isoformat() if message.updated_at else None,
    }


def encode_cursor(*, index: int, last_id: UUID | str | None) -> str:
    """An opaque cursor: the next index, and the id of the message just before it, so that a cursor
    into a history that was reset (or rewritten) is recognised instead of skipping messages."""
    raw = json.dumps({"i": index, "m": str(last_id)[:8] if last_id else ""}, separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[int, str]:
    """``(index, last id prefix)`` of a cursor; 400 for anything that is not one of ours."""
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        value = json.loads(base64.urlsafe_b64decode(padded.encode()).decode())
        index, last = int(value["i"]), str(value.get("m") or "")
    except (binascii.Error, ValueError, KeyError, TypeError, UnicodeDecodeError, AttributeError):
        raise ValidationError(
            "The cursor is not valid; use the next_cursor of a previous page.",
            code="ERR_INVALID_CURSOR",
            details={"cursor": ["Not a valid cursor."]},
        ) from None
    if index < 0:
        raise ValidationError("The cursor is not valid.", code="ERR_INVALID_CURSOR")
    return index, last


def message_history(*, conversation: Conversation, cursor: str | None, limit: int) -> dict[str, Any]:
    """One page of a conversation's messages in order: ``{messages, next_cursor, total, reset}``.

    A cursor past the end of the history, or one whose previous message is no longer there (the
    conversation was reset), answers ``reset: true`` with the messages from the start.
    """
    limit = max(1, min(int(limit or DEFAULT_HISTORY_LIMIT), MAX_HISTORY_LIMIT))
    messages = Message.objects.filter(conversation=conversation)
    total = messages.count()
    start, reset = 0, False
    if cursor:
        start, last = decode_cursor(cursor)
        if start > total:
            start, reset = 0, True
        elif start > 0:
            before = messages.filter(index=start - 1).values_list("pk", flat=True).first()
            if before is None or (last and not str(before).startswith(last)):
                start, reset = 0, True
    page = list(messages.filter(index__gte=start).order_by("index")[: limit + 1])
    more = len(page) > limit
    page = page[:limit]
    next_cursor = encode_cursor(index=page[-1].index + 1, last_id=page[-1].pk) if more and page else None
    return {
        "messages": [message_dict(m) for m in page],
        "next_cursor": next_cursor,
        "total": total,
        "reset": reset,
    }


def turn_message_get(*, org, user, message_id: Any) -> Message:
    """A message of one of the caller's conversations (404 for anything else); one that a turn
    opening a conversation is still writing is waited for (:func:`row_on_its_way`)."""
    mine = Message.objects.filter(pk=message_id, org=org, conversation__user=user).select_related(
        "conversation"
    )
    message = mine.first()
    if message is None and row_on_its_way(Message, message_id):
        message = mine.first()
    if message is None:
        raise NotFoundError("Message not found.")
    return message


def turn_log_read(*, message_id: Any, after_seq: int) -> tuple[list[tuple[int, str, dict]], str | None, int]:
    """Events of a turn after ``after_seq`` in order, with the message's status and last seq
    (status None when the message is gone)."""
    row = Message.objects.filter(pk=message_id).values_list("status", "last_seq").first()
    if row is None:
        return [], None, 0
    events = list(
        MessageEvent.objects.filter(message_id=message_id, seq__gt=after_seq)
        .order_by("seq")
        .values_list("seq", "event", "data")
    )
    return events, row[0], row[1]
