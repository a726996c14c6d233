"""Who is on a WebSocket: a Django session (cookie) or an API key sent in a ``connect`` request.

The same rules as the HTTP side (``accounts.authentication``): the key is checked by
``accounts.authentication.authenticate_key`` (hash, revocation, expiry, grace period of a rolled
secret, security events), its role is ``effective_role``; a session acts in the org named by
``?org=`` / ``X-Org-Id`` (the caller must be a member), else the user's active org, else the first.

A socket lives for hours, so what was true at connect time is re-read before every call
(:func:`principal_refresh`): a revoked or rolled key, a removed member, a demoted role, a
deactivated user or a logged-out session take effect on the very next frame. These functions are
synchronous (ORM); the consumer runs them through ``database_sync_to_async``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from django.contrib.sessions.backends.base import SessionBase
from django.core.exceptions import ValidationError as DjangoValidationError
from django.utils import timezone
from rest_framework.exceptions import AuthenticationFailed

from accounts.authentication import authenticate_key, effective_role
from accounts.models import ApiKey, Membership, Organization, Role, User
from accounts.permissions import scope_allows
from accounts.selectors import api_key_for_auth, membership_for_request
from core.errors import ApplicationError, NotFoundError, PermissionDeniedError


class NotAuthenticated(ApplicationError):
    """A method other than ``connect`` before the socket is authenticated."""

    status_code = 401
    code = "ERR_NOT_AUTHENTICATED"
    message = "Authenticate first: send a connect request with an API key, or open the socket with a session."


class CredentialsLost(ApplicationError):
    """The credential the socket was opened with is no longer valid (key revoked, logged out, …)."""

    status_code = 401
    code = "ERR_NOT_AUTHENTICATED"
    message = "The credentials of this connection are no longer valid; authenticate again."


class NoOrganisation(PermissionDeniedError):
    code = "ERR_NO_ORGANISATION"
    message = "You are not a member of any organisation; create one or accept an invite first."


@dataclass(frozen=True)
class Principal:
    """The authenticated caller of a socket: user, org, effective role and how they signed in."""

    user: User
    org: Organization | None
    role: str | None
    via: str  # "session" or "key"
    api_key: ApiKey | None = None
    secret_hash: str = ""  # the key secret's hash it connected with (a roll invalidates it)
    session_key: str = ""
    is_staff: bool = False

    @property
    def bound_agent_id(self) -> Any:
        """The agent an agent key is confined to (a key bound to none sees no agent)."""
        if self.api_key is not None and self.api_key.kind == ApiKey.Kind.AGENT:
            return self.api_key.agent_id or _NOBODY
        return None

    def summary(self) -> dict[str, Any]:
        """The ``connect`` answer: ``{user, org, role, via}`` (plus ``api_key`` for keys)."""
        body: dict[str, Any] = {
            "user": {"id": str(self.user.pk), "email": self.user.email} if self.user is not None else None,
            "org": {"id": str(self.org.pk), "name": self.org.name} if self.org is not None else None,
            "role": self.role,
            "via": self.via,
        }
        if self.api_key is not None:
            body["api_key"] = {
                "id": str(self.api_key.pk),
                "kind": self.api_key.kind,
                "name": self.api_key.name,
            }
        return body


_NOBODY = "00000000-0000-0000-0000-000000000000"


def principal_from_key(raw: str) -> Principal:
    """Authenticate a presented API key; raises ``ApplicationError`` with the HTTP side's codes."""
    try:
        key = authenticate_key(raw)
    except AuthenticationFailed as exc:
        code = getattr(exc, "error_code", "ERR_AUTHENTICATION_FAILED")
        raise ApplicationError(str(exc.detail), code=code, status_code=401) from None
    return Principal(
        user=key.user,
        org=key.org,
        role=effective_role(key),
        via="key",
        api_key=key,
        secret_hash=key.secret_hash,
        is_staff=bool(key.user is not None and key.user.is_staff),
    )


