"""Hooks that higher apps fill from ``AppConfig.ready()``: LLM call guards (billing reserves
before a call and settles after it) and usage listeners (metering). `agents` knows nothing of caps
or credits; it calls whatever is registered here."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

# before(call: dict) -> reservation (may raise an ApplicationError to refuse the call, e.g. 429
# ERR_USAGE_CAP_EXCEEDED); after(call: dict, usage: dict | None, reservation) settles it.
LLMGuard = tuple[Callable[[dict], Any], Callable[[dict, dict | None, Any], None]]
UsageListener = Callable[[dict], None]

_guards: list[LLMGuard] = []
_usage_listeners: list[UsageListener] = []


def register_llm_guard(
    before: Callable[[dict], Any], after: Callable[[dict, dict | None, Any], None]
) -> None:
    """Run ``before`` ahead of every LLM call and ``after`` once it has ended (success or not)."""
    if (before, after) not in _guards:
        _guards.append((before, after))


def llm_guards() -> list[LLMGuard]:
    return list(_guards)


def register_usage_listener(listener: UsageListener) -> UsageListener:
    """Receive one usage event per LLM call: tokens, model, provider, latency, status, who."""
    if listener not in _usage_listeners:
        _usage_listeners.append(listener)
    return listener


def usage_listeners() -> list[UsageListener]:
    return list(_usage_listeners)
