"""Reads of agent memory: list and get documents by path, and search them.

Scopes: ``agent`` (the memory the agent shares with everyone, ``user`` empty), ``user`` (the
caller's own memory of this agent) and, for searches, ``all`` (both). Nobody reads another user's
per-user memory through these functions.
"""

from __future__ import annotations

from typing import Any

from django.db.models import Q, QuerySet

from accounts.models import Organization, User
from agents.models import Agent
from core.errors import NotFoundError, ValidationError
from knowledge.models import KnowledgeBase
from knowledge.search import run_search

from ..models import MemoryDocument

SCOPES = ("agent", "user", "all")


def _scope_filter(scope: str, user: User | None) -> Q:
    if scope not in SCOPES:
        raise ValidationError(
            f"scope must be one of {', '.join(SCOPES)}.", details={"scope": ["Unknown scope."]}
        )
    if scope == "agent":
        return Q(user__isnull=True)
    if user is None or not getattr(user, "pk", None):
        raise ValidationError("Per-user memory needs a signed-in user.", details={"scope": ["No user."]})
    if scope == "user":
        return Q(user=user)
    return Q(user__isnull=True) | Q(user=user)


def memory_document_list(
    *, org: Organization, agent: Agent, user: User | None, scope: str = "agent", prefix: str | None = None
) -> QuerySet[MemoryDocument]:
    """The agent's memory documents of a scope, by path (``prefix`` keeps one folder)."""
    rows = MemoryDocument.objects.filter(org=org, agent=agent).filter(_scope_filter(scope, user))
    if prefix:
        rows = rows.filter(path__startswith=prefix)
    return rows.select_related("document").order_by("path", "id")


def memory_document_get(
    *, org: Organization, agent: Agent, user: User | None, path: str, scope: str = "agent"
) -> MemoryDocument:
    """One memory document of the scope by path, else 404."""
    if scope == "all":
        raise ValidationError("Name one scope (agent or user) to address a document.")
    row = memory_document_list(org=org, agent=agent, user=user, scope=scope).filter(path=path).first()
    if row is None:
        raise NotFoundError("No memory document at that path.")
    return row


def memory_search(
    *,
    org: Organization,
    agent: Agent,
    user: User | None,
    query: str,
    top_k: int = 5,
    mode: str = "hybrid",
    scope: str = "all",
) -> dict[str, Any]:
    """Hybrid (or keyword/vector) search over the scope's memory documents, best chunk first."""
    rows = {
        row.document_id: row
        for row in memory_document_list(org=org, agent=agent, user=user, scope=scope).filter(
            document__isnull=False
        )
    }
    kb = (
        KnowledgeBase.objects.filter(org=org, agent=agent, kind=KnowledgeBase.Kind.AGENT_MEMORY)
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
        if row is None:
            continue
        items.append(
            {
                "path": row.path,
                "scope": "user" if row.user_id else "agent",
                "memory_document_id": row.pk,
                "document_id": hit.document_id,
                "chunk_id": hit.chunk_id,
                "score": hit.score,
                "text": hit.text,
                "snippet": hit.snippet,
            }
        )
    return {"items": items, "mode": result.mode, "mode_used": result.mode_used}
