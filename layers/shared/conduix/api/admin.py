"""The operator's API: orgs, their keys, and manual credit grants."""

from __future__ import annotations

import base64
import binascii
import json
import re
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from conduix.accounts import alerts, grants, keys, notices, orgs
from conduix.api.billing import wallet_view
from conduix.core import clock
from conduix.core.config import settings
from conduix.core.errors import IdempotencyConflict, InvalidRequest
from conduix.core.money import format_credits
from conduix.core.validation import resource_id
from conduix.ledger import entries, holds, lease_store, settles, upkeep, wallet_settings, wallets
from conduix.payments import reloads
from conduix.store import schema
from conduix.store.items import s

if TYPE_CHECKING:
    from conduix.core.bodies import BillingModeRequest, GrantRequest

_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")


def register_org(name: str, email: str) -> dict[str, Any]:
    if not _EMAIL.match(email):
        raise InvalidRequest("'email' is not an email address.", param="email")
    org = orgs.create_org(name, email, clock.now())
    return org_view(org.org_id)


def org_view(org_id: str) -> dict[str, Any]:
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


def grant_credits(org_id: str, grant_asked: GrantRequest) -> tuple[dict[str, Any], bool]:
    """Add credits by hand. Returns the ledger entry and whether this call created it."""
    resource_id(org_id, "org")
    amount, reason, key = grant_asked.amount, grant_asked.reason, grant_asked.idempotency_key
    now = clock.now()
    asked_expiry = grant_asked.expires_at
    expires = grants.parse_expiry(asked_expiry, now) if asked_expiry is not None else None
    orgs.get_org(org_id)  # a 404 for an unknown org, before anything moves
    entry_id = f"grant:{key}"
    grant = grants.get(org_id, entry_id)
    if expires is not None:
        if grant is None and entries.ledger_entry(org_id, entry_id) is not None:
            raise IdempotencyConflict(
                f"The idempotency key '{key}' was already used for a grant without expiry."
            )
        # The expiry is written first, so credits that should expire never land without it.
        grant = grants.record(org_id, entry_id, amount, expires, now)
    elif grant is not None:
        raise IdempotencyConflict(f"The idempotency key '{key}' was already used for an expiring grant.")
    entry, created = entries.post_entry(
        org_id, kind="grant", key=key, amount=amount, description=reason, now=now
    )
    if created:
        alerts.after_credit(org_id, now)
    return {
        "entry_id": entry.entry_id,
        "type": entry.entry_type,
        "amount": format_credits(entry.amount),
        "description": entry.description,
        "created_at": entry.created_at,
        "idempotency_key": key,
        "expires_at": grant.expires_at if grant else None,
    }, created


def set_billing(org_id: str, asked: BillingModeRequest) -> dict[str, Any]:
    """PUT /admin/orgs/{org_id}/billing: {"mode": "invoice", "po_number": "PO-123", "net_terms_days": 30}
    or {"mode": "prepaid"}."""
    resource_id(org_id, "org")
    mode, po_number, days = asked.mode, asked.po_number, asked.net_terms_days
    org = orgs.get_org(org_id)
    now = clock.now()
    reload_turned_off = False
    if mode == "invoice":
        orgs.set_invoice_terms(org_id, po_number, days)
        # The saved card must not pay for what the invoice bills.
        reason = "Your account now pays by monthly invoice, so the card is no longer charged."
        reload_turned_off = reloads.turn_off(org_id, reason, now)
        if reload_turned_off:
            notices.auto_reload_turned_off(org, reason)
    wallet_settings.set_billing_mode(org_id, str(mode), now)
    return {**org_view(org_id), "auto_reload_turned_off": reload_turned_off}


# ------------------------------------------------------------------ look-ups

_ORG_ID = re.compile(r"^org_[0-9a-f]{16}$")
_BAD_CURSOR = "'cursor' is not one this API gave out."


def _cursor_out(key: dict[str, Any]) -> str:
    payload = {"p": key["pk"]["S"], "e": key["email_lc"]["S"]}
    return base64.urlsafe_b64encode(json.dumps(payload, separators=(",", ":")).encode()).decode()


