"""Groups of the current org: VIEWERs read, ADMINs write; names unique per org; members must
belong to the org; every write is audited; other orgs' groups answer 404."""

from __future__ import annotations

import uuid

import pytest
from rest_framework.test import APIClient

from accounts.models import AuditLog, Group, GroupMembership, Role
from tests.accounts.factories_orgs import (
    ROLES,
    GroupFactory,
    add_to_group,
    client_with_role,
    service_key,
    user_with_role,
)
from tests.core.test_errors import assert_envelope

pytestmark = pytest.mark.django_db

GROUPS = "/api/v1/org/groups"


def group_url(group, suffix=""):
    return f"{GROUPS}/{group.pk}{suffix}"


# --- list and read --------------------------------------------------------------------------------


def test_groups_list_with_member_counts(member_client, org, owner, member, other_org):
    team = GroupFactory(org=org, name="Team")
    add_to_group(team, owner)
    add_to_group(team, member)
    GroupFactory(org=org, name="Empty")
    GroupFactory(org=other_org, name="Foreign")
    body = member_client.get(GROUPS).json()
    assert body["total"] == 2
    assert [(g["name"], g["member_count"]) for g in body["items"]] == [("Empty", 0), ("Team", 2)]
    assert set(body["items"][0]) == {"id", "name", "description", "member_count", "created_at"}


@pytest.mark.parametrize("role", ROLES)
def test_every_role_reads_groups(org, role):
    group = GroupFactory(org=org)
    _user, client = client_with_role(org, role)
    assert client.get(GROUPS).status_code == 200
    assert client.get(group_url(group)).json()["id"] == str(group.pk)
    assert client.get(group_url(group, "/members")).status_code == 200


def test_groups_need_authentication(anon_client, org):
    group = GroupFactory(org=org)
    assert_envelope(anon_client.get(GROUPS), 401)
    assert_envelope(anon_client.get(group_url(group)), 401)
    assert_envelope(anon_client.post(GROUPS, {"name": "x"}), 401)
    assert_envelope(anon_client.get(group_url(group, "/members")), 401)


def test_unknown_group_is_404(owner_client):
    missing = f"{GROUPS}/{uuid.uuid4()}"
    assert_envelope(owner_client.get(missing), 404)
    assert_envelope(owner_client.get(f"{missing}/members"), 404)


def test_outsider_gets_404_on_every_group_route(outsider_client, org, member):
    group = GroupFactory(org=org, name="Secret")
    add_to_group(group, member)
    assert_envelope(outsider_client.get(group_url(group)), 404)
    assert_envelope(outsider_client.patch(group_url(group), {"name": "Mine"}), 404)
    assert_envelope(outsider_client.delete(group_url(group)), 404)
    assert_envelope(outsider_client.get(group_url(group, "/members")), 404)
    assert_envelope(outsider_client.post(group_url(group, "/members"), {"user_id": str(member.pk)}), 404)
    assert_envelope(outsider_client.delete(group_url(group, f"/members/{member.pk}")), 404)
    group.refresh_from_db()
    assert group.name == "Secret" and GroupMembership.objects.filter(group=group, user=member).exists()


# --- create, rename, delete -----------------------------------------------------------------------


def test_admin_creates_a_group_and_it_is_audited(org):
    admin, client = client_with_role(org, Role.ADMIN)
    response = client.post(GROUPS, {"name": "  Engineering ", "description": "Builders"})
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["name"] == "Engineering" and body["description"] == "Builders" and body["member_count"] == 0
    group = Group.objects.get(pk=body["id"])
    assert group.org == org
    row = AuditLog.objects.get(action="group.created")
    assert row.actor == admin and row.org == org and row.entity_id == str(group.pk)


@pytest.mark.parametrize(
    "payload",
    [{}, {"name": ""}, {"name": "   "}, {"name": "x" * 101}, {"name": "ok", "description": "d" * 501}],
)
def test_bad_group_input_is_400(owner_client, payload):
    assert_envelope(owner_client.post(GROUPS, payload), 400, "ERR_VALIDATION")
    assert not Group.objects.exists()


def test_group_names_are_unique_per_org(owner_client, org, other_org):
    GroupFactory(org=org, name="Ops")
    assert_envelope(owner_client.post(GROUPS, {"name": "ops"}), 409, "ERR_GROUP_EXISTS")
    GroupFactory(org=other_org, name="Design")
    assert owner_client.post(GROUPS, {"name": "Design"}).status_code == 201


@pytest.mark.parametrize(
    "role,status", [(Role.VIEWER, 403), (Role.MEMBER, 403), (Role.ADMIN, 201), (Role.OWNER, 201)]
)
def test_create_group_role_matrix(org, role, status):
    _user, client = client_with_role(org, role)
    response = client.post(GROUPS, {"name": f"By {role}"})
    assert response.status_code == status, response.content
    if status == 403:
        assert_envelope(response, 403, "ERR_ROLE_REQUIRED")


def test_rename_a_group(owner_client, owner, org):
    group = GroupFactory(org=org, name="Old", description="keep")
    response = owner_client.patch(group_url(group), {"name": "New"})
    assert response.status_code == 200 and response.json()["name"] == "New"
    group.refresh_from_db()
    assert (group.name, group.description) == ("New", "keep")
    row = AuditLog.objects.get(action="group.updated")
    assert row.changes == {"name": ["Old", "New"]} and row.actor == owner


def test_rename_to_a_taken_name_is_409(owner_client, org):
    GroupFactory(org=org, name="Taken")
    group = GroupFactory(org=org, name="Free")
    assert_envelope(owner_client.patch(group_url(group), {"name": "TAKEN"}), 409, "ERR_GROUP_EXISTS")
    assert owner_client.patch(group_url(group), {"name": "Free"}).status_code == 200  # own name is fine


