"""Signal receivers of `billing`: a new organisation gets the configured signup bonus, and the
managed monthly-token cap of the default plan when that plan has one."""

from __future__ import annotations

from django.conf import settings
from django.db import transaction
from django.db.models.signals import post_save
from django.dispatch import receiver

from accounts.models import Organization


@receiver(post_save, sender=Organization, dispatch_uid="billing.new_org")
def set_up_new_org(sender, instance: Organization, created: bool, raw: bool = False, **kwargs) -> None:
    """After commit (a rolled-back org gets nothing): the signup bonus and the default plan's cap."""
    if not created or raw:
        return
    from billing.catalogue import default_plan_key, plan_get

    bonus = bool(getattr(settings, "CREDITS_SIGNUP_BONUS", 0))
    monthly = ((plan_get(default_plan_key()) or {}).get("limits") or {}).get("monthly_tokens")
    if not bonus and monthly is None:
        return
    org_id = instance.pk

    def after_commit() -> None:
        from billing.services.caps import managed_policy_sync
        from billing.services.credits import signup_bonus_grant

        org = Organization.objects.filter(pk=org_id).first()
        if org is None:
            return
        if bonus:
            signup_bonus_grant(org=org)
        if monthly is not None:
            plan = plan_get(default_plan_key()) or {}
            managed_policy_sync(
                org=org,
                key="plan_monthly_tokens",
                window="month",
                max_tokens=monthly,
                name=f"{plan.get('name', plan.get('key'))} plan: monthly tokens",
            )

    transaction.on_commit(after_commit)
