"""Writes of API keys: create, update, revoke, delete, rotate, roll, and the per-key request log.

The rule that runs through all of them: a key never gives anyone more than they already have.
Whoever makes, rotates or rolls a key (a person through a session, or another API key) must hold at
least the role the key acts with, and an API key can only hand out scopes it has itself. Callers
pass the role and scopes they act with (``actor_role``, ``actor_scopes``: for a request, the
session's membership role or the calling key's effective role and scopes); without them the actor's
current membership role is used. ``actor=None`` with no ``actor_role`` is a trusted system call
(management commands, the Django admin) and skips the role checks.

Only a SHA-256 of each secret is stored; the whole key is returned once, to the caller that made it.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

from django.conf import settings
from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import transaction
from django.utils import timezone

from accounts import keys as key_material
from accounts import registries
from accounts import scopes as scope_rules
from accounts.models import ApiKey, ApiKeyUsage, Membership, Organization, Role, User
from accounts.services.audit import audit_record
from core.errors import ConflictError, NotFoundError, PermissionDeniedError, ValidationError

MAX_GRACE_HOURS = 168
DEFAULT_GRACE_HOURS = 24
_PURGE_BATCH = 5000


# --- helpers -----------------------------------------------------------------------------------


def api_key_prefix(key: ApiKey) -> str:
    """The non-secret head of a key, ``<kind prefix>_<public id>``: how people tell keys apart."""
    return f"{key_material.KIND_PREFIXES[key.kind]}_{key.public_id}"


def _snapshot(key: ApiKey) -> dict[str, Any]:
    """The audited view of a key: everything but the secret hashes."""
    return {
        "name": key.name,
        "kind": key.kind,
        "prefix": api_key_prefix(key),
        "user": key.user_id,
        "role": key.role,
        "scopes": list(key.scopes or []),
        "agent": key.agent_id,
        "autonomy": key.autonomy,
        "expires_at": key.expires_at,
        "is_active": key.is_active,
        "revoked_at": key.revoked_at,
    }


def _field_error(
    field: str, message: str, *, code: str = "ERR_VALIDATION", **details: Any
) -> ValidationError:
    """A 400 shaped like DRF's field errors, so clients read one format."""
    return ValidationError(
        f"{field}: {message}", code=code, details={"fields": {field: [message]}, **details}
    )


def _full_clean(key: ApiKey) -> None:
    """Model validation, reported as the 400 envelope instead of a 500."""
    try:
        key.full_clean(exclude=["org", "user"])
    except DjangoValidationError as exc:
        fields = exc.message_dict
        first, messages = next(iter(fields.items()))
        raise ValidationError(f"{first}: {messages[0]}", details={"fields": fields}) from exc


def _membership_role(org: Organization, user: User | None) -> str | None:
    if user is None:
        return None
    return Membership.objects.filter(org=org, user=user).values_list("role", flat=True).first()


def _acting_role(org: Organization, actor: User | None, actor_role: str | None) -> str | None:
    """The role the caller acts with: given, else the actor's current membership role."""
    if actor_role is not None:
        return actor_role
    return _membership_role(org, actor)


def _is_system(actor: User | None, actor_role: str | None) -> bool:
    return actor is None and actor_role is None


def _lower_role(a: str | None, b: str | None) -> str | None:
    return a if Role.rank(a) <= Role.rank(b) else b


def api_key_power(key: ApiKey) -> str | None:
    """The strongest role the key can act with right now (None: it cannot act at all)."""
    if key.kind == ApiKey.Kind.PERSONAL:
        member_role = _membership_role(key.org, key.user)
        if member_role is None:
            return None
        return _lower_role(key.role, member_role) if key.role else member_role
    return key.role or Role.MEMBER


def _require_role(acting: str | None, needed: str, message: str) -> None:
    if Role.rank(acting) < Role.rank(needed):
        raise PermissionDeniedError(
            message, code="ERR_ROLE_REQUIRED", details={"required_role": needed, "role": acting}
        )


def _validate_scopes(scopes: list[str], actor_scopes: list[str] | None) -> list[str]:
    """Known, well-formed scopes that the caller (when it is a scoped key) holds itself."""
    if not isinstance(scopes, list):
        raise _field_error("scopes", "Must be a list of scopes.")
    bad = scope_rules.invalid_scopes(scopes)
    if bad:
        raise _field_error(
            "scopes",
            f"Unknown or malformed scope(s): {', '.join(map(repr, bad))}. Use '*' or "
            f"'<area>:read|write|*' with area one of: {', '.join(scope_rules.scope_areas())}.",
            code="ERR_INVALID_SCOPE",
            invalid_scopes=bad,
        )
    scopes = scope_rules.normalise_scopes(scopes)
    if actor_scopes:
        if not scopes:
            return list(actor_scopes)  # a scoped key's child inherits its scopes, never "all"
        beyond = [scope for scope in scopes if not scope_rules.scope_covers(actor_scopes, scope)]
        if beyond:
            raise PermissionDeniedError(
                f"This API key cannot grant scopes it does not have: {', '.join(beyond)}.",
                code="ERR_SCOPE_REQUIRED",
                details={"scopes": beyond},
            )
    return scopes


