"""Payments: checkout (501 without a provider; with one, the request the SDK sends to a loopback
fake Stripe) and the signed webhook (real HMAC signatures with the webhook secret; flipped bytes,
stale timestamps and replays are rejected or change nothing)."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
import uuid

import pytest

from billing.models import CreditAccount, CreditTransaction, PaymentEvent, Subscription
from tests.core.test_errors import assert_envelope
from tests.fakes.stripe_peer import FakeStripe

WEBHOOK_SECRET = "whsec_test_" + "a" * 24


def sign(payload: bytes, *, secret: str = WEBHOOK_SECRET, timestamp: int | None = None) -> str:
    timestamp = int(time.time()) if timestamp is None else timestamp
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + payload, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


def event(kind: str, obj: dict, *, event_id: str | None = None) -> bytes:
    body = {
        "id": event_id or f"evt_{uuid.uuid4().hex}",
        "object": "event",
        "type": kind,
        "data": {"object": obj},
    }
    return json.dumps(body).encode()


def purchase(org, *, credits="500", session="cs_1") -> dict:
    return {
        "id": session,
        "object": "checkout.session",
        "mode": "payment",
        "payment_status": "paid",
        "client_reference_id": str(org.pk),
        "metadata": {"org_id": str(org.pk), "kind": "credits", "credits": credits},
    }


@pytest.fixture
def webhook(settings, anon_client):
    settings.STRIPE_WEBHOOK_SECRET = WEBHOOK_SECRET

    def post(payload: bytes, signature: str | None = "sign"):
        headers = {}
        if signature is not None:
            headers["HTTP_STRIPE_SIGNATURE"] = sign(payload) if signature == "sign" else signature
        return anon_client.post(
            "/api/v1/billing/webhook", data=payload, content_type="application/json", **headers
        )

    return post


def balance(org) -> int:
    account = CreditAccount.objects.filter(org=org).first()
    return account.balance_micros // 1_000_000 if account else 0


def test_a_paid_credit_checkout_adds_credits(webhook, org):
    response = webhook(event("checkout.session.completed", purchase(org)))
    assert response.status_code == 200, response.content
    assert response.json()["duplicate"] is False
    assert balance(org) == 500
    assert CreditTransaction.objects.get(org=org).kind == "purchase"


def test_a_replayed_event_changes_nothing(webhook, org):
    payload = event("checkout.session.completed", purchase(org), event_id="evt_same")
    assert webhook(payload).json()["duplicate"] is False
    again = webhook(payload)
    assert again.status_code == 200 and again.json()["duplicate"] is True
    assert balance(org) == 500 and PaymentEvent.objects.count() == 1
    # a new event about the same checkout session does not pay twice either
    assert webhook(event("checkout.session.completed", purchase(org))).status_code == 200
    assert balance(org) == 500


def test_a_flipped_byte_is_rejected(webhook, org):
    payload = event("checkout.session.completed", purchase(org))
    signature = sign(payload)
    tampered = payload.replace(b'"500"', b'"900"')
    assert_envelope(webhook(tampered, signature), 400, "ERR_BAD_SIGNATURE")
    bad_mac = signature[:-1] + ("0" if signature[-1] != "0" else "1")
    assert_envelope(webhook(payload, bad_mac), 400, "ERR_BAD_SIGNATURE")
    assert balance(org) == 0 and not PaymentEvent.objects.exists()


def test_a_stale_timestamp_is_rejected(webhook, org):
    payload = event("checkout.session.completed", purchase(org))
    assert_envelope(
        webhook(payload, sign(payload, timestamp=int(time.time()) - 3600)), 400, "ERR_BAD_SIGNATURE"
    )
    assert balance(org) == 0


def test_missing_or_foreign_signatures_are_rejected(webhook, org):
    payload = event("checkout.session.completed", purchase(org))
    assert_envelope(webhook(payload, None), 400, "ERR_BAD_SIGNATURE")
    assert_envelope(webhook(payload, sign(payload, secret="whsec_other")), 400, "ERR_BAD_SIGNATURE")
    assert_envelope(webhook(payload, "garbage"), 400, "ERR_BAD_SIGNATURE")
    assert balance(org) == 0


def test_without_a_webhook_secret_the_webhook_answers_501(anon_client, settings, org):
    settings.STRIPE_WEBHOOK_SECRET = ""
    payload = event("checkout.session.completed", purchase(org))
    response = anon_client.post(
        "/api/v1/billing/webhook",
        data=payload,
        content_type="application/json",
        HTTP_STRIPE_SIGNATURE=sign(payload),
    )
    assert_envelope(response, 501, "ERR_PAYMENTS_NOT_CONFIGURED")


def test_an_unpaid_checkout_and_unknown_events_are_acknowledged_without_effect(webhook, org):
    unpaid = {**purchase(org), "payment_status": "unpaid"}
    assert webhook(event("checkout.session.completed", unpaid)).json()["outcome"] == "ignored: not paid yet"
    assert webhook(event("invoice.paid", {"id": "in_1", "customer": "cus_x"})).status_code == 200
    assert balance(org) == 0


def test_subscription_events_change_the_plan(webhook, settings, org):
    settings.STRIPE_PRICE_PRO = "price_pro_123"
    subscription = {
        "id": "sub_1",
        "object": "subscription",
        "customer": "cus_1",
        "status": "active",
        "metadata": {"org_id": str(org.pk)},
        "current_period_end": int(time.time()) + 86400,
        "items": {"data": [{"price": {"id": "price_pro_123"}}]},
    }
    assert webhook(event("customer.subscription.updated", subscription)).status_code == 200
    sub = Subscription.objects.get(org=org)
    assert (sub.plan, sub.provider_subscription_id, sub.provider_customer_id) == ("pro", "sub_1", "cus_1")
    # the deletion names only the subscription: the org is found through it
    deleted = {"id": "sub_1", "object": "subscription", "customer": "cus_1", "status": "canceled"}
    assert webhook(event("customer.subscription.deleted", deleted)).status_code == 200
    sub.refresh_from_db()
    assert (sub.plan, sub.status) == ("community", "canceled")


# --- checkout -----------------------------------------------------------------------------------------------


def test_checkout_without_a_payment_provider_answers_501(owner_client, settings):
    settings.STRIPE_SECRET_KEY = ""
    response = owner_client.post(
        "/api/v1/billing/checkout", {"kind": "credits", "credits": 1000}, format="json"
    )
    assert_envelope(response, 501, "ERR_PAYMENTS_NOT_CONFIGURED")


def test_checkout_needs_the_owner(member_client, admin_client):
    body = {"kind": "credits", "credits": 1000}
    assert_envelope(member_client.post("/api/v1/billing/checkout", body, format="json"), 403)
    assert_envelope(admin_client.post("/api/v1/billing/checkout", body, format="json"), 403)


@pytest.fixture
def stripe_peer(settings):
    with FakeStripe() as peer:
        settings.STRIPE_SECRET_KEY = "sk_test_fake"
        settings.STRIPE_API_BASE = peer.base_url
        yield peer


def test_checkout_for_credits_opens_a_session_at_the_provider(owner_client, org, stripe_peer):
    response = owner_client.post(
        "/api/v1/billing/checkout",
        {"kind": "credits", "credits": 1000, "success_url": "https://app.example.com/ok"},
        format="json",
    )
    assert response.status_code == 201, response.content
    assert response.json()["url"].startswith("https://checkout.stripe.test/")
    sent = stripe_peer.requests[-1]
    form = sent["form"]
    assert sent["auth"] == "Bearer sk_test_fake"
    assert form["mode"] == "payment" and form["success_url"] == "https://app.example.com/ok"
    assert form["metadata[org_id]"] == str(org.pk) and form["metadata[credits]"] == "1000"
    assert form["line_items[0][price_data][unit_amount]"] == "1000"  # 1000 credits at 100 per USD = 10 USD
    assert form["client_reference_id"] == str(org.pk)


def test_checkout_for_a_plan_uses_its_price_id(owner_client, settings, stripe_peer):
    settings.STRIPE_PRICE_TEAM = "price_team_9"
    response = owner_client.post(
        "/api/v1/billing/checkout", {"kind": "subscription", "plan": "team"}, format="json"
    )
    assert response.status_code == 201, response.content
    form = stripe_peer.requests[-1]["form"]
    assert form["mode"] == "subscription" and form["line_items[0][price]"] == "price_team_9"
    assert form["subscription_data[metadata][plan]"] == "team"
    # a plan without a price id, an unknown plan, too few credits: 400 and nothing sent
    count = len(stripe_peer.requests)
    for body in (
        {"kind": "subscription", "plan": "enterprise"},
        {"kind": "subscription", "plan": "platinum"},
        {"kind": "credits", "credits": 10},
        {"kind": "credits"},
        {"kind": "gift"},
    ):
        assert_envelope(owner_client.post("/api/v1/billing/checkout", body, format="json"), 400)
    assert len(stripe_peer.requests) == count


def test_a_provider_refusal_answers_502(owner_client, stripe_peer):
    stripe_peer.server.fail = True
    response = owner_client.post(
        "/api/v1/billing/checkout", {"kind": "credits", "credits": 1000}, format="json"
    )
    assert_envelope(response, 502, "ERR_PAYMENT_PROVIDER")


# --- auto top-up -----------------------------------------------------------------------------------


def auto_topup_account(org, *, balance_credits=5, threshold=10, amount=1000, customer="cus_saved"):
    from billing.services.credits import credits_auto_topup_update, credits_grant

    credits_grant(org=org, actor=None, amount=balance_credits)
    credits_auto_topup_update(org=org, actor=None, enabled=True, threshold=threshold, amount=amount)
    CreditAccount.objects.filter(org=org).update(provider_customer_id=customer)


def test_a_credit_checkout_saves_the_card_and_its_webhook_keeps_the_customer(
    owner_client, org, stripe_peer, webhook
):
    owner_client.post("/api/v1/billing/checkout", {"kind": "credits", "credits": 1000}, format="json")
    form = stripe_peer.requests[-1]["form"]
    assert form["customer_creation"] == "always"
    assert form["payment_intent_data[setup_future_usage]"] == "off_session"
    webhook(event("checkout.session.completed", {**purchase(org), "customer": "cus_new"}))
    assert CreditAccount.objects.get(org=org).provider_customer_id == "cus_new"
    owner_client.post("/api/v1/billing/checkout", {"kind": "credits", "credits": 1000}, format="json")
    form = stripe_peer.requests[-1]["form"]
    assert form["customer"] == "cus_new" and "customer_creation" not in form


def test_consuming_under_the_threshold_charges_the_saved_card_once(
    org, stripe_peer, django_capture_on_commit_callbacks, monkeypatch
):
    from billing import tasks
    from billing.services.credits import credits_consume

    auto_topup_account(org, balance_credits=20, threshold=10, amount=1000)
    queued: list[str] = []
    monkeypatch.setattr(tasks.credits_auto_topup, "delay", queued.append)
    with django_capture_on_commit_callbacks(execute=True):
        credits_consume(org=org, actor=None, amount=5, action="x")  # 15 left: above the threshold
    assert queued == []
    with django_capture_on_commit_callbacks(execute=True):
        credits_consume(org=org, actor=None, amount=8, action="x")  # 7 left: under it
    assert queued == [str(org.pk)]

    assert tasks.credits_auto_topup(str(org.pk)) == "charged"
    assert balance(org) == 1007
    intent = stripe_peer.requests[-1]
    assert intent["path"] == "/v1/payment_intents"
    assert intent["form"]["customer"] == "cus_saved" and intent["form"]["payment_method"] == "pm_card_visa"
    assert intent["form"]["off_session"] == "true" and intent["form"]["amount"] == "1000"  # 10 USD
    assert intent["idempotency_key"].startswith(f"auto-topup:{org.pk}:")
    # No second charge once the balance is back above the threshold.
    assert tasks.credits_auto_topup(str(org.pk)) == "skipped: not due"
    assert balance(org) == 1007
    assert CreditTransaction.objects.filter(org=org, note__startswith="Auto top-up").count() == 1


def test_a_declined_card_is_not_retried_within_the_cooldown(org, stripe_peer):
    from billing.services.payments import auto_topup_charge

    auto_topup_account(org)
    stripe_peer.server.fail = True
    assert auto_topup_charge(org_id=org.pk) == "failed: card_declined"
    stripe_peer.server.fail = False
    assert auto_topup_charge(org_id=org.pk) == "skipped: cooling down"
    assert balance(org) == 5
    CreditAccount.objects.filter(org=org).update(auto_topup_attempted_at=None)
    assert auto_topup_charge(org_id=org.pk) == "charged"
    assert balance(org) == 1005


def test_a_pending_charge_is_credited_by_its_webhook_once(org, stripe_peer, webhook):
    from billing.services.payments import auto_topup_charge

    auto_topup_account(org)
    stripe_peer.server.intent_status = "processing"
    assert auto_topup_charge(org_id=org.pk) == "pending: processing"
    assert balance(org) == 5
    intent_id = f"pi_test_{len(stripe_peer.requests)}"
    succeeded = {
        "id": intent_id,
        "object": "payment_intent",
        "status": "succeeded",
        "metadata": {"org_id": str(org.pk), "kind": "auto_topup", "credits": "1000"},
    }
    assert webhook(event("payment_intent.succeeded", succeeded)).status_code == 200
    assert webhook(event("payment_intent.succeeded", succeeded)).status_code == 200  # a second delivery
    assert balance(org) == 1005


def test_without_a_provider_or_a_saved_card_nothing_is_charged(org, settings, stripe_peer):
    from billing.services.payments import auto_topup_charge

    auto_topup_account(org, customer="")
    assert auto_topup_charge(org_id=org.pk) == "skipped: not due"
    CreditAccount.objects.filter(org=org).update(provider_customer_id="cus_saved")
    stripe_peer.server.cards = []
    assert auto_topup_charge(org_id=org.pk) == "failed: no saved card"
    settings.STRIPE_SECRET_KEY = ""
    assert auto_topup_charge(org_id=org.pk) == "skipped: no payment provider"
    assert balance(org) == 5
