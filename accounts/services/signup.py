"""The signup policy, the waitlist and what happens right after a signup.

Staff choose how people get in (``open``, ``invite_only``, ``waitlist``, ``closed``); the allauth
adapters ask :func:`signup_allowed` before any account (email or social) is created, and the
``user_signed_up`` receiver hands over to :func:`signup_complete`, which accepts the pending
invite or gives the newcomer an org of their own.

The few reads of this area (the settings row, the waitlist) live here too, next to the rules they
serve, because they have no other reader.
"""

from __future__ import annotations

import logging
from typing import Any
from uuid import UUID

from django.db import IntegrityError, transaction
from django.db.models import QuerySet
from django.utils import timezone

from accounts.models import Invite, Organization, PlatformSettings, Role, SignupMode, User, WaitlistEntry
from accounts.services.audit import audit_record
from core.errors import ApplicationError, ConflictError, NotFoundError, ValidationError

logger = logging.getLogger(__name__)

# Modes in which only a pending invite opens the door.
INVITE_MODES = (SignupMode.INVITE_ONLY, SignupMode.WAITLIST)


# --- Reads --------------------------------------------------------------------------------------


def platform_settings_get() -> PlatformSettings:
    """The settings row; an unsaved row with the defaults while nobody has written it yet."""
    return PlatformSettings.objects.filter(pk=1).first() or PlatformSettings(pk=1)


def platform_settings_lock() -> PlatformSettings:
    """The settings row, created if missing, locked until the caller's transaction ends.

    The row is created in its own statement first so that concurrent callers all find it and then
    queue on the row lock (instead of racing to insert it).
    """
    PlatformSettings.objects.get_or_create(pk=1)
    return PlatformSettings.objects.select_for_update().get(pk=1)


def pending_invite_get(*, token: str | None) -> Invite | None:
    """The invite behind ``token`` if it can still be used: not expired, accepted or revoked."""
    if not token:
        return None
    from accounts.selectors.orgs import invite_by_token

    invite = invite_by_token(token=token)
    if invite is None:
        return None
    if invite.accepted_at is not None or invite.revoked_at is not None:
        return None
    if invite.expires_at <= timezone.now():
        return None
    return invite


def waitlist_list(*, status: str | None = None) -> QuerySet[WaitlistEntry]:
    """Waitlist entries, oldest first, optionally of one status."""
    entries = WaitlistEntry.objects.select_related("decided_by").order_by("created_at", "id")
    if status:
        entries = entries.filter(status=status)
    return entries


# --- Policy -------------------------------------------------------------------------------------


def signup_allowed(*, invite_token: str | None) -> bool:
    """Whether a new account may be created now.

    ``open``: anyone; ``closed``: nobody; ``invite_only`` and ``waitlist``: only someone holding a
    pending invite (an org invite, or the platform invite an approved waitlist entry received).
    """
    mode = platform_settings_get().signup_mode
    if mode == SignupMode.OPEN:
        return True
    if mode in INVITE_MODES:
        return pending_invite_get(token=invite_token) is not None
    return False


def signup_email_allowed(*, email: str, invite_token: str | None) -> bool:
    """In the invite modes the account must use the address the invite was sent to."""
    if platform_settings_get().signup_mode not in INVITE_MODES:
        return True
    invite = pending_invite_get(token=invite_token)
    return invite is not None and invite.email.lower() == (email or "").strip().lower()


@transaction.atomic
def signup_settings_update(*, actor: User, signup_mode: str) -> PlatformSettings:
    """Change how people may sign up (staff only; the view checks)."""
    if signup_mode not in SignupMode.values:
        raise ValidationError(
            f"Unknown signup mode {signup_mode!r}.",
            details={"fields": {"signup_mode": [f"Choose one of {', '.join(SignupMode.values)}."]}},
        )
    row = platform_settings_lock()
    before = {"signup_mode": row.signup_mode}
    row.signup_mode = signup_mode
    row.full_clean()
    row.save()
    audit_record(
        org=None,
        actor=actor,
        action="signup_settings.updated",
        entity_type="platform_settings",
        entity_id=row.pk,
        before=before,
        after={"signup_mode": row.signup_mode},
    )
    return row


# --- Waitlist -----------------------------------------------------------------------------------


