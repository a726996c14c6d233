"""Writes of providers (bring your own key) and of the org and personal AI settings.

Keys are stored encrypted (``core.crypto.EncryptedTextField``) and never leave these functions
except masked: audit rows hold ``api_key_masked`` and the header names, never a secret. Base URLs
pass the outbound guard when they are saved (the guard checks again on every request), so a
provider cannot point the platform at its own network unless the operator allowlisted it.
"""

from __future__ import annotations

import json
import re
import time
from typing import Any

import httpx
from django.db import IntegrityError, transaction
from django.utils import timezone

from accounts.models import Organization, User
from accounts.services.audit import audit_record
from agents import llm
from agents.models import OrgAIConfig, PersonalAIConfig, Provider, ProviderType
from agents.selectors.providers import personal_keys_allowed, run_llm, scrub_secret
from core.crypto import mask
from core.errors import ApplicationError, ConflictError, PermissionDeniedError, ValidationError
from core.outbound import OutboundBlocked, check_url

_UNSET: Any = object()

MAX_EXTRA_HEADERS = 20
# RFC 9110 token characters: what a header name may be made of.
_HEADER_NAME = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]{1,100}$")
# Headers the HTTP client owns; letting a provider set them would break or smuggle requests.
_RESERVED_HEADERS = {"host", "content-length", "transfer-encoding", "connection", "upgrade"}
# Fields whose change means the provider must be verified again.
_ENDPOINT_FIELDS = {"provider_type", "api_base", "api_key", "extra_headers"}


class PersonalKeysDisabled(PermissionDeniedError):
    """The org does not let its members bring their own LLM keys."""

    code = "ERR_PERSONAL_KEYS_DISABLED"
    message = (
        "This organisation does not allow personal API keys; an admin can allow them in the AI settings."
    )


def _field_error(field: str, message: str, code: str = "ERR_VALIDATION") -> ValidationError:
    return ValidationError(message, code=code, details={"fields": {field: [message]}})


# --- input rules -------------------------------------------------------------------------------------


def clean_api_base(value: str | None, *, field: str = "api_base") -> str:
    """A provider base URL: '' (the type's default) or an http(s) URL the outbound guard allows.

    Host names without a dot (``http://ollama:11434/v1`` in a compose network) are fine. A name
    that does not resolve right now is accepted (the guard checks again on every request); one that
    resolves to a private address is refused with ``ERR_OUTBOUND_BLOCKED``.
    """
    value = (value or "").strip()
    if not value:
        return ""
    if len(value) > 500:
        raise _field_error(field, "Use at most 500 characters.")
    try:
        url = httpx.URL(value)
    except (httpx.InvalidURL, ValueError, TypeError):
        raise _field_error(field, "Enter a valid URL.") from None
    if url.scheme not in ("http", "https") or not url.host:
        raise _field_error(field, "Enter an http:// or https:// URL with a host.")
    if url.userinfo:
        raise _field_error(field, "Put credentials in api_key (or extra_headers), not in the URL.")
    try:
        check_url(value)
    except OutboundBlocked as exc:
        if exc.code == "ERR_OUTBOUND_DNS":
            return value.rstrip("/")
        raise OutboundBlocked(
            exc.message, code=exc.code, details={**exc.details, "fields": {field: [exc.message]}}
        ) from None
    return value.rstrip("/")


def clean_extra_headers(value: dict | None) -> str:
    """The JSON text stored for extra request headers ('' for none)."""
    if not value:
        return ""
    if not isinstance(value, dict):
        raise _field_error("extra_headers", "Send an object of header names to values.")
    if len(value) > MAX_EXTRA_HEADERS:
        raise _field_error("extra_headers", f"Use at most {MAX_EXTRA_HEADERS} headers.")
    headers: dict[str, str] = {}
    for name, header_value in value.items():
        name = str(name).strip()
        if not _HEADER_NAME.match(name):
            raise _field_error("extra_headers", f"{name!r} is not a valid header name.")
        if name.lower() in _RESERVED_HEADERS:
            raise _field_error("extra_headers", f"The {name} header is set by the platform.")
        if not isinstance(header_value, str) or any(c in header_value for c in "\r\n\x00"):
            raise _field_error("extra_headers", f"The value of {name} must be text on one line.")
        if len(header_value) > 4000:
            raise _field_error("extra_headers", f"The value of {name} is too long.")
        headers[name] = header_value
    return json.dumps(headers, sort_keys=True)


