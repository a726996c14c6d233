"""The payment provider (Stripe, through its official SDK): hosted checkout sessions for credit
purchases and plan subscriptions, and the signed webhook that applies what was paid.

Without ``STRIPE_SECRET_KEY`` checkout answers 501 ``ERR_PAYMENTS_NOT_CONFIGURED``. The webhook
verifies Stripe's signature on the raw body (``Webhook.construct_event``: HMAC-SHA256, timestamp
tolerance, constant-time compare), then stores the event id in PaymentEvent in the same transaction
that applies its effect, so a redelivered or replayed event changes nothing the second time.
"""

from __future__ import annotations

import json
import logging
import os
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import stripe
from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from accounts.models import Organization, User
from accounts.services.audit import audit_record
from billing.catalogue import default_plan_key, plan_get, plans
from billing.models import CreditAccount, CreditTransaction, PaymentEvent, Subscription
from billing.services.credits import credits_grant
from billing.services.plans import plan_change
from billing.services.topup import auto_topup_due
from core.errors import ApplicationError, ValidationError

logger = logging.getLogger(__name__)


class PaymentsNotConfigured(ApplicationError):
    status_code = 501
    code = "ERR_PAYMENTS_NOT_CONFIGURED"
    message = "No payment provider is configured on this installation."


class PaymentProviderError(ApplicationError):
    status_code = 502
    code = "ERR_PAYMENT_PROVIDER"
    message = "The payment provider refused or did not answer."


class BadSignature(ApplicationError):
    status_code = 400
    code = "ERR_BAD_SIGNATURE"
    message = "The webhook signature is missing, wrong or too old."


def payments_configured() -> bool:
    return bool(getattr(settings, "STRIPE_SECRET_KEY", ""))


def _client() -> stripe.StripeClient:
    base = getattr(settings, "STRIPE_API_BASE", "") or ""
    return stripe.StripeClient(
        settings.STRIPE_SECRET_KEY,
        base_addresses={"api": base} if base else None,
        max_network_retries=1,
    )


def plan_price_id(plan: dict[str, Any]) -> str:
    """The provider price id of a plan (from the env variable the plan names)."""
    env_name = plan.get("stripe_price_env") or ""
    return (getattr(settings, env_name, "") or os.environ.get(env_name, "")) if env_name else ""


def plan_for_price(price_id: str) -> str | None:
    for plan in plans():
        if price_id and plan_price_id(plan) == price_id:
            return plan["key"]
    return None


def checkout_params(
    *,
    org: Organization,
    actor: User | None,
    kind: str,
    success_url: str,
    cancel_url: str,
    credits: Any = None,
    plan: str = "",
) -> dict[str, Any]:
    """The Checkout Session request for a credit purchase or a plan subscription (no network)."""
    metadata = {"org_id": str(org.pk), "kind": kind, "actor_id": str(getattr(actor, "pk", "") or "")}
    params: dict[str, Any] = {
        "success_url": success_url,
        "cancel_url": cancel_url,
        "client_reference_id": str(org.pk),
        "metadata": metadata,
    }
    if kind == "credits":
        try:
            amount = Decimal(str(credits))
        except Exception as exc:
            raise ValidationError(
                "credits must be a number.", details={"credits": ["Not a number."]}
            ) from exc
        if not amount.is_finite() or amount <= 0 or amount != amount.to_integral_value():
            raise ValidationError(
                "credits must be a positive whole number.", details={"credits": ["Invalid."]}
            )
        cents = int(amount * 100 / Decimal(str(getattr(settings, "CREDITS_PER_USD", 100))))
        if cents < 50:
            raise ValidationError(
                "The purchase is below the minimum charge of 0.50 USD.", details={"credits": ["Too few."]}
            )
        metadata["credits"] = str(int(amount))
        # Keep the card for auto top-up (charged off-session later) under one customer per org.
        customer = (
            CreditAccount.objects.filter(org=org).values_list("provider_customer_id", flat=True).first() or ""
        )
        if customer:
            params["customer"] = customer
        else:
            params["customer_creation"] = "always"
        params.update(
            payment_intent_data={"setup_future_usage": "off_session", "metadata": dict(metadata)},
            mode="payment",
            line_items=[
                {
                    "price_data": {
                        "currency": "usd",
                        "unit_amount": cents,
                        "product_data": {"name": f"{int(amount)} credits"},
                    },
                    "quantity": 1,
                }
            ],
        )
        return params
    if kind == "subscription":
        target = plan_get(plan)
        if target is None:
            raise ValidationError(f"Unknown plan {plan!r}.", details={"plan": ["Unknown plan."]})
        price_id = plan_price_id(target)
        if not price_id:
            raise ValidationError(
                f"The plan {plan!r} cannot be bought online.", details={"plan": ["No price configured."]}
            )
        metadata["plan"] = plan
        params.update(
            mode="subscription",
            line_items=[{"price": price_id, "quantity": 1}],
            subscription_data={"metadata": {"org_id": str(org.pk), "plan": plan}},
        )
        customer = Subscription.objects.filter(org=org).values_list("provider_customer_id", flat=True).first()
        if customer:
            params["customer"] = customer
        return params
    raise ValidationError("kind must be credits or subscription.", details={"kind": ["Invalid choice."]})


