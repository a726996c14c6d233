"""Which provider serves an LLM call (bring your own key), and in which order to fail over.

Precedence of the first candidate: the user's personal key (only where the org allows personal
keys) → the agent's provider (if enabled) → the org's primary provider (``OrgAIConfig``; without
one, the org's first enabled provider by priority). The org's other enabled providers follow in
priority order as failover candidates, and the platform default (``OPENAI_API_KEY`` /
``OPENAI_BASE_URL``) comes last, so the operator's key serves only when the org has nothing that
works. Providers marked unhealthy (``unhealthy_until`` in the future) are moved behind every
healthy candidate: skipped while anything else can serve, still tried before the call fails.

The model: the explicit argument > the agent's model > the org's primary model > the personal
config's model > ``LLM_DEFAULT_MODEL`` (default ``gpt-4o-mini``).

Resolution sits on the path of every streamed token, so the database reads behind it (the org's
AI config with its enabled providers, a user's personal config) are cached per process for
``LLM_RESOLVE_CACHE_SECONDS`` (default 5 s). Saving or deleting a provider, an org AI config or a
personal config drops the entry of this process at once (signal receivers below); other
processes see the edit when their entry expires, so an edit is live everywhere within seconds. On
a server's loop an entry expired less than ``LLM_RESOLVE_STALE_SECONDS`` (default 30 s) ago
answers once more while it is reloaded in the background.
Health updates of the choke point (queryset updates, no signals) drop the entry explicitly.
"""

from __future__ import annotations

import asyncio
import dataclasses
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

from django.conf import settings
from django.db.models.signals import post_delete, post_save
from django.dispatch import receiver
from django.utils import timezone

from agents.llm.client import ResolvedProvider, parse_headers
from agents.llm.errors import NoProviderError
from agents.models import OrgAIConfig, PersonalAIConfig, Provider
from core.db_threads import on_server_loop, run_db, start_once

DEFAULT_MODEL = "gpt-4o-mini"


@dataclass(frozen=True)
class Candidate:
    """A provider the choke point may try, with the health it had when it was read."""

    provider: ResolvedProvider
    unhealthy_until: datetime | None = None
    consecutive_failures: int = 0

    @property
    def tracks_health(self) -> bool:
        """Only stored providers have a health record (personal and platform keys have none)."""
        return self.provider.provider_id is not None and self.provider.source in ("agent", "org")


@dataclass(frozen=True)
class _OrgSnapshot:
    primary_provider_id: UUID | None
    primary_model: str
    allow_personal_keys: bool
    providers: tuple[Candidate, ...]  # enabled ones, in priority order


@dataclass(frozen=True)
class _PersonalSnapshot:
    provider: ResolvedProvider | None
    model: str


_lock = threading.Lock()
_cache: dict[tuple[str, Any], tuple[float, Any]] = {}


def _ttl() -> float:
    return float(getattr(settings, "LLM_RESOLVE_CACHE_SECONDS", 5.0))


def _cached(key: tuple[str, Any]) -> Any:
    entry = _cache.get(key)
    if entry is not None and entry[0] > time.monotonic():
        return entry[1]
    return None


def _stale_seconds() -> float:
    return float(getattr(settings, "LLM_RESOLVE_STALE_SECONDS", 30.0))


def _cached_or_stale(key: tuple[str, Any]) -> tuple[Any, bool]:
    """(value, fresh): an entry expired less than ``LLM_RESOLVE_STALE_SECONDS`` ago comes back
    with ``fresh`` False; older or missing ones as None."""
    entry = _cache.get(key)
    if entry is None:
        return None, False
    now = time.monotonic()
    if entry[0] > now:
        return entry[1], True
    if entry[0] + _stale_seconds() > now:
        return entry[1], False
    return None, False


# A reload starts this long after the call that found the entry expired: that call is building
# and sending its upstream request at that moment, and a thread reading the database then would
# contend with it for the GIL and delay its first token (``bench/stream_fanout.py``).
REFRESH_DELAY_SECONDS = 0.05


def _refresh_soon(*, org: Any, user: Any, agent: Any, model: str | None) -> None:
    """Reload an org's (and a user's) snapshot on a pool thread, once at a time per org, a moment
    after the call that asked (from the server's loop)."""

    def refresh() -> None:
        try:
            # The expired entries are read again; fresh ones are kept.
            resolve_candidates(org=org, user=user, agent=agent, model=model)
        except NoProviderError:
            pass  # the next call finds out and says so

    async def reload() -> None:
        await asyncio.sleep(REFRESH_DELAY_SECONDS)
        await run_db(refresh)

    start_once(refresh_key(org.pk), reload)