def _require_not_broader(key: ApiKey, actor_scopes: list[str] | None) -> None:
    """A scoped key may not take the secret of a key that can do more than itself."""
    if not actor_scopes:
        return
    key_scopes = list(key.scopes or [])
    if not key_scopes or not all(scope_rules.scope_covers(actor_scopes, s) for s in key_scopes):
        raise PermissionDeniedError(
            "This API key cannot take over a key with scopes it does not have.",
            code="ERR_SCOPE_REQUIRED",
            details={"scopes": key_scopes or ["*"]},
        )


def _require_may_manage(key: ApiKey, acting: str | None) -> None:
    """Service and agent keys are managed by ADMINs (their creator may have been demoted since)."""
    if key.kind != ApiKey.Kind.PERSONAL:
        _require_role(acting, Role.ADMIN, f"Managing a {key.kind} key needs the ADMIN role.")


def _require_may_take_secret(
    key: ApiKey, actor: User | None, acting: str | None, actor_scopes: list[str] | None
) -> None:
    """Rotate and roll hand out a working secret: only to someone who could make that key anew."""
    if key.kind == ApiKey.Kind.PERSONAL and (actor is None or key.user_id != actor.pk):
        raise PermissionDeniedError(
            "A personal key acts as its user, so only that user can rotate or roll it; "
            "admins may revoke it instead.",
            code="ERR_NOT_KEY_OWNER",
        )
    _require_may_manage(key, acting)
    power = api_key_power(key)
    if power is not None:
        _require_role(acting, power, f"This key acts with the {power} role; you have {acting}.")
    _require_not_broader(key, actor_scopes)


def _new_public_id() -> str:
    for _ in range(5):
        public_id = key_material.new_public_id()
        if not ApiKey.objects.filter(public_id=public_id).exists():
            return public_id
    raise RuntimeError("could not find a free API key id")  # 62^12 ids: never in practice


def _locked(key: ApiKey) -> ApiKey:
    """The key's row, locked for this transaction, so concurrent rotations queue up."""
    try:
        return ApiKey.objects.select_for_update(of=("self",)).select_related("org", "user").get(pk=key.pk)
    except ApiKey.DoesNotExist as exc:  # deleted with its org since the caller read it
        raise NotFoundError("API key not found.") from exc


# --- create ------------------------------------------------------------------------------------


@transaction.atomic
def api_key_create(
    *,
    org: Organization,
    actor: User | None,
    name: str,
    kind: str = ApiKey.Kind.PERSONAL,
    role: str = "",
    scopes: list[str] | None = None,
    agent_id: UUID | None = None,
    autonomy: str = "",
    expires_at: datetime | None = None,
    actor_role: str | None = None,
    actor_scopes: list[str] | None = None,
) -> tuple[ApiKey, str]:
    """Make a key; returns the row and the whole key, which is never shown again.

    ``personal`` keys act as ``actor`` (``role`` is an optional ceiling); ``service`` and ``agent``
    keys need ADMIN and act with ``role`` (default MEMBER); ``agent`` keys are bound to one agent
    of the org and carry an ``autonomy`` level (default ``suggest``). No key may act above the
    caller's role, and a scoped calling key can only grant its own scopes.
    """
    system = _is_system(actor, actor_role)
    acting = _acting_role(org, actor, actor_role)
    if kind not in ApiKey.Kind.values:
        raise _field_error("kind", f"Must be one of: {', '.join(ApiKey.Kind.values)}.")
    if role and role not in Role.values:
        raise _field_error("role", f"Must be one of: {', '.join(Role.values)}.")
    if not system:
        if acting is None:
            raise PermissionDeniedError(
                "You are not a member of this organisation.",
                code="ERR_ROLE_REQUIRED",
                details={"required_role": Role.MEMBER, "role": None},
            )
        if kind != ApiKey.Kind.PERSONAL:
            _require_role(acting, Role.ADMIN, f"Creating a {kind} key needs the ADMIN role.")
        if role:
            _require_role(acting, role, f"A key cannot have the {role} role: yours is {acting}.")
    if kind == ApiKey.Kind.PERSONAL:
        if actor is None:
            raise _field_error("kind", "A personal key needs a user to act as.")
        if not role and not system and Role.rank(acting) < Role.rank(_membership_role(org, actor)):
            role = acting  # made through a weaker key: the new key is capped at that key's role
    else:
        role = role or Role.MEMBER

    if kind == ApiKey.Kind.AGENT:
        if agent_id is None:
            raise _field_error("agent", "Agent keys must name the agent they act for.")
        if not registries.agent_exists(org, agent_id):
            raise _field_error(
                "agent", f"No agent {agent_id} in this organisation.", code="ERR_AGENT_NOT_FOUND"
            )
        autonomy = autonomy or ApiKey.Autonomy.SUGGEST
    else:
        if agent_id is not None:
            raise _field_error("agent", "Only agent keys are bound to an agent.")
        if autonomy:
            raise _field_error("autonomy", "Only agent keys have an autonomy level.")

    if expires_at is not None:
        if timezone.is_naive(expires_at):
            raise _field_error("expires_at", "Give a time zone (e.g. 2030-01-01T00:00:00Z).")
        if expires_at <= timezone.now():
            raise _field_error("expires_at", "Must be in the future.")

    clean_scopes = _validate_scopes(list(scopes or []), None if system else actor_scopes)
    secret = key_material.new_secret()
    key = ApiKey(
        org=org,
        user=actor,
        kind=kind,
        name=(name or "").strip(),
        public_id=_new_public_id(),
        secret_hash=key_material.hash_secret(secret),
        role=role,
        scopes=clean_scopes,
        agent_id=agent_id,
        autonomy=autonomy,
        expires_at=expires_at,
    )
    _full_clean(key)
    key.save()
    audit_record(org=org, actor=actor, action="api_key.created", entity=key, after=_snapshot(key))
    return key, key_material.format_key(kind, key.public_id, secret)


