"""Reads of episodic summaries: list them and search them.

A conversation is its user's, so a summary is shown to that user; ADMINs and OWNERs see every
summary of the agents they can see (``see_all``).
"""

from __future__ import annotations

from typing import Any

from django.db.models import QuerySet

from accounts.models import Organization, User
from agents.models import Agent
from knowledge.models import KnowledgeBase
from knowledge.search import run_search

from ..models import EpisodicSummary


def episodic_list(
    *, org: Organization, agent: Agent, user: User | None, see_all: bool = False, conversation_id: Any = None
) -> QuerySet[EpisodicSummary]:
    """Summaries written so far (newest conversation first), the caller's own unless ``see_all``."""
    rows = EpisodicSummary.objects.filter(org=org, agent=agent, last_index__isnull=False)
    if not see_all:
        rows = rows.filter(user=user) if user is not None and user.pk else rows.none()
    if conversation_id:
        rows = rows.filter(conversation_id=conversation_id)
    return rows.order_by("-last_message_at", "-created_at")


def episodic_search(
    *,
    org: Organization,
    agent: Agent,
    user: User | None,
    query: str,
    top_k: int = 5,
    mode: str = "hybrid",
    see_all: bool = False,
) -> dict[str, Any]:
    """Hybrid (or keyword/vector) search over the summaries the caller may see, best first."""
    rows = {
        row.document_id: row
        for row in episodic_list(org=org, agent=agent, user=user, see_all=see_all).filter(
            document__isnull=False
        )
    }
    kb = (
        KnowledgeBase.objects.filter(org=org, agent=agent, kind=KnowledgeBase.Kind.EPISODIC)
        .order_by("created_at")
        .first()
    )
    if kb is None or not rows:
        return {"items": [], "mode": mode, "mode_used": mode}
    result = run_search(
        kb=kb, query=query, top_k=top_k, mode=mode, filters={"document_ids": [str(pk) for pk in rows]}
    )
    items = []
    for hit in result.hits:
        row = rows.get(hit.document_id)
        if row is not None:
            items.append(
                {
                    "summary_id": row.pk,
                    "conversation_id": row.conversation_id,
                    "first_index": row.first_index,
                    "last_index": row.last_index,
                    "score": hit.score,
                    "text": hit.text,
                    "snippet": hit.snippet,
                    "summary": row.summary,
                }
            )
    return {"items": items, "mode": result.mode, "mode_used": result.mode_used}