def principal_from_session(*, user: Any, session: SessionBase | None, org_id: str | None) -> Principal | None:
    """The principal of a socket opened with a logged-in session, or None for an anonymous one.

    ``org_id`` (``?org=`` or ``X-Org-Id``) must name an org the user belongs to, else 404.
    """
    if user is None or not getattr(user, "is_authenticated", False) or not user.is_active:
        return None
    user = getattr(user, "_wrapped", user)  # Channels' lazy scope user: keep the real row
    try:
        membership = membership_for_request(user=user, org_id=org_id or None)
    except DjangoValidationError:  # a malformed org id
        membership = None
    if org_id and membership is None:
        raise NotFoundError("Organisation not found.")
    return Principal(
        user=user,
        org=membership.org if membership else None,
        role=membership.role if membership else None,
        via="session",
        session_key=(session.session_key or "") if session is not None else "",
        is_staff=user.is_staff,
    )


def _key_still_valid(key: ApiKey | None, secret_hash: str) -> bool:
    if key is None or key.revoked_at is not None or not key.is_active:
        return False
    now = timezone.now()
    if key.expires_at is not None and key.expires_at <= now:
        return False
    if key.user is not None and not key.user.is_active:
        return False
    if key.org.deletion_requested_at is not None:
        return False
    if key.secret_hash == secret_hash:
        return True
    # The key was rolled since: the old secret lives on only through its grace period.
    return (
        key.previous_secret_hash == secret_hash
        and key.previous_secret_expires_at is not None
        and key.previous_secret_expires_at > now
    )


def principal_refresh(principal: Principal, session_store: type[SessionBase] | None = None) -> Principal:
    """The principal as it stands now (role re-read); raises ``CredentialsLost`` when it is gone."""
    if principal.via == "key" and principal.api_key is not None:
        key = api_key_for_auth(public_id=principal.api_key.public_id)  # cached, invalidated on change
        if not _key_still_valid(key, principal.secret_hash):
            raise CredentialsLost()
        role = effective_role(key)
        if role is None:
            raise CredentialsLost("The key's user is no longer a member of its organisation.")
        return replace(
            principal, api_key=key, role=role, is_staff=bool(key.user is not None and key.user.is_staff)
        )
    # A session: it must still exist (logout ends it), and so must the user and the membership.
    if (
        session_store is not None
        and principal.session_key
        and not session_store().exists(principal.session_key)
    ):
        raise CredentialsLost("The session of this connection has ended (logged out); sign in again.")
    if principal.org is None:
        user = User.objects.filter(pk=principal.user.pk, is_active=True).only("is_staff").first()
        if user is None:
            raise CredentialsLost()
        return replace(principal, is_staff=user.is_staff)
    row = (
        Membership.objects.filter(
            org_id=principal.org.pk,
            user_id=principal.user.pk,
            user__is_active=True,
            org__deletion_requested_at__isnull=True,
        )
        .values_list("role", "user__is_staff")
        .first()
    )
    if row is None:
        raise CredentialsLost("You are no longer a member of this organisation.")
    return replace(principal, role=row[0], is_staff=row[1])


def check_access(
    principal: Principal, *, role: str | None, scope_area: str | None, write: bool, staff_only: bool
):
    """Raise ``ERR_PERMISSION_DENIED`` when ``principal`` may not call a method that needs these;
    ``details.reason`` says which rule (``staff_only``, ``role_required``, ``scope_required``)
    and names what is missing, as the HTTP side's ``ERR_ROLE_REQUIRED`` / ``ERR_SCOPE_REQUIRED`` do."""
    if staff_only and not principal.is_staff:
        raise PermissionDeniedError("Platform staff only.", details={"reason": "staff_only"})
    if role is not None or scope_area is not None:
        if principal.org is None:
            raise NoOrganisation()
    if role is not None and Role.rank(principal.role) < Role.rank(role):
        raise PermissionDeniedError(
            f"This method needs the {role} role; you have {principal.role}.",
            details={"reason": "role_required", "required_role": role, "role": principal.role},
        )
    if scope_area is not None and principal.api_key is not None:
        if not scope_allows(principal.api_key.scopes or [], scope_area, write):
            needed = f"{scope_area}:{'write' if write else 'read'}"
            raise PermissionDeniedError(
                f"This API key lacks the {needed} scope.",
                details={"reason": "scope_required", "required_scope": needed},
            )
