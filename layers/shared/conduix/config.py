"""Settings, read from the environment once per cold start.

Required values have no defaults: a missing one fails loudly with its name rather than
quietly pointing at a table that doesn't exist. Kept free of pydantic so the Completion
function's cold start stays small.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cache

from conduix.errors import ConfigurationError


def _required(name: str) -> str:
    value = os.environ.get(name, "").strip()
    if not value:
        raise ConfigurationError(f"The environment variable {name} is required but not set.")
    return value


def _int(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        return int(raw)
    except ValueError:
        raise ConfigurationError(
            f"The environment variable {name} must be an integer, not {raw!r}."
        ) from None


@dataclass(frozen=True)
class Settings:
    billing_table: str
    cache_table: str
    models_file: str | None
    # A hold outlives any Lambda that could settle it (Completion times out at 30 s), so a
    # hold still open after this long belongs to a request that died: HoldSweeper frees it.
    hold_ttl_seconds: int
    # Org keys are looked up once and remembered this long by a warm function; revoking a
    # key takes effect within it.
    key_cache_seconds: int


@cache
def settings() -> Settings:
    return Settings(
        billing_table=_required("BILLING_TABLE"),
        cache_table=_required("CACHE_TABLE"),
        models_file=os.environ.get("CONDUIX_MODELS_FILE", "").strip() or None,
        hold_ttl_seconds=_int("CONDUIX_HOLD_TTL_SECONDS", 300),
        key_cache_seconds=_int("CONDUIX_KEY_CACHE_SECONDS", 30),
    )


@cache
def operator_key_sha256() -> str:
    """Only the hash of the operator key is deployed (see template.yaml)."""
    value = _required("OPERATOR_KEY_SHA256").lower()
    if len(value) != 64 or any(c not in "0123456789abcdef" for c in value):
        raise ConfigurationError("OPERATOR_KEY_SHA256 must be 64 hex digits (a SHA-256).")
    return value


@dataclass(frozen=True)
class PaymentSettings:
    top_up_tiers: tuple[int, ...]  # nano-credits; operator-configured
    reload_min: int
    reload_max: int
    public_url: str  # where the dashboard lives (Checkout returns there)


def _credit_list(name: str, default: str) -> tuple[int, ...]:
    from conduix.errors import InvalidRequest
    from conduix.money import parse_credits

    raw = os.environ.get(name, "").strip() or default
    try:
        values = tuple(sorted({parse_credits(part, field=name) for part in raw.split(",") if part.strip()}))
    except InvalidRequest as exc:
        raise ConfigurationError(f"{name}: {exc.message}") from None
    if not values or any(v % 10_000_000 for v in values):
        raise ConfigurationError(f"{name} must list amounts in whole cents, such as 10,50,100,500.")
    return values


@cache
def payment_settings() -> PaymentSettings:
    reload_limits = _credit_list("CONDUIX_RELOAD_LIMITS", "5,1000")
    return PaymentSettings(
        top_up_tiers=_credit_list("CONDUIX_TOP_UP_TIERS", "10,50,100,500"),
        reload_min=reload_limits[0],
        reload_max=reload_limits[-1],
        public_url=_required("CONDUIX_PUBLIC_URL").rstrip("/"),
    )


@cache
def reload_daily_limit() -> int:
    """How many auto-reload charges one org may have per UTC day before auto-reload pauses."""
    limit = _int("CONDUIX_RELOAD_DAILY_LIMIT", 5)
    if limit < 1:
        raise ConfigurationError("CONDUIX_RELOAD_DAILY_LIMIT must be at least 1.")
    return limit