def checkout_create(**kwargs: Any) -> dict[str, Any]:
    """Open a hosted checkout session; ``{id, url}``. 501 when no provider is configured."""
    if not payments_configured():
        raise PaymentsNotConfigured()
    params = checkout_params(**kwargs)
    try:
        session = _client().v1.checkout.sessions.create(params=params)
    except stripe.StripeError as exc:
        logger.warning("stripe checkout failed: %s", exc)
        raise PaymentProviderError(
            details={"provider_message": str(getattr(exc, "user_message", "") or "")}
        ) from exc
    return {"id": session.id, "url": session.url}


# --- auto top-up ---------------------------------------------------------------------------------


def _purchase_grant(org: Organization, paid: dict[str, Any], *, note: str) -> CreditTransaction:
    """The credits a paid Stripe object (a checkout session, a payment intent) carries in its
    metadata; once per object, whichever of its answer and its webhooks lands first."""
    return credits_grant(
        org=org,
        actor=None,
        amount=(paid.get("metadata") or {}).get("credits"),
        kind=CreditTransaction.Kind.PURCHASE,
        note=f"{note} {paid.get('id')}",
        reference_id=f"stripe:{paid.get('id')}",
    )


def auto_topup_charge(*, org_id: Any) -> str:
    """Charge the org's saved card for its auto top-up amount if it is still due; the outcome.

    One attempt per ``CREDITS_AUTO_TOPUP_COOLDOWN_SECONDS`` (a declined card is not retried on
    every call). The charge is off-session with an idempotency key per attempt; credits are added
    when it succeeds, now or by the ``payment_intent.succeeded`` webhook.
    """
    if not payments_configured():
        return "skipped: no payment provider"
    now = timezone.now()
    cooldown = timedelta(seconds=int(getattr(settings, "CREDITS_AUTO_TOPUP_COOLDOWN_SECONDS", 600)))
    with transaction.atomic():
        account = CreditAccount.objects.select_for_update().filter(org_id=org_id).first()
        if account is None or not auto_topup_due(account):
            return "skipped: not due"
        if account.auto_topup_attempted_at and now - account.auto_topup_attempted_at < cooldown:
            return "skipped: cooling down"
        account.auto_topup_attempted_at = now
        account.save(update_fields=["auto_topup_attempted_at", "updated_at"])
        customer = account.provider_customer_id
        credits = account.auto_topup_amount_micros // 1_000_000
    org = Organization.objects.get(pk=org_id)
    cents = int(Decimal(credits) * 100 / Decimal(str(getattr(settings, "CREDITS_PER_USD", 100))))
    if cents < 50:
        return "skipped: below the minimum charge"
    client = _client()
    try:
        methods = client.v1.payment_methods.list(params={"customer": customer, "type": "card", "limit": 1})
        if not methods.data:
            outcome = "failed: no saved card"
        else:
            intent = client.v1.payment_intents.create(
                params={
                    "amount": cents,
                    "currency": "usd",
                    "customer": customer,
                    "payment_method": methods.data[0].id,
                    "off_session": True,
                    "confirm": True,
                    "description": f"{credits} credits (auto top-up)",
                    "metadata": {"org_id": str(org_id), "kind": "auto_topup", "credits": str(credits)},
                },
                options={"idempotency_key": f"auto-topup:{org_id}:{int(now.timestamp())}"},
            )
            if intent.status == "succeeded":
                tx = _purchase_grant(org, intent.to_dict(), note="Auto top-up")
                audit_record(org=org, actor=None, action="credits.auto_topup_charged", entity=tx)
                return "charged"
            outcome = f"pending: {intent.status}"
    except stripe.StripeError as exc:
        logger.warning("auto top-up of org %s failed: %s", org_id, exc)
        outcome = f"failed: {getattr(exc, 'code', None) or 'provider error'}"
    audit_record(
        org=org, actor=None, action="credits.auto_topup_attempted", entity=account, after={"outcome": outcome}
    )
    return outcome


# --- webhook -----------------------------------------------------------------------------------


