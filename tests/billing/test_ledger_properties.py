"""Property-based (Hypothesis stateful) test of credits and caps together: any interleaving of
grant, consume (with and without reference ids), refund, LLM reserve and settle, and cap changes
keeps the balance non-negative and equal to the ledger sum, and settled spend within the cap."""

from __future__ import annotations

import pytest
from django.db.models import Sum
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    invariant,
    rule,
    run_state_machine_as_test,
)

from billing.models import (
    CreditAccount,
    CreditTransaction,
    PriceOverride,
    Subscription,
    UsageCapCounter,
    UsageCapPolicy,
)
from billing.services.caps import usage_cap_policy_update, usage_reserve, usage_settle
from billing.services.credits import credits_consume, credits_grant, credits_refund
from core.errors import ApplicationError
from tests.factories import OrganizationFactory

pytestmark = pytest.mark.django_db


class LedgerMachine(RuleBasedStateMachine):
    reservations = Bundle("reservations")
    consumes_ = Bundle("consumes")

    def __init__(self) -> None:
        super().__init__()
        self.org = OrganizationFactory()
        Subscription.objects.create(org=self.org, plan="credits")
        # 1000 µ$ per token = 0.1 credit per token at 100 credits per USD
        PriceOverride.objects.create(org=self.org, model="m", input_per_million=1000, output_per_million=1000)
        self.policy = UsageCapPolicy.objects.create(org=self.org, window="month", max_tokens=500)
        self.max_cap_seen = 500
        self.settled_tokens = 0

    def call(self, prompt: int, output: int) -> dict:
        return {
            "org_id": str(self.org.pk),
            "model": "m",
            "provider_type": "openai",
            "purpose": "chat",
            "estimated_prompt_tokens": prompt,
            "max_tokens": output,
            "agent_id": None,
            "user_id": None,
            "api_key_id": None,
            "provider_id": None,
            "request_id": None,
        }

    @rule(amount=st.integers(min_value=1, max_value=50))
    def grant(self, amount):
        credits_grant(org=self.org, actor=None, amount=amount)

    @rule(
        target=consumes_, amount=st.integers(min_value=1, max_value=30), ref=st.sampled_from(["", "a", "b"])
    )
    def consume(self, amount, ref):
        try:
            tx, _ = credits_consume(org=self.org, actor=None, amount=amount, action="p", reference_id=ref)
        except ApplicationError as exc:
            assert exc.code in ("ERR_INSUFFICIENT_CREDITS", "ERR_REFERENCE_REUSED")
            return None
        return tx.pk

    @rule(tx=consumes(consumes_))
    def refund(self, tx):
        if tx is None:
            return
        try:
            credits_refund(org=self.org, actor=None, transaction_id=tx)
        except ApplicationError as exc:
            assert exc.code == "ERR_ALREADY_REFUNDED"

    @rule(
        target=reservations,
        prompt=st.integers(min_value=0, max_value=60),
        output=st.integers(min_value=0, max_value=120),
    )
    def reserve(self, prompt, output):
        try:
            reservation = usage_reserve(self.call(prompt, output))
        except ApplicationError as exc:
            assert exc.code in ("ERR_USAGE_CAP_EXCEEDED", "ERR_INSUFFICIENT_CREDITS")
            return None
        counter = UsageCapCounter.objects.get(policy=self.policy)
        cap = UsageCapPolicy.objects.get(pk=self.policy.pk).max_tokens
        assert counter.used_tokens + counter.reserved_tokens <= cap
        return (reservation, prompt, output)

    @rule(held=consumes(reservations), used_share=st.floats(min_value=0, max_value=1), failed=st.booleans())
    def settle(self, held, used_share, failed):
        if held is None:
            return
        reservation, prompt, output = held
        usage = None if failed else {"prompt_tokens": prompt, "completion_tokens": int(output * used_share)}
        usage_settle({}, usage, reservation)
        if usage:
            self.settled_tokens += usage["prompt_tokens"] + usage["completion_tokens"]

    @rule(cap=st.integers(min_value=0, max_value=800))
    def change_cap(self, cap):
        usage_cap_policy_update(policy=self.policy, actor=None, max_tokens=cap)
        self.max_cap_seen = max(self.max_cap_seen, cap)

    @invariant()
    def balance_is_the_ledger_and_never_negative(self):
        account = CreditAccount.objects.filter(org=self.org).first()
        ledger = (
            CreditTransaction.objects.filter(org=self.org).aggregate(total=Sum("amount_micros"))["total"] or 0
        )
        balance = account.balance_micros if account else 0
        held = account.held_micros if account else 0
        assert balance >= 0 and held >= 0
        assert balance == ledger
        assert held <= balance

    @invariant()
    def settled_spend_stays_within_the_cap(self):
        counter = UsageCapCounter.objects.filter(policy=self.policy).first()
        used = counter.used_tokens if counter else 0
        assert used == self.settled_tokens
        assert used <= self.max_cap_seen


def test_ledger_and_caps_hold_their_invariants():
    run_state_machine_as_test(
        LedgerMachine,
        settings=settings(
            max_examples=30,
            stateful_step_count=25,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
        ),
    )
