"""Credits: the ledger API (balance, transactions, consume, grant, refund, auto top-up) and LLM
calls paid from credits through reserve/settle."""

from __future__ import annotations

from decimal import Decimal

import pytest

from accounts.models import Role
from agents.llm import chat
from billing.models import CreditAccount, CreditTransaction, PriceOverride, Subscription
from billing.selectors.credits import ledger_sum
from billing.services.credits import credits_grant
from core.errors import ApplicationError
from tests.billing.conftest import make_provider
from tests.conftest import client_for
from tests.core.test_errors import assert_envelope
from tests.factories import MembershipFactory, UserFactory

HELLO = [{"role": "user", "content": "hello there"}]


def grant(org, amount):
    return credits_grant(org=org, actor=None, amount=amount)


def balance(org) -> Decimal:
    account = CreditAccount.objects.get(org=org)
    assert account.balance_micros == ledger_sum(org=org)
    return Decimal(account.balance_micros) / 1_000_000


def test_owner_grants_and_member_reads_balance_and_ledger(owner_client, member_client, org):
    granted = owner_client.post("/api/v1/credits/grant", {"amount": "30", "note": "welcome"}, format="json")
    assert granted.status_code == 201, granted.content
    body = granted.json()
    assert body["kind"] == "admin_grant" and body["amount"] == 30.0 and body["balance_after"] == 30.0
    assert member_client.get("/api/v1/credits/balance").json()["balance"] == 30.0
    ledger = member_client.get("/api/v1/credits/transactions").json()
    assert ledger["total"] == 1 and ledger["items"][0]["note"] == "welcome"
    assert member_client.get("/api/v1/credits/transactions", {"kind": "consume"}).json()["total"] == 0
    assert_envelope(member_client.get("/api/v1/credits/transactions", {"kind": "gift"}), 400)


def test_grant_needs_owner_or_staff(member_client, org):
    admin = MembershipFactory(org=org, role=Role.ADMIN).user
    assert_envelope(client_for(admin).post("/api/v1/credits/grant", {"amount": "5"}, format="json"), 403)
    assert_envelope(member_client.post("/api/v1/credits/grant", {"amount": "5"}, format="json"), 403)
    staff = UserFactory(is_staff=True)
    MembershipFactory(org=org, user=staff, role=Role.VIEWER)
    assert client_for(staff).post("/api/v1/credits/grant", {"amount": "5"}, format="json").status_code == 201
    assert balance(org) == 5


@pytest.mark.parametrize("amount", ["0", "-3", "abc", "", "1e12"])
def test_bad_amounts_answer_400(owner_client, org, amount):
    assert_envelope(owner_client.post("/api/v1/credits/grant", {"amount": amount}, format="json"), 400)
    assert_envelope(
        owner_client.post("/api/v1/credits/consume", {"amount": amount, "action": "x"}, format="json"), 400
    )
    assert not CreditTransaction.objects.filter(org=org).exists()


def test_consume_takes_credits_and_answers_balance_and_transaction(member_client, org):
    grant(org, 10)
    response = member_client.post(
        "/api/v1/credits/consume",
        {"amount": "2.5", "action": "export.pdf", "reference_id": "job-1"},
        format="json",
    )
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["balance"] == 7.5
    assert body["transaction"]["kind"] == "consume" and body["transaction"]["amount"] == -2.5
    assert body["transaction"]["reference_id"] == "job-1" and body["duplicate"] is False
    assert balance(org) == Decimal("7.5")


def test_the_same_reference_id_charges_once(member_client, org):
    grant(org, 10)
    first = member_client.post(
        "/api/v1/credits/consume", {"amount": 3, "action": "a", "reference_id": "r-1"}, format="json"
    ).json()
    again = member_client.post(
        "/api/v1/credits/consume", {"amount": 3, "action": "a", "reference_id": "r-1"}, format="json"
    ).json()
    assert again["transaction"]["id"] == first["transaction"]["id"] and again["duplicate"] is True
    assert again["balance"] == 7.0 and balance(org) == 7
    other = member_client.post(
        "/api/v1/credits/consume", {"amount": 5, "action": "a", "reference_id": "r-1"}, format="json"
    )
    assert_envelope(other, 409, "ERR_REFERENCE_REUSED")


def test_consume_more_than_the_balance_answers_402_and_takes_nothing(member_client, org):
    grant(org, 1)
    response = member_client.post("/api/v1/credits/consume", {"amount": "1.5", "action": "x"}, format="json")
    error = assert_envelope(response, 402, "ERR_INSUFFICIENT_CREDITS")
    assert error["details"]["available"] == "1.000000"
    assert balance(org) == 1
    # an org that never had credits
    assert_envelope(
        member_client.post("/api/v1/credits/consume", {"amount": 1, "action": ""}, format="json"), 400
    )