def refresh_key(org_id: Any) -> tuple[str, str]:
    """The ``core.db_threads.start_once`` key of the reload of an org's snapshot."""
    return ("llm-resolve", str(org_id))


def _store(key: tuple[str, Any], value: Any) -> Any:
    ttl = _ttl()
    if ttl > 0:
        with _lock:
            _cache[key] = (time.monotonic() + ttl, value)
    return value


def invalidate(*, org_id: Any = None, user_id: Any = None) -> None:
    """Forget what this process cached about an org's providers or a user's personal key."""
    with _lock:
        if org_id is not None:
            _cache.pop(("org", str(org_id)), None)
        if user_id is not None:
            _cache.pop(("user", str(user_id)), None)


def clear_cache() -> None:
    """Forget every cached resolution of this process (tests; after bulk updates)."""
    with _lock:
        _cache.clear()


def provider_resolved(row: Provider, *, source: str = "org", model: str = "") -> ResolvedProvider:
    """A stored provider as the SDK sees it (for verify, models, key probes and resolution)."""
    return ResolvedProvider(
        source=source,
        provider_type=row.provider_type,
        api_base=row.api_base,
        api_key=row.api_key or "",
        model=model,
        provider_id=row.pk,
        name=row.name,
        extra_headers=parse_headers(row.extra_headers or ""),
    )


def personal_resolved(config: PersonalAIConfig, *, model: str = "") -> ResolvedProvider:
    """A member's personal key as the SDK sees it."""
    return ResolvedProvider(
        source="personal",
        provider_type=config.provider_type,
        api_base=config.api_base,
        api_key=config.api_key or "",
        model=model or config.model,
        name="personal key",
    )


def _candidate(row: Provider) -> Candidate:
    return Candidate(
        provider=provider_resolved(row),
        unhealthy_until=row.unhealthy_until,
        consecutive_failures=row.consecutive_failures,
    )


def _load_org(org_id: Any) -> _OrgSnapshot:
    key = ("org", str(org_id))
    snapshot = _cached(key)
    if snapshot is not None:
        return snapshot
    config = OrgAIConfig.objects.filter(org_id=org_id).first()
    rows = Provider.objects.filter(org_id=org_id, enabled=True).order_by("priority", "name")
    return _store(
        key,
        _OrgSnapshot(
            primary_provider_id=config.primary_provider_id if config else None,
            primary_model=config.primary_model if config else "",
            allow_personal_keys=bool(config and config.allow_personal_keys),
            providers=tuple(_candidate(row) for row in rows),
        ),
    )


def _load_personal(user_id: Any) -> _PersonalSnapshot:
    key = ("user", str(user_id))
    snapshot = _cached(key)
    if snapshot is not None:
        return snapshot
    config = PersonalAIConfig.objects.filter(user_id=user_id).first()
    provider = None
    if config is not None and (config.api_key or config.api_base):
        provider = personal_resolved(config, model="")
    return _store(key, _PersonalSnapshot(provider=provider, model=config.model if config else ""))


def _platform_default() -> ResolvedProvider | None:
    api_key = getattr(settings, "OPENAI_API_KEY", "") or ""
    base_url = getattr(settings, "OPENAI_BASE_URL", "") or ""
    if not api_key and not base_url:
        return None
    return ResolvedProvider(
        source="platform", provider_type="openai", api_base=base_url, api_key=api_key, name="platform default"
    )


