"""Writes of organisations and their memberships: create, rename, delete (through a job), change
a member's role, remove a member.

Two rules are guarded here and nowhere else: an org always keeps at least one OWNER (checked
under a row lock on the org's OWNER memberships, so two concurrent demotions cannot both pass),
and only an OWNER may grant the OWNER role or change or remove an OWNER.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from typing import Any

from django.db import IntegrityError, models, transaction
from django.utils import timezone
from django.utils.text import slugify

from accounts import auth_cache
from accounts.models import GroupMembership, Membership, Organization, Role, User
from accounts.services.audit import audit_record
from core.errors import (
    ApplicationError,
    ConflictError,
    NotFoundError,
    PermissionDeniedError,
    ValidationError,
)
from core.models import Job
from core.services import job_create

ORG_DELETE_JOB_KIND = "accounts.org_delete"
SLUG_MAX_LENGTH = 80
# Rows deleted per statement while purging an org, so no single statement holds locks for long.
PURGE_BATCH_SIZE = 500


class LastOwnerError(ConflictError):
    code = "ERR_LAST_OWNER"
    message = "An organisation must keep at least one owner."


def owner_required_error(actor_role: str | None, message: str) -> PermissionDeniedError:
    """The 403 for an action only an OWNER may take (the same shape HasOrgRole uses)."""
    return PermissionDeniedError(
        message, code="ERR_ROLE_REQUIRED", details={"required_role": Role.OWNER, "role": actor_role}
    )


def _org_snapshot(org: Organization) -> dict[str, Any]:
    return {"name": org.name, "slug": org.slug}


def _unique_slug(name: str) -> str:
    """``slugify(name)``, with ``-2``, ``-3``… appended while another org already has it."""
    base = slugify(name)[: SLUG_MAX_LENGTH - 10].strip("-") or "org"
    taken = set(Organization.objects.filter(slug__startswith=base).values_list("slug", flat=True))
    if base not in taken:
        return base
    for n in range(2, 1000):
        candidate = f"{base}-{n}"
        if candidate not in taken:
            return candidate
    return f"{base}-{secrets.token_hex(4)}"


def _clean_name(name: str) -> str:
    name = (name or "").strip()
    if not name:
        raise ValidationError("The organisation needs a name.", details={"fields": {"name": ["Required."]}})
    return name


@transaction.atomic
def org_create(*, name: str, owner: User, actor: User | None = None) -> Organization:
    """A new org with ``owner`` as its OWNER; it becomes their active org if they have none."""
    name = _clean_name(name)
    org = None
    for _attempt in range(5):
        org = Organization(name=name, slug=_unique_slug(name))
        org.full_clean(validate_unique=False)
        try:
            with transaction.atomic():  # a savepoint: a concurrent create may take the slug first
                org.save()
            break
        except IntegrityError:
            org = None
    if org is None:
        raise ConflictError("Could not pick a unique slug; try again.", code="ERR_SLUG_CONFLICT")
    membership = Membership(org=org, user=owner, role=Role.OWNER)
    membership.full_clean()
    membership.save()
    if owner.active_org_id is None:
        User.objects.filter(pk=owner.pk, active_org__isnull=True).update(active_org=org)
        owner.active_org = org
    audit_record(
        org=org,
        actor=actor or owner,
        action="org.created",
        entity=org,
        after={**_org_snapshot(org), "owner": str(owner.pk)},
    )
    return org


@transaction.atomic
def org_update(*, org: Organization, actor: User | None, name: str) -> Organization:
    """Rename an org (its slug stays, so links keep working)."""
    org = Organization.objects.select_for_update().get(pk=org.pk)
    before = _org_snapshot(org)
    org.name = _clean_name(name)
    org.full_clean(validate_unique=False)
    if before["name"] != org.name:
        org.save(update_fields=["name", "updated_at"])
        audit_record(
            org=org, actor=actor, action="org.updated", entity=org, before=before, after=_org_snapshot(org)
        )
    return org


@transaction.atomic
def org_delete_request(*, org: Organization, actor: User | None) -> Job:
    """Start deleting an org: it stops answering at once, and a job removes its data.

    Keys and sessions stop acting in the org as soon as ``deletion_requested_at`` is set (the
    authentication layer skips such orgs). The job has no org, so it outlives the cascade and stays
    visible to the actor on ``/api/v1/jobs/{id}``.
    """
    now = timezone.now()
    marked = Organization.objects.filter(pk=org.pk, deletion_requested_at__isnull=True).update(
        deletion_requested_at=now
    )
    if not marked:
        raise ConflictError("This organisation is already being deleted.", code="ERR_ORG_DELETION_PENDING")
    auth_cache.invalidate()  # an UPDATE sends no post_save: its keys must stop working now
    org.deletion_requested_at = now
    audit_record(
        org=org,
        actor=actor,
        action="org.deleted",
        entity=org,
        before=_org_snapshot(org),
        after={"deletion_requested_at": now},
    )
    return job_create(
        kind=ORG_DELETE_JOB_KIND,
        org=None,
        actor=actor if actor is not None and actor.is_authenticated else None,
        payload={"org_id": str(org.pk), "org_name": org.name},
        message=f"Deleting {org.name}",
    )


def _cascading_relations() -> list[models.ForeignObjectRel]:
    """Every relation whose rows go when an org goes (what ``on_delete=CASCADE`` points at it)."""
    return [
        rel
        for rel in Organization._meta.related_objects
        if not rel.many_to_many and rel.on_delete is models.CASCADE
    ]


def org_purge(
    *, org_id: Any, progress: Callable[[int, str], bool] | None = None, actor: User | None = None
) -> dict[str, Any]:
    """Delete an org marked for deletion and every row that cascades from it, in batches.

    Idempotent: an org already gone answers ``{"deleted": False}``. Refuses an org that was never
    marked, so a stray job cannot delete a live tenant. Returns what was removed, per table.
    """
    org = Organization.objects.filter(pk=org_id).first()
    if org is None:
        return {"deleted": False, "reason": "already gone", "rows": {}}
    if org.deletion_requested_at is None:
        raise ApplicationError(
            "This organisation was not marked for deletion.", code="ERR_ORG_NOT_MARKED", status_code=409
        )
    report = progress or (lambda percent, message: True)
    User.objects.filter(active_org=org).update(active_org=None)
    relations = _cascading_relations()
    removed: dict[str, int] = {}
    for index, rel in enumerate(relations):
        model = rel.related_model
        label = model._meta.label
        if not report(int(90 * index / max(len(relations), 1)), f"Deleting {label}"):
            return {"deleted": False, "reason": "cancelled", "rows": removed}
        rows = model._base_manager.filter(**{rel.field.name: org})
        while True:
            batch = list(rows.values_list("pk", flat=True)[:PURGE_BATCH_SIZE])
            if not batch:
                break
            with transaction.atomic():
                _total, per_model = model._base_manager.filter(pk__in=batch).delete()
            for name, count in per_model.items():
                removed[name] = removed.get(name, 0) + count
    report(95, "Deleting the organisation")
    with transaction.atomic():
        audit_record(
            org=org,
            actor=actor,
            action="org.purged",
            entity=org,
            before=_org_snapshot(org),
            after={"rows": removed},
        )
        _total, per_model = Organization.objects.filter(pk=org.pk).delete()
    for name, count in per_model.items():
        removed[name] = removed.get(name, 0) + count
    return {"deleted": True, "org_id": str(org_id), "org_name": org.name, "rows": removed}


def _lock_owners(org: Organization) -> list[Membership]:
    """Lock the org's OWNER memberships for the rest of the transaction and return them.

    Concurrent demotions/removals queue up here; under READ COMMITTED the waiting transaction
    re-reads the rows once the first commits, so it sees the owner that was just demoted.
    """
    return list(Membership.objects.select_for_update().filter(org=org, role=Role.OWNER).order_by("pk"))


def _member_snapshot(membership: Membership) -> dict[str, Any]:
    return {"user": str(membership.user_id), "email": membership.user.email, "role": membership.role}


@transaction.atomic
def member_update_role(
    *, org: Organization, actor: User | None, actor_role: str | None, user_id: Any, role: str
) -> Membership:
    """Change a member's role; the last OWNER cannot be demoted and only OWNERs touch OWNER."""
    if role not in Role.values:
        raise ValidationError(
            "Unknown role.", details={"fields": {"role": [f"Must be one of {Role.values}."]}}
        )
    owners = _lock_owners(org)
    membership = (
        Membership.objects.select_for_update().select_related("user").filter(org=org, user_id=user_id).first()
    )
    if membership is None:
        raise NotFoundError("Member not found.")
    if membership.role == role:
        return membership
    if (role == Role.OWNER or membership.role == Role.OWNER) and actor_role != Role.OWNER:
        raise owner_required_error(actor_role, "Only an owner may grant the owner role or change an owner.")
    if membership.role == Role.OWNER and len(owners) <= 1:
        raise LastOwnerError("The last owner cannot be demoted; make someone else an owner first.")
    before = _member_snapshot(membership)
    membership.role = role
    membership.full_clean(validate_constraints=False)
    membership.save(update_fields=["role"])
    audit_record(
        org=org,
        actor=actor,
        action="member.role_changed",
        entity=membership,
        entity_type="member",
        entity_id=membership.user_id,
        before=before,
        after=_member_snapshot(membership),
    )
    return membership