def test_credits_are_per_org(member_client, outsider_client, org, other_org):
    grant(org, 10)
    assert outsider_client.get("/api/v1/credits/balance").json()["balance"] == 0
    assert outsider_client.get("/api/v1/credits/transactions").json()["total"] == 0
    assert_envelope(
        outsider_client.post("/api/v1/credits/consume", {"amount": 1, "action": "x"}, format="json"), 402
    )
    assert balance(org) == 10


def test_viewers_cannot_consume(org):
    viewer = MembershipFactory(org=org, role=Role.VIEWER).user
    grant(org, 10)
    assert_envelope(
        client_for(viewer).post("/api/v1/credits/consume", {"amount": 1, "action": "x"}, format="json"), 403
    )
    assert_envelope(client_for(viewer).get("/api/v1/credits/balance"), 403)


def test_refund_gives_back_a_consume_once(owner_client, member_client, org):
    grant(org, 10)
    tx = member_client.post("/api/v1/credits/consume", {"amount": 4, "action": "x"}, format="json").json()[
        "transaction"
    ]
    assert_envelope(
        member_client.post("/api/v1/credits/refund", {"transaction_id": tx["id"]}, format="json"), 403
    )
    refunded = owner_client.post("/api/v1/credits/refund", {"transaction_id": tx["id"]}, format="json")
    assert refunded.status_code == 201 and refunded.json()["amount"] == 4.0
    assert_envelope(
        owner_client.post("/api/v1/credits/refund", {"transaction_id": tx["id"]}, format="json"), 409
    )
    assert balance(org) == 10


def test_auto_topup_settings_are_stored(owner_client, member_client, org):
    body = {"enabled": True, "threshold": "5", "amount": "50"}
    assert_envelope(member_client.put("/api/v1/credits/auto-topup", body, format="json"), 403)
    stored = owner_client.put("/api/v1/credits/auto-topup", body, format="json")
    assert stored.status_code == 200 and stored.json()["auto_topup"] == {
        "enabled": True,
        "threshold": 5.0,
        "amount": 50.0,
    }
    assert member_client.get("/api/v1/credits/auto-topup").json()["auto_topup"]["enabled"] is True
    assert_envelope(owner_client.put("/api/v1/credits/auto-topup", {"enabled": True}, format="json"), 400)


def test_a_new_org_gets_the_signup_bonus_once(settings, db, django_capture_on_commit_callbacks):
    from billing.services.credits import signup_bonus_grant
    from tests.factories import OrganizationFactory

    settings.CREDITS_SIGNUP_BONUS = 25
    with django_capture_on_commit_callbacks(execute=True):
        org = OrganizationFactory()
    signup_bonus_grant(org=org)  # a second attempt adds nothing
    assert balance(org) == 25
    assert CreditTransaction.objects.get(org=org).kind == "signup_bonus"


# --- LLM calls paid with credits --------------------------------------------------------------------------


@pytest.fixture
def credit_org(org, up):
    Subscription.objects.create(org=org, plan="credits")
    PriceOverride.objects.create(
        org=org, model="fake-model-1", input_per_million=1000, output_per_million=1000
    )
    make_provider(org, up)
    return org


def test_an_llm_call_on_a_credit_plan_is_paid_from_credits(credit_org, settings):
    settings.CREDITS_PER_USD = 100
    grant(credit_org, 10)
    chat(org=credit_org, messages=HELLO, model="fake-model-1", max_tokens=50)
    # 13 tokens × 1000 µ$ = 0.013 USD = 1.3 credits
    assert balance(credit_org) == Decimal("8.7")
    tx = CreditTransaction.objects.get(org=credit_org, kind="consume")
    assert tx.amount_micros == -1_300_000 and tx.reference_id.startswith("llm:")
    assert CreditAccount.objects.get(org=credit_org).held_micros == 0


def test_an_llm_call_the_balance_cannot_cover_answers_402(credit_org, up):
    grant(credit_org, 1)  # worst case: (7 + 50) tokens × 0.1 credit
    before = up.stats["requests"]
    with pytest.raises(ApplicationError) as caught:
        chat(org=credit_org, messages=HELLO, model="fake-model-1", max_tokens=50)
    assert (caught.value.status_code, caught.value.code) == (402, "ERR_INSUFFICIENT_CREDITS")
    assert up.stats["requests"] == before
    assert balance(credit_org) == 1


def test_a_credit_plan_with_an_unpriced_model_refuses(org, up):
    Subscription.objects.create(org=org, plan="credits")
    make_provider(org, up)
    grant(org, 100)
    with pytest.raises(ApplicationError) as caught:
        chat(org=org, messages=HELLO, model="fake-model-1")
    assert caught.value.code == "ERR_PRICING_UNKNOWN"
