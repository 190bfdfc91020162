"""API keys, as operators and org admins manage them: create (shown once), list, revoke."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any

from conduix.accounts import key_records
from conduix.core import clock
from conduix.core.errors import Conflict, NotFound, PermissionDenied
from conduix.core.money import format_credits
from conduix.core.validation import resource_id
from conduix.ledger import key_limits, wallets
from conduix.pricing import plans

if TYPE_CHECKING:
    from conduix.core.bodies import ApiKeyRequest, ApiKeyUpdate


def key_view(
    key: key_records.ApiKey, budget: key_limits.KeyBudget | None = None, now: datetime | None = None
) -> dict[str, Any]:
    return {
        "key_id": key.key_id,
        "name": key.name,
        "scopes": sorted(key.scopes),
        "created_at": key.created_at,
        "revoked": key.revoked,
        "spend_limit": limit_view(budget, now or clock.now()),
    }


def limit_view(budget: key_limits.KeyBudget | None, now: datetime) -> dict[str, Any] | None:
    """A key's limit and its spend in the current window (null: no limit)."""
    if budget is None or not budget.limit:
        return None
    window = clock.limit_window(budget.period, now)
    spent = budget.spent if budget.window >= window else 0  # not rolled yet: a new window spent nothing
    resets = clock.limit_resets_at(budget.period, window)
    return {
        "amount": format_credits(budget.limit),
        "period": budget.period,
        "spent": format_credits(spent),
        "in_flight": format_credits(budget.held),
        "remaining": format_credits(max(budget.limit - spent - budget.held, 0)),
        "resets_at": clock.iso_seconds(resets) if resets else None,
    }


def create_api_key(
    org_id: str, asked: ApiKeyRequest, granted: tuple[str, ...] = key_records.SCOPES
) -> dict[str, Any]:
    """Mint a key with the scopes asked for (by default, all of `granted`). A key may create
    keys only with scopes it holds itself (`granted`); the operator holds them all."""
    resource_id(org_id, "org")
    name = asked.name or "default"
    scopes = [s for s in key_records.SCOPES if s in granted] if asked.scopes is None else list(asked.scopes)
    beyond = sorted(set(scopes) - set(granted))
    if beyond:
        raise PermissionDenied(
            f"This API key cannot create a key with the {', '.join(repr(x) for x in beyond)} "
            "scope: a key may only grant scopes it holds itself."
        )
    plan = plans.get(wallets.get_wallet(org_id).plan)
    secret, key = key_records.insert_api_key(
        org_id, name, tuple(sorted(set(scopes))), clock.now(), plan.max_api_keys
    )
    return {"api_key": secret, "org_id": org_id, **key_view(key)}


def revoke_api_key(org_id: str, key_id: str) -> dict[str, Any]:
    resource_id(org_id, "org")
    resource_id(key_id, "API key")
    return key_view(key_records.mark_key_revoked(org_id, key_id, clock.now()))


def list_keys(org_id: str) -> dict[str, Any]:
    resource_id(org_id, "org")
    budgets, now = key_limits.key_budgets(org_id), clock.now()
    return {
        "object": "list",
        "data": [key_view(k, budgets.get(k.key_id), now) for k in key_records.list_api_keys(org_id)],
    }


def _window_start(period: str, now: datetime) -> str | None:
    """The first UTC day of the window `now` is in (None for a total limit)."""
    window = clock.limit_window(period, now)
    return None if period == "total" else window if period != "month" else f"{window}-01"


def update_api_key(org_id: str, key_id: str, change: ApiKeyUpdate) -> dict[str, Any]:
    """PATCH /v1/billing/api-keys/{key_id}: {"spend_limit": {"amount": "5", "period": "day"}}
    sets the key's spend limit (day, week, month: UTC, weeks from Monday; or total), null
    removes it. What the key already spent in the current window counts at once."""
    resource_id(org_id, "org")
    resource_id(key_id, "API key")
    key = next((k for k in key_records.list_api_keys(org_id) if k.key_id == key_id), None)
    if key is None:
        raise NotFound(f"No API key '{key_id}' in this org.")
    if key.revoked:
        raise Conflict("This API key is revoked; a revoked key cannot spend.", code="key_revoked")
    now = clock.now()
    limit = change.spend_limit
    if limit is None:
        key_limits.set_key_limit(org_id, key_id, None, "day", 0, now)
        return key_view(key, None, now)
    amount, period = limit.amount, limit.period
    spent = key_limits.key_usage_spend(org_id, key_id, _window_start(period, now))
    budget = key_limits.set_key_limit(org_id, key_id, amount, period, spent, now)
    return key_view(key, budget, now)
