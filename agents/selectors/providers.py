"""Reads of providers and AI settings: an org's providers, their upstream model lists and the
org-wide model catalogue (both cached five minutes), and the org and personal AI configs.

Model lists come from the upstream through the LLM layer (``agents.llm.alist_models``), never by
talking HTTP here. Cache keys carry the provider's ``updated_at``, so editing a provider (another
key, another base URL) makes its cached list stale at once without explicit invalidation.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from asgiref.sync import async_to_sync
from django.core.cache import cache
from django.db.models import QuerySet

from accounts.models import Organization, User
from agents import llm
from agents.models import OrgAIConfig, PersonalAIConfig, Provider
from core.errors import ApplicationError, NotFoundError

logger = logging.getLogger(__name__)
T = TypeVar("T")

MODELS_CACHE_SECONDS = 5 * 60
# One slow provider must not hold the whole catalogue: its entry becomes an error instead.
CATALOGUE_PROVIDER_TIMEOUT = 15.0


class ProviderUnreachable(ApplicationError):
    """The upstream failed in a way the LLM layer did not already name (502)."""

    status_code = 502
    code = "ERR_PROVIDER_UNAVAILABLE"
    message = "The provider could not be reached."


def scrub_secret(text: str, secret: str) -> str:
    """``text`` with ``secret`` masked: upstream error messages sometimes echo the key."""
    from core.crypto import mask

    text = str(text or "")
    if secret and len(secret) >= 4 and secret in text:
        text = text.replace(secret, mask(secret))
    return text


# --- providers ---------------------------------------------------------------------------------------


def provider_list(*, org: Organization, enabled: bool | None = None) -> QuerySet[Provider]:
    """The org's providers in failover order (priority, then name)."""
    rows = Provider.objects.filter(org=org)
    if enabled is not None:
        rows = rows.filter(enabled=enabled)
    return rows.order_by("priority", "name")


def provider_get(*, org: Organization, provider_id: Any) -> Provider:
    """One provider of the org; any other id (another org's included) is 404."""
    provider = provider_list(org=org).filter(pk=provider_id).first()
    if provider is None:
        raise NotFoundError("Provider not found.", code="ERR_PROVIDER_NOT_FOUND")
    return provider


def _models_cache_key(provider: Provider) -> str:
    stamp = provider.updated_at.timestamp() if provider.updated_at else 0
    return f"agents:provider-models:{provider.pk}:{stamp}"


def run_llm(fn: Callable[..., Awaitable[T]], /, **kwargs: Any) -> T:
    """Run an async call of the LLM layer from sync code, on a private event loop whose SDK
    clients are closed afterwards (never the shared loop of the ASGI server, whose clients other
    requests are using)."""

    async def run() -> T:
        try:
            return await fn(**kwargs)
        finally:
            await llm.aclose_clients()

    return async_to_sync(run, force_new_loop=True)()


async def _fetch_models(provider: Provider, resolved: llm.ResolvedProvider) -> list[str]:
    try:
        names = await llm.alist_models(resolved=resolved)
    except ApplicationError as exc:
        exc.message = scrub_secret(exc.message, resolved.api_key)
        raise
    except Exception as exc:
        logger.warning("listing models of provider %s failed: %r", provider.pk, exc)
        raise ProviderUnreachable(
            f"Listing the models of {provider.name} failed: "
            f"{scrub_secret(str(exc), resolved.api_key) or type(exc).__name__}",
            details={"provider": str(provider.pk)},
        ) from exc
    return sorted({str(name) for name in names})


def provider_models(*, provider: Provider) -> list[str]:
    """The model ids the provider's upstream offers (cached five minutes; failures not cached)."""
    key = _models_cache_key(provider)
    cached = cache.get(key)
    if cached is not None:
        return cached
    names = run_llm(_fetch_models, provider=provider, resolved=llm.provider_resolved(provider))
    cache.set(key, names, MODELS_CACHE_SECONDS)
    return names


@dataclass
class ModelCatalogue:
    """Every model of the org's enabled providers, plus the providers that could not answer."""

    items: list[dict] = field(default_factory=list)
    errors: list[dict] = field(default_factory=list)


def _catalogue_cache_key(org: Organization, providers: list[Provider]) -> str:
    fingerprint = "|".join(f"{p.pk}:{p.updated_at.timestamp() if p.updated_at else 0}" for p in providers)
    digest = hashlib.sha256(fingerprint.encode()).hexdigest()[:24]
    return f"agents:model-catalogue:{org.pk}:{digest}"


async def _catalogue_entries(providers: list[Provider]) -> list[list[str] | BaseException]:
    async def one(provider: Provider) -> list[str]:
        cached = await cache.aget(_models_cache_key(provider))
        if cached is not None:
            return cached
        names = await asyncio.wait_for(
            _fetch_models(provider, llm.provider_resolved(provider)), CATALOGUE_PROVIDER_TIMEOUT
        )
        await cache.aset(_models_cache_key(provider), names, MODELS_CACHE_SECONDS)
        return names

    return await asyncio.gather(*(one(p) for p in providers), return_exceptions=True)


def model_catalogue(*, org: Organization) -> ModelCatalogue:
    """The live catalogue across the org's enabled providers, asked in parallel.

    One provider failing does not fail the list: it is reported in ``errors``. A complete answer is
    cached five minutes per org (keyed by the providers' ids and versions, so any provider change
    shows at once); an answer with errors is not cached, so a recovered provider reappears.
    """
    providers = list(provider_list(org=org, enabled=True))
    key = _catalogue_cache_key(org, providers)
    cached = cache.get(key)
    if cached is not None:
        return ModelCatalogue(**cached)
    outcomes = run_llm(_catalogue_entries, providers=providers) if providers else []
    catalogue = ModelCatalogue()
    for provider, outcome in zip(providers, outcomes, strict=True):
        ref = {"id": provider.pk, "name": provider.name}
        if isinstance(outcome, BaseException):
            if isinstance(outcome, ApplicationError):
                code, message = outcome.code, outcome.message
            elif isinstance(outcome, TimeoutError):
                code, message = "ERR_PROVIDER_UNAVAILABLE", f"{provider.name} did not answer in time."
            else:
                logger.warning("catalogue: provider %s failed: %r", provider.pk, outcome)
                code, message = "ERR_PROVIDER_UNAVAILABLE", f"{provider.name} could not be reached."
            catalogue.errors.append({"provider": ref, "code": code, "message": message})
            continue
        catalogue.items.extend({"id": name, "provider": ref} for name in outcome)
    if not catalogue.errors:
        cache.set(key, {"items": catalogue.items, "errors": []}, MODELS_CACHE_SECONDS)
    return catalogue


# --- AI configs ----------------------------------------------------------------------------------------


def org_ai_config_get(*, org: Organization) -> OrgAIConfig:
    """The org's AI config; an unsaved default (no primary provider, no personal keys) if none."""
    config = OrgAIConfig.objects.select_related("primary_provider").filter(org=org).first()
    return config if config is not None else OrgAIConfig(org=org)


def personal_keys_allowed(*, org: Organization) -> bool:
    """Whether members of ``org`` may use their own LLM keys."""
    return OrgAIConfig.objects.filter(org=org, allow_personal_keys=True).exists()


def personal_ai_config_get(*, user: User) -> PersonalAIConfig | None:
    """The user's personal BYOK settings, if they saved any."""
    return PersonalAIConfig.objects.filter(user=user).first()
