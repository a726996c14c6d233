"""Writes a person makes about themselves: profile, active org, data export, account deletion."""

from __future__ import annotations

import zoneinfo
from functools import lru_cache
from typing import Any
from uuid import UUID

from django.conf import settings
from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import transaction

from accounts.models import Membership, Organization, Role, User
from accounts.selectors.me import USER_EXPORT_JOB, my_membership_get
from accounts.services.audit import audit_record
from core.errors import ConflictError, ValidationError
from core.models import Job
from core.services import job_create

PROFILE_FIELDS = ("display_name", "avatar_url", "language", "timezone")


@lru_cache(maxsize=1)
def known_timezones() -> frozenset[str]:
    """IANA zone names this Python knows (read once: the lookup scans the zone database)."""
    return frozenset(zoneinfo.available_timezones())


@lru_cache(maxsize=1)
def known_languages() -> frozenset[str]:
    """Language codes Django knows (``en``, ``pt-br``…), lower case."""
    return frozenset(code.lower() for code, _name in settings.LANGUAGES)


def normalised_language(value: str) -> str | None:
    """``"en-GB"`` → ``"en-gb"``; None for a code Django does not know (nor its base language)."""
    code = (value or "").strip().replace("_", "-").lower()
    if code in known_languages() or code.split("-", 1)[0] in known_languages():
        return code
    return None


def _profile_of(user: User) -> dict[str, Any]:
    return {field: getattr(user, field) for field in PROFILE_FIELDS}


@transaction.atomic
def user_update(*, user: User, data: dict[str, Any]) -> User:
    """Change one's own profile: display name, avatar URL, language, timezone."""
    unknown = set(data) - set(PROFILE_FIELDS)
    if unknown:
        raise ValidationError(
            "Only the profile fields may change.",
            details={"fields": {field: ["This field cannot be changed."] for field in sorted(unknown)}},
        )
    if "language" in data:
        language = normalised_language(data["language"])
        if language is None:
            raise ValidationError(
                "Unknown language.",
                details={"fields": {"language": ["Give a language code such as en or fr."]}},
            )
        data = {**data, "language": language}
    if "timezone" in data and data["timezone"] not in known_timezones():
        raise ValidationError(
            "Unknown timezone.", details={"fields": {"timezone": ["Give an IANA zone such as Europe/Paris."]}}
        )
    before = _profile_of(user)
    for field, value in data.items():
        setattr(user, field, value)
    try:
        user.full_clean(exclude=["password"])
    except DjangoValidationError as exc:
        raise ValidationError("The profile is not valid.", details={"fields": exc.message_dict}) from exc
    after = _profile_of(user)
    if after != before:
        user.save(update_fields=[field for field in PROFILE_FIELDS if before[field] != after[field]])
        audit_record(
            org=None, actor=user, action="user.profile_updated", entity=user, before=before, after=after
        )
    return user


@transaction.atomic
def user_active_org_set(*, user: User, org_id: UUID | str) -> Membership:
    """Choose the org a session acts in; only an org one is a member of (else 404)."""
    membership = my_membership_get(user=user, org_id=org_id)
    before = {"active_org": str(user.active_org_id) if user.active_org_id else None}
    user.active_org = membership.org
    user.save(update_fields=["active_org"])
    audit_record(
        org=membership.org,
        actor=user,
        action="user.active_org_changed",
        entity=user,
        before=before,
        after={"active_org": str(membership.org_id)},
    )
    return membership


@transaction.atomic
def user_export_start(*, user: User) -> Job:
    """Start building the GDPR archive of one's data (a platform job the person alone can see)."""
    job = job_create(kind=USER_EXPORT_JOB, org=None, actor=user, payload={}, message="Queued")
    audit_record(org=None, actor=user, action="user.export_requested", entity=job, entity_type="job")
    return job


@transaction.atomic
def user_delete(*, user: User) -> None:
    """Erase one's account.

    Refused (409 ``ERR_SOLE_OWNER``) while the person is the only OWNER of an org that has other
    members: they must hand the org over first. Orgs where they are the only member are deleted
    with the account: they stop answering at once and the org-deletion job removes their data.
    Audit rows survive with the actor's address (``actor_email``).
    """
    from accounts.services.orgs import org_delete_request

    # Lock the person's orgs so that a concurrent role change or removal cannot slip in between
    # the check and the deletion.
    orgs = list(
        Organization.objects.select_for_update()
        .filter(
            pk__in=Membership.objects.filter(user=user).values("org_id"),
            deletion_requested_at__isnull=True,
        )
        .order_by("pk")
    )
    blocking: list[Organization] = []
    alone_in: list[Organization] = []
    for org in orgs:
        memberships = Membership.objects.filter(org=org)
        if not memberships.exclude(user=user).exists():
            alone_in.append(org)
            continue
        mine = memberships.get(user=user)
        if mine.role == Role.OWNER and not memberships.filter(role=Role.OWNER).exclude(user=user).exists():
            blocking.append(org)
    if blocking:
        raise ConflictError(
            "You are the only owner of an organisation with other members; make someone else an "
            "owner (or delete the organisation) first.",
            code="ERR_SOLE_OWNER",
            details={"orgs": [{"id": str(org.pk), "name": org.name} for org in blocking]},
        )
    for org in alone_in:
        org_delete_request(org=org, actor=user)
    audit_record(
        org=None,
        actor=user,
        action="user.deleted",
        entity=user,
        before={"email": user.email, "display_name": user.display_name},
        after={"deleted_orgs": [str(org.pk) for org in alone_in]},
    )
    user.delete()