def extra_header_names(provider: Provider) -> list[str]:
    """The names (never the values, which often hold secrets) of a provider's extra headers."""
    try:
        value = json.loads(provider.extra_headers) if provider.extra_headers else {}
    except ValueError:
        return []
    return sorted(value) if isinstance(value, dict) else []


def _clean_name(name: str | None) -> str:
    name = (name or "").strip()
    if not name:
        raise _field_error("name", "The provider needs a name.")
    if len(name) > 100:
        raise _field_error("name", "Use at most 100 characters.")
    return name


def _clean_type(value: str) -> str:
    if value not in ProviderType.values:
        raise _field_error("provider_type", f"Use one of: {', '.join(ProviderType.values)}.")
    return value


def _clean_priority(value: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 32767:
        raise _field_error("priority", "Use a whole number from 0 to 32767.")
    return value


# --- providers -----------------------------------------------------------------------------------------


def provider_snapshot(provider: Provider) -> dict[str, Any]:
    """What the audit trail records of a provider: everything but the secrets themselves."""
    return {
        "name": provider.name,
        "provider_type": provider.provider_type,
        "api_base": provider.api_base,
        "api_key_masked": mask(provider.api_key),
        "extra_header_names": extra_header_names(provider),
        "enabled": provider.enabled,
        "priority": provider.priority,
    }


def _name_taken(name: str) -> ConflictError:
    return ConflictError(
        f"A provider named {name!r} already exists.",
        code="ERR_PROVIDER_EXISTS",
        details={"fields": {"name": ["A provider with this name already exists."]}},
    )


def _refuse_taken_name(*, org: Organization, name: str, exclude_pk: Any = None) -> None:
    clash = Provider.objects.filter(org=org, name__iexact=name)
    if exclude_pk is not None:
        clash = clash.exclude(pk=exclude_pk)
    if clash.exists():
        raise _name_taken(name)


def _save(provider: Provider, **kwargs: Any) -> None:
    """Save in a savepoint so a concurrent create of the same name becomes a clean 409."""
    try:
        with transaction.atomic():
            provider.save(**kwargs)
    except IntegrityError as exc:
        raise _name_taken(provider.name) from exc


def _full_clean(provider: Provider) -> None:
    # api_base is checked by clean_api_base: the model's URLField would refuse compose-network
    # host names such as http://ollama:11434.
    provider.full_clean(exclude=["api_base", "org", "created_by"], validate_constraints=False)


@transaction.atomic
def provider_create(
    *,
    org: Organization,
    actor: User | None,
    name: str,
    provider_type: str = ProviderType.OPENAI_COMPAT,
    api_base: str = "",
    api_key: str = "",
    enabled: bool = True,
    priority: int = 100,
    extra_headers: dict | None = None,
) -> Provider:
    """A new provider of the org; names are unique per org (case-insensitive)."""
    provider = Provider(
        org=org,
        name=_clean_name(name),
        provider_type=_clean_type(provider_type),
        api_base=clean_api_base(api_base),
        api_key=(api_key or "").strip(),
        extra_headers=clean_extra_headers(extra_headers),
        enabled=bool(enabled),
        priority=_clean_priority(priority),
        created_by=actor if actor is not None and actor.is_authenticated else None,
    )
    _refuse_taken_name(org=org, name=provider.name)
    _full_clean(provider)
    _save(provider)
    audit_record(
        org=org, actor=actor, action="provider.created", entity=provider, after=provider_snapshot(provider)
    )
    return provider


@transaction.atomic
def provider_update(
    *,
    provider: Provider,
    actor: User | None,
    name: str = _UNSET,
    provider_type: str = _UNSET,
    api_base: str = _UNSET,
    api_key: str = _UNSET,
    enabled: bool = _UNSET,
    priority: int = _UNSET,
    extra_headers: dict | None = _UNSET,
) -> Provider:
    """Change a provider; only the fields given change. ``api_key=""`` removes the key.

    A new endpoint (type, base URL, key or headers) clears the verified flag, the last error and
    the health counters: the old verdict was about another endpoint.
    """
    provider = Provider.objects.select_for_update().get(pk=provider.pk)
    before = provider_snapshot(provider)
    old_endpoint = (provider.provider_type, provider.api_base, provider.api_key, provider.extra_headers)
    if name is not _UNSET:
        provider.name = _clean_name(name)
        _refuse_taken_name(org=provider.org, name=provider.name, exclude_pk=provider.pk)
    if provider_type is not _UNSET:
        provider.provider_type = _clean_type(provider_type)
    if api_base is not _UNSET:
        provider.api_base = clean_api_base(api_base)
    if api_key is not _UNSET:
        provider.api_key = (api_key or "").strip()
    if extra_headers is not _UNSET:
        provider.extra_headers = clean_extra_headers(extra_headers)
    if enabled is not _UNSET:
        provider.enabled = bool(enabled)
    if priority is not _UNSET:
        provider.priority = _clean_priority(priority)
    endpoint_changed = old_endpoint != (
        provider.provider_type,
        provider.api_base,
        provider.api_key,
        provider.extra_headers,
    )
    if endpoint_changed:
        provider.is_verified = False
        provider.verified_at = None
        provider.last_error = ""
        provider.consecutive_failures = 0
        provider.unhealthy_until = None
    _full_clean(provider)
    after = provider_snapshot(provider)
    if after != before or endpoint_changed:
        _save(provider)
        audit_record(
            org=provider.org,
            actor=actor,
            action="provider.updated",
            entity=provider,
            before=before,
            after=after,
        )
    return provider


@transaction.atomic
def provider_delete(*, provider: Provider, actor: User | None) -> None:
    """Delete a provider. Agents that used it fall back to the org's primary provider, and an org
    config naming it loses its primary provider (both by ``SET_NULL``)."""
    audit_record(
        org=provider.org,
        actor=actor,
        action="provider.deleted",
        entity=provider,
        before=provider_snapshot(provider),
    )
    provider.delete()


@transaction.atomic
def provider_record_verification(
    *, provider: Provider, actor: User | None, valid: bool, error: str = ""
) -> Provider:
    """Store a verification verdict: verified (and when), or the error the upstream gave."""
    provider = Provider.objects.select_for_update().get(pk=provider.pk)
    before = {"is_verified": provider.is_verified, "last_error": provider.last_error}
    provider.is_verified = valid
    provider.last_error = "" if valid else (error or "Verification failed.")[:500]
    if valid:
        provider.verified_at = timezone.now()
        provider.consecutive_failures = 0
        provider.unhealthy_until = None
    # updated_at is left alone: a verdict does not change the endpoint, so cached model lists stay.
    Provider.objects.filter(pk=provider.pk).update(
        is_verified=provider.is_verified,
        last_error=provider.last_error,
        verified_at=provider.verified_at,
        consecutive_failures=provider.consecutive_failures,
        unhealthy_until=provider.unhealthy_until,
    )
    audit_record(
        org=provider.org,
        actor=actor,
        action="provider.verified",
        entity=provider,
        before=before,
        after={"is_verified": provider.is_verified, "last_error": provider.last_error},
    )
    return provider


def provider_verify(*, provider: Provider, actor: User | None, model: str | None = None) -> dict[str, Any]:
    """Check a provider against its upstream and store the verdict.

    Without ``model`` it checks reachability (the model list answers); with ``model`` it makes a
    real one-token completion. Not atomic on purpose: no transaction stays open across the network
    call; the verdict is written in its own transaction afterwards.
    """
    resolved = llm.provider_resolved(provider, model=model or "")
    started = time.perf_counter()
    try:
        outcome = dict(run_llm(llm.averify, resolved=resolved, model=model or None))
    except ApplicationError as exc:
        outcome = {"valid": False, "error": exc.message, "error_code": exc.code}
    except Exception as exc:  # an upstream failure the LLM layer did not map: still a verdict
        outcome = {"valid": False, "error": str(exc) or type(exc).__name__}
    outcome.setdefault("latency_ms", round((time.perf_counter() - started) * 1000, 1))
    valid = bool(outcome.get("valid"))
    error = scrub_secret(outcome.get("error") or "", provider.api_key)
    answer: dict[str, Any] = {"valid": valid, "latency_ms": outcome["latency_ms"]}
    if not valid:
        answer["error"] = error or "Verification failed."
        if outcome.get("error_code"):
            answer["error_code"] = outcome["error_code"]
    provider_record_verification(provider=provider, actor=actor, valid=valid, error=answer.get("error", ""))
    return answer


# --- the org's AI config -------------------------------------------------------------------------------


def _org_config_snapshot(config: OrgAIConfig) -> dict[str, Any]:
    return {
        "primary_provider": str(config.primary_provider_id) if config.primary_provider_id else None,
        "primary_model": config.primary_model,
        "allow_personal_keys": config.allow_personal_keys,
    }


@transaction.atomic
def org_ai_config_update(
    *,
    org: Organization,
    actor: User | None,
    primary_provider_id: Any = _UNSET,
    primary_model: str = _UNSET,
    allow_personal_keys: bool = _UNSET,
) -> OrgAIConfig:
    """Set the org's primary provider and model and whether members may bring personal keys; only
    the fields given change. The primary provider must be one of the org's own."""
    config, _created = OrgAIConfig.objects.select_for_update().get_or_create(org=org)
    before = _org_config_snapshot(config)
    if primary_provider_id is not _UNSET:
        if primary_provider_id is None:
            config.primary_provider = None
        else:
            provider = Provider.objects.filter(org=org, pk=primary_provider_id).first()
            if provider is None:
                raise _field_error(
                    "primary_provider",
                    "No provider with this id in this organisation.",
                    "ERR_INVALID_PROVIDER",
                )
            config.primary_provider = provider
    if primary_model is not _UNSET:
        config.primary_model = (primary_model or "").strip()
    if allow_personal_keys is not _UNSET:
        config.allow_personal_keys = bool(allow_personal_keys)
    config.full_clean(exclude=["org"])
    config.save()
    after = _org_config_snapshot(config)
    if after != before:
        audit_record(
            org=org, actor=actor, action="ai_config.updated", entity=config, before=before, after=after
        )
    return config


@transaction.atomic
def org_ai_config_reset(*, org: Organization, actor: User | None) -> None:
    """Back to the defaults: no primary provider or model, personal keys not allowed."""
    config = OrgAIConfig.objects.select_for_update().filter(org=org).first()
    if config is None:
        return
    audit_record(
        org=org, actor=actor, action="ai_config.reset", entity=config, before=_org_config_snapshot(config)
    )
    config.delete()


# --- personal AI config ---------------------------------------------------------------------------------


def personal_config_snapshot(config: PersonalAIConfig) -> dict[str, Any]:
    """What the audit trail records of someone's personal key settings (the key only masked)."""
    return {
        "provider_type": config.provider_type,
        "api_base": config.api_base,
        "api_key_masked": mask(config.api_key),
        "model": config.model,
    }


@transaction.atomic
def personal_ai_config_update(
    *,
    user: User,
    org: Organization,
    provider_type: str = _UNSET,
    api_base: str = _UNSET,
    api_key: str = _UNSET,
    model: str = _UNSET,
) -> PersonalAIConfig:
    """Save the caller's own provider settings (BYOK); only the fields given change.

    Refused with 403 ``ERR_PERSONAL_KEYS_DISABLED`` unless the org the caller acts in allows
    personal keys. The audit row goes to that org.
    """
    if not personal_keys_allowed(org=org):
        raise PersonalKeysDisabled()
    config, _created = PersonalAIConfig.objects.select_for_update().get_or_create(user=user)
    before = personal_config_snapshot(config)
    old_key = config.api_key
    if provider_type is not _UNSET:
        config.provider_type = _clean_type(provider_type)
    if api_base is not _UNSET:
        config.api_base = clean_api_base(api_base)
    if api_key is not _UNSET:
        config.api_key = (api_key or "").strip()
    if model is not _UNSET:
        config.model = (model or "").strip()
    config.full_clean(exclude=["api_base", "user"])
    config.save()
    after = personal_config_snapshot(config)
    if after != before or config.api_key != old_key:
        audit_record(
            org=org,
            actor=user,
            action="ai_config.personal_updated",
            entity=config,
            before=before,
            after=after,
        )
    return config


@transaction.atomic
def personal_ai_config_delete(*, user: User, org: Organization) -> None:
    """Forget the caller's personal key settings (always allowed, even where keys are disallowed)."""
    config = PersonalAIConfig.objects.select_for_update().filter(user=user).first()
    if config is None:
        return
    audit_record(
        org=org,
        actor=user,
        action="ai_config.personal_deleted",
        entity=config,
        before=personal_config_snapshot(config),
    )
    config.delete()