def waitlist_join(*, email: str, name: str = "", note: str = "") -> tuple[WaitlistEntry, bool]:
    """Put someone on the waitlist; ``(entry, created)``. Asking again returns the first entry.

    Only while signup is by waitlist (409 ``ERR_WAITLIST_CLOSED`` otherwise).
    """
    if platform_settings_get().signup_mode != SignupMode.WAITLIST:
        raise ConflictError("The waitlist is not open.", code="ERR_WAITLIST_CLOSED")
    email = (email or "").strip().lower()
    existing = WaitlistEntry.objects.filter(email__iexact=email).first()
    if existing is not None:
        return existing, False
    entry = WaitlistEntry(email=email, name=name or "", note=note or "")
    entry.full_clean(validate_unique=False)
    try:
        with transaction.atomic():
            entry.save()
            audit_record(
                org=None,
                actor=None,
                action="waitlist.joined",
                entity=entry,
                after={"email": entry.email, "name": entry.name},
            )
    except IntegrityError:  # the same address, sent twice at once: the other request won
        return WaitlistEntry.objects.get(email__iexact=email), False
    return entry, True


def _waitlist_entry_for_decision(entry_id: UUID | str) -> WaitlistEntry:
    entry = WaitlistEntry.objects.select_for_update().filter(pk=entry_id).first()
    if entry is None:
        raise NotFoundError("Waitlist entry not found.")
    if entry.status != WaitlistEntry.Status.PENDING:
        raise ConflictError(
            f"This entry was already {entry.status}.",
            code="ERR_ALREADY_DECIDED",
            details={"status": entry.status},
        )
    return entry


@transaction.atomic
def waitlist_approve(*, entry_id: UUID | str, actor: User) -> WaitlistEntry:
    """Approve an entry: a platform signup invite is created and emailed to the address."""
    from accounts.services.invites import invite_create

    entry = _waitlist_entry_for_decision(entry_id)
    invite, _raw_token = invite_create(org=None, email=entry.email, role=Role.MEMBER, invited_by=actor)
    entry.status = WaitlistEntry.Status.APPROVED
    entry.decided_at = timezone.now()
    entry.decided_by = actor
    entry.invite = invite
    entry.full_clean()
    entry.save()
    audit_record(
        org=None,
        actor=actor,
        action="waitlist.approved",
        entity=entry,
        before={"status": WaitlistEntry.Status.PENDING},
        after={"status": entry.status, "email": entry.email, "invite": str(invite.pk)},
    )
    return entry


@transaction.atomic
def waitlist_reject(*, entry_id: UUID | str, actor: User) -> WaitlistEntry:
    """Reject an entry; nothing is sent."""
    entry = _waitlist_entry_for_decision(entry_id)
    entry.status = WaitlistEntry.Status.REJECTED
    entry.decided_at = timezone.now()
    entry.decided_by = actor
    entry.full_clean()
    entry.save()
    audit_record(
        org=None,
        actor=actor,
        action="waitlist.rejected",
        entity=entry,
        before={"status": WaitlistEntry.Status.PENDING},
        after={"status": entry.status, "email": entry.email},
    )
    return entry


# --- After a signup -----------------------------------------------------------------------------


def own_org_name(user: User) -> str:
    """The name of a newcomer's first org: "Ada's org"."""
    who = (user.display_name or user.email)[:180]
    return f"{who}'s org"


@transaction.atomic
def signup_complete(*, user: User, invite_token: str | None) -> dict[str, Any]:
    """Finish a signup: join the invited org, or get an org of one's own.

    - A pending org invite is accepted: the user joins that org with the invited role.
    - A platform invite (an approved waitlist entry) is accepted and the user gets their own org,
      since that invite's whole point was to let them use the platform.
    - Without an invite the user gets their own org only when signup is open; in the other modes
      they arrived some other way (staff created them, a social login linked) and stay org-less.

    Returns what happened, for logs and tests: ``{"joined": org | None, "created": org | None}``.
    """
    from accounts.services.invites import invite_accept
    from accounts.services.orgs import org_create

    joined: Organization | None = None
    platform_invite = False
    invite = pending_invite_get(token=invite_token)
    if invite is not None:
        try:
            membership = invite_accept(token=invite_token, user=user)
        except ApplicationError as exc:  # e.g. the invite names another address
            logger.warning("signup of %s could not accept its invite: %s", user.pk, exc.code)
        else:
            joined = membership.org if membership is not None else None
            platform_invite = invite.org_id is None
    created: Organization | None = None
    mode = platform_settings_get().signup_mode
    if joined is None and (platform_invite or mode == SignupMode.OPEN):
        created = org_create(name=own_org_name(user), owner=user, actor=user)
    audit_record(
        org=joined or created,
        actor=user,
        action="user.signed_up",
        entity=user,
        after={
            "email": user.email,
            "signup_mode": mode,
            "invite": str(invite.pk) if invite is not None else None,
            "joined_org": str(joined.pk) if joined else None,
            "created_org": str(created.pk) if created else None,
        },
    )
    return {"joined": joined, "created": created}
