"""Writes of groups: named sets of an org's members (create, rename, delete, add and remove
members). A group only ever holds members of its own org."""

from __future__ import annotations

from typing import Any

from django.db import IntegrityError, transaction

from accounts.models import Group, GroupMembership, Membership, Organization, User
from accounts.services.audit import audit_record
from core.errors import ConflictError, NotFoundError, ValidationError

_UNSET: Any = object()


def _group_snapshot(group: Group) -> dict[str, Any]:
    return {"name": group.name, "description": group.description}


def _name_taken_error(name: str) -> ConflictError:
    return ConflictError(f"A group named {name!r} already exists.", code="ERR_GROUP_EXISTS")


def _refuse_taken_name(*, org: Organization, name: str, exclude_pk: Any = None) -> None:
    clash = Group.objects.filter(org=org, name__iexact=name)
    if exclude_pk is not None:
        clash = clash.exclude(pk=exclude_pk)
    if clash.exists():
        raise _name_taken_error(name)


def _save(group: Group, **kwargs: Any) -> None:
    """Save in a savepoint so a concurrent create of the same name becomes a clean 409."""
    try:
        with transaction.atomic():
            group.save(**kwargs)
    except IntegrityError as exc:
        raise _name_taken_error(group.name) from exc


def _clean_name(name: str) -> str:
    name = (name or "").strip()
    if not name:
        raise ValidationError("The group needs a name.", details={"fields": {"name": ["Required."]}})
    return name


@transaction.atomic
def group_create(*, org: Organization, actor: User | None, name: str, description: str = "") -> Group:
    """A new, empty group; names are unique per org (case-insensitive)."""
    name = _clean_name(name)
    _refuse_taken_name(org=org, name=name)
    group = Group(org=org, name=name, description=(description or "").strip())
    group.full_clean(validate_constraints=False)
    _save(group)
    audit_record(org=org, actor=actor, action="group.created", entity=group, after=_group_snapshot(group))
    return group


@transaction.atomic
def group_update(*, group: Group, actor: User | None, name: str = _UNSET, description: str = _UNSET) -> Group:
    """Rename a group or change its description; only the fields given change."""
    group = Group.objects.select_for_update().get(pk=group.pk)
    before = _group_snapshot(group)
    if name is not _UNSET:
        group.name = _clean_name(name)
        _refuse_taken_name(org=group.org, name=group.name, exclude_pk=group.pk)
    if description is not _UNSET:
        group.description = (description or "").strip()
    group.full_clean(validate_constraints=False)
    after = _group_snapshot(group)
    if after != before:
        _save(group, update_fields=["name", "description"])
        audit_record(
            org=group.org, actor=actor, action="group.updated", entity=group, before=before, after=after
        )
    return group


@transaction.atomic
def group_delete(*, group: Group, actor: User | None) -> None:
    """Delete a group and its memberships (the people stay in the org)."""
    before = {**_group_snapshot(group), "members": group.group_memberships.count()}
    audit_record(org=group.org, actor=actor, action="group.deleted", entity=group, before=before)
    group.delete()


@transaction.atomic
def group_member_add(*, group: Group, actor: User | None, user_id: Any) -> GroupMembership:
    """Put a member of the group's org into the group.

    The org membership row is locked so a concurrent removal from the org cannot leave a group
    holding someone who is no longer a member.
    """
    membership = (
        Membership.objects.select_for_update()
        .select_related("user")
        .filter(org=group.org, user_id=user_id)
        .first()
    )
    if membership is None:
        raise ValidationError(
            "Only members of this organisation can be added to its groups.",
            code="ERR_NOT_A_MEMBER",
            details={"fields": {"user_id": ["Not a member of this organisation."]}},
        )
    if GroupMembership.objects.filter(group=group, user_id=user_id).exists():
        raise ConflictError("This member is already in the group.", code="ERR_ALREADY_IN_GROUP")
    entry = GroupMembership(group=group, user=membership.user)
    entry.full_clean(validate_constraints=False)
    try:
        with transaction.atomic():
            entry.save()
    except IntegrityError as exc:
        raise ConflictError("This member is already in the group.", code="ERR_ALREADY_IN_GROUP") from exc
    audit_record(
        org=group.org,
        actor=actor,
        action="group.member_added",
        entity=group,
        after={"user": str(user_id), "email": membership.user.email},
    )
    return entry


@transaction.atomic
def group_member_remove(*, group: Group, actor: User | None, user_id: Any) -> None:
    """Take someone out of a group; 404 when they are not in it."""
    entry = GroupMembership.objects.select_related("user").filter(group=group, user_id=user_id).first()
    if entry is None:
        raise NotFoundError("This user is not in the group.")
    audit_record(
        org=group.org,
        actor=actor,
        action="group.member_removed",
        entity=group,
        before={"user": str(user_id), "email": entry.user.email},
    )
    entry.delete()
