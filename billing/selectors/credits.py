"""Reads of credits: the balance and the ledger."""

from __future__ import annotations

from typing import Any

from django.db.models import QuerySet

from billing.models import CreditAccount, CreditTransaction


def credit_account_get(*, org) -> CreditAccount:
    """The org's account (an unsaved empty one when it never had credits)."""
    return CreditAccount.objects.filter(org=org).first() or CreditAccount(org=org)


def credit_transaction_list(*, org, kind: str = "") -> QuerySet[CreditTransaction]:
    rows = CreditTransaction.objects.filter(org=org)
    return rows.filter(kind=kind) if kind else rows


def ledger_sum(*, org) -> int:
    from django.db.models import Sum

    return int(CreditTransaction.objects.filter(org=org).aggregate(total=Sum("amount_micros"))["total"] or 0)


__all__: list[Any] = ["credit_account_get", "credit_transaction_list", "ledger_sum"]
