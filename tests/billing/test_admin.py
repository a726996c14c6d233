"""The billing admin: the ledger is read-only, and the grant action writes a ledger row and an audit row."""

from __future__ import annotations

import pytest

from accounts.models import AuditLog
from billing.models import CreditAccount, CreditTransaction
from billing.services.credits import credits_grant
from tests.factories import UserFactory


@pytest.fixture
def staff_client(db, client):
    staff = UserFactory(is_staff=True, is_superuser=True)
    client.force_login(staff)
    return client


def test_the_grant_action_asks_then_grants_with_an_audit_row(staff_client, org):
    credits_grant(org=org, actor=None, amount=1)
    account = CreditAccount.objects.get(org=org)
    url = "/admin/billing/creditaccount/"
    asked = staff_client.post(url, {"action": "grant_credits", "_selected_action": [account.pk]})
    assert asked.status_code == 200 and b"Grant credits" in asked.content
    done = staff_client.post(
        url,
        {
            "action": "grant_credits",
            "_selected_action": [account.pk],
            "apply": "1",
            "amount": "7",
            "note": "sorry",
        },
    )
    assert done.status_code == 302
    account.refresh_from_db()
    assert account.balance_micros == 8_000_000
    tx = CreditTransaction.objects.filter(org=org).order_by("-created_at").first()
    assert tx.note == "sorry" and tx.actor is not None
    assert AuditLog.objects.filter(org=org, action="credits.admin_grant").count() == 2


def test_ledger_and_usage_are_read_only(staff_client, org):
    tx = credits_grant(org=org, actor=None, amount=1)
    assert staff_client.get("/admin/billing/credittransaction/").status_code == 200
    assert staff_client.get("/admin/billing/usagerecord/").status_code == 200
    assert staff_client.get("/admin/billing/credittransaction/add/").status_code == 403
    page = staff_client.get(f"/admin/billing/credittransaction/{tx.pk}/change/")
    assert page.status_code == 200 and b'name="amount_micros"' not in page.content
