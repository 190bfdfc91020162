"""Reconciliation against Stripe: the ledger compared with the money that really moved.

For each org, three checks (the first two only when Stripe is configured: STRIPE_API_KEY,
and STRIPE_API_BASE for the local stand-in):

1. Every ledger entry that came from Stripe names a Stripe object in the right state, for
   the right amount: a paid top-up session, a succeeded auto-reload PaymentIntent, a paid
   plan or usage invoice, a succeeded refund or a dispute (won, for a restore), each for the
   credits the product's own rules give it.
2. Every paid Stripe object of the org's customer that should have credited the org did:
   each has its ledger entry (the ledger key is the object's id, so never twice).
3. No prepaid wallet is below zero except by what it can name: reversals (refunds,
   disputes) and invoice-billed usage not yet paid.

`reconcile.report` (the operator route) and `reconcile.main` (`make reconcile`) call it.
"""

from __future__ import annotations

from typing import Any

from conduix.accounts import orgs
from conduix.audit.discrepancy import Discrepancy
from conduix.core import config
from conduix.core.errors import NotFound
from conduix.core.money import format_credits, parse_credits
from conduix.ledger import entries, wallets
from conduix.pricing import plans
from conduix.store import schema
from conduix.store.items import Item, as_int, as_str

# Ledger kinds whose idempotency key is the id of a Stripe object.
STRIPE_KINDS = (
    "top_up",
    "auto_reload",
    "plan_credits",
    "invoice_payment",
    "refund",
    "dispute",
    "dispute_won",
)
REVERSAL_KINDS = ("refund", "dispute", "dispute_won")
_PERIOD_REASONS = ("subscription_create", "subscription_cycle")


def configured() -> bool:
    return config.secret("STRIPE_API_KEY") is not None


def _credits(metadata: dict[str, Any]) -> int | None:
    try:
        return parse_credits(str(metadata.get("credits")), field="credits")
    except Exception:  # a malformed figure is a discrepancy, not a crash of the audit
        return None


def plan_credits_of(invoice: dict[str, Any]) -> int:
    """The included credits of the plan a subscription invoice's line bills (today's shape
    names the price in pricing.price_details; older API versions put it in line.price)."""
    from conduix.payments import stripe_gateway  # Stripe loads only when its side is reconciled

    lines = (invoice.get("lines") or {}).get("data") or []
    if not lines:
        return 0
    line = lines[0]
    price: Any = ((line.get("pricing") or {}).get("price_details") or {}).get("price") or line.get("price")
    if isinstance(price, str):
        price = stripe_gateway.retrieve_price(price)
    plan = plans.by_price_lookup_key(price.get("lookup_key") if isinstance(price, dict) else None)
    return plan.included_credits if plan else 0


def _org_of_invoice(invoice: dict[str, Any]) -> str | None:
    details = (invoice.get("parent") or {}).get("subscription_details") or {}
    org_id = (invoice.get("metadata") or {}).get("org_id") or (details.get("metadata") or {}).get("org_id")
    return str(org_id) if org_id else None


def _expected(kind: str, key: str, org_id: str) -> tuple[int | None, str]:
    """(the amount the Stripe object justifies, or None if it justifies none; what was found)."""
    from conduix.payments import stripe_gateway, webhooks  # Stripe loads only when its side is reconciled

    try:
        if kind == "top_up":
            session = stripe_gateway.retrieve_session(key)
            meta = session.get("metadata") or {}
            if session.get("payment_status") != "paid" or meta.get("org_id") != org_id:
                return (
                    None,
                    f"Checkout Session {key} is {session.get('payment_status')} for {meta.get('org_id')}",
                )
            return _credits(meta), "paid Checkout Session"
        if kind == "auto_reload":
            intent = stripe_gateway.retrieve_payment_intent(key)
            meta = intent.get("metadata") or {}
            if intent.get("status") != "succeeded" or meta.get("org_id") != org_id:
                return None, f"PaymentIntent {key} is {intent.get('status')} for {meta.get('org_id')}"
            return _credits(meta), "succeeded PaymentIntent"
        if kind in ("plan_credits", "invoice_payment"):
            invoice = stripe_gateway.retrieve_invoice(key)
            if invoice.get("status") != "paid" or _org_of_invoice(invoice) not in (None, org_id):
                return None, f"invoice {key} is {invoice.get('status')}"
            if kind == "invoice_payment":
                return _credits(invoice.get("metadata") or {}), "paid usage invoice"
            return plan_credits_of(invoice), "paid plan invoice"
        if kind == "refund":
            refund = stripe_gateway.retrieve_refund(key)
            if refund.get("status") != "succeeded":
                return None, f"refund {key} is {refund.get('status')}"
            charge = stripe_gateway.retrieve_charge(str(refund["charge"]))
            purchase = webhooks.purchase_of(str(charge.get("payment_intent")))
            if purchase is None or purchase.org_id != org_id:
                return None, f"refund {key} is of no credit purchase of this org"
            shares = dict(webhooks.refund_reversals(charge, purchase))
            return -shares.get(key, 0), "succeeded refund"
        if kind in ("dispute", "dispute_won"):
            dispute = stripe_gateway.retrieve_dispute(key)
            purchase = webhooks.purchase_of(str(dispute.get("payment_intent")))
            if purchase is None or purchase.org_id != org_id:
                return None, f"dispute {key} is of no credit purchase of this org"
            if kind == "dispute_won" and dispute.get("status") != "won":
                return None, f"dispute {key} is {dispute.get('status')}"
            share = webhooks.dispute_reversal(dispute, purchase)
            return (share if kind == "dispute_won" else -share), f"dispute ({dispute.get('status')})"
    except NotFound as exc:
        return None, exc.message
    return None, "unknown kind"