def webhook_verify(*, payload: bytes, signature: str | None) -> dict[str, Any]:
    """The event, once its signature checks out against ``STRIPE_WEBHOOK_SECRET``."""
    secret = getattr(settings, "STRIPE_WEBHOOK_SECRET", "")
    if not secret:
        raise PaymentsNotConfigured("The payment webhook is not configured (STRIPE_WEBHOOK_SECRET).")
    if not signature:
        raise BadSignature("The Stripe-Signature header is missing.")
    try:
        stripe.Webhook.construct_event(
            payload, signature, secret, tolerance=int(getattr(settings, "STRIPE_WEBHOOK_TOLERANCE", 300))
        )
    except stripe.SignatureVerificationError as exc:
        raise BadSignature() from exc
    except ValueError as exc:
        raise ValidationError("The webhook body is not valid JSON.") from exc
    event = json.loads(payload)
    if not isinstance(event, dict) or not event.get("id") or not event.get("type"):
        raise ValidationError("The webhook body is not an event.")
    return event


def _org_for(obj: dict[str, Any]) -> Organization | None:
    org_id = (obj.get("metadata") or {}).get("org_id") or obj.get("client_reference_id")
    if org_id:
        org = Organization.objects.filter(pk=org_id).first() if _is_uuid(org_id) else None
        if org is not None:
            return org
    sub_id = obj.get("subscription") if obj.get("object") != "subscription" else obj.get("id")
    if sub_id:
        sub = Subscription.objects.filter(provider_subscription_id=sub_id).select_related("org").first()
        if sub is not None:
            return sub.org
    customer = obj.get("customer")
    if customer:
        sub = Subscription.objects.filter(provider_customer_id=customer).select_related("org").first()
        if sub is not None:
            return sub.org
    return None


def _is_uuid(value: Any) -> bool:
    import uuid

    try:
        uuid.UUID(str(value))
    except ValueError:
        return False
    return True


def _apply(event: dict[str, Any]) -> tuple[Organization | None, str]:
    kind = event["type"]
    obj = (event.get("data") or {}).get("object") or {}
    org = _org_for(obj)
    if org is None:
        return None, "ignored: no organisation"
    if kind == "checkout.session.completed":
        metadata = obj.get("metadata") or {}
        if obj.get("mode") == "payment" and metadata.get("kind") == "credits":
            if obj.get("payment_status") not in ("paid", "no_payment_required"):
                return org, "ignored: not paid yet"
            tx = _purchase_grant(org, obj, note="Stripe checkout")
            if obj.get("customer"):
                CreditAccount.objects.filter(org=org).update(provider_customer_id=str(obj["customer"])[:100])
            return org, f"credits purchased: {tx.pk}"
        if obj.get("mode") == "subscription" and metadata.get("plan"):
            plan_change(
                org=org,
                actor=None,
                plan=metadata["plan"],
                force=True,
                source="stripe",
                provider_customer_id=str(obj.get("customer") or ""),
                provider_subscription_id=str(obj.get("subscription") or ""),
            )
            return org, f"subscribed: {metadata['plan']}"
        return org, "ignored: unknown checkout"
    if kind in ("customer.subscription.created", "customer.subscription.updated"):
        items = ((obj.get("items") or {}).get("data")) or []
        price_id = ((items[0].get("price") or {}).get("id")) if items else ""
        plan = plan_for_price(price_id or "") or (obj.get("metadata") or {}).get("plan")
        if not plan_get(plan or ""):
            return org, "ignored: unknown price"
        active = obj.get("status") in ("active", "trialing", "past_due")
        period_end = obj.get("current_period_end")
        plan_change(
            org=org,
            actor=None,
            plan=plan if active else default_plan_key(),
            force=True,
            source="stripe",
            status=str(obj.get("status") or "active"),
            provider_customer_id=str(obj.get("customer") or ""),
            provider_subscription_id=str(obj.get("id") or ""),
            current_period_end=datetime.fromtimestamp(int(period_end), tz=UTC) if period_end else None,
        )
        return org, f"subscription {obj.get('status')}: {plan}"
    if kind == "payment_intent.succeeded" and (obj.get("metadata") or {}).get("kind") == "auto_topup":
        tx = _purchase_grant(org, obj, note="Auto top-up")
        return org, f"auto top-up: {tx.pk}"
    if kind == "customer.subscription.deleted":
        plan_change(
            org=org, actor=None, plan=default_plan_key(), force=True, source="stripe", status="canceled"
        )
        return org, "subscription cancelled"
    return org, "ignored: event type"


def webhook_process(*, payload: bytes, signature: str | None) -> dict[str, Any]:
    """Verify, dedupe by event id and apply one webhook delivery; ``{received, duplicate, outcome}``."""
    event = webhook_verify(payload=payload, signature=signature)
    try:
        with transaction.atomic():
            record = PaymentEvent.objects.create(
                provider="stripe", event_id=str(event["id"])[:100], event_type=str(event["type"])[:100]
            )
            org, outcome = _apply(event)
            record.org, record.outcome = org, outcome[:200]
            record.save(update_fields=["org", "outcome"])
    except IntegrityError:
        if PaymentEvent.objects.filter(provider="stripe", event_id=str(event["id"])[:100]).exists():
            return {"received": True, "duplicate": True, "outcome": "already processed"}
        raise
    return {"received": True, "duplicate": False, "outcome": outcome}
