"""Writes of conversations and their messages: create, rename, archive, delete, reset, branch,
append messages, and regenerate the title with the LLM.

Every function is keyword-only and atomic, validates before it writes and leaves an audit row.
Message positions (``index``) are dense from 0: appends take the conversation row's lock so two
writers never claim the same index.
"""

from __future__ import annotations

import re
from typing import Any

from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import transaction
from django.db.models import F
from django.utils import timezone

from accounts.services.audit import audit_record
from chat.models import Conversation, Message
from chat.models.conversations import Channel
from chat.selectors.conversations import conversation_llm_history
from core.errors import ValidationError

TITLE_MAX = 200
MAX_APPEND = 100
MAX_CONTENT_CHARS = 100_000
TITLE_PROMPT = (
    "Write a short title (at most six words) for the conversation below. Answer with the title only, "
    "no quotes and no final punctuation."
)


def _snapshot(conversation: Conversation) -> dict[str, Any]:
    return {
        "title": conversation.title,
        "archived": conversation.archived_at is not None,
        "agent": conversation.agent_id,
        "message_count": conversation.message_count,
    }


def _full_clean(instance, *, exclude: list[str] | None = None) -> None:
    try:
        instance.full_clean(exclude=exclude)
    except DjangoValidationError as exc:
        details = getattr(exc, "message_dict", {"non_field_errors": exc.messages})
        raise ValidationError("Invalid input.", details=details) from None


def clean_title(title: str | None) -> str:
    """A title without surrounding whitespace, quotes, or line breaks, at most 200 characters."""
    text = re.sub(r"\s+", " ", str(title or "")).strip().strip("\"'“”‘’`").strip()
    return text[:TITLE_MAX]


def _check_channel(channel: str) -> str:
    if channel not in Channel.values:
        raise ValidationError(
            f"Unknown channel {channel!r}.", details={"channel": [f"One of {', '.join(Channel.values)}."]}
        )
    return channel


@transaction.atomic
def conversation_create(
    *, org, user, agent=None, title: str = "", channel: str = Channel.CONSOLE
) -> Conversation:
    """Open a conversation of ``user`` in ``org`` with ``agent`` (which must belong to the org)."""
    if agent is not None and agent.org_id != org.pk:
        raise ValidationError("The agent is not in this organisation.", details={"agent": ["Unknown agent."]})
    conversation = Conversation(
        org=org, user=user, agent=agent, title=clean_title(title), channel=_check_channel(channel)
    )
    _full_clean(conversation, exclude=["org", "user", "agent", "branched_from"])
    conversation.save()
    audit_record(
        org=org, actor=user, action="conversation.created", entity=conversation, after=_snapshot(conversation)
    )
    return conversation


@transaction.atomic
def conversation_update(
    *, conversation: Conversation, actor, title: str | None = None, archived: bool | None = None
) -> Conversation:
    """Rename, archive or unarchive a conversation."""
    conversation = Conversation.objects.select_for_update().get(pk=conversation.pk)
    before = _snapshot(conversation)
    if title is not None:
        conversation.title = clean_title(title)
        conversation.title_generated = False
    if archived is True and conversation.archived_at is None:
        conversation.archived_at = timezone.now()
    elif archived is False:
        conversation.archived_at = None
    _full_clean(conversation, exclude=["org", "user", "agent", "branched_from"])
    conversation.save()
    audit_record(
        org=conversation.org,
        actor=actor,
        action="conversation.updated",
        entity=conversation,
        before=before,
        after=_snapshot(conversation),
    )
    return conversation


@transaction.atomic
def conversation_delete(*, conversation: Conversation, actor) -> None:
    """Delete a conversation with its messages, events and feedback (a running turn stops)."""
    before = _snapshot(conversation)
    audit_record(
        org=conversation.org, actor=actor, action="conversation.deleted", entity=conversation, before=before
    )
    conversation.delete()


@transaction.atomic
def conversation_reset(*, conversation: Conversation, actor) -> Conversation:
    """Delete every message of a conversation but keep the conversation (its title, its agent)."""
    conversation = Conversation.objects.select_for_update().get(pk=conversation.pk)
    before = _snapshot(conversation)
    Message.objects.filter(conversation=conversation).delete()
    conversation.message_count = 0
    conversation.last_message_at = None
    conversation.save(update_fields=["message_count", "last_message_at", "updated_at"])
    audit_record(
        org=conversation.org,
        actor=actor,
        action="conversation.reset",
        entity=conversation,
        before=before,
        after=_snapshot(conversation),
    )
    return conversation


@transaction.atomic
def conversation_branch(
    *, conversation: Conversation, actor, up_to_index: int, label: str = ""
) -> Conversation:
    """A new conversation holding copies of messages ``[0, up_to_index)`` of this one."""
    parent = Conversation.objects.select_for_update().get(pk=conversation.pk)
    count = Message.objects.filter(conversation=parent).count()
    if isinstance(up_to_index, bool) or not isinstance(up_to_index, int) or not 1 <= up_to_index <= count:
        raise ValidationError(
            f"up_to_index must be between 1 and {count} (the number of messages).",
            code="ERR_OUT_OF_RANGE",
            details={"up_to_index": [f"Between 1 and {count}."]},
        )
    label = str(label or "").strip()
    if len(label) > 100:
        raise ValidationError("The label is too long.", details={"label": ["At most 100 characters."]})
    branch = Conversation(
        org=parent.org,
        user=parent.user,
        agent=parent.agent,
        title=clean_title(label or parent.title),
        channel=parent.channel,
        branched_from=parent,
        branch_label=label,
        branch_point=up_to_index,
        metadata=dict(parent.metadata or {}),
    )
    branch.save()
    copies = []
    last_at = None
    for message in Message.objects.filter(conversation=parent, index__lt=up_to_index).order_by("index"):
        status = message.status
        if status == Message.Status.STREAMING:
            status = Message.Status.CANCELLED  # a copy never streams
        copies.append(
            Message(
                org=parent.org,
                conversation=branch,
                index=message.index,
                role=message.role,
                content=message.content,
                parts=message.parts,
                status=status,
                finish_reason=message.finish_reason,
                error=message.error,
                citations=message.citations,
                model=message.model,
                prompt_tokens=message.prompt_tokens,
                completion_tokens=message.completion_tokens,
                cost_usd=message.cost_usd,
                usage_estimated=message.usage_estimated,
                run=message.run,
            )
        )
        last_at = message.created_at
    Message.objects.bulk_create(copies)
    branch.message_count = len(copies)
    branch.last_message_at = last_at
    branch.save(update_fields=["message_count", "last_message_at", "updated_at"])
    audit_record(
        org=parent.org,
        actor=actor,
        action="conversation.branched",
        entity=branch,
        after={"from": parent.pk, "up_to_index": up_to_index, "label": label},
    )
    return branch


