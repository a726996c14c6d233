"""Moving the agents app's old memory entries (``AgentMemoryEntry``, written by the first
``memory_save``) into memory documents, where ``memory_search`` and the memory API find them.

Each entry becomes one document under ``notes/`` in the same form the current ``memory_save``
writes (a ``Tags:`` line, then the text), in the entry's user's own memory or the agent's shared
memory. An entry is deleted in the transaction that wrote its document, so a run that stops
half-way resumes where it stopped and a second run finds nothing to do.
"""

from __future__ import annotations

import logging

from django.db import transaction

from agents.models import AgentMemoryEntry
from knowledge.memory.services.documents import memory_document_put

logger = logging.getLogger(__name__)


def legacy_entry_path(entry: AgentMemoryEntry) -> str:
    return f"notes/{entry.created_at:%Y%m%d-%H%M%S}-{entry.pk.hex[:8]}.md"


def legacy_memory_import(*, batch: int = 500) -> dict[str, int]:
    """Import every old memory entry; ``{"imported": n, "failed": m}`` (failures stay for a rerun)."""
    imported = failed = 0
    skip: set = set()
    while True:
        entries = list(
            AgentMemoryEntry.objects.exclude(pk__in=skip)
            .select_related("agent", "agent__org", "user")
            .order_by("created_at", "pk")[:batch]
        )
        if not entries:
            break
        for entry in entries:
            tags = sorted({str(t).strip().lower() for t in entry.tags or [] if str(t).strip()})
            content = f"Tags: {', '.join(tags)}\n\n{entry.content}" if tags else entry.content
            try:
                with transaction.atomic():
                    memory_document_put(
                        agent=entry.agent,
                        user=entry.user,
                        path=legacy_entry_path(entry),
                        content=content.strip() or "(empty)",
                        actor=None,
                    )
                    entry.delete()
                imported += 1
            except Exception:
                logger.exception("could not import memory entry %s", entry.pk)
                skip.add(entry.pk)
                failed += 1
    return {"imported": imported, "failed": failed}
