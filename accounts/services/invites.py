"""Writes of invites: create (and email) one, revoke one, accept one.

A raw token exists only in the creator's answer and the email; the database keeps its SHA-256.
Acceptance is single-use under concurrency: one conditional UPDATE (``accepted_at IS NULL``)
decides the winner by its row count.
"""

from __future__ import annotations

import logging
import secrets
from datetime import timedelta

from django.conf import settings
from django.core.mail import send_mail
from django.db import IntegrityError, transaction
from django.utils import timezone

from accounts.models import Invite, Membership, Organization, Role, User
from accounts.selectors.orgs import (
    InviteStatus,
    invite_by_token,
    invite_pending_for_email,
    invite_status,
    invite_token_hash,
    membership_role,
)
from accounts.services.audit import audit_record
from accounts.services.orgs import owner_required_error
from core.errors import ApplicationError, ConflictError, NotFoundError, PermissionDeniedError, ValidationError
from core.quotas import check_limit

logger = logging.getLogger(__name__)

INVITE_TTL = timedelta(days=7)


class InviteGoneError(ApplicationError):
    """The invite existed but can no longer be used (expired or revoked)."""

    status_code = 410
    code = "ERR_INVITE_EXPIRED"
    message = "This invite has expired."


def invite_accept_url(token: str) -> str:
    """The link an invitee follows: the server-rendered invite page."""
    return f"{settings.SITE_URL.rstrip('/')}/invites/{token}"


def _invite_snapshot(invite: Invite) -> dict:
    return {"email": invite.email, "role": invite.role, "expires_at": invite.expires_at}


def _send_invite_email(*, email: str, org_name: str | None, inviter: str, role: str, url: str) -> None:
    """Send the invite; a mail server failure is logged, never turned into an error answer."""
    if org_name:
        subject = f"You are invited to join {org_name}"
        body = (
            f"{inviter} invited you to join {org_name} as {role.lower()}.\n\n"
            f"Accept the invitation here (valid for 7 days):\n{url}\n"
        )
    else:
        subject = "You are invited to join the platform"
        body = f"You may now create your account.\n\nSign up here (valid for 7 days):\n{url}\n"
    try:
        send_mail(subject, body, settings.DEFAULT_FROM_EMAIL, [email], fail_silently=False)
    except Exception:
        logger.exception("could not send the invite email to %s", email)


@transaction.atomic
def invite_create(
    *,
    org: Organization | None,
    email: str,
    role: str,
    invited_by: User | None,
    actor_role: str | None = None,
) -> tuple[Invite, str]:
    """Invite ``email`` to ``org`` with ``role`` (or, with no org, to sign up at all).

    Returns the invite and its raw token, which is never stored. The email goes out after commit.
    ``actor_role`` is the inviter's effective role (e.g. an API key's); when omitted it is read
    from the inviter's membership. Only an OWNER may invite an OWNER.
    """
    email = (email or "").strip().lower()
    if not email:
        raise ValidationError("An email address is required.", details={"fields": {"email": ["Required."]}})
    if role not in Role.values:
        raise ValidationError(
            "Unknown role.", details={"fields": {"role": [f"Must be one of {Role.values}."]}}
        )
    if org is not None:
        # One invite at a time per org: concurrent invites of one address cannot both pass the checks.
        Organization.objects.select_for_update().filter(pk=org.pk).first()
        if role == Role.OWNER and invited_by is not None:
            role_of_actor = actor_role or membership_role(org=org, user=invited_by)
            if role_of_actor != Role.OWNER:
                raise owner_required_error(role_of_actor, "Only an owner may invite an owner.")
        if Membership.objects.filter(org=org, user__email__iexact=email).exists():
            raise ConflictError("This person is already a member.", code="ERR_ALREADY_MEMBER")
        if invite_pending_for_email(org=org, email=email) is not None:
            raise ConflictError(
                "An invite for this address is still pending; revoke it to send a new one.",
                code="ERR_INVITE_PENDING",
            )
        check_limit(org=org, resource="members")  # early: the plan has no room for one more
    token = secrets.token_urlsafe(32)
    invite = Invite(
        org=org,
        email=email,
        role=role,
        token_hash=invite_token_hash(token),
        invited_by=invited_by if invited_by is not None and invited_by.is_authenticated else None,
        expires_at=timezone.now() + INVITE_TTL,
    )
    invite.full_clean()
    invite.save()
    audit_record(
        org=org, actor=invited_by, action="invite.created", entity=invite, after=_invite_snapshot(invite)
    )
    url = invite_accept_url(token)
    org_name = org.name if org is not None else None
    inviter = (invited_by.get_full_name() if invited_by is not None else "") or "Someone"
    transaction.on_commit(
        lambda: _send_invite_email(email=email, org_name=org_name, inviter=inviter, role=role, url=url)
    )
    return invite, token


