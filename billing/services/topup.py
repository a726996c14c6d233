"""Auto top-up: when what an org can spend falls under its threshold, its saved card is charged
(``payments.auto_topup_charge``, in a task) and the credits are added when the charge succeeds.

Only with a payment provider configured and a customer saved by an earlier credit checkout; the
settings alone are stored either way. Kept apart from the ledger and the caps so that both can
call it from the transaction that lowered the balance.
"""

from __future__ import annotations

import logging

from django.conf import settings
from django.db import transaction

from billing.models import CreditAccount

logger = logging.getLogger(__name__)


def auto_topup_due(account: CreditAccount) -> bool:
    """Auto top-up is on, a payment provider and a saved customer are there, and what the org can
    spend (balance less holds) is under its threshold."""
    return bool(
        account.auto_topup_enabled
        and account.auto_topup_amount_micros > 0
        and account.provider_customer_id
        and getattr(settings, "STRIPE_SECRET_KEY", "")
        and account.balance_micros - account.held_micros < account.auto_topup_threshold_micros
    )


def auto_topup_schedule_if_due(account: CreditAccount) -> None:
    """Call in the transaction that lowered the balance: once it commits, a task charges the saved
    card (``billing.tasks.credits_auto_topup``), so no request or LLM call waits for the provider."""
    if not auto_topup_due(account):
        return
    org_id = str(account.org_id)

    def enqueue() -> None:
        from billing.tasks import credits_auto_topup

        try:
            credits_auto_topup.delay(org_id)
        except Exception:  # the broker is down: the next consume tries again
            logger.exception("could not enqueue the auto top-up of org %s", org_id)

    transaction.on_commit(enqueue)
