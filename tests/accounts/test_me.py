"""The caller's own endpoints: /api/v1/me, /me/permissions, /me/active-org, /me/export."""

from __future__ import annotations

import io
import json
import uuid
import zipfile

import pytest
from rest_framework.test import APIClient

from accounts import roles
from accounts.models import ApiKey, AuditLog, Membership, Organization, Role, SecurityEvent, User
from accounts.selectors.me import USER_EXPORT_JOB
from core.models import Job
from core.tasks import run_job
from tests.accounts.factories_setup import key_client, make_key, session_client
from tests.core.test_errors import assert_envelope
from tests.factories import MembershipFactory, OrganizationFactory, UserFactory

ME = "/api/v1/me"
PERMISSIONS = "/api/v1/me/permissions"
ACTIVE_ORG = "/api/v1/me/active-org"
EXPORT = "/api/v1/me/export"


# --- the roles table ----------------------------------------------------------------------------


def test_viewer_reads_but_does_not_write():
    viewer = roles.permissions_for_role(Role.VIEWER)
    assert {"org:read", "members:read", "agents:read", "boards:read"} <= set(viewer)
    assert not any(perm.endswith(":write") and perm != "notifications:write" for perm in viewer)


def test_each_stronger_role_keeps_everything_of_the_weaker_one():
    ladder = [Role.VIEWER, Role.MEMBER, Role.ADMIN, Role.OWNER]
    for weaker, stronger in zip(ladder, ladder[1:], strict=False):
        assert set(roles.permissions_for_role(weaker)) < set(roles.permissions_for_role(stronger))


def test_admin_writes_members_and_only_owner_deletes_the_org():
    admin, owner = roles.permissions_for_role(Role.ADMIN), roles.permissions_for_role(Role.OWNER)
    assert "members:write" in admin and "members:write" not in roles.permissions_for_role(Role.MEMBER)
    assert "org:delete" not in admin and "org:delete" in owner
    assert "security:read" not in admin and "security:read" in owner
    assert roles.permissions_for_role(None) == []


def test_key_permissions_are_cut_down_to_its_scopes():
    assert roles.permissions_for_key(Role.ADMIN, []) == roles.permissions_for_role(Role.ADMIN)
    assert roles.permissions_for_key(Role.ADMIN, ["agents:read"]) == ["agents:read"]
    assert roles.permissions_for_key(Role.VIEWER, ["agents:write"]) == ["agents:read"]
    assert set(roles.permissions_for_key(Role.ADMIN, ["members:*"])) == {"members:read", "members:write"}


def test_every_area_is_a_known_key_scope_area():
    from accounts.scopes import scope_areas

    assert set(roles.AREA_ROLES) <= set(scope_areas())


# --- GET/PATCH /me ------------------------------------------------------------------------------


@pytest.mark.django_db
def test_me_shows_the_profile(owner_client, owner, org):
    response = owner_client.get(ME)
    assert response.status_code == 200
    body = response.json()
    assert body["id"] == str(owner.pk)
    assert body["email"] == owner.email
    assert body["display_name"] == owner.display_name
    assert {"avatar_url", "language", "timezone", "active_org", "date_joined"} <= set(body)


@pytest.mark.django_db
def test_me_works_with_a_personal_key(org, owner):
    response = key_client(make_key(org=org, user=owner)).get(ME)
    assert response.status_code == 200
    assert response.json()["email"] == owner.email


@pytest.mark.django_db
def test_me_needs_authentication(anon_client):
    assert_envelope(anon_client.get(ME), 401)
    assert_envelope(anon_client.patch(ME, {"display_name": "x"}, format="json"), 401)
    assert_envelope(anon_client.delete(ME), 401)


@pytest.mark.django_db
def test_a_key_scoped_elsewhere_cannot_read_me(org, owner):
    client = key_client(make_key(org=org, user=owner, scopes=["agents:read"]))
    assert_envelope(client.get(ME), 403, "ERR_SCOPE_REQUIRED")
    assert key_client(make_key(org=org, user=owner, scopes=["me:read"])).get(ME).status_code == 200


