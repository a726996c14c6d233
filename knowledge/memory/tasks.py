"""Celery tasks of `knowledge.memory`: thin interfaces over the episodic service."""

from __future__ import annotations

from typing import Any

from celery import shared_task

from .services.episodic import episodic_summarise_idle


@shared_task(
    name="knowledge.memory.tasks.summarise_idle_conversations",
    ignore_result=True,
    soft_time_limit=9 * 60,
    time_limit=10 * 60,
)
def summarise_idle_conversations() -> dict[str, Any]:
    """Beat (every 10 minutes): summarise conversations idle for ``EPISODIC_IDLE_MINUTES``.

    Idempotent: a conversation whose summary already covers its last message is left alone, and a
    row being summarised by another worker is skipped (claimed by a conditional UPDATE).
    """
    return episodic_summarise_idle()
