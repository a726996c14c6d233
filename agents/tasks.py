"""Celery tasks of `agents`: thin interfaces that take ids (or nothing) and call the LLM layer."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from asgiref.sync import async_to_sync
from celery import shared_task

from agents.llm.chokepoint import aclose_clients, averify, on_short_lived_loop
from agents.llm.client import ResolvedProvider
from agents.llm.resolve import invalidate, personal_resolved, provider_resolved
from agents.models import PersonalAIConfig, Provider

logger = logging.getLogger(__name__)

PROBE_CONCURRENCY = 8
AUTH_REFUSED = "ERR_PROVIDER_AUTH"


async def _probe_all(targets: list[ResolvedProvider]) -> list[dict]:
    """Probe every key with a models-list call, a few at a time."""
    gate = asyncio.Semaphore(PROBE_CONCURRENCY)

    async def probe(target: ResolvedProvider) -> dict:
        async with gate:
            return await averify(resolved=target, model=None)

    try:
        return list(await asyncio.gather(*(probe(t) for t in targets)))
    finally:
        if on_short_lived_loop():
            await aclose_clients()


@shared_task(
    name="agents.tasks.verify_ai_keys",
    ignore_result=True,
    soft_time_limit=20 * 60,
    time_limit=25 * 60,
)
def verify_ai_keys() -> dict[str, Any]:
    """Beat (every 6 hours): probe stored provider keys and personal keys with a models-list call.

    A provider whose key is refused (401/403) loses its verified flag and records the upstream
    message in ``last_error``, so admins see it in the console and the API. Unreachable providers
    are left alone: an outage says nothing about the key. Personal configs have no verified flag;
    a refused personal key is logged. Idempotent: a second run writes the same state.
    """
    providers = list(Provider.objects.filter(enabled=True).exclude(api_key=""))
    personal = list(PersonalAIConfig.objects.exclude(api_key=""))
    targets = [provider_resolved(p) for p in providers] + [personal_resolved(c) for c in personal]
    results = async_to_sync(_probe_all)(targets) if targets else []

    summary = {"checked": len(targets), "refused": 0, "unreachable": 0, "personal_refused": 0}
    for row, outcome in zip(providers, results[: len(providers)], strict=True):
        if outcome["valid"]:
            continue
        if outcome.get("error_code") == AUTH_REFUSED:
            summary["refused"] += 1
            Provider.objects.filter(pk=row.pk).update(
                is_verified=False, last_error=str(outcome.get("error", ""))[:500]
            )
            invalidate(org_id=row.org_id)
        else:
            summary["unreachable"] += 1
            logger.info("provider %s unreachable during key probe: %s", row.pk, outcome.get("error"))
    for config, outcome in zip(personal, results[len(providers) :], strict=True):
        if not outcome["valid"] and outcome.get("error_code") == AUTH_REFUSED:
            summary["personal_refused"] += 1
            logger.warning("personal AI key of user %s is refused: %s", config.user_id, outcome.get("error"))
    return summary
