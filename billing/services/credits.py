"""The credit ledger: every change of an org's balance is one CreditTransaction, written in the
same transaction that changes ``CreditAccount.balance_micros`` under a row lock, so the balance is
always the sum of the ledger and never negative. ``consume`` is idempotent by ``reference_id``.

Amounts cross the API as decimal credits and are stored as integer micro-credits.
"""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction

from accounts.models import Organization, User
from accounts.services.audit import audit_record
from billing.models import CreditAccount, CreditTransaction
from billing.services.caps import InsufficientCredits
from billing.services.topup import auto_topup_schedule_if_due
from core.errors import ConflictError, NotFoundError, ValidationError

MICROS = 1_000_000
MAX_AMOUNT = Decimal("1000000000")


def to_micros(amount: Any, *, field: str = "amount") -> int:
    """Decimal credits -> micro-credits; refuses zero, negatives, NaN and absurd sizes."""
    try:
        value = Decimal(str(amount))
    except (InvalidOperation, ValueError) as exc:
        raise ValidationError(f"{field} must be a number.", details={field: ["Not a number."]}) from exc
    if not value.is_finite() or value <= 0 or value > MAX_AMOUNT:
        raise ValidationError(
            f"{field} must be greater than 0 and at most {MAX_AMOUNT}.", details={field: ["Out of range."]}
        )
    micros = int((value * MICROS).quantize(Decimal(1), rounding=ROUND_HALF_UP))
    if micros <= 0:
        raise ValidationError(
            f"{field} is smaller than one millionth of a credit.", details={field: ["Too small."]}
        )
    return micros


def from_micros(micros: int) -> Decimal:
    return (Decimal(micros) / MICROS).quantize(Decimal("0.000001"))


def _account_locked(org_id: Any) -> CreditAccount:
    CreditAccount.objects.bulk_create([CreditAccount(org_id=org_id)], ignore_conflicts=True)
    return CreditAccount.objects.select_for_update().get(org_id=org_id)


def _write(
    account: CreditAccount,
    *,
    kind: str,
    amount: int,
    actor: User | None,
    action: str = "",
    reference_id: str = "",
    note: str = "",
) -> CreditTransaction:
    account.balance_micros += amount
    if account.balance_micros < 0:  # never reached: callers check first; the DB constraint backs it
        raise InsufficientCredits()
    account.save(update_fields=["balance_micros", "updated_at"])
    return CreditTransaction.objects.create(
        org_id=account.org_id,
        kind=kind,
        amount_micros=amount,
        balance_after_micros=account.balance_micros,
        action=action[:100],
        reference_id=reference_id[:200],
        note=note[:500],
        actor=actor if getattr(actor, "is_authenticated", False) else None,
    )


@transaction.atomic
def credits_grant(
    *,
    org: Organization,
    actor: User | None,
    amount: Any,
    kind: str = CreditTransaction.Kind.ADMIN_GRANT,
    note: str = "",
    reference_id: str = "",
) -> CreditTransaction:
    """Add credits (admin grant, purchase, bonus, signup bonus); a known ``reference_id`` is not
    added twice (a replayed payment)."""
    if kind in (CreditTransaction.Kind.CONSUME, CreditTransaction.Kind.REFUND):
        raise ValidationError("Use consume or refund for those kinds.")
    micros = to_micros(amount)
    account = _account_locked(org.pk)
    if reference_id:
        existing = CreditTransaction.objects.filter(org=org, reference_id=reference_id).first()
        if existing is not None:
            return existing
    tx = _write(
        account, kind=kind, amount=micros, actor=actor, action=kind, reference_id=reference_id, note=note
    )
    audit_record(
        org=org,
        actor=actor,
        action=f"credits.{kind}",
        entity=tx,
        after={"amount": str(from_micros(micros)), "note": note},
    )
    return tx


