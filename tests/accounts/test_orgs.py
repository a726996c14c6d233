"""Organisations: the caller's orgs (/orgs), the current org (/org), and deleting an org through a
job that removes its data while the audit trail keeps its name."""

from __future__ import annotations

import uuid

import pytest
from rest_framework.test import APIClient

from accounts.models import (
    ApiKey,
    AuditLog,
    Group,
    GroupMembership,
    Invite,
    Membership,
    Organization,
    Role,
    User,
)
from accounts.services.orgs import ORG_DELETE_JOB_KIND, org_create, org_delete_request, org_purge
from core.errors import ApplicationError, ConflictError
from core.models import Job
from core.tasks import run_job
from tests.accounts.factories_orgs import (
    ROLES,
    GroupFactory,
    add_to_group,
    client_with_role,
    make_invite,
    personal_key,
    service_key,
)
from tests.conftest import client_for
from tests.core.test_errors import assert_envelope
from tests.factories import MembershipFactory, OrganizationFactory, UserFactory

pytestmark = pytest.mark.django_db


# --- /orgs ----------------------------------------------------------------------------------------


def test_my_orgs_lists_each_org_with_my_role(owner_client, owner, org):
    other = OrganizationFactory(name="Zeta")
    MembershipFactory(org=other, user=owner, role=Role.VIEWER)
    OrganizationFactory(name="Not mine")
    body = owner_client.get("/api/v1/orgs").json()
    assert body["total"] == 2
    by_id = {item["id"]: item for item in body["items"]}
    assert by_id[str(org.pk)]["role"] == Role.OWNER
    assert by_id[str(other.pk)]["role"] == Role.VIEWER
    assert set(by_id[str(org.pk)]) == {"id", "name", "slug", "role", "is_active", "created_at", "joined_at"}


def test_my_orgs_leaves_out_orgs_being_deleted(owner_client, owner, org):
    Organization.objects.filter(pk=org.pk).update(deletion_requested_at="2030-01-01T00:00:00Z")
    assert owner_client.get("/api/v1/orgs").json()["total"] == 0


def test_my_orgs_needs_a_session(anon_client, org, owner):
    assert_envelope(anon_client.get("/api/v1/orgs"), 401)
    _key, raw = personal_key(org, owner)
    client = APIClient(HTTP_AUTHORIZATION=f"Bearer {raw}")
    assert_envelope(client.get("/api/v1/orgs"), 403, "ERR_SESSION_REQUIRED")
    assert_envelope(client.post("/api/v1/orgs", {"name": "X"}), 403, "ERR_SESSION_REQUIRED")


def test_create_org_makes_the_caller_owner_and_audits(member_client, member, org):
    response = member_client.post("/api/v1/orgs", {"name": "Acme Labs"})
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["name"] == "Acme Labs" and body["slug"] == "acme-labs" and body["role"] == Role.OWNER
    created = Organization.objects.get(pk=body["id"])
    assert Membership.objects.get(org=created, user=member).role == Role.OWNER
    row = AuditLog.objects.get(action="org.created", org=created)
    assert row.actor == member and row.org_name == "Acme Labs"


def test_create_org_becomes_the_active_org_of_a_user_without_one(db):
    user = UserFactory()
    response = client_for(user).post("/api/v1/orgs", {"name": "First"})
    assert response.status_code == 201
    user.refresh_from_db()
    assert str(user.active_org_id) == response.json()["id"]
    assert response.json()["is_active"] is True


def test_create_org_keeps_an_existing_active_org(db):
    user = UserFactory()
    first = org_create(name="First", owner=user)
    org_create(name="Second", owner=user)
    user.refresh_from_db()
    assert user.active_org_id == first.pk


def test_org_slugs_are_unique(db):
    user = UserFactory()
    slugs = [org_create(name="Same Name", owner=user).slug for _ in range(3)]
    assert slugs == ["same-name", "same-name-2", "same-name-3"]
    assert org_create(name="!!!", owner=user).slug == "org"


@pytest.mark.parametrize("payload", [{}, {"name": ""}, {"name": "   "}, {"name": "x" * 201}])
def test_create_org_with_a_bad_name_is_400(owner_client, payload):
    before = Organization.objects.count()
    assert_envelope(owner_client.post("/api/v1/orgs", payload), 400, "ERR_VALIDATION")
    assert Organization.objects.count() == before


# --- /org: read and rename ------------------------------------------------------------------------