@pytest.mark.django_db
def test_patch_me_updates_the_profile_and_is_audited(owner_client, owner):
    change = {
        "display_name": "Grace",
        "avatar_url": "https://example.com/grace.png",
        "language": "fr",
        "timezone": "Europe/Paris",
    }
    response = owner_client.patch(ME, change, format="json")
    assert response.status_code == 200, response.content
    assert {k: response.json()[k] for k in change} == change
    owner.refresh_from_db()
    assert (owner.display_name, owner.timezone, owner.language) == ("Grace", "Europe/Paris", "fr")
    row = AuditLog.objects.get(action="user.profile_updated")
    assert row.actor == owner
    assert row.changes["timezone"] == ["UTC", "Europe/Paris"]


@pytest.mark.django_db
def test_patch_me_normalises_the_language_code(owner_client, owner):
    assert owner_client.patch(ME, {"language": "en_GB"}, format="json").json()["language"] == "en-gb"
    assert owner_client.patch(ME, {"language": "de-CH"}, format="json").json()["language"] == "de-ch"


@pytest.mark.django_db
def test_patch_me_without_changes_writes_no_audit_row(owner_client, owner):
    assert owner_client.patch(ME, {"display_name": owner.display_name}, format="json").status_code == 200
    assert not AuditLog.objects.filter(action="user.profile_updated").exists()


@pytest.mark.django_db
@pytest.mark.parametrize(
    "change, field",
    [
        ({"timezone": "Mars/Olympus"}, "timezone"),
        ({"language": "klingon"}, "language"),
        ({"display_name": "x" * 151}, "display_name"),
        ({"avatar_url": "not a url"}, "avatar_url"),
        ({"email": "new@example.com"}, "email"),
        ({"is_staff": True}, "is_staff"),
    ],
)
def test_patch_me_rejects_bad_input(owner_client, owner, change, field):
    error = assert_envelope(owner_client.patch(ME, change, format="json"), 400, "ERR_VALIDATION")
    assert field in error["details"]["fields"]
    refreshed = User.objects.get(pk=owner.pk)
    assert (refreshed.email, refreshed.timezone, refreshed.is_staff) == (owner.email, "UTC", False)


@pytest.mark.django_db
def test_patch_me_with_a_personal_key(org, owner):
    client = key_client(make_key(org=org, user=owner))
    assert client.patch(ME, {"language": "de"}, format="json").status_code == 200
    row = AuditLog.objects.get(action="user.profile_updated")
    assert row.api_key is not None


@pytest.mark.django_db
def test_service_keys_cannot_change_their_creator(org, owner):
    client = key_client(make_key(org=org, user=owner, kind=ApiKey.Kind.SERVICE))
    assert client.get(ME).status_code == 200
    assert_envelope(client.patch(ME, {"language": "de"}, format="json"), 403, "ERR_PERSONAL_KEY_REQUIRED")
    assert_envelope(client.delete(ME), 403, "ERR_PERSONAL_KEY_REQUIRED")
    assert User.objects.filter(pk=owner.pk, language="en").exists()


@pytest.mark.django_db
def test_a_read_scoped_key_cannot_patch_me(org, owner):
    client = key_client(make_key(org=org, user=owner, scopes=["me:read"]))
    assert_envelope(client.patch(ME, {"language": "de"}, format="json"), 403, "ERR_SCOPE_REQUIRED")


@pytest.mark.django_db
def test_session_writes_need_the_csrf_token(owner):
    client = APIClient(enforce_csrf_checks=True)
    client.force_login(owner)
    assert_envelope(client.patch(ME, {"language": "de"}, format="json"), 403)
    assert_envelope(client.delete(ME), 403)
    assert User.objects.filter(pk=owner.pk, language="en").exists()


# --- DELETE /me ---------------------------------------------------------------------------------


@pytest.mark.django_db
def test_member_deletes_their_account(member_client, member, org, owner):
    email = member.email
    response = member_client.delete(ME)
    assert response.status_code == 204
    assert not User.objects.filter(pk=member.pk).exists()
    assert not Membership.objects.filter(user_id=member.pk).exists()
    assert Organization.objects.filter(pk=org.pk).exists()
    row = AuditLog.objects.get(action="user.deleted")
    assert row.actor is None and row.actor_email == email
    # The session is over.
    assert_envelope(member_client.get(ME), 401)


