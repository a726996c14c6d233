"""Plans and licence: the plan list, the subscription, changing plan, downgrade checks, plan limits
enforced where agents are created, the managed monthly-token cap, /license/status."""

from __future__ import annotations

import pytest

from agents.models import Agent
from billing.models import Subscription, UsageCapPolicy
from billing.services.plans import plan_limit_check
from core.errors import ApplicationError
from core.quotas import check_limit
from tests.core.test_errors import assert_envelope


def agents(org, n):
    for i in range(n):
        Agent.objects.create(org=org, key=f"a{i}", name=f"A{i}", model="m")


def test_plans_are_public(anon_client):
    body = anon_client.get("/api/v1/billing/plans").json()
    keys = [plan["key"] for plan in body["items"]]
    assert keys[:3] == ["community", "free", "credits"] and "pro" in keys and body["default"] == "community"
    free = next(p for p in body["items"] if p["key"] == "free")
    assert free["limits"]["max_agents"] == 3 and "features" in free


def test_an_org_without_subscription_is_on_the_default_plan(member_client):
    body = member_client.get("/api/v1/billing/subscription").json()
    assert body["plan"]["key"] == "community" and body["is_default"] is True
    assert body["payments_configured"] is False


def test_owner_changes_plan_and_others_cannot(owner_client, member_client, org):
    assert_envelope(member_client.post("/api/v1/billing/change-plan", {"plan": "pro"}, format="json"), 403)
    changed = owner_client.post("/api/v1/billing/change-plan", {"plan": "pro"}, format="json")
    assert changed.status_code == 200 and changed.json()["plan"]["key"] == "pro"
    assert Subscription.objects.get(org=org).plan == "pro"
    assert_envelope(
        owner_client.post("/api/v1/billing/change-plan", {"plan": "platinum"}, format="json"), 400
    )
    assert_envelope(owner_client.post("/api/v1/billing/change-plan", {}, format="json"), 400)


def test_a_downgrade_over_the_targets_limits_answers_409_listing_what_to_remove(owner_client, org):
    agents(org, 5)
    checked = owner_client.post("/api/v1/billing/validate-downgrade", {"plan": "free"}, format="json")
    error = assert_envelope(checked, 409, "ERR_DOWNGRADE_BLOCKED")
    assert {"resource": "agents", "limit": 3, "used": 5, "remove": 2} in error["details"]["problems"]
    assert_envelope(owner_client.post("/api/v1/billing/change-plan", {"plan": "free"}, format="json"), 409)
    assert not Subscription.objects.filter(org=org).exists()
    Agent.objects.filter(org=org, key__in=["a0", "a1"]).delete()
    ok = owner_client.post("/api/v1/billing/validate-downgrade", {"plan": "free"}, format="json")
    assert ok.status_code == 200 and ok.json() == {"plan": "free", "ok": True, "problems": []}
    assert (
        owner_client.post("/api/v1/billing/change-plan", {"plan": "free"}, format="json").status_code == 200
    )


def test_plan_limits_refuse_a_new_agent(owner_client, org):
    Subscription.objects.create(org=org, plan="free")
    agents(org, 3)
    response = owner_client.post(
        "/api/v1/agents", {"key": "one-more", "name": "X", "model": "m"}, format="json"
    )
    error = assert_envelope(response, 403, "ERR_PLAN_LIMIT")
    assert error["details"] == {"resource": "agents", "limit": 3, "used": 3, "adding": 1, "plan": "free"}
    assert Agent.objects.filter(org=org).count() == 3


def test_other_resources_are_checked_and_unknown_ones_pass(org):
    Subscription.objects.create(org=org, plan="free")
    with pytest.raises(ApplicationError) as caught:
        check_limit(org=org, resource="kb_storage_bytes", adding=60 * 1024 * 1024)
    assert caught.value.code == "ERR_PLAN_LIMIT"
    check_limit(org=org, resource="knowledge_bases")  # none yet: one fits
    check_limit(org=org, resource="spaceships", adding=10**9)
    plan_limit_check(org=org, resource="members", adding=1)  # no member yet: one fits


def test_a_plan_with_monthly_tokens_gets_a_managed_cap(owner_client, admin_client, org):
    owner_client.post("/api/v1/billing/change-plan", {"plan": "free"}, format="json")
    managed = UsageCapPolicy.objects.get(org=org, managed=True)
    assert (managed.window, managed.max_tokens) == ("month", 1_000_000)
    assert_envelope(
        admin_client.patch(f"/api/v1/usage-caps/policies/{managed.pk}", {"max_tokens": 1}, format="json"), 409
    )
    owner_client.post("/api/v1/billing/change-plan", {"plan": "community"}, format="json")
    assert not UsageCapPolicy.objects.filter(org=org, managed=True).exists()


def test_license_status_shows_tier_features_limits_and_usage(member_client, outsider_client, org):
    Subscription.objects.create(org=org, plan="free")
    agents(org, 2)
    body = member_client.get("/api/v1/license/status").json()
    assert body["tier"] == "free" and "agents" in body["features"]
    assert body["limits"]["max_agents"] == 3
    assert body["usage"]["max_agents"] == {"used": 2, "limit": 3}
    assert outsider_client.get("/api/v1/license/status").json()["tier"] == "community"


def test_billing_needs_authentication(anon_client):
    for path in ("/api/v1/billing/subscription", "/api/v1/license/status", "/api/v1/credits/balance"):
        assert anon_client.get(path).status_code in (401, 403)


def test_a_new_org_on_a_limited_default_plan_gets_its_managed_cap(
    settings, db, django_capture_on_commit_callbacks
):
    from tests.factories import OrganizationFactory

    settings.BILLING_DEFAULT_PLAN = "free"
    with django_capture_on_commit_callbacks(execute=True):
        org = OrganizationFactory()
    managed = UsageCapPolicy.objects.get(org=org, managed=True)
    assert managed.max_tokens == 1_000_000


def test_the_member_limit_refuses_an_invite_and_an_accept_past_the_plan(owner_client, org):
    from accounts.models import Membership
    from accounts.services.invites import invite_accept, invite_create
    from tests.factories import MembershipFactory, UserFactory

    invite, token = invite_create(org=org, email="late@example.com", role="MEMBER", invited_by=None)
    Subscription.objects.create(org=org, plan="free")  # 3 members
    while Membership.objects.filter(org=org).count() < 3:
        MembershipFactory(org=org)
    response = owner_client.post("/api/v1/org/invites", {"email": "fourth@example.com", "role": "MEMBER"})
    error = assert_envelope(response, 403, "ERR_PLAN_LIMIT")
    assert error["details"]["resource"] == "members"
    # An invite sent before the org filled up cannot take a fourth seat either, and stays usable.
    late = UserFactory(email="late@example.com")
    with pytest.raises(ApplicationError) as refused:
        invite_accept(token=token, user=late)
    assert refused.value.code == "ERR_PLAN_LIMIT"
    assert not Membership.objects.filter(org=org, user=late).exists()
    invite.refresh_from_db()
    assert invite.accepted_at is None
