"""The operator's API: orgs, their keys, and manual credit grants."""

from __future__ import annotations

import re
from typing import Any

from conduix import clock, keys, notices, orgs, reloads, wallets
from conduix.billing import wallet_view
from conduix.errors import InvalidRequest
from conduix.money import format_credits, parse_credits
from conduix.validation import resource_id, text_field

_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")


def create_org(body: dict[str, Any]) -> dict[str, Any]:
    name = text_field(body, "name", required=True)
    email = text_field(body, "email", required=True)
    assert name and email
    if not _EMAIL.match(email):
        raise InvalidRequest("'email' is not an email address.", param="email")
    org = orgs.create_org(name, email, clock.now())
    return get_org(org.org_id)


def get_org(org_id: str) -> dict[str, Any]:
    org = orgs.get_org(resource_id(org_id, "org"))
    return {
        "org_id": org.org_id,
        "name": org.name,
        "email": org.email,
        "created_at": org.created_at,
        "wallet": wallet_view(wallets.get_wallet(org_id)),
        "invoicing": {"po_number": org.po_number, "net_terms_days": org.net_terms_days},
        "api_keys": keys.list_keys(org_id)["data"],
    }


def grant_credits(org_id: str, body: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    """Add credits by hand. Returns the ledger entry and whether this call created it."""
    resource_id(org_id, "org")
    amount = parse_credits(body.get("amount"), field="amount")
    reason = text_field(body, "reason", required=True)
    key = text_field(body, "idempotency_key", required=True)
    assert reason and key
    orgs.get_org(org_id)  # a 404 for an unknown org, before anything moves
    entry, created = wallets.credit(
        org_id, kind="grant", key=key, amount=amount, description=reason, now=clock.now()
    )
    return {
        "entry_id": entry.entry_id,
        "type": entry.entry_type,
        "amount": format_credits(entry.amount),
        "description": entry.description,
        "created_at": entry.created_at,
        "idempotency_key": key,
    }, created


def set_billing(org_id: str, body: dict[str, Any]) -> dict[str, Any]:
    """PUT /admin/orgs/{org_id}/billing: {"mode": "invoice", "po_number": "PO-123", "net_terms_days": 30}
    or {"mode": "prepaid"}."""
    resource_id(org_id, "org")
    mode = body.get("mode")
    if mode not in wallets.BILLING_MODES:
        raise InvalidRequest(f"'mode' must be one of {', '.join(wallets.BILLING_MODES)}.", param="mode")
    po_number = text_field(body, "po_number", required=False)
    days = body.get("net_terms_days", 30)
    if isinstance(days, bool) or not isinstance(days, int) or not 1 <= days <= 120:
        raise InvalidRequest(
            "'net_terms_days' must be a whole number of days from 1 to 120.", param="net_terms_days"
        )
    org = orgs.get_org(org_id)
    now = clock.now()
    reload_turned_off = False
    if mode == "invoice":
        orgs.set_invoice_terms(org_id, po_number, days)
        # The saved card must not pay for what the invoice bills.
        reason = "Your account now pays by monthly invoice, so the card is no longer charged."
        reload_turned_off = reloads.turn_off(org_id, reason, now)
        if reload_turned_off:
            notices.auto_reload_turned_off(org.email, org.name, reason)
    wallets.set_billing_mode(org_id, str(mode), now)
    return {**get_org(org_id), "auto_reload_turned_off": reload_turned_off}
