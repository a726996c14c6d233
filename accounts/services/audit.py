"""The audit trail and security events: one function each, called by every mutating service.

Request details (IP, user agent, request id, API key) come from the request context bound by the
middleware, so services record them without ever seeing a request.
"""

from __future__ import annotations

import json
from typing import Any

from django.core.serializers.json import DjangoJSONEncoder
from django.db.models import Model

from accounts.models import AuditLog, Organization, SecurityEvent, User
from core import context


def _jsonable(value: Any) -> Any:
    """Round-trip through JSON so UUIDs, datetimes and decimals store as plain values."""
    if value is None:
        return None
    return json.loads(json.dumps(value, cls=DjangoJSONEncoder))


def changed_fields(before: dict | None, after: dict | None) -> dict[str, list]:
    """``{field: [before, after]}`` for every field whose value differs."""
    before, after = before or {}, after or {}
    return {
        field: [before.get(field), after.get(field)]
        for field in sorted(set(before) | set(after))
        if before.get(field) != after.get(field)
    }


def audit_entry(
    *,
    org: Organization | None,
    actor: User | None,
    action: str,
    entity: Model | None = None,
    entity_type: str = "",
    entity_id: Any = "",
    before: dict | None = None,
    after: dict | None = None,
) -> AuditLog:
    """The audit row :func:`audit_record` writes, unsaved, with the request details of the calling
    context: for writers that save it later, elsewhere, or together with others (``bulk_create``)."""
    ctx = context.current()
    if entity is not None:
        entity_type = entity_type or entity._meta.model_name
        entity_id = entity_id or entity.pk
    before, after = _jsonable(before), _jsonable(after)
    actor = actor if actor is not None and getattr(actor, "is_authenticated", False) else None
    return AuditLog(
        org=org,
        org_name=org.name if org is not None else "",
        actor=actor,
        actor_email=actor.email if actor is not None else "",
        api_key_id=ctx.api_key_id,
        action=action,
        entity_type=entity_type,
        entity_id=str(entity_id or ""),
        before=before,
        after=after,
        changes=changed_fields(before, after),
        ip=ctx.ip,
        user_agent=ctx.user_agent,
        request_id=ctx.request_id if ctx.request_id != "-" else "",
    )


def audit_record(
    *,
    org: Organization | None,
    actor: User | None,
    action: str,
    entity: Model | None = None,
    entity_type: str = "",
    entity_id: Any = "",
    before: dict | None = None,
    after: dict | None = None,
) -> AuditLog:
    """Write one audit row: who (user and key), what (action, entity, diff), from where."""
    entry = audit_entry(
        org=org, actor=actor, action=action, entity=entity, entity_type=entity_type,
        entity_id=entity_id, before=before, after=after,
    )  # fmt: skip
    entry.save(force_insert=True)
    return entry


def security_event_record(
    *,
    kind: str,
    org: Organization | None = None,
    user: User | None = None,
    api_key_id: Any = None,
    identifier: str = "",
    details: dict | None = None,
) -> SecurityEvent:
    """Write one security event (failed login, key misuse, denial, bad signature)."""
    ctx = context.current()
    return SecurityEvent.objects.create(
        kind=kind,
        org=org,
        user=user if user is not None and getattr(user, "is_authenticated", False) else None,
        api_key_id=api_key_id,
        identifier=identifier[:254],
        ip=ctx.ip,
        user_agent=ctx.user_agent,
        path=ctx.path,
        details=_jsonable(details) or {},
        request_id=ctx.request_id if ctx.request_id != "-" else "",
    )