def _ledger_against_stripe(org_id: str, markers: dict[str, Item]) -> list[Discrepancy]:
    found = []
    for entry_id, marker in sorted(markers.items()):
        kind, _, key = entry_id.partition(":")
        if kind not in STRIPE_KINDS:
            continue
        expected, what = _expected(kind, key, org_id)
        amount = as_int(marker, "amount")
        if expected is None:
            found.append(Discrepancy(org_id, f"ledger entry {entry_id} has no Stripe payment", "one", what))
        elif expected != amount:
            found.append(
                Discrepancy(
                    org_id,
                    f"ledger entry {entry_id} against its {what}",
                    format_credits(expected),
                    format_credits(amount),
                )
            )
    return found


def _stripe_against_ledger(org_id: str, customer_id: str, markers: dict[str, Item]) -> list[Discrepancy]:
    """What the customer's paid Stripe objects should have credited, entry by entry."""
    from conduix.payments import (  # Stripe loads only when its side is reconciled
        invoicing,
        stripe_gateway,
        webhooks,
    )

    should: dict[str, tuple[int | None, str]] = {}  # entry id -> (amount, the Stripe object)
    objects = stripe_gateway.customer_payments(customer_id)
    for session in objects["sessions"]:
        meta = session.get("metadata") or {}
        if meta.get("purpose") == "top_up" and session.get("payment_status") == "paid":
            should[f"top_up:{session['id']}"] = (_credits(meta), f"Checkout Session {session['id']}")
    for intent in objects["intents"]:
        meta = intent.get("metadata") or {}
        if meta.get("purpose") == "auto_reload" and intent.get("status") == "succeeded":
            should[f"auto_reload:{intent['id']}"] = (_credits(meta), f"PaymentIntent {intent['id']}")
    for invoice in objects["invoices"]:
        if invoice.get("status") != "paid":
            continue
        meta = invoice.get("metadata") or {}
        if meta.get("purpose") == invoicing.PURPOSE:
            should[f"invoice_payment:{invoice['id']}"] = (_credits(meta), f"usage invoice {invoice['id']}")
        elif invoice.get("billing_reason") in _PERIOD_REASONS and plan_credits_of(invoice) > 0:
            should[f"plan_credits:{invoice['id']}"] = (
                plan_credits_of(invoice),
                f"plan invoice {invoice['id']}",
            )
    for charge in objects["charges"]:
        if not (int(charge.get("amount_refunded") or 0) or charge.get("disputed")):
            continue
        purchase = webhooks.purchase_of(str(charge.get("payment_intent")))
        if purchase is None or purchase.org_id != org_id:
            continue
        for refund_id, nanos in webhooks.refund_reversals(charge, purchase):
            should[f"refund:{refund_id}"] = (-nanos, f"refund {refund_id} of charge {charge['id']}")
        for dispute in stripe_gateway.list_disputes(str(charge.get("payment_intent"))):
            nanos = webhooks.dispute_reversal(dispute, purchase)
            should[f"dispute:{dispute['id']}"] = (-nanos, f"dispute {dispute['id']} of charge {charge['id']}")
            if dispute.get("status") == "won":
                should[f"dispute_won:{dispute['id']}"] = (nanos, f"won dispute {dispute['id']}")
    found = []
    for entry_id, (amount, what) in sorted(should.items()):
        if amount == 0:
            continue
        marker = markers.get(entry_id)
        if marker is None:
            found.append(
                Discrepancy(
                    org_id, f"{what} has no ledger entry {entry_id}", format_credits(amount or 0), "none"
                )
            )
    return found


def _below_zero(org_id: str, items: list[Item]) -> list[Discrepancy]:
    wallet = wallets.get_wallet(org_id)
    if wallet.billing_mode != "prepaid" or wallet.balance >= 0:
        return []
    lines = [i for i in items if as_str(i, "sk").startswith(schema.LEDGER)]
    reversals = [i for i in lines if as_str(i, "entry_type") in REVERSAL_KINDS]
    reversed_nanos = -sum(as_int(i, "amount") for i in reversals)
    invoiced = sum(
        as_int(i, "invoiced") if "invoiced" in i else -as_int(i, "amount")
        for i in lines
        if as_str(i, "entry_type") == "usage" and as_str(i, "billed_by") == "invoice"
    )
    repaid = sum(as_int(i, "amount") for i in lines if as_str(i, "entry_type") == "invoice_payment")
    unpaid = max(invoiced - repaid, 0)
    if wallet.balance + max(reversed_nanos, 0) + unpaid >= 0:
        return []
    named = ", ".join(as_str(i, "entry_id") for i in reversals) or "no reversal"
    return [
        Discrepancy(
            org_id,
            f"prepaid wallet below zero beyond what it can name ({named}; unpaid invoiced usage "
            f"{format_credits(unpaid)})",
            ">= 0",
            format_credits(wallet.balance),
        )
    ]


def check_org(org_id: str) -> list[Discrepancy]:
    items = entries.org_items(org_id)
    found = _below_zero(org_id, items)
    if not configured():
        return found
    markers = {as_str(i, "entry_id"): i for i in items if as_str(i, "sk").startswith(schema.ENTRY)}
    found += _ledger_against_stripe(org_id, markers)
    customer_id = orgs.get_org(org_id).stripe_customer_id
    if customer_id:
        found += _stripe_against_ledger(org_id, customer_id, markers)
    return found