def test_get_current_org_as_viewer(org):
    _user, client = client_with_role(org, Role.VIEWER)
    body = client.get("/api/v1/org").json()
    assert body["id"] == str(org.pk) and body["name"] == org.name and body["role"] == Role.VIEWER
    assert set(body) == {"id", "name", "slug", "role", "created_at", "updated_at"}


def test_get_current_org_is_401_anonymous_and_403_without_an_org(anon_client, db):
    assert_envelope(anon_client.get("/api/v1/org"), 401)
    assert_envelope(client_for(UserFactory()).get("/api/v1/org"), 403, "ERR_NO_ORGANISATION")


def test_x_org_id_of_another_org_is_404(outsider_client, org):
    assert_envelope(outsider_client.get("/api/v1/org", HTTP_X_ORG_ID=str(org.pk)), 404)


def test_rename_org_audits_before_and_after(owner_client, owner, org):
    old = org.name
    response = owner_client.patch("/api/v1/org", {"name": "Renamed"})
    assert response.status_code == 200 and response.json()["name"] == "Renamed"
    org.refresh_from_db()
    assert org.name == "Renamed"
    row = AuditLog.objects.get(action="org.updated", org=org)
    assert row.changes == {"name": [old, "Renamed"]} and row.actor == owner


@pytest.mark.parametrize("payload", [{}, {"name": ""}, {"name": "x" * 201}])
def test_rename_org_with_a_bad_name_is_400(owner_client, org, payload):
    assert_envelope(owner_client.patch("/api/v1/org", payload), 400, "ERR_VALIDATION")
    assert not AuditLog.objects.filter(action="org.updated").exists()


@pytest.mark.parametrize(
    "role,status", [(Role.VIEWER, 403), (Role.MEMBER, 403), (Role.ADMIN, 200), (Role.OWNER, 200)]
)
def test_rename_org_role_matrix(org, role, status):
    _user, client = client_with_role(org, role)
    response = client.patch("/api/v1/org", {"name": f"By {role}"})
    assert response.status_code == status, response.content
    if status == 403:
        assert_envelope(response, 403, "ERR_ROLE_REQUIRED")


def test_service_key_scopes_limit_the_org_endpoint(org, owner):
    _key, raw = service_key(org, owner, Role.OWNER, scopes=["org:read"])
    client = APIClient(HTTP_AUTHORIZATION=f"Bearer {raw}")
    assert client.get("/api/v1/org").status_code == 200
    assert_envelope(client.patch("/api/v1/org", {"name": "no"}), 403, "ERR_SCOPE_REQUIRED")


# --- /org: delete ---------------------------------------------------------------------------------


@pytest.mark.parametrize("role", [Role.VIEWER, Role.MEMBER, Role.ADMIN])
def test_delete_org_needs_owner(org, role):
    _user, client = client_with_role(org, role)
    assert_envelope(client.delete("/api/v1/org"), 403, "ERR_ROLE_REQUIRED")
    org.refresh_from_db()
    assert org.deletion_requested_at is None
    assert not Job.objects.filter(kind=ORG_DELETE_JOB_KIND).exists()


def test_delete_org_marks_it_audits_and_starts_a_platform_job(owner_client, owner, org):
    response = owner_client.delete("/api/v1/org")
    assert response.status_code == 202, response.content
    job = Job.objects.get(pk=response.json()["job"])
    assert job.kind == ORG_DELETE_JOB_KIND and job.org is None and job.actor == owner
    assert job.payload == {"org_id": str(org.pk), "org_name": org.name}
    org.refresh_from_db()
    assert org.deletion_requested_at is not None
    row = AuditLog.objects.get(action="org.deleted")
    assert row.org_id == org.pk and row.org_name == org.name and row.actor == owner
    # The job is a platform job: its actor follows it even though the org no longer answers.
    assert owner_client.get(f"/api/v1/jobs/{job.pk}").json()["status"] == Job.Status.PENDING


def test_deleted_org_stops_answering_keys_and_sessions_at_once(owner_client, owner, org):
    _key, raw = service_key(org, owner, Role.OWNER)
    key_client = APIClient(HTTP_AUTHORIZATION=f"Bearer {raw}")
    assert key_client.get("/api/v1/org").status_code == 200
    assert owner_client.delete("/api/v1/org").status_code == 202
    assert_envelope(key_client.get("/api/v1/org"), 401)
    assert_envelope(owner_client.get("/api/v1/org"), 403, "ERR_NO_ORGANISATION")
    assert_envelope(owner_client.get("/api/v1/org", HTTP_X_ORG_ID=str(org.pk)), 404)


