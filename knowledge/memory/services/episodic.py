"""Episodic summaries: when a conversation has been idle for ``EPISODIC_IDLE_MINUTES``, the agent's
model summarises it (purpose ``summary``) and the summary is stored as a document of the agent's
hidden ``episodic`` KB, searchable like any KB, next to an ``EpisodicSummary`` row that says which
messages it covers.

Conversations come from the sources registered in :mod:`knowledge.memory.registries` (`chat`
registers one), so `knowledge` never imports `chat`. One summary row per conversation: new
messages after ``last_index`` make it stale, and the next idle pass rewrites it from the old
summary plus the new messages, so the cost of a pass does not grow with the conversation's length.

Work is claimed per row by a conditional UPDATE of ``claimed_at`` (the row count says who won),
so two workers never summarise the same conversation at once; the LLM call runs outside any
transaction.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Q
from django.utils import timezone

from accounts.models import User
from accounts.services.audit import audit_record
from agents.llm import chat
from agents.models import Agent
from core.context import channel_scope
from core.errors import ApplicationError
from knowledge.models import KnowledgeBase
from knowledge.services.documents import document_create_from_text
from knowledge.services.ingest import ingest_document

from ..models import EpisodicSummary
from ..registries import conversation_sources
from .documents import agent_kb, delete_document_locked

logger = logging.getLogger(__name__)

DEFAULT_IDLE_MINUTES = 30
LOOKBACK = timedelta(days=7)  # conversations idle for longer than this are not revisited
MAX_CONVERSATIONS_PER_RUN = 200
CLAIM_SECONDS = 600
MAX_MESSAGE_CHARS = 4000
MAX_TRANSCRIPT_CHARS = 24_000
SUMMARY_ROLES = ("user", "assistant")

SYSTEM_PROMPT = (
    "You write the episodic memory of an assistant. Summarise the conversation below in a few "
    "short paragraphs or bullet points: who the user is when they say so, what they asked, what "
    "was decided or answered, open questions and anything worth remembering next time. Write in "
    "the third person, in the conversation's language, without preamble."
)


def idle_minutes() -> int:
    return int(getattr(settings, "EPISODIC_IDLE_MINUTES", DEFAULT_IDLE_MINUTES))


def episodic_summarise_idle(*, now: datetime | None = None) -> dict[str, int]:
    """Summarise every conversation idle for ``EPISODIC_IDLE_MINUTES`` whose summary is missing or stale.

    Returns counts per outcome (summarised, up_to_date, busy, skipped, failed).
    """
    now = now or timezone.now()
    idle_since = now - timedelta(minutes=idle_minutes())
    counts = {"summarised": 0, "up_to_date": 0, "busy": 0, "skipped": 0, "failed": 0}
    for source in conversation_sources():
        conversations = source(
            idle_since=idle_since,
            since=now - LOOKBACK,
            limit=MAX_CONVERSATIONS_PER_RUN,
            is_current=_is_current,
        )
        for conversation in conversations:
            outcome = episodic_summarise(conversation=conversation, now=now)
            counts[outcome] += 1
    return counts


def _is_current(conversation_id: Any, last_message_at: datetime) -> bool:
    """Whether the conversation's summary already covers its last message (by its time)."""
    return EpisodicSummary.objects.filter(
        conversation_id=conversation_id, last_index__isnull=False, last_message_at__gte=last_message_at
    ).exists()


def _messages(conversation: dict[str, Any]) -> list[dict[str, Any]]:
    rows = [
        m
        for m in conversation.get("messages") or []
        if m.get("role") in SUMMARY_ROLES and str(m.get("content") or "").strip()
    ]
    return sorted(rows, key=lambda m: int(m["index"]))


def _summary_row(conversation: dict[str, Any], agent: Agent) -> EpisodicSummary:
    conversation_id = conversation["conversation_id"]
    row = EpisodicSummary.objects.filter(conversation_id=conversation_id).first()
    if row is not None:
        return row
    try:
        with transaction.atomic():
            return EpisodicSummary.objects.create(
                org_id=agent.org_id,
                agent=agent,
                user_id=conversation.get("user_id"),
                conversation_id=conversation_id,
            )
    except IntegrityError:  # another worker created it first
        return EpisodicSummary.objects.get(conversation_id=conversation_id)