@pytest.mark.django_db
def test_sole_owner_of_an_org_with_members_cannot_delete_their_account(owner_client, owner, member, org):
    error = assert_envelope(owner_client.delete(ME), 409, "ERR_SOLE_OWNER")
    assert error["details"]["orgs"] == [{"id": str(org.pk), "name": org.name}]
    assert User.objects.filter(pk=owner.pk).exists()
    assert Membership.objects.filter(org=org).count() == 2
    assert not AuditLog.objects.filter(action="user.deleted").exists()


@pytest.mark.django_db
def test_one_of_two_owners_may_delete_their_account(owner_client, owner, member, org):
    MembershipFactory(org=org, role=Role.OWNER)
    assert owner_client.delete(ME).status_code == 204
    assert not User.objects.filter(pk=owner.pk).exists()


@pytest.mark.django_db
def test_orgs_where_the_caller_is_alone_are_deleted_with_the_account(owner, org, other_org, outsider):
    solo = OrganizationFactory()
    MembershipFactory(org=solo, user=owner, role=Role.OWNER)
    MembershipFactory(org=other_org, user=owner, role=Role.MEMBER)
    MembershipFactory(org=org, role=Role.OWNER)  # org keeps another owner
    client = session_client(owner)

    assert client.delete(ME).status_code == 204

    solo.refresh_from_db()
    assert solo.deletion_requested_at is not None  # stops answering at once
    job = Job.objects.get(kind="accounts.org_delete")
    run_job(str(job.pk))
    assert not Organization.objects.filter(pk=solo.pk).exists()
    assert Organization.objects.filter(pk__in=[org.pk, other_org.pk]).count() == 2
    assert AuditLog.objects.filter(action="org.deleted", org_name=solo.name).exists()


@pytest.mark.django_db
def test_deleting_the_account_with_a_personal_key(org, owner):
    MembershipFactory(org=org, role=Role.OWNER)
    raw = make_key(org=org, user=owner)
    assert key_client(raw).delete(ME).status_code == 204
    assert not User.objects.filter(pk=owner.pk).exists()
    assert not ApiKey.objects.filter(user_id=owner.pk).exists()
    assert_envelope(key_client(raw).get(ME), 401)


# --- GET /me/permissions ------------------------------------------------------------------------


@pytest.mark.django_db
def test_permissions_list_orgs_roles_and_the_current_org(owner, org, other_org):
    MembershipFactory(org=other_org, user=owner, role=Role.VIEWER)
    response = session_client(owner).get(PERMISSIONS)
    assert response.status_code == 200
    body = response.json()
    assert body["user"] == {"id": str(owner.pk), "email": owner.email}
    assert {(o["id"], o["role"]) for o in body["orgs"]} == {
        (str(org.pk), "OWNER"),
        (str(other_org.pk), "VIEWER"),
    }
    assert body["current"]["org"] == {"id": str(org.pk), "name": org.name}
    assert body["current"]["role"] == "OWNER"
    assert body["current"]["permissions"] == roles.permissions_for_role(Role.OWNER)


@pytest.mark.django_db
def test_permissions_follow_the_x_org_id_header(owner, org, other_org):
    MembershipFactory(org=other_org, user=owner, role=Role.VIEWER)
    body = session_client(owner).get(PERMISSIONS, HTTP_X_ORG_ID=str(other_org.pk)).json()
    assert body["current"]["role"] == "VIEWER"
    assert "members:write" not in body["current"]["permissions"]
    assert "members:read" in body["current"]["permissions"]


@pytest.mark.django_db
def test_permissions_of_a_member_lack_admin_writes(member_client):
    permissions = member_client.get(PERMISSIONS).json()["current"]["permissions"]
    assert "agents:write" in permissions
    assert "members:write" not in permissions and "org:write" not in permissions


@pytest.mark.django_db
def test_permissions_without_any_org(db):
    body = session_client(UserFactory()).get(PERMISSIONS).json()
    assert body["orgs"] == []
    assert body["current"] == {"org": None, "role": None, "permissions": []}