# --- update, revoke, delete --------------------------------------------------------------------


@transaction.atomic
def api_key_update(
    *,
    key: ApiKey,
    actor: User | None,
    name: str | None = None,
    scopes: list[str] | None = None,
    is_active: bool | None = None,
    actor_role: str | None = None,
    actor_scopes: list[str] | None = None,
) -> ApiKey:
    """Rename, rescope, deactivate or reactivate a key (a revoked key stays dead: 409)."""
    key = _locked(key)
    system = _is_system(actor, actor_role)
    if not system:
        _require_may_manage(key, _acting_role(key.org, actor, actor_role))
    before = _snapshot(key)
    if name is not None:
        key.name = name.strip()
    if scopes is not None:
        key.scopes = _validate_scopes(list(scopes), None if system else actor_scopes)
    if is_active is not None:
        if is_active and key.revoked_at is not None:
            raise ConflictError(
                "A revoked key cannot be reactivated; create a new one.", code="ERR_KEY_REVOKED"
            )
        key.is_active = is_active
    _full_clean(key)
    key.save(update_fields=["name", "scopes", "is_active"])
    after = _snapshot(key)
    if after != before:
        audit_record(
            org=key.org, actor=actor, action="api_key.updated", entity=key, before=before, after=after
        )
    return key


@transaction.atomic
def api_key_revoke(*, key: ApiKey, actor: User | None) -> ApiKey:
    """Kill a key now, for good (idempotent: revoking a revoked key changes nothing)."""
    key = _locked(key)
    if key.revoked_at is not None:
        return key
    before = _snapshot(key)
    key.revoked_at = timezone.now()
    key.is_active = False
    key.previous_secret_hash = ""
    key.previous_secret_expires_at = None
    key.save(update_fields=["revoked_at", "is_active", "previous_secret_hash", "previous_secret_expires_at"])
    audit_record(
        org=key.org, actor=actor, action="api_key.revoked", entity=key, before=before, after=_snapshot(key)
    )
    return key


@transaction.atomic
def api_key_delete(*, key: ApiKey, actor: User | None) -> None:
    """Soft-delete a key: it stops working and disappears from every list (the row stays for audit)."""
    key = _locked(key)
    if key.deleted_at is not None:
        return
    before = _snapshot(key)
    key.deleted_at = timezone.now()
    key.is_active = False
    key.save(update_fields=["deleted_at", "is_active"])
    audit_record(org=key.org, actor=actor, action="api_key.deleted", entity=key, before=before)


# --- new secrets -------------------------------------------------------------------------------


def _renew_secret(key: ApiKey, *, grace: timedelta | None) -> str:
    """Give the key a new secret; the current one stays valid for ``grace`` (None: dies now)."""
    secret = key_material.new_secret()
    if grace:
        key.previous_secret_hash = key.secret_hash
        key.previous_secret_expires_at = timezone.now() + grace
    else:
        key.previous_secret_hash = ""
        key.previous_secret_expires_at = None
    key.secret_hash = key_material.hash_secret(secret)
    key.save(update_fields=["secret_hash", "previous_secret_hash", "previous_secret_expires_at"])
    return key_material.format_key(key.kind, key.public_id, secret)


