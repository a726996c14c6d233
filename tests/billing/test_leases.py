"""Spend-cap leases on PostgreSQL: calls take their worst case from a lease in memory, the flush
books what they really spent, a lease is returned whole, and the caps hold under concurrency."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.db import connection
from django.utils import timezone

from agents.llm import chat
from billing.models import UsageCapCounter, UsageCapEvent, UsageCapPolicy, UsageReservation
from billing.services import leases
from billing.services.caps import (
    reservations_expire,
    usage_cap_policy_update,
    usage_reserve,
    usage_reserve_in_memory,
    usage_settle,
)
from core.errors import ApplicationError
from tests.billing.conftest import make_provider
from tests.billing.test_caps import call
from tests.billing.test_concurrency import HELLO, assert_cap_held, in_threads
from tests.factories import OrganizationFactory

pytestmark = pytest.mark.postgres


@pytest.fixture(autouse=True)
def _leases_on(settings):
    if connection.vendor != "postgresql":
        pytest.skip("leases are PostgreSQL's")
    settings.USAGE_CAP_LEASE_CALLS = 4
    settings.USAGE_CAP_LEASE_BACKGROUND = False
    leases.leases_forget()
    yield
    leases.leases_forget()


def used(n: int) -> dict:
    return {"prompt_tokens": n, "completion_tokens": 0, "estimated": False}


def counter_of(policy) -> UsageCapCounter:
    return UsageCapCounter.objects.get(policy=policy)


def test_calls_take_from_a_lease_in_memory_and_the_flush_books_what_they_spent(
    org, django_assert_num_queries
):
    policy = UsageCapPolicy.objects.create(org=org, window="day", max_tokens=10_000)
    first = usage_reserve(call(org))  # worst case 200: the lease holds 4 x 200
    assert first["lease"] is not None
    assert (counter_of(policy).reserved_tokens, UsageReservation.objects.get().tokens) == (800, 800)
    with django_assert_num_queries(0):
        second = usage_reserve_in_memory(call(org))
        third = usage_reserve_in_memory(call(org))
        fourth = usage_reserve_in_memory(call(org))
        assert usage_reserve_in_memory(call(org)) is None  # four calls in flight: the lease is full
    assert second["lease"] is third["lease"] is fourth["lease"] is first["lease"]

    usage_settle(call(org), used(50), first)
    usage_settle(call(org), used(300), second)  # more than its worst case: booked in full
    usage_settle(call(org), None, third)  # failed: spends nothing
    usage_settle(call(org), None, third)  # settling twice books once
    leases.leases_flush()
    row = counter_of(policy)
    assert (row.used_tokens, row.reserved_tokens) == (350, 800 - 50 - 200)
    assert UsageReservation.objects.get().tokens == 550

    usage_settle(call(org), used(100), fourth)
    leases.leases_flush(return_all=True)
    row = counter_of(policy)
    assert (row.used_tokens, row.reserved_tokens) == (450, 0)
    assert UsageReservation.objects.get().status == UsageReservation.Status.SETTLED
    assert UsageCapEvent.objects.filter(org=org, decision="allow").count() == 4


def test_near_the_cap_no_lease_fits_and_calls_reserve_one_by_one(org):
    policy = UsageCapPolicy.objects.create(org=org, window="day", max_tokens=500)
    usage_settle(call(org), None, usage_reserve(call(org)))  # makes the window's counter
    reservation = usage_reserve(call(org))
    assert reservation.get("lease") is None
    assert counter_of(policy).reserved_tokens == 200
    usage_reserve(call(org))
    with pytest.raises(ApplicationError) as refused:
        usage_reserve(call(org))  # 3 x 200 > 500
    assert refused.value.code == "ERR_USAGE_CAP_EXCEEDED"


def test_a_changed_cap_retires_the_lease_and_it_is_returned_when_its_calls_settle(org):
    policy = UsageCapPolicy.objects.create(org=org, window="day", max_tokens=10_000)
    old = usage_reserve(call(org))
    usage_cap_policy_update(policy=policy, actor=None, max_tokens=20_000)
    new = usage_reserve(call(org))  # the new limits: a new lease
    assert new["lease"] is not old["lease"] and old["lease"].retired
    leases.leases_flush()
    assert counter_of(policy).reserved_tokens == 1600  # the old one still has a call in flight
    usage_settle(call(org), used(10), old)
    leases.leases_flush()
    assert UsageReservation.objects.get(pk=old["lease"].reservation_id).status == "settled"
    assert counter_of(policy).reserved_tokens == 800
    assert counter_of(policy).used_tokens == 10


def test_the_lease_of_a_dead_process_expires_and_a_late_flush_only_adds_the_spend(org):
    policy = UsageCapPolicy.objects.create(org=org, window="day", max_tokens=10_000)
    reservation = usage_reserve(call(org))
    UsageReservation.objects.update(expires_at=timezone.now() - timedelta(seconds=1))
    assert reservations_expire() == 1
    assert counter_of(policy).reserved_tokens == 0
    usage_settle(call(org), used(70), reservation)
    leases.leases_flush(return_all=True)
    row = counter_of(policy)
    assert (row.used_tokens, row.reserved_tokens) == (70, 0)


@pytest.mark.django_db(transaction=True)
def test_forty_concurrent_calls_on_leases_never_spend_past_a_cap_that_fits_ten(db, fake_upstream, settings):
    settings.OUTBOUND_ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
    settings.OPENAI_API_KEY = ""
    settings.OPENAI_BASE_URL = ""
    settings.USAGE_CAP_LEASE_BACKGROUND = True  # the flusher thread, as in production
    org = OrganizationFactory()
    make_provider(org, fake_upstream)
    # Worst case of one call: 7 estimated prompt tokens + max_tokens 10 = 17; a lease of 4 is 68.
    policy = UsageCapPolicy.objects.create(org=org, window="day", max_tokens=170)

    # Eight at a time: with the flusher thread they stay inside the connection pool (10 per process).
    results = in_threads(
        lambda i: chat(org=org, messages=HELLO, model="fake-model-1", max_tokens=10), 40, workers=8
    )
    leases.leases_flush(return_all=True)

    assert_cap_held(org, policy, results, cap=170)
    assert not UsageReservation.objects.filter(org=org, status="held").exists()


def test_a_lease_that_runs_full_is_followed_by_a_bigger_one(org):
    policy = UsageCapPolicy.objects.create(org=org, window="day", max_tokens=100_000)
    first = usage_reserve(call(org))
    held = [first] + [usage_reserve_in_memory(call(org)) for _ in range(3)]  # 4 of 4 in flight
    assert usage_reserve_in_memory(call(org)) is None
    bigger = usage_reserve(call(org))  # the database path: a lease twice the size
    assert bigger["lease"].calls == 8 and first["lease"].retired
    for reservation in held:
        usage_settle(call(org), used(1), reservation)
    usage_settle(call(org), used(1), bigger)
    leases.leases_flush(return_all=True)
    row = counter_of(policy)
    assert (row.used_tokens, row.reserved_tokens) == (5, 0)


@pytest.mark.django_db(transaction=True)
def test_calls_arriving_together_share_one_acquisition_instead_of_each_reserving_a_lease(db):
    org = OrganizationFactory()
    UsageCapPolicy.objects.create(org=org, window="day", max_tokens=1_000_000)
    usage_settle(call(org), None, usage_reserve(call(org)))  # the first lease (then returned)
    leases.leases_flush(return_all=True)
    before = UsageReservation.objects.filter(org=org).count()

    results = in_threads(lambda i: usage_reserve(call(org)), 10, workers=10)  # no lease in memory

    assert all(not isinstance(r, ApplicationError) and r["lease"] is not None for r in results)
    # 4 fit the first lease; the fifth finds it full and takes a lease twice the size.
    assert UsageReservation.objects.filter(org=org).count() - before == 2
    for reservation in results:
        usage_settle(call(org), used(1), reservation)
    leases.leases_flush(return_all=True)
    assert UsageCapCounter.objects.get(org=org).reserved_tokens == 0