@pytest.mark.django_db
def test_permissions_with_a_key_show_its_org_only_and_its_scopes(owner, org, other_org):
    MembershipFactory(org=other_org, user=owner, role=Role.OWNER)
    raw = make_key(
        org=org, user=owner, kind=ApiKey.Kind.SERVICE, role=Role.ADMIN, scopes=["me:read", "agents:read"]
    )
    body = key_client(raw).get(PERMISSIONS).json()
    assert body["orgs"] == [{"id": str(org.pk), "name": org.name, "role": "ADMIN"}]
    assert body["current"]["role"] == "ADMIN"
    assert body["current"]["permissions"] == ["agents:read"]


@pytest.mark.django_db
def test_permissions_of_a_personal_key_follow_the_users_current_role(owner, org):
    raw = make_key(org=org, user=owner)
    Membership.objects.filter(org=org, user=owner).update(role=Role.MEMBER)
    body = key_client(raw).get(PERMISSIONS).json()
    assert body["current"]["role"] == "MEMBER"
    assert body["current"]["permissions"] == roles.permissions_for_role(Role.MEMBER)


@pytest.mark.django_db
def test_permissions_need_authentication(anon_client):
    assert_envelope(anon_client.get(PERMISSIONS), 401)


# --- PUT /me/active-org -------------------------------------------------------------------------


@pytest.mark.django_db
def test_choosing_the_active_org(owner, org, other_org):
    MembershipFactory(org=other_org, user=owner, role=Role.MEMBER)
    client = session_client(owner)
    response = client.put(ACTIVE_ORG, {"org_id": str(other_org.pk)}, format="json")
    assert response.status_code == 200, response.content
    assert response.json() == {"org": {"id": str(other_org.pk), "name": other_org.name}, "role": "MEMBER"}
    owner.refresh_from_db()
    assert owner.active_org == other_org
    assert client.get(PERMISSIONS).json()["current"]["org"]["id"] == str(other_org.pk)
    assert AuditLog.objects.filter(action="user.active_org_changed", org=other_org, actor=owner).exists()


@pytest.mark.django_db
def test_an_org_one_is_not_a_member_of_is_404(owner_client, owner, org, other_org):
    assert_envelope(owner_client.put(ACTIVE_ORG, {"org_id": str(other_org.pk)}, format="json"), 404)
    assert_envelope(owner_client.put(ACTIVE_ORG, {"org_id": str(uuid.uuid4())}, format="json"), 404)
    owner.refresh_from_db()
    assert owner.active_org_id in (None, org.pk)


@pytest.mark.django_db
def test_an_org_being_deleted_cannot_become_active(owner, org, other_org):
    from django.utils import timezone

    MembershipFactory(org=other_org, user=owner, role=Role.OWNER)
    Organization.objects.filter(pk=other_org.pk).update(deletion_requested_at=timezone.now())
    client = session_client(owner)
    assert_envelope(client.put(ACTIVE_ORG, {"org_id": str(other_org.pk)}, format="json"), 404)


@pytest.mark.django_db
@pytest.mark.parametrize("body", [{}, {"org_id": "nope"}])
def test_active_org_input_is_validated(owner_client, body):
    assert_envelope(owner_client.put(ACTIVE_ORG, body, format="json"), 400, "ERR_VALIDATION")


@pytest.mark.django_db
def test_active_org_is_for_sessions_only(owner, org, anon_client):
    client = key_client(make_key(org=org, user=owner))
    assert_envelope(
        client.put(ACTIVE_ORG, {"org_id": str(org.pk)}, format="json"), 403, "ERR_SESSION_REQUIRED"
    )
    assert_envelope(anon_client.put(ACTIVE_ORG, {"org_id": str(org.pk)}, format="json"), 401)


# --- GET /me/export -----------------------------------------------------------------------------


def _start_export(client) -> str:
    response = client.get(EXPORT)
    assert response.status_code == 202, response.content
    return response.json()["job"]


@pytest.mark.django_db
def test_export_starts_a_platform_job_of_the_caller(owner_client, owner):
    job_id = _start_export(owner_client)
    job = Job.objects.get(pk=job_id)
    assert (job.kind, job.org, job.actor, job.status) == (USER_EXPORT_JOB, None, owner, Job.Status.PENDING)
    assert owner_client.get(f"/api/v1/jobs/{job_id}").status_code == 200
    assert AuditLog.objects.filter(action="user.export_requested", actor=owner).exists()


