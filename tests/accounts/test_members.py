"""Members of the current org: list, read, change roles, remove, leave; the last OWNER is kept
(also under concurrency), only OWNERs touch OWNERs, and a removed member's keys die at once."""

from __future__ import annotations

import threading
import uuid

import pytest
from django.db import connection
from rest_framework.test import APIClient

from accounts.models import AuditLog, GroupMembership, Membership, Role, User
from accounts.services.orgs import LastOwnerError, member_update_role
from tests.accounts.factories_orgs import (
    ROLES,
    GroupFactory,
    add_to_group,
    client_with_role,
    personal_key,
    role_of,
    service_key,
    user_with_role,
)
from tests.conftest import client_for
from tests.core.test_errors import assert_envelope
from tests.factories import MembershipFactory, OrganizationFactory

pytestmark = pytest.mark.django_db


def url(user=None):
    return "/api/v1/org/members" + (f"/{user.pk}" if user is not None else "")


# --- list and read --------------------------------------------------------------------------------


def test_viewer_lists_members_with_their_users(org, owner, member, django_assert_max_num_queries):
    viewer, client = client_with_role(org, Role.VIEWER)
    for _ in range(5):
        user_with_role(org, Role.MEMBER)
    with django_assert_max_num_queries(12):  # no query per member
        body = client.get(url()).json()
    assert body["total"] == 8 and body["limit"] == 50 and body["offset"] == 0
    first = body["items"][0]
    assert set(first) == {"user", "role", "joined_at"}
    assert set(first["user"]) == {"id", "email", "display_name"}
    roles = {item["user"]["id"]: item["role"] for item in body["items"]}
    assert roles[str(owner.pk)] == Role.OWNER and roles[str(viewer.pk)] == Role.VIEWER


def test_member_list_is_paginated(owner_client, org):
    for _ in range(3):
        user_with_role(org, Role.MEMBER)
    body = owner_client.get(url() + "?limit=2&offset=2").json()
    assert body["total"] == 4 and len(body["items"]) == 2 and body["offset"] == 2


def test_member_list_shows_only_the_current_org(owner_client, outsider):
    ids = {item["user"]["id"] for item in owner_client.get(url()).json()["items"]}
    assert str(outsider.pk) not in ids


def test_members_need_authentication(anon_client, member):
    assert_envelope(anon_client.get(url()), 401)
    assert_envelope(anon_client.get(url(member)), 401)


def test_retrieve_a_member(member_client, member):
    body = member_client.get(url(member)).json()
    assert body["user"]["id"] == str(member.pk) and body["role"] == Role.MEMBER


def test_unknown_or_foreign_member_is_404(owner_client, outsider):
    assert_envelope(owner_client.get(f"/api/v1/org/members/{uuid.uuid4()}"), 404)
    assert_envelope(owner_client.get(url(outsider)), 404)


def test_outsider_gets_404_on_every_member_route(outsider_client, owner, member):
    for target in (owner, member):
        assert_envelope(outsider_client.get(url(target)), 404)
        assert_envelope(outsider_client.patch(url(target), {"role": Role.VIEWER}), 404)
        assert_envelope(outsider_client.delete(url(target)), 404)
    assert role_of(member.memberships.first().org, member) == Role.MEMBER


# --- role changes ---------------------------------------------------------------------------------


def test_admin_changes_a_role_and_it_is_audited(org, member):
    admin, client = client_with_role(org, Role.ADMIN)
    response = client.patch(url(member), {"role": Role.VIEWER})
    assert response.status_code == 200, response.content
    assert response.json()["role"] == Role.VIEWER
    assert role_of(org, member) == Role.VIEWER
    row = AuditLog.objects.get(action="member.role_changed")
    assert row.actor == admin and row.org == org and row.entity_id == str(member.pk)
    assert row.before["role"] == Role.MEMBER and row.after["role"] == Role.VIEWER
    assert row.changes == {"role": [Role.MEMBER, Role.VIEWER]}


def test_setting_the_same_role_changes_nothing(owner_client, member):
    assert owner_client.patch(url(member), {"role": Role.MEMBER}).status_code == 200
    assert not AuditLog.objects.filter(action="member.role_changed").exists()


