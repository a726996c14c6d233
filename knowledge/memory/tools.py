"""``memory_save`` and ``memory_search`` over memory documents, replacing the agents app's
built-ins of the same names (the tool registry replaces a tool registered under an existing name).

Imported by ``MemoryConfig.ready()``, which runs after ``AgentsConfig.ready()`` (INSTALLED_APPS
order), so these registrations win. What the model saves becomes a memory document (its own path,
or ``notes/<time>-<random>.md``), chunked and searched like the documents people write through the
API; with a user in the run it is that user's own memory unless the model asks for ``scope: agent``.
"""

from __future__ import annotations

import secrets
from typing import Any

from django.utils import timezone

from agents.tools.registry import Tool, ToolContext, ToolError, register_tool
from core.errors import ApplicationError

MAX_CONTENT = 20_000


def _need_agent(ctx: ToolContext) -> None:
    if ctx.agent is None:
        raise ToolError("Memory tools work for an agent; call them from an agent run or name the agent.")


def _user(ctx: ToolContext):
    user = ctx.user
    return user if user is not None and getattr(user, "pk", None) else None


def memory_save(ctx: ToolContext, args: dict[str, Any]) -> dict[str, Any]:
    """Write a memory document for this agent (the current user's own unless scope is agent)."""
    from .services.documents import memory_document_put

    _need_agent(ctx)
    content = str(args["content"]).strip()
    if not content:
        raise ToolError("content must not be blank.")
    tags = sorted({str(t).strip().lower() for t in args.get("tags") or [] if str(t).strip()})
    if tags:
        content = f"Tags: {', '.join(tags)}\n\n{content}"
    path = args.get("path") or f"notes/{timezone.now():%Y%m%d-%H%M%S}-{secrets.token_hex(3)}.md"
    user = _user(ctx) if args.get("scope", "user") == "user" else None
    try:
        row, created = memory_document_put(
            agent=ctx.agent, user=user, path=path, content=content, actor=_user(ctx)
        )
    except ApplicationError as exc:
        raise ToolError(exc.message, code=exc.code, details=exc.details) from exc
    return {
        "id": str(row.pk),
        "path": row.path,
        "scope": "user" if row.user_id else "agent",
        "saved": True,
        "created": created,
        "tags": tags,
    }


def memory_search(ctx: ToolContext, args: dict[str, Any]) -> dict[str, Any]:
    """The passages of this agent's memory (shared, plus the current user's own) best matching the query."""
    from .selectors.memory import memory_search as search

    _need_agent(ctx)
    query = str(args["query"]).strip()
    if not query:
        raise ToolError("query must not be blank.")
    user = _user(ctx)
    try:
        answer = search(
            org=ctx.org,
            agent=ctx.agent,
            user=user,
            query=query,
            top_k=int(args.get("limit") or 5),
            mode="hybrid",
            scope="all" if user is not None else "agent",
        )
    except ApplicationError as exc:
        raise ToolError(exc.message, code=exc.code, details=exc.details) from exc
    return {
        "items": [
            {"path": hit["path"], "scope": hit["scope"], "content": hit["text"], "score": hit["score"]}
            for hit in answer["items"]
        ]
    }


register_tool(
    Tool(
        name="memory_save",
        description=(
            "Save a fact or note to this agent's long-term memory so it can be found later. Give a path "
            "(e.g. people/alice.md) to create or replace that memory document; else a new note is made."
        ),
        parameters={
            "type": "object",
            "properties": {
                "content": {"type": "string", "minLength": 1, "maxLength": MAX_CONTENT},
                "tags": {"type": "array", "items": {"type": "string", "maxLength": 50}, "maxItems": 10},
                "path": {"type": "string", "minLength": 1, "maxLength": 255},
                "scope": {
                    "type": "string",
                    "enum": ["user", "agent"],
                    "description": "user: only for the current user (default); agent: shared with everyone.",
                },
            },
            "required": ["content"],
            "additionalProperties": False,
        },
        handler=memory_save,
    )
)

register_tool(
    Tool(
        name="memory_search",
        description="Search this agent's long-term memory (shared notes and the current user's own).",
        parameters={
            "type": "object",
            "properties": {
                "query": {"type": "string", "minLength": 1, "maxLength": 500},
                "limit": {"type": "integer", "minimum": 1, "maximum": 50},
            },
            "required": ["query"],
            "additionalProperties": False,
        },
        handler=memory_search,
    )
)
