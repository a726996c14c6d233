"""The Django admin of `accounts`: every model's pages load for staff, secrets never show,
history is read-only, and admin actions go through the audited services."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.contrib.auth.models import Permission
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from accounts import keys
from accounts.models import (
    ApiKey,
    ApiKeyUsage,
    AuditLog,
    Group,
    GroupMembership,
    Invite,
    Membership,
    Organization,
    PlatformSettings,
    Role,
    SecurityEvent,
    SignupMode,
    User,
    WaitlistEntry,
)
from accounts.services.audit import audit_record, security_event_record
from tests.factories import MembershipFactory, UserFactory

pytestmark = [pytest.mark.django_db, pytest.mark.postgres]

HISTORY_MODELS = [AuditLog, SecurityEvent, ApiKeyUsage]
# The (read-only) membership inline of the user and org pages still posts a management form.
NO_INLINE_ROWS = {"memberships-TOTAL_FORMS": "0", "memberships-INITIAL_FORMS": "0"}


def url(model, view: str, *args) -> str:
    return reverse(f"admin:accounts_{model._meta.model_name}_{view}", args=args)


@pytest.fixture
def superuser(db):
    return User.objects.create_superuser(email="ops@example.com", password="pw-Ops-123")


@pytest.fixture
def staff_client(superuser):
    client = Client()
    client.force_login(superuser)
    return client


@pytest.fixture
def rows(org, owner, member):
    """One row of every accounts model."""
    group = Group.objects.create(org=org, name="Team")
    key = ApiKey.objects.create(
        org=org,
        user=owner,
        kind=ApiKey.Kind.PERSONAL,
        name="laptop",
        public_id=keys.new_public_id(),
        secret_hash="a" * 64,
        previous_secret_hash="b" * 64,
    )
    return {
        User: owner,
        Organization: org,
        Membership: Membership.objects.get(org=org, user=member),
        Group: group,
        GroupMembership: GroupMembership.objects.create(group=group, user=member),
        Invite: Invite.objects.create(
            org=org,
            email="new@example.com",
            token_hash="c" * 64,
            invited_by=owner,
            expires_at=timezone.now() + timedelta(days=7),
        ),
        PlatformSettings: PlatformSettings.objects.create(pk=1, signup_mode=SignupMode.WAITLIST),
        WaitlistEntry: WaitlistEntry.objects.create(email="wait@example.com", name="Wai Ting"),
        ApiKey: key,
        ApiKeyUsage: ApiKeyUsage.objects.create(key=key, method="GET", path="/api/v1/org", status=200),
        AuditLog: audit_record(org=org, actor=owner, action="group.created", entity=group),
        SecurityEvent: security_event_record(
            kind=SecurityEvent.Kind.LOGIN_FAILED, org=org, user=owner, identifier=owner.email
        ),
    }


ALL_MODELS = [
    User,
    Organization,
    Membership,
    Group,
    GroupMembership,
    Invite,
    PlatformSettings,
    WaitlistEntry,
    ApiKey,
    ApiKeyUsage,
    AuditLog,
    SecurityEvent,
]


def test_every_accounts_model_is_registered():
    from django.apps import apps
    from django.contrib import admin

    for model in apps.get_app_config("accounts").get_models():
        assert admin.site.is_registered(model), model


@pytest.mark.parametrize("model", ALL_MODELS, ids=lambda m: m.__name__)
def test_changelist_search_and_change_pages_load(staff_client, rows, model):
    assert staff_client.get(url(model, "changelist")).status_code == 200
    assert staff_client.get(url(model, "changelist"), {"q": "example"}).status_code == 200
    assert staff_client.get(url(model, "change", rows[model].pk)).status_code == 200


@pytest.mark.parametrize("model", [User, Organization, Membership, Group], ids=lambda m: m.__name__)
def test_add_pages_load_where_adding_is_allowed(staff_client, model):
    assert staff_client.get(url(model, "add")).status_code == 200


@pytest.mark.parametrize(
    "model",
    [*HISTORY_MODELS, ApiKey, Invite, WaitlistEntry, GroupMembership, PlatformSettings],
    ids=lambda m: m.__name__,
)
def test_rows_made_elsewhere_cannot_be_added_here(staff_client, rows, model):
    assert staff_client.get(url(model, "add")).status_code == 403


def test_users_are_found_by_email(staff_client, owner, member):
    response = staff_client.get(url(User, "changelist"), {"q": owner.email})
    assert owner.email in response.content.decode()
    assert member.email not in response.content.decode()


def test_memberships_filter_by_role(staff_client, org, owner, member):
    page = staff_client.get(url(Membership, "changelist"), {"role__exact": Role.OWNER}).content.decode()
    assert owner.email in page and member.email not in page


def test_api_key_pages_show_the_prefix_never_the_hashes(staff_client, rows):
    key = rows[ApiKey]
    for page in (url(ApiKey, "changelist"), url(ApiKey, "change", key.pk)):
        html = staff_client.get(page).content.decode()
        assert f"pat_{key.public_id}" in html
        assert "a" * 64 not in html and "b" * 64 not in html
        assert "secret_hash" not in html


@pytest.mark.parametrize(
    "query, shown",
    [({"kind__exact": "personal"}, True), ({"kind__exact": "service"}, False), ({"revoked": "yes"}, False)],
)
def test_api_keys_filter_by_kind_and_revocation(staff_client, rows, query, shown):
    html = staff_client.get(url(ApiKey, "changelist"), query).content.decode()
    assert (rows[ApiKey].public_id in html) is shown


def test_invite_pages_never_show_the_token_hash(staff_client, rows):
    for page in (url(Invite, "changelist"), url(Invite, "change", rows[Invite].pk)):
        html = staff_client.get(page).content.decode()
        assert "c" * 64 not in html and "token_hash" not in html


@pytest.mark.parametrize("model", HISTORY_MODELS, ids=lambda m: m.__name__)
def test_history_cannot_be_edited(staff_client, rows, model):
    row = rows[model]
    response = staff_client.post(url(model, "change", row.pk), {"action": "tampered"})
    assert response.status_code == 403
    assert model.objects.filter(pk=row.pk).exists()


@pytest.mark.parametrize("model", HISTORY_MODELS, ids=lambda m: m.__name__)
def test_history_can_be_deleted_by_superusers_only(rows, model):
    row = rows[model]
    staff = UserFactory(is_staff=True)
    staff.user_permissions.set(Permission.objects.filter(content_type__app_label="accounts"))
    client = Client()
    client.force_login(staff)
    assert client.get(url(model, "change", row.pk)).status_code == 200  # may look
    assert client.post(url(model, "delete", row.pk), {"post": "yes"}).status_code == 403
    superuser = User.objects.create_superuser(email="root@example.com", password="pw-Root-123")
    client.force_login(superuser)
    assert client.post(url(model, "delete", row.pk), {"post": "yes"}).status_code == 302
    assert not model.objects.filter(pk=row.pk).exists()


# --- Actions -----------------------------------------------------------------------------------------


def test_revoke_action_revokes_keys_and_audits_it(staff_client, superuser, rows):
    key = rows[ApiKey]
    response = staff_client.post(
        url(ApiKey, "changelist"), {"action": "revoke_keys", "_selected_action": [str(key.pk)]}
    )
    assert response.status_code == 302
    key.refresh_from_db()
    assert key.revoked_at is not None and key.is_active is False
    row = AuditLog.objects.get(action="api_key.revoked")
    assert row.actor == superuser and row.org == key.org and row.entity_id == str(key.pk)


def test_revoke_action_needs_the_change_permission(rows):
    staff = UserFactory(is_staff=True)
    staff.user_permissions.set(Permission.objects.filter(codename="view_apikey"))
    client = Client()
    client.force_login(staff)
    key = rows[ApiKey]
    client.post(url(ApiKey, "changelist"), {"action": "revoke_keys", "_selected_action": [str(key.pk)]})
    key.refresh_from_db()
    assert key.revoked_at is None


def test_revoke_invites_action(staff_client, superuser, rows):
    invite = rows[Invite]
    staff_client.post(
        url(Invite, "changelist"), {"action": "revoke_invites", "_selected_action": [str(invite.pk)]}
    )
    invite.refresh_from_db()
    assert invite.revoked_at is not None
    assert AuditLog.objects.filter(action="invite.revoked", actor=superuser).exists()


@pytest.mark.parametrize("action, status", [("approve_entries", "approved"), ("reject_entries", "rejected")])
def test_waitlist_actions_decide_and_audit(staff_client, superuser, rows, action, status):
    entry = rows[WaitlistEntry]
    staff_client.post(
        url(WaitlistEntry, "changelist"), {"action": action, "_selected_action": [str(entry.pk)]}
    )
    entry.refresh_from_db()
    assert entry.status == status and entry.decided_by == superuser
    assert AuditLog.objects.filter(action=f"waitlist.{status}", actor=superuser).exists()
    if status == "approved":
        assert entry.invite is not None and entry.invite.org is None


def test_deciding_twice_reports_an_error_instead_of_failing(staff_client, rows):
    entry = rows[WaitlistEntry]
    data = {"action": "reject_entries", "_selected_action": [str(entry.pk)]}
    staff_client.post(url(WaitlistEntry, "changelist"), data)
    response = staff_client.post(url(WaitlistEntry, "changelist"), data, follow=True)
    assert response.status_code == 200
    assert "already" in response.content.decode()


# --- Writes that keep the platform's rules -----------------------------------------------------------


def test_platform_settings_change_goes_through_the_audited_service(staff_client, superuser, rows):
    response = staff_client.post(url(PlatformSettings, "change", 1), {"signup_mode": SignupMode.OPEN})
    assert response.status_code == 302
    assert PlatformSettings.objects.get().signup_mode == SignupMode.OPEN
    row = AuditLog.objects.get(action="signup_settings.updated")
    assert row.actor == superuser and row.changes == {"signup_mode": ["waitlist", "open"]}


def test_platform_settings_cannot_be_deleted(staff_client, rows):
    assert staff_client.post(url(PlatformSettings, "delete", 1), {"post": "yes"}).status_code == 403
    assert PlatformSettings.objects.exists()


def test_platform_settings_can_be_added_while_missing(staff_client, db):
    assert staff_client.get(url(PlatformSettings, "add")).status_code == 200
    staff_client.post(url(PlatformSettings, "add"), {"signup_mode": SignupMode.CLOSED})
    assert PlatformSettings.objects.get().signup_mode == SignupMode.CLOSED


def test_role_change_is_audited(staff_client, superuser, org, member):
    membership = Membership.objects.get(org=org, user=member)
    response = staff_client.post(url(Membership, "change", membership.pk), {"role": Role.ADMIN})
    assert response.status_code == 302
    membership.refresh_from_db()
    assert membership.role == Role.ADMIN
    assert AuditLog.objects.get(action="member.role_changed").actor == superuser


def test_the_last_owner_cannot_be_demoted_or_removed(staff_client, org, owner):
    membership = Membership.objects.get(org=org, user=owner)
    response = staff_client.post(url(Membership, "change", membership.pk), {"role": Role.MEMBER})
    assert response.status_code == 200  # the form again, with the error
    assert "last owner" in response.content.decode()
    assert staff_client.post(url(Membership, "delete", membership.pk), {"post": "yes"}).status_code == 403
    membership.refresh_from_db()
    assert membership.role == Role.OWNER


def test_removing_a_member_goes_through_the_service(staff_client, superuser, org, member):
    membership = Membership.objects.get(org=org, user=member)
    assert staff_client.post(url(Membership, "delete", membership.pk), {"post": "yes"}).status_code == 302
    assert not Membership.objects.filter(pk=membership.pk).exists()
    assert AuditLog.objects.get(action="member.removed").actor == superuser


def _group_form(group, *users, name=None) -> dict:
    data = {
        "org": str(group.org_id),
        "name": name or group.name,
        "description": "",
        "group_memberships-TOTAL_FORMS": str(len(users)),
        "group_memberships-INITIAL_FORMS": "0",
        "group_memberships-MIN_NUM_FORMS": "0",
        "group_memberships-MAX_NUM_FORMS": "1000",
    }
    for n, user in enumerate(users):
        data[f"group_memberships-{n}-user"] = str(user.pk)
        data[f"group_memberships-{n}-group"] = str(group.pk)
    return data


def test_group_inline_adds_members_of_the_org_and_audits_it(staff_client, superuser, org, member):
    group = Group.objects.create(org=org, name="Ops")
    response = staff_client.post(url(Group, "change", group.pk), _group_form(group, member))
    assert response.status_code == 302, response.content.decode()[:2000]
    assert GroupMembership.objects.filter(group=group, user=member).exists()
    assert AuditLog.objects.get(action="group.member_added").actor == superuser


def test_group_inline_refuses_people_outside_the_org(staff_client, org, outsider):
    group = Group.objects.create(org=org, name="Ops")
    response = staff_client.post(url(Group, "change", group.pk), _group_form(group, outsider))
    assert response.status_code == 200
    assert "Not a member" in response.content.decode()
    assert not GroupMembership.objects.filter(group=group).exists()


def test_admin_edits_of_an_org_show_in_its_activity(staff_client, superuser, org, owner):
    response = staff_client.post(
        url(Organization, "change", org.pk), {"name": "Renamed", "slug": org.slug, **NO_INLINE_ROWS}
    )
    assert response.status_code == 302, response.content.decode()[:2000]
    row = AuditLog.objects.get(action="organization.admin_updated")
    assert row.org == org and row.actor == superuser
    assert row.changes == {"name": [org.name, "Renamed"]}
    items = Client()
    items.force_login(owner)
    body = items.get("/api/v1/activity", {"action": "organization.*"}).json()
    assert [item["action"] for item in body["items"]] == ["organization.admin_updated"]


def test_admin_created_users_are_audited_without_their_password(staff_client, superuser):
    response = staff_client.post(
        url(User, "add"),
        {
            "email": "fresh@example.com",
            "password1": "pw-Fresh-12345",
            "password2": "pw-Fresh-12345",
            **NO_INLINE_ROWS,
        },
    )
    assert response.status_code == 302, response.content.decode()[:2000]
    row = AuditLog.objects.get(action="user.admin_created")
    assert row.org is None and row.actor == superuser
    assert row.after["email"] == "fresh@example.com"
    assert "password" not in row.after


def test_membership_added_in_admin_is_audited(staff_client, superuser, org):
    newcomer = UserFactory()
    response = staff_client.post(
        url(Membership, "add"), {"org": str(org.pk), "user": str(newcomer.pk), "role": Role.VIEWER}
    )
    assert response.status_code == 302, response.content.decode()[:2000]
    assert Membership.objects.get(org=org, user=newcomer).role == Role.VIEWER
    assert AuditLog.objects.get(action="membership.admin_created").org == org


def test_non_staff_cannot_open_the_admin(member):
    client = Client()
    client.force_login(member)
    assert client.get(url(ApiKey, "changelist")).status_code == 302  # to the admin login


def test_memberships_of_another_org_are_listed_for_staff(staff_client, outsider, other_org):
    MembershipFactory(org=other_org)
    assert outsider.email in staff_client.get(url(Membership, "changelist")).content.decode()
