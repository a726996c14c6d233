"""Hooks that higher apps fill from ``AppConfig.ready()``: LLM call guards (billing reserves
before a call and settles after it) and usage listeners (metering). `agents` knows nothing of caps
or credits; it calls whatever is registered here."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

# before(call: dict) -> reservation (may raise an ApplicationError to refuse the call, e.g. 429
# ERR_USAGE_CAP_EXCEEDED); after(call: dict, usage: dict | None, reservation) settles it.
LLMGuard = tuple[Callable[[dict], Any], Callable[[dict, dict | None, Any], None]]
UsageListener = Callable[[dict], None]

_guards: list[LLMGuard] = []
_guard_applies: dict[Callable[[dict], Any], Callable[[dict], bool | None]] = {}
_guard_try_before: dict[Callable[[dict], Any], Callable[[dict], Any]] = {}
_usage_listeners: list[UsageListener] = []
_usage_listeners_on_loop: dict[UsageListener, Callable[[dict], Awaitable[bool]]] = {}


def register_llm_guard(
    before: Callable[[dict], Any],
    after: Callable[[dict, dict | None, Any], None],
    *,
    applies: Callable[[dict], bool | None] | None = None,
    try_before: Callable[[dict], Any] | None = None,
) -> None:
    """Run ``before`` ahead of every LLM call and ``after`` once it has ended (success or not).

    ``applies(call)``, if given, answers from memory (no I/O: it runs on the event loop) whether
    the guard has anything to do for this call: False skips the guard, sparing the call a trip to
    a database thread; True or None (cannot tell) runs it. ``try_before(call)``, if given, may
    answer the reservation from memory (no I/O, on the event loop); None runs ``before``.
    """
    if (before, after) not in _guards:
        _guards.append((before, after))
    if applies is not None:
        _guard_applies[before] = applies
    if try_before is not None:
        _guard_try_before[before] = try_before


def guard_try_before(guard: LLMGuard) -> Callable[[dict], Any] | None:
    """The guard's in-memory ``try_before``, if it registered one."""
    return _guard_try_before.get(guard[0])


def llm_guards_for(call: dict) -> list[LLMGuard]:
    """The guards that may have something to do for ``call`` (see ``register_llm_guard``)."""
    guards = []
    for guard in _guards:
        applies = _guard_applies.get(guard[0])
        if applies is not None and applies(call) is False:
            continue
        guards.append(guard)
    return guards


def register_usage_listener(
    listener: UsageListener, *, on_loop: Callable[[dict], Awaitable[bool]] | None = None
) -> UsageListener:
    """Receive one usage event per LLM call: tokens, model, provider, latency, status, who.

    ``on_loop(event)``, if given, is tried first when the call ends on a server's event loop: it
    handles the event there without a thread and answers True, or answers False (having done
    nothing) and ``listener`` gets the event on a database thread as usual."""
    if listener not in _usage_listeners:
        _usage_listeners.append(listener)
    if on_loop is not None:
        _usage_listeners_on_loop[listener] = on_loop
    return listener


def usage_listeners() -> list[UsageListener]:
    return list(_usage_listeners)


def usage_listener_on_loop(listener: UsageListener) -> Callable[[dict], Awaitable[bool]] | None:
    """The listener's event-loop variant, if it registered one."""
    return _usage_listeners_on_loop.get(listener)


CostEstimator = Callable[..., int | None]
_cost_estimators: list[CostEstimator] = []


def register_cost_estimator(estimator: CostEstimator) -> CostEstimator:
    """Price tokens for the layers that show a cost (a chat turn's ``usage`` event) without
    importing billing: ``estimator(*, org_id, model, provider_type, prompt_tokens,
    completion_tokens) -> micro-dollars | None`` (None: the price is unknown)."""
    if estimator not in _cost_estimators:
        _cost_estimators.append(estimator)
    return estimator


def estimate_cost_micros(
    *, org_id: Any, model: str, provider_type: str = "", prompt_tokens: int, completion_tokens: int
) -> int | None:
    """The first estimator's price of these tokens, or None when none is registered or knows it."""
    for estimator in list(_cost_estimators):
        micros = estimator(
            org_id=org_id,
            model=model,
            provider_type=provider_type,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
        )
        if micros is not None:
            return int(micros)
    return None
