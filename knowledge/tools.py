"""The ``knowledge_search`` tool: agents search the knowledge bases attached to them.

Registered in the agents tool registry from ``KnowledgeConfig.ready()`` (the runtime never imports
this app). An agent lists the tool in its ``tools`` and the KBs in ``knowledge_bases``; the tool
searches only those KBs, only in the agent's org. Its result carries the passages and
``citations: [{document_id, chunk_id, score}]``, which the chat turn turns into ``citation``
events and stores on the message.
"""

from __future__ import annotations

import uuid
from typing import Any

from agents.tools.registry import Tool, ToolContext, ToolError, register_tool
from knowledge.models import KnowledgeBase
from knowledge.search import MODES, run_search

MAX_PASSAGE_CHARS = 2000


def _attached(ctx: ToolContext) -> list[KnowledgeBase]:
    if ctx.agent is None:
        raise ToolError("knowledge_search works for an agent with knowledge bases attached.")
    ids = []
    for value in ctx.agent.knowledge_bases or []:
        try:
            ids.append(uuid.UUID(str(value)))
        except ValueError:
            continue
    kbs = list(KnowledgeBase.objects.filter(org=ctx.org, pk__in=ids).select_related("org"))
    if not kbs:
        raise ToolError("This agent has no knowledge bases attached.")
    return kbs


def knowledge_search(ctx: ToolContext, args: dict[str, Any]) -> dict[str, Any]:
    """Hybrid search over the agent's knowledge bases; passages best first, with citations."""
    kbs = _attached(ctx)
    wanted = args.get("knowledge_base")
    if wanted:
        kbs = [kb for kb in kbs if str(kb.pk) == str(wanted) or kb.name == wanted]
        if not kbs:
            raise ToolError("That knowledge base is not attached to this agent.")
    top_k = int(args.get("top_k") or ctx.config.get("top_k") or 5)
    mode = args.get("mode") or "hybrid"
    hits = []
    for kb in kbs:
        result = run_search(
            kb=kb, query=args["query"], top_k=top_k, mode=mode if kb.active_index_id else "keyword"
        )
        hits.extend((hit, kb) for hit in result.hits)
    hits.sort(key=lambda pair: -pair[0].score)
    hits = hits[:top_k]
    passages = [
        {
            "n": number,
            "text": hit.text[:MAX_PASSAGE_CHARS],
            "title": hit.title,
            "page": hit.page,
            "section": hit.section,
            "document_id": str(hit.document_id),
            "chunk_id": str(hit.chunk_id),
            "knowledge_base_id": str(kb.pk),
            "score": hit.score,
        }
        for number, (hit, kb) in enumerate(hits, start=1)
    ]
    return {
        "query": args["query"],
        "passages": passages,
        "citations": [
            {"document_id": p["document_id"], "chunk_id": p["chunk_id"], "score": p["score"]}
            for p in passages
        ],
    }


register_tool(
    Tool(
        name="knowledge_search",
        description=(
            "Search the knowledge bases attached to this agent (documents uploaded by the team). Returns "
            "the most relevant passages with citations; cite them as [n]."
        ),
        parameters={
            "type": "object",
            "properties": {
                "query": {"type": "string", "minLength": 1, "maxLength": 1000},
                "top_k": {"type": "integer", "minimum": 1, "maximum": 20},
                "knowledge_base": {"type": "string", "maxLength": 200, "description": "id or name of one KB"},
                "mode": {"type": "string", "enum": list(MODES)},
            },
            "required": ["query"],
            "additionalProperties": False,
        },
        handler=knowledge_search,
        config_schema={
            "type": "object",
            "properties": {"top_k": {"type": "integer", "minimum": 1, "maximum": 20}},
            "additionalProperties": False,
        },
    )
)
