"""The operator's API: orgs, their keys, and manual credit grants."""

from __future__ import annotations

import re
from typing import Any

from conduix import clock, orgs, plans, wallets
from conduix.billing import wallet_view
from conduix.errors import InvalidRequest
from conduix.money import format_credits, parse_credits

_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
_MAX_TEXT = 200


def _text(body: dict[str, Any], name: str, *, required: bool) -> str | None:
    value = body.get(name)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value.strip():
        raise InvalidRequest(f"'{name}' must be a non-empty string.", param=name)
    if len(value) > _MAX_TEXT:
        raise InvalidRequest(f"'{name}' must be at most {_MAX_TEXT} characters.", param=name)
    return value.strip()


def create_org(body: dict[str, Any]) -> dict[str, Any]:
    name = _text(body, "name", required=True)
    email = _text(body, "email", required=True)
    assert name and email
    if not _EMAIL.match(email):
        raise InvalidRequest("'email' is not an email address.", param="email")
    org = orgs.create_org(name, email, clock.now())
    return get_org(org.org_id)


def get_org(org_id: str) -> dict[str, Any]:
    org = orgs.get_org(org_id)
    return {
        "org_id": org.org_id,
        "name": org.name,
        "email": org.email,
        "created_at": org.created_at,
        "wallet": wallet_view(wallets.get_wallet(org_id)),
        "invoicing": {"po_number": org.po_number, "net_terms_days": org.net_terms_days},
        "api_keys": [_key_view(k) for k in orgs.list_api_keys(org_id)],
    }


def _key_view(key: orgs.ApiKey) -> dict[str, Any]:
    return {
        "key_id": key.key_id,
        "name": key.name,
        "scopes": sorted(key.scopes),
        "created_at": key.created_at,
        "revoked": key.revoked,
    }


def create_api_key(org_id: str, body: dict[str, Any]) -> dict[str, Any]:
    name = _text(body, "name", required=False) or "default"
    scopes = body.get("scopes", list(orgs.SCOPES))
    if (
        not isinstance(scopes, list)
        or not scopes
        or not all(isinstance(x, str) and x in orgs.SCOPES for x in scopes)
    ):
        raise InvalidRequest(
            f"'scopes' must be a non-empty list of {', '.join(orgs.SCOPES)}.", param="scopes"
        )
    plan = plans.get(wallets.get_wallet(org_id).plan)
    secret, key = orgs.create_api_key(
        org_id, name, tuple(sorted(set(scopes))), clock.now(), plan.max_api_keys
    )
    return {"api_key": secret, "org_id": org_id, **_key_view(key)}


def revoke_api_key(org_id: str, key_id: str) -> dict[str, Any]:
    return _key_view(orgs.revoke_api_key(org_id, key_id))


def grant_credits(org_id: str, body: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    """Add credits by hand. Returns the ledger entry and whether this call created it."""
    amount = parse_credits(body.get("amount"), field="amount")
    reason = _text(body, "reason", required=True)
    key = _text(body, "idempotency_key", required=True)
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
    mode = body.get("mode")
    if mode not in wallets.BILLING_MODES:
        raise InvalidRequest(f"'mode' must be one of {', '.join(wallets.BILLING_MODES)}.", param="mode")
    po_number = _text(body, "po_number", required=False)
    days = body.get("net_terms_days", 30)
    if isinstance(days, bool) or not isinstance(days, int) or not 1 <= days <= 120:
        raise InvalidRequest(
            "'net_terms_days' must be a whole number of days from 1 to 120.", param="net_terms_days"
        )
    orgs.get_org(org_id)
    if mode == "invoice":
        orgs.set_invoice_terms(org_id, po_number, days)
    wallets.set_billing_mode(org_id, str(mode))
    return get_org(org_id)