@pytest.mark.parametrize("payload", [{}, {"role": "KING"}, {"role": ""}, {"role": None}])
def test_bad_role_is_400(owner_client, member, org, payload):
    assert_envelope(owner_client.patch(url(member), payload), 400, "ERR_VALIDATION")
    assert role_of(org, member) == Role.MEMBER


@pytest.mark.parametrize(
    "role,status", [(Role.VIEWER, 403), (Role.MEMBER, 403), (Role.ADMIN, 200), (Role.OWNER, 200)]
)
def test_role_change_matrix(org, role, status):
    target = user_with_role(org, Role.MEMBER)
    _actor, client = client_with_role(org, role)
    response = client.patch(url(target), {"role": Role.VIEWER})
    assert response.status_code == status, response.content
    assert role_of(org, target) == (Role.VIEWER if status == 200 else Role.MEMBER)
    if status == 403:
        assert_envelope(response, 403, "ERR_ROLE_REQUIRED")


@pytest.mark.parametrize("role,status", [(Role.ADMIN, 403), (Role.OWNER, 200)])
def test_only_an_owner_grants_owner(org, member, role, status):
    _actor, client = client_with_role(org, role)
    response = client.patch(url(member), {"role": Role.OWNER})
    assert response.status_code == status, response.content
    if status == 403:
        assert_envelope(response, 403, "ERR_ROLE_REQUIRED")
        assert response.json()["error"]["details"]["required_role"] == Role.OWNER


@pytest.mark.parametrize("role,status", [(Role.ADMIN, 403), (Role.OWNER, 200)])
def test_only_an_owner_changes_an_owner(org, owner, role, status):
    _actor, client = client_with_role(org, role)
    response = client.patch(url(owner), {"role": Role.ADMIN})
    assert response.status_code == status, response.content
    assert role_of(org, owner) == (Role.ADMIN if status == 200 else Role.OWNER)


def test_the_only_owner_cannot_demote_themself(owner_client, owner, org):
    assert_envelope(owner_client.patch(url(owner), {"role": Role.ADMIN}), 409, "ERR_LAST_OWNER")
    assert role_of(org, owner) == Role.OWNER
    assert not AuditLog.objects.filter(action="member.role_changed").exists()


def test_an_owner_may_step_down_when_another_owner_remains(owner_client, owner, org):
    user_with_role(org, Role.OWNER)
    assert owner_client.patch(url(owner), {"role": Role.MEMBER}).status_code == 200
    assert role_of(org, owner) == Role.MEMBER


def test_members_key_scope_limits_role_changes(org, owner, member):
    _key, raw = service_key(org, owner, Role.OWNER, scopes=["members:read"])
    client = APIClient(HTTP_AUTHORIZATION=f"Bearer {raw}")
    assert client.get(url()).status_code == 200
    assert_envelope(client.patch(url(member), {"role": Role.VIEWER}), 403, "ERR_SCOPE_REQUIRED")


def test_a_personal_key_acts_with_its_users_role(org, member, owner):
    _key, raw = personal_key(org, member)
    client = APIClient(HTTP_AUTHORIZATION=f"Bearer {raw}")
    assert_envelope(client.patch(url(owner), {"role": Role.VIEWER}), 403, "ERR_ROLE_REQUIRED")


# --- removal and leaving --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "role,status", [(Role.VIEWER, 403), (Role.MEMBER, 403), (Role.ADMIN, 204), (Role.OWNER, 204)]
)
def test_remove_member_matrix(org, role, status):
    target = user_with_role(org, Role.MEMBER)
    _actor, client = client_with_role(org, role)
    response = client.delete(url(target))
    assert response.status_code == status, response.content
    assert Membership.objects.filter(org=org, user=target).exists() == (status != 204)
    if status == 403:
        assert_envelope(response, 403, "ERR_ROLE_REQUIRED")


def test_removing_a_member_audits_and_cleans_up(org, owner_client, owner, member, other_org):
    group = GroupFactory(org=org)
    add_to_group(group, member)
    MembershipFactory(org=other_org, user=member, role=Role.MEMBER)
    foreign_group = GroupFactory(org=other_org)
    add_to_group(foreign_group, member)
    User.objects.filter(pk=member.pk).update(active_org=org)

    assert owner_client.delete(url(member)).status_code == 204

    assert not Membership.objects.filter(org=org, user=member).exists()
    assert not GroupMembership.objects.filter(group=group, user=member).exists()
    assert GroupMembership.objects.filter(group=foreign_group, user=member).exists()
    member.refresh_from_db()
    assert member.active_org_id is None
    row = AuditLog.objects.get(action="member.removed")
    assert row.actor == owner and row.org == org and row.entity_id == str(member.pk)
    assert row.before["role"] == Role.MEMBER and row.after == {"left": False}


