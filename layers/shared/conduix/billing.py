"""What an org sees and sets about its money: the billing view and the spend cap."""

from __future__ import annotations

from typing import Any

from conduix import clock, orgs, wallets
from conduix.errors import InvalidRequest
from conduix.money import format_credits, parse_credits


def wallet_view(wallet: wallets.Wallet) -> dict[str, Any]:
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
        "open_holds": len(wallet.holds),
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
        "saved_card": (
            {"brand": card.brand, "last4": card.last4, "exp_month": card.exp_month, "exp_year": card.exp_year}
            if card
            else None
        ),
    }


def set_spend_cap(org_id: str, body: dict[str, Any]) -> dict[str, Any]:
    if "monthly_limit" not in body:
        raise InvalidRequest(
            'Send {"monthly_limit": "100"} to set the monthly cap, or null to remove it.',
            param="monthly_limit",
        )
    raw = body["monthly_limit"]
    limit = None if raw is None else parse_credits(raw, field="monthly_limit", allow_zero=True)
    wallets.set_spend_cap(org_id, limit, clock.now())
    return billing_view(org_id)
