"""Races on real PostgreSQL, with threads that each hold their own connection: concurrent credit
consumes, concurrent LLM calls under a cap, and one reference_id sent twice at once."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from django.db import connection, connections
from django.db.models import Sum

from agents.llm import chat
from billing.models import CreditAccount, CreditTransaction, UsageCapCounter, UsageCapPolicy, UsageRecord
from billing.services.credits import credits_consume, credits_grant
from core.errors import ApplicationError
from tests.billing.conftest import make_provider
from tests.factories import OrganizationFactory

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]

HELLO = [{"role": "user", "content": "hello there"}]


def in_threads(fn, n: int, workers: int = 25) -> list:
    """Run ``fn(i)`` n times on a pool, starting together; each thread closes its connection."""
    barrier = threading.Barrier(min(n, workers))

    def run(i):
        try:
            try:
                barrier.wait(timeout=10)
            except threading.BrokenBarrierError:
                pass
            return fn(i)
        except ApplicationError as exc:
            return exc
        finally:
            connections.close_all()

    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(run, range(n)))


def assert_cap_held(org, policy, results: list, *, cap: int) -> None:
    """Some calls ran and the rest were refused by the cap; what ran is exactly what the counter
    and the usage records book, within the cap, with nothing left held."""
    ok = [r for r in results if not isinstance(r, ApplicationError)]
    blocked = [r for r in results if isinstance(r, ApplicationError)]
    assert ok and blocked
    assert {r.code for r in blocked} == {"ERR_USAGE_CAP_EXCEEDED"}
    counter = UsageCapCounter.objects.get(policy=policy)
    spent = sum(r.prompt_tokens + r.completion_tokens for r in ok)
    assert counter.reserved_tokens == 0
    assert counter.used_tokens == spent <= cap
    recorded = UsageRecord.objects.filter(org=org, status="ok").aggregate(
        p=Sum("prompt_tokens"), c=Sum("completion_tokens")
    )
    assert recorded["p"] + recorded["c"] == spent


def test_fifty_concurrent_consumes_of_one_credit_from_thirty(db):
    assert connection.vendor == "postgresql"
    org = OrganizationFactory()
    credits_grant(org=org, actor=None, amount=30)

    results = in_threads(lambda i: credits_consume(org=org, actor=None, amount=1, action="race"), 50)

    ok = [r for r in results if not isinstance(r, ApplicationError)]
    refused = [r for r in results if isinstance(r, ApplicationError)]
    assert len(ok) == 30 and len(refused) == 20
    assert {r.code for r in refused} == {"ERR_INSUFFICIENT_CREDITS"} and {r.status_code for r in refused} == {
        402
    }
    account = CreditAccount.objects.get(org=org)
    ledger = CreditTransaction.objects.filter(org=org).aggregate(total=Sum("amount_micros"))["total"]
    assert account.balance_micros == 0 == ledger
    assert CreditTransaction.objects.filter(org=org, kind="consume").count() == 30


def test_the_same_reference_id_sent_concurrently_charges_once(db):
    org = OrganizationFactory()
    credits_grant(org=org, actor=None, amount=30)

    results = in_threads(
        lambda i: credits_consume(org=org, actor=None, amount=5, action="once", reference_id="ref-1"),
        10,
        workers=10,
    )

    assert all(not isinstance(r, ApplicationError) for r in results)
    assert len({tx.pk for tx, _ in results}) == 1
    assert sum(1 for _, created in results if created) == 1
    assert CreditAccount.objects.get(org=org).balance_micros == 25_000_000


def test_forty_concurrent_llm_calls_never_spend_past_a_cap_that_fits_ten(db, fake_upstream, settings):
    settings.OUTBOUND_ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
    settings.OPENAI_API_KEY = ""
    settings.OPENAI_BASE_URL = ""
    org = OrganizationFactory()
    make_provider(org, fake_upstream)
    # Worst case of one call: 7 estimated prompt tokens + max_tokens 10 = 17; ten fit in 170.
    policy = UsageCapPolicy.objects.create(org=org, window="day", max_tokens=170)

    results = in_threads(
        lambda i: chat(org=org, messages=HELLO, model="fake-model-1", max_tokens=10), 40, workers=20
    )

    assert_cap_held(org, policy, results, cap=170)
