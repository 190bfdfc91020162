"""Top-ups through Stripe Checkout, and the org's invoice list. A top-up's credits land only
when its webhook says the money is there (webhooks), never on the redirect back.
"""

from __future__ import annotations

import uuid
from typing import Any

from conduix.accounts import orgs
from conduix.core.config import payment_settings
from conduix.core.errors import InvalidRequest
from conduix.core.money import format_credits
from conduix.payments import (
    customers,
    stripe_gateway,
)


def start_top_up(org_id: str, amount: int, idempotency_key: str | None) -> dict[str, Any]:
    """POST /v1/billing/top-ups: a Checkout Session for one of the operator's tiers (`amount`
    in nano-credits)."""
    config = payment_settings()
    tiers = ", ".join(format_credits(t) for t in config.top_up_tiers)
    if amount not in config.top_up_tiers:
        raise InvalidRequest(f"'amount' must be one of the top-up tiers: {tiers} credits.", param="amount")
    org = orgs.get_org(org_id)
    url, session_id = stripe_gateway.create_top_up_session(
        org_id=org_id,
        customer_id=customers.customer_of(org),
        credits_nanos=amount,
        credits_label=format_credits(amount),
        success_url=f"{config.public_url}/dashboard/billing?top_up=success&session_id={{CHECKOUT_SESSION_ID}}",
        cancel_url=f"{config.public_url}/dashboard/billing?top_up=cancelled",
        idempotency_key=f"top-up-{org_id}-{idempotency_key or uuid.uuid4().hex}",
    )
    return {"checkout_url": url, "session_id": session_id, "amount": format_credits(amount)}


def _usd(cents: Any) -> str:
    whole, rest = divmod(int(cents or 0), 100)
    return f"{whole}.{rest:02d}"


def invoices_view(org_id: str) -> dict[str, Any]:
    org = orgs.get_org(org_id)
    invoices = stripe_gateway.list_invoices(org.stripe_customer_id) if org.stripe_customer_id else []
    return {
        "object": "list",
        "data": [
            {
                "id": inv.get("id"),
                "number": inv.get("number"),
                "status": inv.get("status"),
                "description": inv.get("description"),
                "currency": inv.get("currency"),
                "total": _usd(inv.get("total")),
                "amount_paid": _usd(inv.get("amount_paid")),
                "created": inv.get("created"),
                "due_date": inv.get("due_date"),
                "hosted_invoice_url": inv.get("hosted_invoice_url"),
                "invoice_pdf": inv.get("invoice_pdf"),
            }
            for inv in invoices
        ],
    }
