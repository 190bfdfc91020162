"""What an org sees and sets about its money: the billing view and the spend cap."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

from conduix.accounts import alerts, grants, notices, orgs
from conduix.core import clock
from conduix.core.config import payment_settings
from conduix.core.money import format_credits
from conduix.ledger import lease_store, wallet_settings, wallets
from conduix.pricing import plans
from conduix.pricing.catalog import catalog

if TYPE_CHECKING:
    from conduix.core.bodies import AlertsRequest


def wallet_view(wallet: wallets.Wallet) -> dict[str, Any]:
    current = clock.period_of(clock.now())
    if wallet.lease_count:
        # A hot org's requests billed under escrow leases are debited when their lease is
        # folded: show them as spent now, and only the rest of the leased slices as held.
        spent, in_month = lease_store.unfolded(wallet.org_id, wallet.period)
        wallet = dataclasses.replace(
            wallet,
            balance=wallet.balance - spent,
            held=wallet.held - spent,
            month_spent=wallet.month_spent + in_month,
            committed=wallet.committed + in_month - spent,
        )
    if wallet.period < current:
        # A wallet rolls into a new month on its first write of that month (wallets.roll_period);
        # until then it reads as rolled, the same way: nothing spent, only open holds committed.
        wallet = dataclasses.replace(
            wallet,
            period=current,
            month_spent=0,
            committed=wallet.held,
            cap_remaining=wallet.cap_limit - wallet.held,
        )
    cap = None
    if wallet.capped:
        cap = {
            "monthly_limit": format_credits(wallet.cap_limit),
            "period": wallet.period,
            "used": format_credits(wallet.committed),
            "remaining": format_credits(max(wallet.cap_remaining, 0)),
        }
    return {
        "balance": format_credits(wallet.balance),
        "held": format_credits(wallet.held),
        "available": format_credits(wallet.available),
        "open_holds": wallet.hold_count,
        "billing_mode": wallet.billing_mode,
        "month": {"period": wallet.period, "spent": format_credits(wallet.month_spent)},
        "spend_cap": cap,
        "unit": "credits",
    }


def billing_view(org_id: str) -> dict[str, Any]:
    wallet = wallets.get_wallet(org_id)
    org = orgs.get_org(org_id)
    reload = wallet.reload
    card = org.card
    return {
        "org_id": org_id,
        "org_name": org.name,
        **wallet_view(wallet),
        "account_state": "paused" if wallet.paused else "active",
        "auto_reload": {
            "enabled": reload.enabled,
            "threshold": format_credits(reload.threshold) if reload.threshold else None,
            "amount": format_credits(reload.amount) if reload.amount else None,
            "consecutive_failures": reload.failures,
            "last_result": (
                {"status": reload.last_status, "message": reload.last_message, "at": reload.last_at}
                if reload.last_status
                else None
            ),
        },
        "plan": _plan_view(wallet.plan, org.subscription),
        # Grants that expire, soonest first: spending draws on them before other credits.
        "expiring_credits": grants.view(org_id, clock.now()),
        "saved_card": (
            {"brand": card.brand, "last4": card.last4, "exp_month": card.exp_month, "exp_year": card.exp_year}
            if card
            else None
        ),
    }


def set_spend_cap(org_id: str, limit: int | None) -> dict[str, Any]:
    """The monthly cap in nano-credits (None removes it)."""
    wallet_settings.write_spend_cap(org_id, limit, clock.now())
    return billing_view(org_id)


def set_alerts(org_id: str, settings: AlertsRequest) -> dict[str, Any]:
    """The whole set of thresholds (a PUT); a repeated one counts once."""
    balances = tuple(sorted(set(settings.balance_below), reverse=True))
    percents = tuple(sorted(set(settings.cap_used_percent)))
    alerts.save_settings(org_id, balances, percents, clock.now())
    return alerts.view(org_id)


def alerts_view(org_id: str) -> dict[str, Any]:
    return alerts.view(org_id)


def notices_view(org_id: str, limit: int = 50) -> dict[str, Any]:
    """The emails sent to the org, newest first (`limit`, 1 to 100, checked by the API)."""
    return {"object": "list", "data": notices.recent(org_id, limit)}


def _plan_view(plan_id: str, sub: orgs.Subscription | None) -> dict[str, Any]:
    plan = plans.get(plan_id)
    return {
        "id": plan.id,
        "name": plan.name,
        "included_credits": format_credits(plan.included_credits),
        "subscription": (
            {
                "status": sub.status,
                "current_period_end": sub.current_period_end,
                "last_payment_failed": sub.last_payment_failed,
            }
            if sub
            else None
        ),
    }


def pricing() -> dict[str, Any]:
    """GET /v1/pricing (public): plans, top-up tiers and model prices."""
    return {
        "unit": "credits",
        "credit_value": "1 credit = 1 USD",
        "plans": [
            {
                "id": p.id,
                "name": p.name,
                "monthly_price": format_credits(p.monthly_price_cents * 10_000_000),
                "included_credits": format_credits(p.included_credits),
                "features": {
                    "cache_ttl_seconds": p.cache_ttl_seconds,
                    "requests_per_minute_per_key": p.requests_per_minute,
                    "max_api_keys": p.max_api_keys,
                },
                "highlights": list(p.highlights),
            }
            for p in plans.all_plans().values()
        ],
        "top_up_tiers": [format_credits(t) for t in payment_settings().top_up_tiers],
        "models": [
            {
                "id": m.id,
                "input_per_million": format_credits(m.pricing.input_per_million),
                "output_per_million": format_credits(m.pricing.output_per_million),
            }
            for m in catalog()
        ],
        "cache": "Identical requests with temperature 0 are answered from cache for free.",
    }
