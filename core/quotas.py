"""Plan limits, checked by the services that create limited things (agents, knowledge storage, …).

`core` knows nothing of plans: the billing app registers one checker from ``AppConfig.ready()``,
and a service about to create something calls :func:`check_limit` inside its transaction. With no
checker registered (billing not installed) everything is allowed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

LimitChecker = Callable[..., None]

_checkers: list[LimitChecker] = []


def register_limit_checker(checker: LimitChecker) -> LimitChecker:
    """``checker(*, org, resource, adding)`` raises ``PermissionDeniedError(code="ERR_PLAN_LIMIT")``
    (or any ApplicationError) when adding ``adding`` units of ``resource`` would pass the org's plan."""
    if checker not in _checkers:
        _checkers.append(checker)
    return checker


def check_limit(*, org: Any, resource: str, adding: int = 1) -> None:
    """Refuse (by raising) when the org's plan does not allow ``adding`` more of ``resource``.

    Resources in use: ``agents`` (count), ``knowledge_bases`` (count), ``kb_storage_bytes``,
    ``members`` (count), ``monthly_tokens``.
    """
    for checker in list(_checkers):
        checker(org=org, resource=resource, adding=adding)
