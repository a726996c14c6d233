"""Celery tasks of `billing`: thin interfaces that take ids and call services."""

from __future__ import annotations

from celery import shared_task

from billing.services.payments import auto_topup_charge


@shared_task(name="billing.tasks.credits_auto_topup", ignore_result=True)
def credits_auto_topup(org_id: str) -> str:
    """Charge the org's saved card for its auto top-up, if it is still due."""
    return auto_topup_charge(org_id=org_id)
