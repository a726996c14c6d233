"""The signup policy, its staff setting, the waitlist, and what a finished signup does."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from django.core import mail
from django.utils import timezone

from accounts.models import (
    AuditLog,
    Invite,
    Membership,
    Organization,
    PlatformSettings,
    Role,
    SignupMode,
    WaitlistEntry,
)
from accounts.services.signup import signup_allowed, signup_complete
from tests.accounts.factories_setup import (
    key_client,
    make_invite,
    make_key,
    session_client,
    set_signup_mode,
    staff_user,
    unique_email,
)
from tests.core.test_errors import assert_envelope
from tests.factories import MembershipFactory, UserFactory

SETTINGS_URL = "/api/v1/admin/signup-settings"
JOIN_URL = "/api/v1/auth/waitlist"
LIST_URL = "/api/v1/admin/waitlist"


@pytest.fixture
def staff(db):
    return staff_user()


@pytest.fixture
def staff_client(staff):
    return session_client(staff)


# --- signup_allowed -----------------------------------------------------------------------------


@pytest.mark.django_db
def test_default_mode_is_invite_only_and_refuses_without_invite():
    assert not PlatformSettings.objects.exists()
    assert signup_allowed(invite_token=None) is False


@pytest.mark.django_db
def test_open_mode_lets_anyone_sign_up():
    set_signup_mode(SignupMode.OPEN)
    assert signup_allowed(invite_token=None) is True


@pytest.mark.django_db
def test_closed_mode_refuses_even_with_an_invite(org, owner):
    set_signup_mode(SignupMode.CLOSED)
    _invite, token = make_invite(org=org, email=unique_email(), invited_by=owner)
    assert signup_allowed(invite_token=token) is False


@pytest.mark.django_db
@pytest.mark.parametrize("mode", [SignupMode.INVITE_ONLY, SignupMode.WAITLIST])
def test_invite_modes_need_a_pending_invite(mode, org, owner):
    set_signup_mode(mode)
    _invite, token = make_invite(org=org, email=unique_email(), invited_by=owner)
    _platform_invite, platform_token = make_invite(org=None, email=unique_email(), invited_by=None)
    assert signup_allowed(invite_token=None) is False
    assert signup_allowed(invite_token="not-a-token") is False
    assert signup_allowed(invite_token=token) is True
    assert signup_allowed(invite_token=platform_token) is True


@pytest.mark.django_db
@pytest.mark.parametrize(
    "spoil",
    [
        {"expires_at": timezone.now() - timedelta(seconds=1)},
        {"accepted_at": timezone.now()},
        {"revoked_at": timezone.now()},
    ],
    ids=["expired", "used", "revoked"],
)
def test_unusable_invite_does_not_open_signup(spoil, org, owner):
    set_signup_mode(SignupMode.INVITE_ONLY)
    invite, token = make_invite(org=org, email=unique_email(), invited_by=owner)
    Invite.objects.filter(pk=invite.pk).update(**spoil)
    assert signup_allowed(invite_token=token) is False


# --- admin/signup-settings ----------------------------------------------------------------------


@pytest.mark.django_db
def test_staff_reads_signup_settings(staff_client):
    response = staff_client.get(SETTINGS_URL)
    assert response.status_code == 200
    assert response.json() == {"signup_mode": "invite_only"}


@pytest.mark.django_db
def test_staff_changes_signup_mode_and_it_is_audited(staff_client, staff):
    response = staff_client.put(SETTINGS_URL, {"signup_mode": "open"}, format="json")
    assert response.status_code == 200
    assert response.json() == {"signup_mode": "open"}
    assert PlatformSettings.objects.get(pk=1).signup_mode == SignupMode.OPEN
    row = AuditLog.objects.get(action="signup_settings.updated")
    assert row.actor == staff
    assert row.changes == {"signup_mode": ["invite_only", "open"]}
    assert signup_allowed(invite_token=None) is True


@pytest.mark.django_db
def test_unknown_signup_mode_is_a_validation_error(staff_client):
    response = staff_client.put(SETTINGS_URL, {"signup_mode": "anyone"}, format="json")
    error = assert_envelope(response, 400, "ERR_VALIDATION")
    assert "signup_mode" in error["details"]["fields"]


@pytest.mark.django_db
def test_signup_settings_need_staff(owner_client):
    assert_envelope(owner_client.get(SETTINGS_URL), 403, "ERR_STAFF_ONLY")
    response = owner_client.put(SETTINGS_URL, {"signup_mode": "open"}, format="json")
    assert_envelope(response, 403, "ERR_STAFF_ONLY")
    assert not PlatformSettings.objects.filter(signup_mode=SignupMode.OPEN).exists()


@pytest.mark.django_db
def test_signup_settings_need_a_session(anon_client, org):
    assert_envelope(anon_client.get(SETTINGS_URL), 401)
    admin = staff_user()
    MembershipFactory(org=org, user=admin, role=Role.OWNER)
    client = key_client(make_key(org=org, user=admin))
    assert_envelope(client.get(SETTINGS_URL), 403, "ERR_SESSION_REQUIRED")


@pytest.mark.django_db
def test_signup_settings_writes_need_the_csrf_token(staff):
    from rest_framework.test import APIClient

    client = APIClient(enforce_csrf_checks=True)
    client.force_login(staff)
    assert_envelope(client.put(SETTINGS_URL, {"signup_mode": "open"}, format="json"), 403)


# --- auth/waitlist ------------------------------------------------------------------------------


@pytest.mark.django_db
def test_joining_the_waitlist_creates_an_entry(anon_client):
    set_signup_mode(SignupMode.WAITLIST)
    response = anon_client.post(
        JOIN_URL, {"email": "Wait@Example.com", "name": "Wai", "note": "please"}, format="json"
    )
    assert response.status_code == 201, response.content
    body = response.json()
    entry = WaitlistEntry.objects.get()
    assert body["id"] == str(entry.pk)
    assert body["email"] == "wait@example.com"
    assert body["status"] == "pending"
    assert "note" not in body and "name" not in body
    assert (entry.name, entry.note) == ("Wai", "please")
    assert AuditLog.objects.filter(action="waitlist.joined", entity_id=str(entry.pk)).exists()


@pytest.mark.django_db
def test_joining_twice_returns_the_first_entry(anon_client):
    set_signup_mode(SignupMode.WAITLIST)
    first = anon_client.post(JOIN_URL, {"email": "w@example.com"}, format="json")
    again = anon_client.post(JOIN_URL, {"email": "W@EXAMPLE.com", "name": "x"}, format="json")
    assert again.status_code == 200
    assert again.json()["id"] == first.json()["id"]
    assert WaitlistEntry.objects.count() == 1


@pytest.mark.django_db
@pytest.mark.parametrize("mode", [SignupMode.OPEN, SignupMode.INVITE_ONLY, SignupMode.CLOSED])
def test_waitlist_is_closed_in_other_modes(anon_client, mode):
    set_signup_mode(mode)
    assert_envelope(
        anon_client.post(JOIN_URL, {"email": "w@example.com"}, format="json"), 409, "ERR_WAITLIST_CLOSED"
    )
    assert not WaitlistEntry.objects.exists()


@pytest.mark.django_db
@pytest.mark.parametrize(
    "body, field",
    [({}, "email"), ({"email": "nope"}, "email"), ({"email": "a@example.com", "note": "x" * 1001}, "note")],
)
def test_waitlist_input_is_validated(anon_client, body, field):
    set_signup_mode(SignupMode.WAITLIST)
    error = assert_envelope(anon_client.post(JOIN_URL, body, format="json"), 400, "ERR_VALIDATION")
    assert field in error["details"]["fields"]


# --- admin/waitlist -----------------------------------------------------------------------------


def _entries(*statuses: str) -> list[WaitlistEntry]:
    return [WaitlistEntry.objects.create(email=unique_email("w"), status=status) for status in statuses]


@pytest.mark.django_db
def test_staff_lists_the_waitlist_paginated(staff_client):
    _entries("pending", "pending", "approved", "rejected")
    response = staff_client.get(LIST_URL, {"limit": 2})
    assert response.status_code == 200
    body = response.json()
    assert body["total"] == 4 and body["limit"] == 2 and body["offset"] == 0
    assert len(body["items"]) == 2
    assert {"id", "email", "name", "note", "status", "decided_by", "invite"} <= set(body["items"][0])


@pytest.mark.django_db
def test_staff_filters_the_waitlist_by_status(staff_client):
    pending, _approved = _entries("pending", "approved")
    body = staff_client.get(LIST_URL, {"status": "pending"}).json()
    assert [item["id"] for item in body["items"]] == [str(pending.pk)]


@pytest.mark.django_db
def test_unknown_status_filter_is_a_validation_error(staff_client):
    assert_envelope(staff_client.get(LIST_URL, {"status": "maybe"}), 400, "ERR_VALIDATION")


@pytest.mark.django_db
def test_waitlist_admin_needs_staff(owner_client, anon_client):
    (entry,) = _entries("pending")
    assert_envelope(owner_client.get(LIST_URL), 403, "ERR_STAFF_ONLY")
    assert_envelope(owner_client.post(f"{LIST_URL}/{entry.pk}/approve"), 403, "ERR_STAFF_ONLY")
    assert_envelope(owner_client.post(f"{LIST_URL}/{entry.pk}/reject"), 403, "ERR_STAFF_ONLY")
    assert_envelope(anon_client.get(LIST_URL), 401)
    assert_envelope(anon_client.post(f"{LIST_URL}/{entry.pk}/approve"), 401)
    entry.refresh_from_db()
    assert entry.status == "pending"


@pytest.mark.django_db
def test_approving_emails_a_platform_invite(staff_client, staff, django_capture_on_commit_callbacks):
    (entry,) = _entries("pending")
    with django_capture_on_commit_callbacks(execute=True):
        response = staff_client.post(f"{LIST_URL}/{entry.pk}/approve")
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["status"] == "approved"
    assert body["decided_by"]["email"] == staff.email
    entry.refresh_from_db()
    assert entry.status == WaitlistEntry.Status.APPROVED
    assert entry.decided_by == staff and entry.decided_at is not None
    assert entry.invite is not None and entry.invite.org is None
    assert entry.invite.email == entry.email
    assert body["invite"] == str(entry.invite_id)
    assert [message.to for message in mail.outbox] == [[entry.email]]
    assert "/invites/" in mail.outbox[0].body
    assert AuditLog.objects.filter(action="waitlist.approved", actor=staff).exists()


@pytest.mark.django_db
def test_rejecting_sends_nothing(staff_client, staff, django_capture_on_commit_callbacks):
    (entry,) = _entries("pending")
    with django_capture_on_commit_callbacks(execute=True):
        response = staff_client.post(f"{LIST_URL}/{entry.pk}/reject")
    assert response.status_code == 200
    assert response.json()["status"] == "rejected"
    entry.refresh_from_db()
    assert entry.status == WaitlistEntry.Status.REJECTED and entry.invite is None
    assert mail.outbox == []
    assert AuditLog.objects.filter(action="waitlist.rejected", actor=staff).exists()


@pytest.mark.django_db
@pytest.mark.parametrize(
    "first, second", [("approve", "approve"), ("approve", "reject"), ("reject", "approve")]
)
def test_deciding_twice_is_a_conflict(staff_client, first, second):
    (entry,) = _entries("pending")
    assert staff_client.post(f"{LIST_URL}/{entry.pk}/{first}").status_code == 200
    assert_envelope(staff_client.post(f"{LIST_URL}/{entry.pk}/{second}"), 409, "ERR_ALREADY_DECIDED")
    assert Invite.objects.count() == (1 if first == "approve" else 0)


@pytest.mark.django_db
def test_deciding_an_unknown_entry_is_404(staff_client):
    assert_envelope(staff_client.post(f"{LIST_URL}/{uuid.uuid4()}/approve"), 404)
    assert_envelope(staff_client.post(f"{LIST_URL}/{uuid.uuid4()}/reject"), 404)


# --- signup_complete ----------------------------------------------------------------------------


@pytest.mark.django_db
def test_open_signup_without_invite_gets_an_own_org():
    set_signup_mode(SignupMode.OPEN)
    user = UserFactory(display_name="Ada")
    result = signup_complete(user=user, invite_token=None)
    org = result["created"]
    assert org.name == "Ada's org"
    assert Membership.objects.get(user=user).role == Role.OWNER
    user.refresh_from_db()
    assert user.active_org == org
    assert AuditLog.objects.filter(action="user.signed_up", actor=user).exists()


@pytest.mark.django_db
def test_own_org_is_named_after_the_email_without_a_display_name():
    set_signup_mode(SignupMode.OPEN)
    user = UserFactory(display_name="", email="solo@example.com")
    assert signup_complete(user=user, invite_token=None)["created"].name == "solo@example.com's org"


@pytest.mark.django_db
@pytest.mark.parametrize("mode", [SignupMode.INVITE_ONLY, SignupMode.WAITLIST, SignupMode.CLOSED])
def test_without_invite_other_modes_give_no_org(mode):
    set_signup_mode(mode)
    user = UserFactory()
    assert signup_complete(user=user, invite_token=None) == {"joined": None, "created": None}
    assert not Membership.objects.filter(user=user).exists()


@pytest.mark.django_db
@pytest.mark.parametrize("mode", [SignupMode.OPEN, SignupMode.INVITE_ONLY])
def test_org_invite_joins_the_invited_org_instead(mode, org, owner):
    set_signup_mode(mode)
    user = UserFactory()
    invite, token = make_invite(org=org, email=user.email, role=Role.ADMIN, invited_by=owner)
    result = signup_complete(user=user, invite_token=token)
    assert result == {"joined": org, "created": None}
    assert Membership.objects.get(user=user).role == Role.ADMIN
    invite.refresh_from_db()
    assert invite.accepted_by == user


@pytest.mark.django_db
def test_platform_invite_gives_an_own_org():
    set_signup_mode(SignupMode.WAITLIST)
    user = UserFactory()
    invite, token = make_invite(org=None, email=user.email)
    result = signup_complete(user=user, invite_token=token)
    assert result["joined"] is None and result["created"] is not None
    invite.refresh_from_db()
    assert invite.accepted_at is not None


@pytest.mark.django_db
def test_invite_for_another_address_is_not_accepted(org, owner):
    set_signup_mode(SignupMode.OPEN)
    user = UserFactory()
    invite, token = make_invite(org=org, email="someone-else@example.com", invited_by=owner)
    result = signup_complete(user=user, invite_token=token)
    assert result["joined"] is None
    assert result["created"] is not None  # open mode: an own org instead
    assert not Membership.objects.filter(org=org, user=user).exists()
    invite.refresh_from_db()
    assert invite.accepted_at is None
    assert Organization.objects.count() == 2