@transaction.atomic
def member_remove(
    *, org: Organization, actor: User | None, actor_role: str | None, user_id: Any, leaving: bool = False
) -> None:
    """Remove someone from an org (or let them leave): out of its groups, off it as active org.

    ``leaving`` is True when members remove themselves, which any role may do; removing an OWNER
    otherwise needs an OWNER. The last OWNER can never go. Their personal keys stop working at
    once, because key authentication checks the current membership.
    """
    owners = _lock_owners(org)
    membership = (
        Membership.objects.select_for_update().select_related("user").filter(org=org, user_id=user_id).first()
    )
    if membership is None:
        raise NotFoundError("Member not found.")
    if membership.role == Role.OWNER and not leaving and actor_role != Role.OWNER:
        raise owner_required_error(actor_role, "Only an owner may remove an owner.")
    if membership.role == Role.OWNER and len(owners) <= 1:
        raise LastOwnerError("The last owner cannot leave or be removed; make someone else an owner first.")
    before = _member_snapshot(membership)
    GroupMembership.objects.filter(group__org=org, user_id=user_id).delete()
    User.objects.filter(pk=user_id, active_org=org).update(active_org=None)
    membership.delete()
    audit_record(
        org=org,
        actor=actor,
        action="member.removed",
        entity_type="member",
        entity_id=user_id,
        before=before,
        after={"left": leaving},
    )