def content_and_parts(content: Any, parts: Any = None) -> tuple[str, list[dict[str, Any]]]:
    """Normalise a message body: ``content`` is text or a list of parts (``{"type": "text", "text"}``,
    images, …); the text of the message is its text parts joined."""
    if parts is not None and not isinstance(parts, list):
        raise ValidationError("parts must be a list.", details={"parts": ["A list of content parts."]})
    if isinstance(content, list):
        parts = [*(parts or []), *content]
        content = None
    if content is not None and not isinstance(content, str):
        raise ValidationError(
            "content must be text or a list of parts.", details={"content": ["Text or parts."]}
        )
    parts = list(parts or [])
    for part in parts:
        if not isinstance(part, dict) or not isinstance(part.get("type"), str):
            raise ValidationError(
                "Every content part is an object with a type.", details={"parts": ["Each part needs a type."]}
            )
    if content is None:
        content = "\n".join(p.get("text", "") for p in parts if p.get("type") == "text" and p.get("text"))
    elif content and not any(p.get("type") == "text" for p in parts):
        parts = [{"type": "text", "text": content}, *parts]
    if len(content) > MAX_CONTENT_CHARS:
        raise ValidationError(
            "The message is too long.", details={"content": [f"At most {MAX_CONTENT_CHARS}."]}
        )
    return content, parts


def _next_index(conversation: Conversation) -> int:
    last = (
        Message.objects.filter(conversation=conversation).order_by("-index").values_list("index", flat=True)
    )
    first = last.first()
    return 0 if first is None else first + 1


@transaction.atomic
def messages_append(*, conversation: Conversation, actor, messages: list[dict[str, Any]]) -> list[Message]:
    """Append complete messages (role user/assistant/system/tool, text or content parts) in order."""
    if not messages or len(messages) > MAX_APPEND:
        raise ValidationError(
            f"Send between 1 and {MAX_APPEND} messages.", details={"messages": ["Between 1 and 100."]}
        )
    locked = Conversation.objects.select_for_update().get(pk=conversation.pk)
    index = _next_index(locked)
    rows = []
    for position, item in enumerate(messages):
        role = item.get("role")
        if role not in Message.Role.values:
            raise ValidationError(
                f"Message {position}: role must be one of {', '.join(Message.Role.values)}.",
                details={"messages": {str(position): {"role": ["Unknown role."]}}},
            )
        content, parts = content_and_parts(item.get("content"), item.get("parts"))
        rows.append(
            Message(
                org=locked.org,
                conversation=locked,
                index=index + position,
                role=role,
                content=content,
                parts=parts,
            )
        )
    Message.objects.bulk_create(rows)
    now = timezone.now()
    Conversation.objects.filter(pk=locked.pk).update(
        message_count=F("message_count") + len(rows), last_message_at=now, updated_at=now
    )
    audit_record(
        org=locked.org,
        actor=actor,
        action="conversation.messages_appended",
        entity=locked,
        after={"count": len(rows), "first_index": index},
    )
    return rows


def _transcript(conversation: Conversation) -> str:
    lines = []
    for message in conversation_llm_history(conversation_id=conversation.pk)[:20]:
        lines.append(f"{message['role']}: {message['content'][:500]}")
    return "\n".join(lines)


def conversation_title_generate(*, conversation: Conversation, actor) -> Conversation:
    """Ask the LLM for a title; its failure (424/502) is raised and the old title stays."""
    from agents.llm import chat as llm_chat

    transcript = _transcript(conversation)
    if not transcript:
        raise ValidationError(
            "The conversation has no messages to make a title from.", code="ERR_EMPTY_CONVERSATION"
        )
    agent = conversation.agent
    result = llm_chat(
        org=conversation.org,
        messages=[{"role": "system", "content": TITLE_PROMPT}, {"role": "user", "content": transcript}],
        user=actor,
        agent=agent,
        model=(agent.model or None) if agent is not None else None,
        max_tokens=30,
        purpose="title",
    )
    title = clean_title(result.content)
    if not title:
        raise ValidationError("The model answered no title.", code="ERR_EMPTY_TITLE", status_code=502)
    with transaction.atomic():
        locked = Conversation.objects.select_for_update().get(pk=conversation.pk)
        before = _snapshot(locked)
        locked.title = title
        locked.title_generated = True
        locked.save(update_fields=["title", "title_generated", "updated_at"])
        audit_record(
            org=locked.org,
            actor=actor,
            action="conversation.title_generated",
            entity=locked,
            before=before,
            after=_snapshot(locked),
        )
    return locked
