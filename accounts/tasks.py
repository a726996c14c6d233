"""Celery tasks of `accounts`: thin interfaces that take ids and call services."""

from __future__ import annotations

from celery import shared_task

from accounts.services.keys import api_key_usage_purge


@shared_task(name="accounts.tasks.purge_api_key_usage", ignore_result=True)
def purge_api_key_usage() -> int:
    """Beat (daily): drop per-key request-log rows older than API_KEY_USAGE_RETENTION_DAYS.

    Idempotent: a second run finds nothing left to delete.
    """
    return api_key_usage_purge()