def _check_renewable(key: ApiKey, actor, actor_role, actor_scopes) -> None:
    if key.revoked_at is not None:
        raise ConflictError("This API key was revoked; create a new one.", code="ERR_KEY_REVOKED")
    if not _is_system(actor, actor_role):
        _require_may_take_secret(key, actor, _acting_role(key.org, actor, actor_role), actor_scopes)


@transaction.atomic
def api_key_rotate(
    *,
    key: ApiKey,
    actor: User | None,
    grace_hours: int = DEFAULT_GRACE_HOURS,
    actor_role: str | None = None,
    actor_scopes: list[str] | None = None,
) -> tuple[ApiKey, str]:
    """New secret; the old one keeps working for ``grace_hours`` (0–168) so deployments can roll.

    A secret still in an earlier grace window dies now: only the latest previous secret is kept.
    """
    if (
        isinstance(grace_hours, bool)
        or not isinstance(grace_hours, int)
        or not 0 <= grace_hours <= MAX_GRACE_HOURS
    ):
        raise _field_error("grace_hours", f"Must be a whole number of hours from 0 to {MAX_GRACE_HOURS}.")
    key = _locked(key)
    _check_renewable(key, actor, actor_role, actor_scopes)
    before = _snapshot(key)
    raw = _renew_secret(key, grace=timedelta(hours=grace_hours))
    audit_record(
        org=key.org,
        actor=actor,
        action="api_key.rotated",
        entity=key,
        before=before,
        after={**_snapshot(key), "previous_secret_expires_at": key.previous_secret_expires_at},
    )
    return key, raw


@transaction.atomic
def api_key_roll(
    *,
    key: ApiKey,
    actor: User | None,
    actor_role: str | None = None,
    actor_scopes: list[str] | None = None,
) -> tuple[ApiKey, str]:
    """New secret; the old one (and any secret in a grace window) dies now, e.g. after a leak."""
    key = _locked(key)
    _check_renewable(key, actor, actor_role, actor_scopes)
    before = _snapshot(key)
    raw = _renew_secret(key, grace=None)
    audit_record(
        org=key.org, actor=actor, action="api_key.rolled", entity=key, before=before, after=_snapshot(key)
    )
    return key, raw


# --- the request log ---------------------------------------------------------------------------


def api_key_usage_record(
    *,
    key_id: UUID,
    method: str,
    path: str,
    status: int,
    duration_ms: float,
    ip: str | None,
    request_id: str,
    at: datetime | None = None,
) -> ApiKeyUsage:
    """Append one line to a key's request log.

    Deliberately no transaction, no full_clean and no audit row: it runs after every keyed request,
    is one INSERT, and every value comes from the server, not the client (bar the truncated path).
    """
    return ApiKeyUsage.objects.create(
        key_id=key_id,
        at=at or timezone.now(),
        method=method[:8],
        path=path[:500],
        status=status,
        duration_ms=round(duration_ms, 2),
        ip=ip,
        request_id=request_id[:128],
    )


def api_key_usage_record_many(*, rows: list[dict[str, Any]]) -> int:
    """Append many request-log lines in one statement (the async stack's batched writer).

    ``rows`` hold the keyword arguments of :func:`api_key_usage_record`. Rows of keys deleted in
    the meantime (their org was deleted) are skipped, so one of them cannot sink the batch.
    """
    live = set(ApiKey.objects.filter(pk__in={row["key_id"] for row in rows}).values_list("pk", flat=True))
    now = timezone.now()
    objects = [
        ApiKeyUsage(
            key_id=row["key_id"],
            at=row.get("at") or now,
            method=row["method"][:8],
            path=row["path"][:500],
            status=row["status"],
            duration_ms=round(row["duration_ms"], 2),
            ip=row["ip"],
            request_id=row["request_id"][:128],
        )
        for row in rows
        if row["key_id"] in live
    ]
    ApiKeyUsage.objects.bulk_create(objects, batch_size=500)
    return len(objects)


def api_key_usage_purge(*, older_than_days: int | None = None, batch_size: int = _PURGE_BATCH) -> int:
    """Drop request-log rows older than the retention window; returns how many went.

    Deletes in batches so a large backlog never holds a long lock on the table.
    """
    days = settings.API_KEY_USAGE_RETENTION_DAYS if older_than_days is None else older_than_days
    cutoff = timezone.now() - timedelta(days=days)
    removed = 0
    while True:
        batch = list(ApiKeyUsage.objects.filter(at__lt=cutoff).values_list("pk", flat=True)[:batch_size])
        if not batch:
            return removed
        removed += ApiKeyUsage.objects.filter(pk__in=batch).delete()[0]