@transaction.atomic
def invite_revoke(*, invite: Invite, actor: User | None) -> Invite:
    """Revoke a pending invite; its token stops working at once. Revoking twice changes nothing."""
    invite = Invite.objects.select_for_update().get(pk=invite.pk)
    if invite.accepted_at is not None:
        raise ConflictError("This invite was already accepted.", code="ERR_INVITE_USED")
    if invite.revoked_at is not None:
        return invite
    invite.revoked_at = timezone.now()
    invite.save(update_fields=["revoked_at"])
    audit_record(
        org=invite.org,
        actor=actor,
        action="invite.revoked",
        entity=invite,
        before=_invite_snapshot(invite),
        after={"revoked_at": invite.revoked_at},
    )
    return invite


def _refuse_unusable(invite: Invite) -> None:
    """Raise the error that says why an invite cannot be accepted now, if it cannot."""
    status = invite_status(invite)
    if status == InviteStatus.ACCEPTED:
        raise ConflictError("This invite was already used.", code="ERR_INVITE_USED")
    if status == InviteStatus.REVOKED:
        raise InviteGoneError("This invite was revoked.", code="ERR_INVITE_REVOKED")
    if status == InviteStatus.EXPIRED:
        raise InviteGoneError("This invite has expired; ask for a new one.", code="ERR_INVITE_EXPIRED")
    if invite.org is not None and invite.org.deletion_requested_at is not None:
        raise InviteGoneError("This organisation is being deleted.", code="ERR_INVITE_REVOKED")


@transaction.atomic
def invite_accept(*, token: str, user: User) -> Membership | None:
    """Use an invite once: join its org with its role (now the user's active org).

    A platform signup invite (no org) is only marked used and answers None. The user's email must
    be the invited address. Concurrent accepts of one token: exactly one wins.
    """
    invite = invite_by_token(token=token)
    if invite is None:
        raise NotFoundError("Invite not found.", code="ERR_INVITE_NOT_FOUND")
    if (user.email or "").strip().lower() != invite.email.strip().lower():
        raise PermissionDeniedError(
            "This invite was sent to another email address.", code="ERR_INVITE_EMAIL_MISMATCH"
        )
    _refuse_unusable(invite)
    now = timezone.now()
    won = Invite.objects.filter(
        pk=invite.pk, accepted_at__isnull=True, revoked_at__isnull=True, expires_at__gt=now
    ).update(accepted_at=now, accepted_by=user)
    if not won:
        # Someone else used (or revoked) it between our read and our write: say what happened.
        invite.refresh_from_db()
        _refuse_unusable(invite)
        raise ConflictError("This invite was already used.", code="ERR_INVITE_USED")
    invite.accepted_at, invite.accepted_by = now, user
    membership = None
    if invite.org is not None:
        # Checked after the claim, so a concurrent second accept always reads "already used";
        # raising here rolls the claim back and the invite stays usable.
        if Membership.objects.filter(org=invite.org, user=user).exists():
            raise ConflictError("You are already a member of this organisation.", code="ERR_ALREADY_MEMBER")
        # Accepts into one org one at a time, so two cannot both take the plan's last seat.
        Organization.objects.select_for_update().filter(pk=invite.org_id).first()
        check_limit(org=invite.org, resource="members")
        membership = Membership(org=invite.org, user=user, role=invite.role)
        membership.full_clean(validate_constraints=False)
        try:
            with transaction.atomic():
                membership.save()
        except IntegrityError as exc:  # joined through another invite at the same moment
            raise ConflictError(
                "You are already a member of this organisation.", code="ERR_ALREADY_MEMBER"
            ) from exc
        User.objects.filter(pk=user.pk).update(active_org=invite.org)
        user.active_org = invite.org
    audit_record(
        org=invite.org,
        actor=user,
        action="invite.accepted",
        entity=invite,
        before={"status": InviteStatus.PENDING},
        after={"status": InviteStatus.ACCEPTED, "email": invite.email, "role": invite.role},
    )
    return membership
