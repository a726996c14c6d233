"""Helpers for the organisation, member, invite and group tests: members of any role, their
clients, invites with known tokens, groups, and personal API keys."""

from __future__ import annotations

import factory

from accounts import keys
from accounts.models import ApiKey, Group, GroupMembership, Membership, Role
from accounts.services.invites import invite_create
from tests.conftest import client_for
from tests.factories import MembershipFactory, UserFactory

ROLES = [Role.VIEWER, Role.MEMBER, Role.ADMIN, Role.OWNER]


class GroupFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Group

    name = factory.Sequence(lambda n: f"Group {n}")


def user_with_role(org, role, **user_fields):
    """A new user who is a member of ``org`` with ``role``."""
    user = UserFactory(**user_fields)
    MembershipFactory(org=org, user=user, role=role)
    return user


def client_with_role(org, role):
    """(user, logged-in client) for a new member of ``org`` with ``role``."""
    user = user_with_role(org, role)
    return user, client_for(user)


def add_to_group(group, user):
    return GroupMembership.objects.create(group=group, user=user)


def make_invite(org, email="invitee@example.com", role=Role.MEMBER, invited_by=None):
    """(invite, raw token) through the real service."""
    return invite_create(org=org, email=email, role=role, invited_by=invited_by)


def personal_key(org, user, **fields):
    """(ApiKey, raw key string) of a personal key for ``user`` in ``org``."""
    secret = keys.new_secret()
    public_id = keys.new_public_id()
    key = ApiKey.objects.create(
        public_id=public_id,
        secret_hash=keys.hash_secret(secret),
        kind="personal",
        org=org,
        user=user,
        name="k",
        **fields,
    )
    return key, keys.format_key("personal", public_id, secret)


def service_key(org, user, role, **fields):
    """(ApiKey, raw key string) of a service key with ``role`` created by ``user``."""
    secret = keys.new_secret()
    public_id = keys.new_public_id()
    key = ApiKey.objects.create(
        public_id=public_id,
        secret_hash=keys.hash_secret(secret),
        kind="service",
        org=org,
        user=user,
        role=role,
        name="svc",
        **fields,
    )
    return key, keys.format_key("service", public_id, secret)


def role_of(org, user):
    return Membership.objects.filter(org=org, user=user).values_list("role", flat=True).first()