def test_rename_with_a_blank_name_is_400(owner_client, org):
    group = GroupFactory(org=org)
    assert_envelope(owner_client.patch(group_url(group), {"name": ""}), 400, "ERR_VALIDATION")


@pytest.mark.parametrize(
    "role,status", [(Role.VIEWER, 403), (Role.MEMBER, 403), (Role.ADMIN, 200), (Role.OWNER, 200)]
)
def test_rename_group_role_matrix(org, role, status):
    group = GroupFactory(org=org)
    _user, client = client_with_role(org, role)
    assert client.patch(group_url(group), {"description": "x"}).status_code == status


def test_delete_a_group_keeps_the_people(owner_client, owner, member, org):
    group = GroupFactory(org=org)
    add_to_group(group, member)
    assert owner_client.delete(group_url(group)).status_code == 204
    assert not Group.objects.filter(pk=group.pk).exists()
    assert member.memberships.filter(org=org).exists()
    row = AuditLog.objects.get(action="group.deleted")
    assert row.entity_id == str(group.pk) and row.before["members"] == 1 and row.actor == owner


@pytest.mark.parametrize(
    "role,status", [(Role.VIEWER, 403), (Role.MEMBER, 403), (Role.ADMIN, 204), (Role.OWNER, 204)]
)
def test_delete_group_role_matrix(org, role, status):
    group = GroupFactory(org=org)
    _user, client = client_with_role(org, role)
    assert client.delete(group_url(group)).status_code == status
    assert Group.objects.filter(pk=group.pk).exists() == (status != 204)


def test_groups_key_scope_is_enforced(org, owner):
    _key, raw = service_key(org, owner, Role.ADMIN, scopes=["groups:read"])
    client = APIClient(HTTP_AUTHORIZATION=f"Bearer {raw}")
    assert client.get(GROUPS).status_code == 200
    assert_envelope(client.post(GROUPS, {"name": "x"}), 403, "ERR_SCOPE_REQUIRED")


# --- group members --------------------------------------------------------------------------------


def test_add_and_list_group_members(owner_client, owner, member, org):
    group = GroupFactory(org=org)
    response = owner_client.post(group_url(group, "/members"), {"user_id": str(member.pk)})
    assert response.status_code == 201, response.content
    assert response.json()["user"]["id"] == str(member.pk)
    body = owner_client.get(group_url(group, "/members")).json()
    assert body["total"] == 1 and set(body["items"][0]) == {"user", "added_at"}
    assert body["items"][0]["user"]["email"] == member.email
    row = AuditLog.objects.get(action="group.member_added")
    assert row.after["user"] == str(member.pk) and row.actor == owner


def test_adding_someone_twice_is_409(owner_client, member, org):
    group = GroupFactory(org=org)
    add_to_group(group, member)
    response = owner_client.post(group_url(group, "/members"), {"user_id": str(member.pk)})
    assert_envelope(response, 409, "ERR_ALREADY_IN_GROUP")


@pytest.mark.parametrize("who", ["outsider", "unknown"])
def test_only_members_of_the_org_can_join_its_groups(owner_client, org, outsider, who):
    group = GroupFactory(org=org)
    user_id = outsider.pk if who == "outsider" else uuid.uuid4()
    response = owner_client.post(group_url(group, "/members"), {"user_id": str(user_id)})
    assert_envelope(response, 400, "ERR_NOT_A_MEMBER")
    assert not GroupMembership.objects.filter(group=group).exists()


@pytest.mark.parametrize("payload", [{}, {"user_id": "not-a-uuid"}])
def test_bad_group_member_input_is_400(owner_client, org, payload):
    group = GroupFactory(org=org)
    assert_envelope(owner_client.post(group_url(group, "/members"), payload), 400, "ERR_VALIDATION")


@pytest.mark.parametrize(
    "role,status", [(Role.VIEWER, 403), (Role.MEMBER, 403), (Role.ADMIN, 201), (Role.OWNER, 201)]
)
def test_add_group_member_role_matrix(org, role, status):
    group = GroupFactory(org=org)
    target = user_with_role(org, Role.MEMBER)
    _user, client = client_with_role(org, role)
    assert client.post(group_url(group, "/members"), {"user_id": str(target.pk)}).status_code == status


def test_remove_a_group_member(owner_client, owner, member, org):
    group = GroupFactory(org=org)
    add_to_group(group, member)
    assert owner_client.delete(group_url(group, f"/members/{member.pk}")).status_code == 204
    assert not GroupMembership.objects.filter(group=group).exists()
    row = AuditLog.objects.get(action="group.member_removed")
    assert row.before["user"] == str(member.pk) and row.actor == owner


def test_removing_someone_not_in_the_group_is_404(owner_client, member, org):
    group = GroupFactory(org=org)
    assert_envelope(owner_client.delete(group_url(group, f"/members/{member.pk}")), 404)


@pytest.mark.parametrize(
    "role,status", [(Role.VIEWER, 403), (Role.MEMBER, 403), (Role.ADMIN, 204), (Role.OWNER, 204)]
)
def test_remove_group_member_role_matrix(org, member, role, status):
    group = GroupFactory(org=org)
    add_to_group(group, member)
    _user, client = client_with_role(org, role)
    assert client.delete(group_url(group, f"/members/{member.pk}")).status_code == status
    assert GroupMembership.objects.filter(group=group).exists() == (status != 204)


def test_group_member_list_shows_only_that_group(owner_client, org, owner, member):
    first, second = GroupFactory(org=org), GroupFactory(org=org)
    add_to_group(first, owner)
    add_to_group(second, member)
    items = owner_client.get(group_url(first, "/members")).json()["items"]
    assert [item["user"]["id"] for item in items] == [str(owner.pk)]