def _assemble(
    *, org_snapshot: _OrgSnapshot, personal: _PersonalSnapshot | None, agent: Any, model: str | None
) -> list[Candidate]:
    """The ordered candidates from the snapshots and the agent's own fields (pure, no I/O)."""
    chosen_model = (
        model
        or (getattr(agent, "model", "") if agent is not None else "")
        or org_snapshot.primary_model
        or (personal.model if personal is not None else "")
        or getattr(settings, "LLM_DEFAULT_MODEL", DEFAULT_MODEL)
    )
    ordered: list[Candidate] = []
    if personal is not None and personal.provider is not None and org_snapshot.allow_personal_keys:
        ordered.append(Candidate(provider=personal.provider))

    by_id = {c.provider.provider_id: c for c in org_snapshot.providers}
    agent_provider_id = getattr(agent, "provider_id", None) if agent is not None else None
    used: set[Any] = set()
    # by_id holds only this org's enabled providers: a disabled one, or another org's, is skipped.
    if agent_provider_id is not None and agent_provider_id in by_id:
        candidate = by_id[agent_provider_id]
        ordered.append(
            dataclasses.replace(candidate, provider=dataclasses.replace(candidate.provider, source="agent"))
        )
        used.add(agent_provider_id)
    if org_snapshot.primary_provider_id in by_id and org_snapshot.primary_provider_id not in used:
        ordered.append(by_id[org_snapshot.primary_provider_id])
        used.add(org_snapshot.primary_provider_id)
    ordered.extend(c for c in org_snapshot.providers if c.provider.provider_id not in used)
    platform = _platform_default()
    if platform is not None:
        ordered.append(Candidate(provider=platform))

    now = timezone.now()
    healthy = [c for c in ordered if c.unhealthy_until is None or c.unhealthy_until <= now]
    unhealthy = [c for c in ordered if c.unhealthy_until is not None and c.unhealthy_until > now]
    result = [
        dataclasses.replace(c, provider=dataclasses.replace(c.provider, model=chosen_model))
        for c in healthy + unhealthy
    ]
    if not result:
        raise NoProviderError(details={"hint": "add one with POST /api/v1/providers or set OPENAI_API_KEY"})
    return result


def _agent_org_matches(org: Any, agent: Any) -> bool:
    return agent is None or getattr(agent, "org_id", None) in (None, org.pk)


def resolve_candidates(
    *, org: Any, user: Any = None, agent: Any = None, model: str | None = None
) -> list[Candidate]:
    """The ordered candidates of one call, with their health (may read the database)."""
    org_snapshot = _load_org(org.pk)
    personal = None
    if user is not None and getattr(user, "pk", None) is not None and org_snapshot.allow_personal_keys:
        personal = _load_personal(user.pk)
    return _assemble(
        org_snapshot=org_snapshot,
        personal=personal,
        agent=agent if _agent_org_matches(org, agent) else None,
        model=model,
    )


async def aresolve_candidates(
    *, org: Any, user: Any = None, agent: Any = None, model: str | None = None
) -> list[Candidate]:
    """Like resolve_candidates, without leaving the event loop when the cache holds the answer.

    On a server's loop an answer expired a short while ago (``LLM_RESOLVE_STALE_SECONDS``) still
    serves while a pool thread reloads it, so that a busy org's calls never wait for that read;
    an edit (which drops the entry of its process) and an idle org are read afresh."""
    org_snapshot, fresh = _cached_or_stale(("org", str(org.pk)))
    user_id = getattr(user, "pk", None) if user is not None else None
    personal = None
    if org_snapshot is not None and user_id is not None and org_snapshot.allow_personal_keys:
        personal, personal_fresh = _cached_or_stale(("user", str(user_id)))
        fresh = fresh and personal_fresh
        if personal is None:
            org_snapshot = None  # one trip to the database for both
    if org_snapshot is not None and not fresh:
        if not on_server_loop():
            org_snapshot = None
        else:
            _refresh_soon(org=org, user=user, agent=agent, model=model)
    if org_snapshot is None:
        return await run_db(resolve_candidates, org=org, user=user, agent=agent, model=model)
    return _assemble(
        org_snapshot=org_snapshot,
        personal=personal,
        agent=agent if _agent_org_matches(org, agent) else None,
        model=model,
    )


def resolve_providers(
    *, org: Any, user: Any = None, agent: Any = None, model: str | None = None
) -> list[ResolvedProvider]:
    """The providers of one call in BYOK order, then failover order (raises NoProviderError)."""
    return [c.provider for c in resolve_candidates(org=org, user=user, agent=agent, model=model)]


@receiver([post_save, post_delete], sender=Provider, dispatch_uid="agents.llm.resolve.provider")
@receiver([post_save, post_delete], sender=OrgAIConfig, dispatch_uid="agents.llm.resolve.org_config")
def _org_changed(sender: Any, instance: Any, **kwargs: Any) -> None:
    invalidate(org_id=instance.org_id)


@receiver([post_save, post_delete], sender=PersonalAIConfig, dispatch_uid="agents.llm.resolve.personal")
def _personal_changed(sender: Any, instance: Any, **kwargs: Any) -> None:
    invalidate(user_id=instance.user_id)
