"""App config of `billing`."""

from django.apps import AppConfig


class BillingConfig(AppConfig):
    """Usage metering, pricing, spend caps, credits and plans."""

    name = "billing"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from agents.registries import register_cost_estimator, register_llm_guard, register_usage_listener
        from billing import receivers  # noqa: F401 - signup bonus
        from billing.selectors.state import cost_estimate_micros
        from billing.services.caps import (
            budgets_reconcile,
            usage_guard_applies,
            usage_reserve,
            usage_reserve_in_memory,
            usage_settle,
        )
        from billing.services.plans import plan_limit_check
        from billing.services.usage import arecord_usage_event, record_usage_event, usage_rollup
        from core.crons import register_cron
        from core.quotas import register_limit_checker

        register_llm_guard(
            usage_reserve, usage_settle, applies=usage_guard_applies, try_before=usage_reserve_in_memory
        )
        register_usage_listener(record_usage_event, on_loop=arecord_usage_event)
        register_cost_estimator(cost_estimate_micros)
        register_limit_checker(plan_limit_check)
        register_cron(
            "usage-rollup", lambda: usage_rollup(), description="Roll usage records into hour/day buckets."
        )
        register_cron(
            "reconcile-budgets",
            lambda: budgets_reconcile(),
            description="Release expired cap reservations; rebuild cap windows from usage records.",
        )