def test_removal_keeps_an_active_org_that_points_elsewhere(org, owner_client, member, other_org):
    MembershipFactory(org=other_org, user=member)
    User.objects.filter(pk=member.pk).update(active_org=other_org)
    assert owner_client.delete(url(member)).status_code == 204
    member.refresh_from_db()
    assert member.active_org_id == other_org.pk


def test_a_removed_members_personal_key_fails_at_once(org, owner_client, member):
    _key, raw = personal_key(org, member)
    key_client = APIClient(HTTP_AUTHORIZATION=f"Bearer {raw}")
    assert key_client.get("/api/v1/org").status_code == 200
    assert owner_client.delete(url(member)).status_code == 204
    assert_envelope(key_client.get("/api/v1/org"), 401, "ERR_KEY_REVOKED")


@pytest.mark.parametrize("role", [Role.VIEWER, Role.MEMBER, Role.ADMIN])
def test_any_member_may_leave(org, owner, role):
    user, client = client_with_role(org, role)
    assert client.delete(url(user)).status_code == 204
    assert not Membership.objects.filter(org=org, user=user).exists()
    assert AuditLog.objects.get(action="member.removed").after == {"left": True}


def test_an_owner_may_leave_when_another_owner_remains(org, owner_client, owner):
    user_with_role(org, Role.OWNER)
    assert owner_client.delete(url(owner)).status_code == 204


def test_the_last_owner_can_neither_leave_nor_be_removed(org, owner_client, owner):
    assert_envelope(owner_client.delete(url(owner)), 409, "ERR_LAST_OWNER")
    assert Membership.objects.filter(org=org, user=owner).exists()


@pytest.mark.parametrize("role,status", [(Role.ADMIN, 403), (Role.OWNER, 204)])
def test_only_an_owner_removes_an_owner(org, owner, role, status):
    _actor, client = client_with_role(org, role)
    response = client.delete(url(owner))
    assert response.status_code == status, response.content
    if status == 403:
        assert_envelope(response, 403, "ERR_ROLE_REQUIRED")


def test_a_service_key_is_not_its_creator_leaving(org, member):
    _key, raw = service_key(org, member, Role.VIEWER)
    client = APIClient(HTTP_AUTHORIZATION=f"Bearer {raw}")
    assert_envelope(client.delete(url(member)), 403, "ERR_ROLE_REQUIRED")
    assert Membership.objects.filter(org=org, user=member).exists()


def test_removing_someone_who_is_not_a_member_is_404(owner_client):
    assert_envelope(owner_client.delete(f"/api/v1/org/members/{uuid.uuid4()}"), 404)


# --- last owner under concurrency -----------------------------------------------------------------


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_two_owners_demoting_each_other_at_once_leave_one_owner():
    org = OrganizationFactory()
    first = user_with_role(org, Role.OWNER)
    second = user_with_role(org, Role.OWNER)
    barrier = threading.Barrier(2)
    outcomes: list[str] = []

    def demote(actor, target):
        try:
            barrier.wait(timeout=5)
            member_update_role(
                org=org, actor=actor, actor_role=Role.OWNER, user_id=target.pk, role=Role.ADMIN
            )
            outcomes.append("ok")
        except LastOwnerError:
            outcomes.append("last_owner")
        finally:
            connection.close()

    threads = [
        threading.Thread(target=demote, args=(first, second)),
        threading.Thread(target=demote, args=(second, first)),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=20)
    assert sorted(outcomes) == ["last_owner", "ok"]
    assert Membership.objects.filter(org=org, role=Role.OWNER).count() == 1


@pytest.mark.parametrize("role", ROLES)
def test_every_role_reads_members(org, role):
    _user, client = client_with_role(org, role)
    assert client.get(url()).status_code == 200


def test_member_session_without_org_is_403(db):
    from tests.factories import UserFactory

    client = client_for(UserFactory())
    assert_envelope(client.get(url()), 403, "ERR_NO_ORGANISATION")