def _cursor_in(cursor: str) -> dict[str, Any]:
    """Opaque, not signed: it only says where an operator's listing resumes, so a forged one
    can do no more than skip. It is still checked strictly, so it cannot reach DynamoDB malformed."""
    try:
        data = json.loads(base64.urlsafe_b64decode(cursor.encode("ascii")))
        pk, email = data["p"], data["e"]
    except (ValueError, KeyError, TypeError, UnicodeEncodeError, binascii.Error):
        raise InvalidRequest(_BAD_CURSOR, param="cursor") from None
    if (
        not isinstance(pk, str)
        or pk != schema.org_pk(schema.org_of(pk))
        or not _ORG_ID.match(schema.org_of(pk))
        or not isinstance(email, str)
        or not 0 < len(email) <= 320
    ):
        raise InvalidRequest(_BAD_CURSOR, param="cursor")
    return {"pk": s(pk), "sk": s(schema.PROFILE), "directory": s("org"), "email_lc": s(email)}


def list_orgs(
    email: str | None = None, name: str | None = None, limit: int = 50, cursor: str | None = None
) -> dict[str, Any]:
    """GET /admin/orgs?email=&name=&limit=&cursor=: orgs in email order. `email` matches the
    start of the address, `name` any part of the name, both ignoring case (the API checked
    them and `limit`, see `queries.OrgsQuery`; the cursor is checked here)."""
    start = _cursor_in(cursor) if cursor else None
    found, next_key = orgs.search_orgs(email, name, limit, start)
    cursor = _cursor_out(next_key) if next_key else None
    return {
        "object": "list",
        "data": [
            {"org_id": o.org_id, "name": o.name, "email": o.email, "created_at": o.created_at} for o in found
        ],
        "has_more": cursor is not None,
        "next_cursor": cursor,
    }


def list_holds(org_id: str) -> dict[str, Any]:
    """GET /admin/orgs/{org_id}/holds: open holds, oldest first, with their age, and the open
    escrow leases (what else the wallet's held counts)."""
    orgs.get_org(resource_id(org_id, "org"))
    now = int(clock.now().timestamp())
    ttl = settings().hold_ttl_seconds
    org_holds = sorted(holds.open_holds(org_id), key=lambda h: (h.expires_at, h.request_id))
    open_leases = sorted(lease_store.open_leases(org_id), key=lambda x: (x.expires_at, x.lease_id))
    spends = lease_store.open_spends(org_id, open_leases)
    return {
        "object": "list",
        "data": [
            {
                "request_id": h.request_id,
                "amount": format_credits(h.amount),
                "model": h.model,
                "key_id": h.key_id,
                # A hold stores its expiry; it was placed one hold lifetime before it.
                "placed_at": clock.iso(datetime.fromtimestamp(h.expires_at - ttl, UTC)),
                "expires_at": clock.iso(datetime.fromtimestamp(h.expires_at, UTC)),
                "age_seconds": max(now - (h.expires_at - ttl), 0),
                "expired": h.expires_at <= now,
            }
            for h in org_holds
        ],
        "leases": [
            {
                "lease_id": x.lease_id,
                "key_id": x.key_id,
                "slice": format_credits(x.amount),
                "spent": format_credits(sum(sp.cost for sp in spends[x.lease_id])),
                "requests": x.requests,
                "billed_requests": len(spends[x.lease_id]),
                "expires_at": clock.iso(datetime.fromtimestamp(x.expires_at, UTC)),
                "expired": x.expires_at <= now,
            }
            for x in open_leases
        ],
        "unit": "credits",
    }


def release_hold(org_id: str, request_id: str) -> dict[str, Any]:
    """DELETE /admin/orgs/{org_id}/holds/{request_id}: free one stuck hold (see
    upkeep.release_stuck_hold), with an audit entry in the org's ledger. A hold whose request
    was served and waits for a deferred settle is billed instead, never released."""
    orgs.get_org(resource_id(org_id, "org"))
    resource_id(request_id, "hold")
    now = clock.now()
    settled = settles.settle_pending_hold(org_id, request_id, now)
    if settled is not None:
        pending, outcome = settled
        return {
            "request_id": request_id,
            "action": "settled",  # its usage was delivered: billed, as HoldSweeper would
            "outcome": outcome.value,
            "cost": format_credits(pending.usage.cost),
            "wallet": wallet_view(wallets.get_wallet(org_id)),
        }
    hold, entry = upkeep.release_stuck_hold(org_id, request_id, now)
    return {
        "request_id": hold.request_id,
        "action": "released",
        "released": format_credits(hold.amount),
        "ledger_entry": {
            "id": entry.entry_id,
            "type": entry.entry_type,
            "amount": format_credits(entry.amount),
            "description": entry.description,
            "created_at": entry.created_at,
        },
        "wallet": wallet_view(wallets.get_wallet(org_id)),
    }