@transaction.atomic
def credits_consume(
    *, org: Organization, actor: User | None, amount: Any, action: str, reference_id: str = ""
) -> tuple[CreditTransaction, bool]:
    """Take ``amount`` credits for ``action``; (transaction, created). A ``reference_id`` already
    consumed returns its first transaction (created False) and takes nothing; 402 when the
    available balance (balance less what in-flight LLM calls hold) is short."""
    micros = to_micros(amount)
    if not action:
        raise ValidationError("action is required.", details={"action": ["This field is required."]})
    account = _account_locked(org.pk)
    if reference_id:
        existing = CreditTransaction.objects.filter(org=org, reference_id=reference_id).first()
        if existing is not None:
            if existing.kind != CreditTransaction.Kind.CONSUME or existing.amount_micros != -micros:
                raise ConflictError(
                    "This reference_id was already used for a different charge.",
                    code="ERR_REFERENCE_REUSED",
                    details={"reference_id": reference_id, "transaction_id": str(existing.pk)},
                )
            return existing, False
    available = account.balance_micros - account.held_micros
    if available < micros:
        raise InsufficientCredits(
            "The credit balance is too low for this.",
            details={"available": str(from_micros(max(0, available))), "required": str(from_micros(micros))},
        )
    tx = _write(
        account,
        kind=CreditTransaction.Kind.CONSUME,
        amount=-micros,
        actor=actor,
        action=action,
        reference_id=reference_id,
    )
    auto_topup_schedule_if_due(account)
    return tx, True


@transaction.atomic
def credits_refund(
    *, org: Organization, actor: User | None, transaction_id: Any, amount: Any = None, note: str = ""
) -> CreditTransaction:
    """Give back all or part of a consume, once (a second refund of it answers 409)."""
    original = CreditTransaction.objects.filter(
        org=org, pk=transaction_id, kind=CreditTransaction.Kind.CONSUME
    ).first()
    if original is None:
        raise NotFoundError("No such consume transaction.")
    micros = -original.amount_micros if amount is None else to_micros(amount)
    if micros > -original.amount_micros:
        raise ValidationError("A refund cannot exceed what was consumed.", details={"amount": ["Too large."]})
    account = _account_locked(org.pk)
    reference = f"refund:{original.pk}"
    if CreditTransaction.objects.filter(org=org, reference_id=reference).exists():
        raise ConflictError("This transaction was already refunded.", code="ERR_ALREADY_REFUNDED")
    try:
        with transaction.atomic():
            tx = _write(
                account,
                kind=CreditTransaction.Kind.REFUND,
                amount=micros,
                actor=actor,
                action="refund",
                reference_id=reference,
                note=note,
            )
    except IntegrityError as exc:
        raise ConflictError("This transaction was already refunded.", code="ERR_ALREADY_REFUNDED") from exc
    audit_record(
        org=org, actor=actor, action="credits.refund", entity=tx, after={"amount": str(from_micros(micros))}
    )
    return tx


@transaction.atomic
def credits_auto_topup_update(
    *, org: Organization, actor: User | None, enabled: bool, threshold: Any = None, amount: Any = None
) -> CreditAccount:
    """Store the auto top-up settings (charged only when a payment provider is configured)."""
    account = _account_locked(org.pk)
    before = {"enabled": account.auto_topup_enabled}
    if enabled:
        account.auto_topup_threshold_micros = to_micros(threshold, field="threshold")
        account.auto_topup_amount_micros = to_micros(amount, field="amount")
    account.auto_topup_enabled = enabled
    account.save()
    audit_record(
        org=org,
        actor=actor,
        action="credits.auto_topup_updated",
        entity=account,
        before=before,
        after={
            "enabled": enabled,
            "threshold": str(from_micros(account.auto_topup_threshold_micros)),
            "amount": str(from_micros(account.auto_topup_amount_micros)),
        },
    )
    return account


def credits_available(org_id: Any) -> int:
    """Micro-credits an org can spend now (balance less holds)."""
    row = CreditAccount.objects.filter(org_id=org_id).values_list("balance_micros", "held_micros").first()
    return (row[0] - row[1]) if row else 0


def signup_bonus_grant(*, org: Organization) -> CreditTransaction | None:
    """The ``CREDITS_SIGNUP_BONUS`` a new org receives (none when 0); once per org."""
    bonus = Decimal(str(getattr(settings, "CREDITS_SIGNUP_BONUS", 0) or 0))
    if bonus <= 0:
        return None
    return credits_grant(
        org=org,
        actor=None,
        amount=bonus,
        kind=CreditTransaction.Kind.SIGNUP_BONUS,
        note="Welcome bonus",
        reference_id="signup_bonus",
    )


__all__ = [
    "credits_auto_topup_update",
    "credits_available",
    "credits_consume",
    "credits_grant",
    "credits_refund",
    "from_micros",
    "signup_bonus_grant",
    "to_micros",
]