def episodic_summarise(*, conversation: dict[str, Any], now: datetime | None = None) -> str:
    """Summarise one conversation (a source's dict) if its summary is missing or stale.

    Returns the outcome: summarised, up_to_date, busy (another worker holds it), skipped (no agent
    or nothing to summarise) or failed (the LLM call failed; the next pass tries again).
    """
    now = now or timezone.now()
    messages = _messages(conversation)
    agent = (
        Agent.objects.filter(pk=conversation.get("agent_id"), org_id=conversation.get("org_id"))
        .select_related("org")
        .first()
    )
    if agent is None or not messages:
        return "skipped"
    row = _summary_row(conversation, agent)
    if row.org_id != agent.org_id:
        return "skipped"
    last_index = int(messages[-1]["index"])
    if row.last_index is not None and row.last_index >= last_index:
        return "up_to_date"
    claimed = (
        EpisodicSummary.objects.filter(pk=row.pk)
        .filter(Q(claimed_at__isnull=True) | Q(claimed_at__lt=now - timedelta(seconds=CLAIM_SECONDS)))
        .update(claimed_at=now)
    )
    if not claimed:
        return "busy"
    row.refresh_from_db()
    fresh = [m for m in messages if row.last_index is None or int(m["index"]) > row.last_index]
    user = User.objects.filter(pk=conversation.get("user_id")).first()
    try:
        with channel_scope("cron"):
            result = chat(
                org=agent.org,
                messages=_prompt(previous=row.summary, messages=fresh),
                user=user,
                agent=agent,
                temperature=0.2,
                purpose="summary",
            )
        summary = (result.content or "").strip()
        if not summary:
            raise ApplicationError("The model answered an empty summary.", code="ERR_EMPTY_SUMMARY")
    except ApplicationError as exc:
        logger.warning("episodic summary of %s failed: %s", row.conversation_id, exc.code)
        EpisodicSummary.objects.filter(pk=row.pk).update(
            claimed_at=None, error=f"{exc.code}: {exc.message}"[:500]
        )
        return "failed"
    document_id = _store(
        row=row,
        agent=agent,
        summary=summary,
        first_index=int(messages[0]["index"]) if row.first_index is None else row.first_index,
        last_index=last_index,
        message_count=len(messages),
        last_message_at=conversation.get("last_message_at"),
    )
    ingest_document(document_id)
    return "summarised"


def _prompt(*, previous: str, messages: list[dict[str, Any]]) -> list[dict[str, str]]:
    lines = []
    for message in messages:
        text = str(message["content"]).strip()
        if len(text) > MAX_MESSAGE_CHARS:
            text = text[:MAX_MESSAGE_CHARS] + " […]"
        lines.append(f"[{message['index']}] {message['role']}: {text}")
    transcript = "\n".join(lines)
    if len(transcript) > MAX_TRANSCRIPT_CHARS:  # keep the end: it is what the summary lacks
        transcript = "[…]\n" + transcript[-MAX_TRANSCRIPT_CHARS:]
    if previous:
        body = (
            f"Summary so far:\n{previous}\n\nNew messages since then:\n{transcript}\n\n"
            "Write the updated summary."
        )
    else:
        body = f"Conversation:\n{transcript}"
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": body}]


def _store(
    *,
    row: EpisodicSummary,
    agent: Agent,
    summary: str,
    first_index: int,
    last_index: int,
    message_count: int,
    last_message_at: Any,
) -> Any:
    kb = agent_kb(agent=agent, kind=KnowledgeBase.Kind.EPISODIC)
    with transaction.atomic():
        row = EpisodicSummary.objects.select_for_update().get(pk=row.pk)
        before = {"last_index": row.last_index, "document_id": row.document_id}
        document = document_create_from_text(
            kb=kb,
            actor=None,
            title=f"Conversation {row.conversation_id}"[:300],
            text=summary,
            metadata={
                "conversation_id": str(row.conversation_id),
                "first_index": first_index,
                "last_index": last_index,
                "user_id": str(row.user_id) if row.user_id else None,
            },
            source="text",
        )
        old_document = row.document
        row.summary, row.document = summary, document
        row.first_index, row.last_index, row.message_count = first_index, last_index, message_count
        row.last_message_at = last_message_at or row.last_message_at
        row.claimed_at, row.error = None, ""
        row.save()
        if old_document is not None:
            delete_document_locked(old_document, actor=None)
        audit_record(
            org=agent.org,
            actor=None,
            action="episodic.summarised",
            entity=row,
            before=before,
            after={"last_index": last_index, "document_id": document.pk},
        )
    return document.pk
