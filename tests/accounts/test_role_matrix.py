"""The role matrix: every role against every role-gated endpoint of the accounts API.

A caller below the least role gets 403 ``ERR_ROLE_REQUIRED``; a caller at or above it gets through
(whatever the endpoint then answers, it is not a role refusal). Each trial builds its own target
rows, so a delete by one role cannot hide the outcome for the next.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pytest

from accounts.models import Group, GroupMembership, Invite, Role
from accounts.services.invites import invite_create
from tests.conftest import client_for
from tests.factories import MembershipFactory

ROLES = [Role.VIEWER, Role.MEMBER, Role.ADMIN, Role.OWNER]


@dataclass
class Case:
    name: str
    least: str
    request: Callable  # (org, owner) -> (method, path, body)


def _member(org):
    return MembershipFactory(org=org, role=Role.MEMBER).user


def _group(org, name="G"):
    return Group.objects.create(org=org, name=f"{name}-{Group.objects.count()}")


def _invite(org, owner) -> Invite:
    invite, _token = invite_create(
        org=org, email=f"i{Invite.objects.count()}@example.com", role=Role.MEMBER, invited_by=owner
    )
    return invite


def _group_with_member(org):
    group, user = _group(org), _member(org)
    GroupMembership.objects.create(group=group, user=user)
    return group, user


CASES = [
    Case("update org", Role.ADMIN, lambda org, owner: ("patch", "/api/v1/org", {"name": "Renamed"})),
    Case("delete org", Role.OWNER, lambda org, owner: ("delete", "/api/v1/org", None)),
    Case(
        "change a member's role",
        Role.ADMIN,
        lambda org, owner: ("patch", f"/api/v1/org/members/{_member(org).pk}", {"role": "VIEWER"}),
    ),
    Case(
        "remove a member",
        Role.ADMIN,
        lambda org, owner: ("delete", f"/api/v1/org/members/{_member(org).pk}", None),
    ),
    Case("list invites", Role.ADMIN, lambda org, owner: ("get", "/api/v1/org/invites", None)),
    Case(
        "invite",
        Role.ADMIN,
        lambda org, owner: ("post", "/api/v1/org/invites", {"email": "new@example.com", "role": "MEMBER"}),
    ),
    Case(
        "revoke an invite",
        Role.ADMIN,
        lambda org, owner: ("delete", f"/api/v1/org/invites/{_invite(org, owner).pk}", None),
    ),
    Case("create a group", Role.ADMIN, lambda org, owner: ("post", "/api/v1/org/groups", {"name": "New"})),
    Case(
        "rename a group",
        Role.ADMIN,
        lambda org, owner: ("patch", f"/api/v1/org/groups/{_group(org).pk}", {"name": "Renamed"}),
    ),
    Case(
        "delete a group",
        Role.ADMIN,
        lambda org, owner: ("delete", f"/api/v1/org/groups/{_group(org).pk}", None),
    ),
    Case(
        "add a group member",
        Role.ADMIN,
        lambda org, owner: (
            "post",
            f"/api/v1/org/groups/{_group(org).pk}/members",
            {"user_id": str(_member(org).pk)},
        ),
    ),
    Case(
        "remove a group member",
        Role.ADMIN,
        lambda org, owner: (
            lambda g_u: ("delete", f"/api/v1/org/groups/{g_u[0].pk}/members/{g_u[1].pk}", None)
        )(_group_with_member(org)),
    ),
    Case(
        "create a personal key", Role.MEMBER, lambda org, owner: ("post", "/api/v1/api-keys", {"name": "k"})
    ),
    Case(
        "create a service key",
        Role.ADMIN,
        lambda org, owner: ("post", "/api/v1/api-keys", {"name": "s", "kind": "service", "role": "VIEWER"}),
    ),
    Case("read the activity log", Role.MEMBER, lambda org, owner: ("get", "/api/v1/activity", None)),
    Case("read security events", Role.OWNER, lambda org, owner: ("get", "/api/v1/security-events", None)),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
@pytest.mark.parametrize("role", ROLES)
def test_role_matrix(case: Case, role: str, org, owner):
    method, path, body = case.request(org, owner)
    caller = owner if role == Role.OWNER else MembershipFactory(org=org, role=role).user
    client = client_for(caller)
    kwargs = {"format": "json"} if body is not None else {}
    response = (
        getattr(client, method)(path, body, **kwargs) if body is not None else getattr(client, method)(path)
    )
    refused = response.status_code == 403 and response.json()["error"]["code"] == "ERR_ROLE_REQUIRED"
    if Role.rank(role) < Role.rank(case.least):
        assert refused, f"{role} should be refused: {response.status_code} {response.content[:200]}"
    else:
        assert not refused, f"{role} should pass the role check: {response.content[:200]}"
        assert response.status_code < 400, f"{role}: {response.status_code} {response.content[:300]}"
