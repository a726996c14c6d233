"""Celery tasks of `chat`: thin interfaces over the services."""

from __future__ import annotations

from celery import shared_task

from chat.services.turns import turn_sweep_stale


@shared_task(name="chat.tasks.sweep_stale_turns", ignore_result=True)
def sweep_stale_turns() -> int:
    """Close streaming turns whose web process died (schedule it every few minutes)."""
    return turn_sweep_stale()
