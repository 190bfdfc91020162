"""Subscription plans: price, credits included each period, and the features the code
enforces (cache lifetime, requests per minute per key, number of API keys).

Operators edit them as JSON (`CONDUIX_PLANS_FILE`); the default ships in this package.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from conduix.core.config import plans_file
from conduix.core.errors import ConfigurationError, InvalidRequest
from conduix.core.money import parse_credits

DEFAULT_PLANS = Path(__file__).with_name("plans.default.json")
FREE = "free"


@dataclass(frozen=True)
class Plan:
    id: str
    name: str
    monthly_price_cents: int
    included_credits: int  # nano-credits granted each paid period
    cache_ttl_seconds: int
    requests_per_minute: int
    max_api_keys: int
    highlights: tuple[str, ...]

    @property
    def price_lookup_key(self) -> str:
        """Stripe finds (or we create) this plan's monthly price under this key."""
        return f"conduix_{self.id}_monthly_{self.monthly_price_cents}"


def _plan(entry: dict[str, Any], source: str) -> Plan:
    label = entry.get("id", "?")
    try:
        features = entry["features"]
        price = parse_credits(str(entry["monthly_price"]), field="monthly_price", allow_zero=True)
        if price % 10_000_000:
            raise ValueError("monthly_price must be whole cents")
        return Plan(
            id=str(entry["id"]),
            name=str(entry["name"]),
            monthly_price_cents=price // 10_000_000,
            included_credits=parse_credits(
                str(entry["included_credits"]), field="included_credits", allow_zero=True
            ),
            cache_ttl_seconds=int(features["cache_ttl_seconds"]),
            requests_per_minute=int(features["requests_per_minute"]),
            max_api_keys=int(features["max_api_keys"]),
            highlights=tuple(str(h) for h in entry.get("highlights", [])),
        )
    except (KeyError, TypeError, ValueError, InvalidRequest) as exc:
        detail = exc.message if isinstance(exc, InvalidRequest) else f"{type(exc).__name__}: {exc}"
        raise ConfigurationError(f"Plans {source}: plan '{label}': {detail}") from None


@cache
def all_plans() -> dict[str, Plan]:
    path = Path(plans_file() or DEFAULT_PLANS)
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))["plans"]
    except (OSError, ValueError, KeyError) as exc:
        raise ConfigurationError(f"Plans {path}: cannot be read: {exc}") from None
    plans = {p.id: p for p in (_plan(e, str(path)) for e in entries)}
    if FREE not in plans or plans[FREE].monthly_price_cents != 0:
        raise ConfigurationError(f"Plans {path}: a free plan with id 'free' and price 0 is required.")
    return plans


def get(plan_id: str | None) -> Plan:
    """The plan of that id; an unknown or missing one is the free plan."""
    return all_plans().get(plan_id or FREE) or all_plans()[FREE]


def by_price_lookup_key(lookup_key: str | None) -> Plan | None:
    return next((p for p in all_plans().values() if p.price_lookup_key == lookup_key), None)