@pytest.mark.django_db
def test_export_is_not_ready_until_the_job_finishes(owner_client):
    job_id = _start_export(owner_client)
    error = assert_envelope(owner_client.get(EXPORT, {"job": job_id}), 409, "ERR_EXPORT_NOT_READY")
    assert error["details"]["status"] == "pending"


@pytest.mark.django_db
def test_finished_export_downloads_as_a_zip_of_the_callers_data(owner_client, owner, org):
    raw = make_key(org=org, user=owner)
    key_client(raw).patch(ME, {"display_name": "Exported"}, format="json")
    SecurityEvent.objects.create(kind=SecurityEvent.Kind.LOGIN_FAILED, user=owner, identifier=owner.email)
    other = MembershipFactory(org=org, role=Role.MEMBER).user
    AuditLog.objects.create(actor=other, actor_email=other.email, action="someone.else", entity_type="x")
    job_id = _start_export(owner_client)

    run_job(job_id)
    response = owner_client.get(EXPORT, {"job": job_id})

    assert response.status_code == 200
    assert response["Content-Type"] == "application/zip"
    assert "attachment" in response["Content-Disposition"]
    archive = zipfile.ZipFile(io.BytesIO(response.content))
    assert sorted(archive.namelist()) == [
        "activity.json",
        "api_keys.json",
        "memberships.json",
        "profile.json",
        "security_events.json",
    ]
    files = {name: json.loads(archive.read(name)) for name in archive.namelist()}
    assert files["profile.json"]["email"] == owner.email
    assert files["profile.json"]["display_name"] == "Exported"
    assert files["memberships.json"] == [
        {
            "org": {"id": str(org.pk), "name": org.name},
            "role": "OWNER",
            "joined_at": files["memberships.json"][0]["joined_at"],
        }
    ]
    (key,) = files["api_keys.json"]
    assert key["public_id"] in raw
    assert not any("secret" in field or "hash" in field for field in key)
    assert raw.rsplit("_", 1)[1] not in json.dumps(files)
    actions = {row["action"] for row in files["activity.json"]}
    assert {"api_key.created", "user.profile_updated", "user.export_requested"} <= actions
    assert "someone.else" not in actions
    assert [event["kind"] for event in files["security_events.json"]] == ["login_failed"]


@pytest.mark.django_db
def test_another_users_export_is_404(owner_client, member_client):
    job_id = _start_export(member_client)
    run_job(job_id)
    assert_envelope(owner_client.get(EXPORT, {"job": job_id}), 404)
    assert_envelope(owner_client.get(EXPORT, {"job": str(uuid.uuid4())}), 404)


@pytest.mark.django_db
def test_a_job_of_another_kind_is_not_an_export(owner_client, owner):
    from core.registries import job_kinds

    other_kind = next(kind for kind in job_kinds() if kind != USER_EXPORT_JOB)
    job = Job.objects.create(kind=other_kind, actor=owner, status=Job.Status.SUCCEEDED, result={})
    assert_envelope(owner_client.get(EXPORT, {"job": str(job.pk)}), 404)


@pytest.mark.django_db
def test_a_failed_export_says_so(owner_client):
    job_id = _start_export(owner_client)
    Job.objects.filter(pk=job_id).update(status=Job.Status.FAILED, error={"code": "ERR_X", "message": "x"})
    assert_envelope(owner_client.get(EXPORT, {"job": job_id}), 409, "ERR_EXPORT_FAILED")


@pytest.mark.django_db
def test_export_job_of_a_deleted_user_fails_cleanly(member_client, member):
    job_id = _start_export(member_client)
    User.objects.filter(pk=member.pk).delete()
    run_job(job_id)
    job = Job.objects.get(pk=job_id)
    assert job.status == Job.Status.FAILED
    assert job.error["code"] == "ERR_USER_GONE"


@pytest.mark.django_db
def test_export_query_is_validated(owner_client):
    assert_envelope(owner_client.get(EXPORT, {"job": "nope"}), 400, "ERR_VALIDATION")


@pytest.mark.django_db
def test_export_is_for_sessions_only(owner, org, anon_client):
    assert_envelope(key_client(make_key(org=org, user=owner)).get(EXPORT), 403, "ERR_SESSION_REQUIRED")
    assert_envelope(anon_client.get(EXPORT), 401)
    assert not Job.objects.filter(kind=USER_EXPORT_JOB).exists()