def test_delete_org_falls_back_to_the_next_org_for_sessions(owner_client, owner, org):
    second = OrganizationFactory()
    MembershipFactory(org=second, user=owner, role=Role.ADMIN)
    User.objects.filter(pk=owner.pk).update(active_org=org)
    assert owner_client.delete("/api/v1/org").status_code == 202
    assert owner_client.get("/api/v1/org").json()["id"] == str(second.pk)


def test_deleting_an_org_twice_is_a_conflict(owner, org):
    org_delete_request(org=org, actor=owner)
    with pytest.raises(ConflictError) as caught:
        org_delete_request(org=org, actor=owner)
    assert caught.value.code == "ERR_ORG_DELETION_PENDING"


def test_org_deletion_job_removes_the_org_and_everything_in_it(owner_client, owner, member, org, other_org):
    group = GroupFactory(org=org)
    add_to_group(group, member)
    make_invite(org, invited_by=owner)
    personal_key(org, member)
    User.objects.filter(pk__in=[owner.pk, member.pk]).update(active_org=org)
    org_job = Job.objects.create(kind="x", org=org)
    survivor_group = GroupFactory(org=other_org)
    org_id, org_name = org.pk, org.name

    job_id = owner_client.delete("/api/v1/org").json()["job"]
    run_job(job_id)

    job = Job.objects.get(pk=job_id)
    assert job.status == Job.Status.SUCCEEDED, job.error
    assert job.percent == 100 and job.result["deleted"] is True
    assert not Organization.objects.filter(pk=org_id).exists()
    assert not Membership.objects.filter(org_id=org_id).exists()
    assert not Group.objects.filter(org_id=org_id).exists()
    assert not GroupMembership.objects.filter(group_id=group.pk).exists()
    assert not Invite.objects.filter(org_id=org_id).exists()
    assert not ApiKey.objects.filter(org_id=org_id).exists()
    assert not Job.objects.filter(pk=org_job.pk).exists()
    assert User.objects.filter(pk__in=[owner.pk, member.pk], active_org__isnull=False).count() == 0
    # People and other tenants stay.
    assert User.objects.filter(pk__in=[owner.pk, member.pk]).count() == 2
    assert Group.objects.filter(pk=survivor_group.pk).exists()
    # The audit trail survives the cascade and still names the org.
    deleted = AuditLog.objects.get(action="org.deleted", org_name=org_name)
    assert deleted.org_id is None and deleted.actor == owner
    assert AuditLog.objects.filter(action="org.purged", org_name=org_name, org__isnull=True).exists()
    assert owner_client.get(f"/api/v1/jobs/{job_id}").json()["status"] == Job.Status.SUCCEEDED


def test_org_purge_is_idempotent_once_the_org_is_gone(owner, org):
    job = org_delete_request(org=org, actor=owner)
    assert org_purge(org_id=org.pk)["deleted"] is True
    assert org_purge(org_id=org.pk) == {"deleted": False, "reason": "already gone", "rows": {}}
    run_job(str(job.pk))  # a redelivered job finds nothing left to do and still succeeds
    assert Job.objects.get(pk=job.pk).status == Job.Status.SUCCEEDED


def test_org_purge_refuses_an_org_that_was_not_marked(org):
    with pytest.raises(ApplicationError) as caught:
        org_purge(org_id=org.pk)
    assert caught.value.code == "ERR_ORG_NOT_MARKED"
    assert Organization.objects.filter(pk=org.pk).exists()


def test_org_deletion_job_stops_when_cancelled(owner, org):
    from core.services import job_cancel

    job = org_delete_request(org=org, actor=owner)
    calls = []

    def progress(percent, message):
        calls.append(percent)
        job_cancel(job_id=job.pk)
        return False

    assert org_purge(org_id=org.pk, progress=progress)["reason"] == "cancelled"
    assert Organization.objects.filter(pk=org.pk).exists() and calls == [0]


def test_org_endpoints_have_no_ids_to_leak(outsider_client, org):
    # /org always means the caller's own org: another org's data never shows.
    body = outsider_client.get("/api/v1/org").json()
    assert body["id"] != str(org.pk)
    assert str(uuid.UUID(body["id"]))


@pytest.mark.parametrize("role", ROLES)
def test_every_role_can_read_the_org(org, role):
    _user, client = client_with_role(org, role)
    assert client.get("/api/v1/org").json()["role"] == role
