"""The data files shipped with billing: the model price catalogue and the plans.

Both are read once per process (they change with a deploy, not at run time). Prices are USD per
million tokens, which is also micro-dollars per token: a call's cost in micro-dollars is
``prompt_tokens * input + completion_tokens * output``.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from decimal import Decimal
from functools import cache
from pathlib import Path
from typing import Any

from django.conf import settings

DATA_DIR = Path(__file__).resolve().parent / "data"


@dataclass(frozen=True)
class Price:
    """Input and output price of a model in USD per million tokens, and where it came from."""

    input: Decimal
    output: Decimal
    source: str = "catalogue"  # or "override"
    model: str = ""

    def cost_micros(self, prompt_tokens: int, completion_tokens: int) -> int:
        """Cost in micro-dollars, rounded up so that caps are never under-counted."""
        exact = self.input * prompt_tokens + self.output * completion_tokens
        return int(math.ceil(exact))


@cache
def catalogue_version() -> str:
    return json.loads((DATA_DIR / "model_prices.json").read_text()).get("version", "")


@cache
def price_catalogue() -> dict[str, dict[str, Any]]:
    """``model id -> entry`` from ``data/model_prices.json``."""
    raw = json.loads((DATA_DIR / "model_prices.json").read_text())
    return {entry["model"]: entry for entry in raw["models"]}


def catalogue_price(model: str) -> Price | None:
    """The shipped price of ``model``: exact id, then without a ``vendor/`` prefix, then the longest
    catalogue id that prefixes it (``gpt-4o-2024-08-06`` is ``gpt-4o``); None when unknown."""
    if not model:
        return None
    catalogue = price_catalogue()
    candidates = [model, model.lower()]
    if "/" in model:
        tail = model.rsplit("/", 1)[1]
        candidates += [tail, tail.lower()]
    for name in candidates:
        if name in catalogue:
            return _price(catalogue[name])
    best = None
    for name in candidates:
        for known in catalogue:
            if (
                name.startswith(known)
                and name[len(known) : len(known) + 1] in ("-", "@", ":", ".", "")
                and (best is None or len(known) > len(best))
            ):
                best = known
    return _price(catalogue[best]) if best else None


def _price(entry: dict[str, Any]) -> Price:
    return Price(
        input=Decimal(str(entry["input"])), output=Decimal(str(entry["output"])), model=entry["model"]
    )


@cache
def _plans_file() -> dict[str, Any]:
    return json.loads((DATA_DIR / "plans.json").read_text())


def plans() -> list[dict[str, Any]]:
    """Every plan, cheapest first."""
    return sorted(_plans_file()["plans"], key=lambda plan: plan["rank"])


def plan_get(key: str) -> dict[str, Any] | None:
    return next((plan for plan in plans() if plan["key"] == key), None)


def default_plan_key() -> str:
    """The plan of an org without a subscription (``BILLING_DEFAULT_PLAN``, else the file's default)."""
    configured = getattr(settings, "BILLING_DEFAULT_PLAN", "") or ""
    return configured if plan_get(configured) else _plans_file()["default"]
