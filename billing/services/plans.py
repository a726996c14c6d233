"""Plans and the org's subscription: changing plan, checking a downgrade, and the plan limits that
services enforce through ``core.quotas.check_limit`` (this module's :func:`plan_limit_check`).

Counting what an org uses goes through the apps that own those rows: agents directly (billing sits
above agents), knowledge bases and members by model label through the app registry, so that
billing never imports `knowledge` (same layer) and works while that app has no models yet.
"""

from __future__ import annotations

import logging
from typing import Any

from django.apps import apps
from django.db import transaction
from django.db.models import Sum
from django.utils import timezone

from accounts.models import Membership, Organization, User
from accounts.services.audit import audit_record
from billing.catalogue import default_plan_key, plan_get
from billing.models import Subscription, UsageRecord
from billing.selectors.state import invalidate_org_state
from billing.services.caps import managed_policy_sync
from billing.services.usage import window_bounds
from core.errors import ConflictError, PermissionDeniedError, ValidationError

logger = logging.getLogger(__name__)

# resource (as services name it in check_limit) -> plan limit key
RESOURCE_LIMITS = {
    "agents": "max_agents",
    "knowledge_bases": "max_knowledge_bases",
    "kb_storage_bytes": "max_kb_storage_bytes",
    "members": "max_members",
    "monthly_tokens": "monthly_tokens",
}


class PlanLimitReached(PermissionDeniedError):
    code = "ERR_PLAN_LIMIT"
    message = "The organisation's plan does not allow more of this."


def org_plan(org: Organization | Any) -> dict[str, Any]:
    """The plan entry of the org's subscription, or of the default plan."""
    org_id = getattr(org, "pk", org)
    key = Subscription.objects.filter(org_id=org_id).values_list("plan", flat=True).first()
    return plan_get(key or "") or plan_get(default_plan_key()) or {}


def _model_count(label: str, org_id: Any) -> int:
    try:
        model = apps.get_model(label)
    except (LookupError, ValueError):
        return 0
    return model.objects.filter(org_id=org_id).count()


def _kb_storage(org_id: Any) -> int:
    for label in ("knowledge.Document", "knowledge.KnowledgeDocument"):
        try:
            model = apps.get_model(label)
        except (LookupError, ValueError):
            continue
        for field in ("size_bytes", "size", "file_size", "bytes"):
            try:
                model._meta.get_field(field)
            except Exception:  # noqa: S112 - try the next name
                continue
            lookup = (
                "org_id" if any(f.name == "org" for f in model._meta.fields) else "knowledge_base__org_id"
            )
            return int(model.objects.filter(**{lookup: org_id}).aggregate(total=Sum(field))["total"] or 0)
    return 0


def resource_usage(org: Organization | Any, resource: str) -> int:
    """How much of ``resource`` the org uses now."""
    org_id = getattr(org, "pk", org)
    if resource == "agents":
        from agents.models import Agent

        return Agent.objects.filter(org_id=org_id).count()
    if resource == "knowledge_bases":
        return _model_count("knowledge.KnowledgeBase", org_id)
    if resource == "kb_storage_bytes":
        return _kb_storage(org_id)
    if resource == "members":
        return Membership.objects.filter(org_id=org_id).count()
    if resource == "monthly_tokens":
        start, end = window_bounds("month", timezone.now())
        sums = UsageRecord.objects.filter(org_id=org_id, created_at__gte=start, created_at__lt=end).aggregate(
            p=Sum("prompt_tokens"), c=Sum("completion_tokens")
        )
        return (sums["p"] or 0) + (sums["c"] or 0)
    return 0


def plan_limit_check(*, org: Any, resource: str, adding: int = 1) -> None:
    """The limit checker registered in ``core.quotas``: 403 ``ERR_PLAN_LIMIT`` past the plan."""
    limit_key = RESOURCE_LIMITS.get(resource)
    if limit_key is None or org is None:
        return
    plan = org_plan(org)
    limit = (plan.get("limits") or {}).get(limit_key)
    if limit is None:
        return
    used = resource_usage(org, resource)
    if used + adding > limit:
        raise PlanLimitReached(
            f"The {plan.get('name', plan.get('key'))} plan allows {limit} {resource.replace('_', ' ')}; "
            f"this organisation uses {used}. Upgrade the plan or remove some first.",
            details={
                "resource": resource,
                "limit": limit,
                "used": used,
                "adding": adding,
                "plan": plan.get("key"),
            },
        )


def downgrade_problems(org: Organization, plan: dict[str, Any]) -> list[dict[str, Any]]:
    """What the org would have to remove to fit ``plan``'s limits (empty when it fits)."""
    problems = []
    for resource, limit_key in RESOURCE_LIMITS.items():
        if resource == "monthly_tokens":
            continue  # a cap on future spend, nothing to remove
        limit = (plan.get("limits") or {}).get(limit_key)
        if limit is None:
            continue
        used = resource_usage(org, resource)
        if used > limit:
            problems.append({"resource": resource, "limit": limit, "used": used, "remove": used - limit})
    return problems


def _sync_managed_caps(org: Organization, plan: dict[str, Any]) -> None:
    monthly = (plan.get("limits") or {}).get("monthly_tokens")
    managed_policy_sync(
        org=org,
        key="plan_monthly_tokens",
        window="month",
        max_tokens=monthly,
        name=f"{plan.get('name', plan.get('key'))} plan: monthly tokens",
    )


@transaction.atomic
def plan_change(
    *,
    org: Organization,
    actor: User | None,
    plan: str,
    force: bool = False,
    source: str = "api",
    **provider_fields: Any,
) -> Subscription:
    """Move the org to ``plan``. A downgrade that would exceed the target's limits answers 409
    listing what to remove (``force`` is for the payment provider, which reports a fact)."""
    target = plan_get(plan)
    if target is None:
        raise ValidationError(f"Unknown plan {plan!r}.", details={"plan": ["Unknown plan."]})
    Organization.objects.select_for_update().filter(pk=org.pk).first()  # one plan change at a time
    subscription = Subscription.objects.filter(org=org).first()
    before = {"plan": subscription.plan if subscription else default_plan_key()}
    if not force:
        problems = downgrade_problems(org, target)
        if problems:
            raise ConflictError(
                f"The organisation uses more than the {target['name']} plan allows; remove these first.",
                code="ERR_DOWNGRADE_BLOCKED",
                details={"plan": plan, "problems": problems},
            )
    if subscription is None:
        subscription = Subscription(org=org)
    subscription.plan = plan
    subscription.status = provider_fields.pop("status", None) or "active"
    for name, value in provider_fields.items():
        setattr(subscription, name, value)
    subscription.save()
    _sync_managed_caps(org, target)
    audit_record(
        org=org,
        actor=actor,
        action="billing.plan_changed",
        entity=subscription,
        before=before,
        after={"plan": plan, "source": source},
    )
    transaction.on_commit(lambda: invalidate_org_state(org.pk))
    invalidate_org_state(org.pk)
    return subscription
