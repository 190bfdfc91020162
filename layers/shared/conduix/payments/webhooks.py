"""Stripe's webhook: the signed events that turn payments into credits (Checkout top-ups,
auto-reloads, subscription and NET-terms invoices), and refunds or disputes back out.

Credits land only when Stripe says the money is there, never on a redirect. Handlers re-read
the object from Stripe where its state matters, so events arriving out of order are safe,
and every movement is keyed by a Stripe id, so a replay moves nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import stripe

from conduix.accounts import alerts, notices, orgs
from conduix.core.config import secret as configured_secret
from conduix.core.errors import ConfigurationError, InvalidRequest, InvalidSignature, ServiceBusy
from conduix.core.money import format_credits, parse_credits
from conduix.core.validation import parse_json_object
from conduix.ledger import entries
from conduix.payments import (
    autoreload,
    invoicing,
    reloads,
    stripe_gateway,
    subscriptions,
    webhook_log,
)

log = logging.getLogger(__name__)


# ------------------------------------------------------------------ webhook events


def _id(value: Any) -> str | None:
    """A Stripe reference that may be an id or an expanded object."""
    if isinstance(value, dict):
        return str(value.get("id")) if value.get("id") else None
    return str(value) if value else None


def _land_checkout(session_id: str, now: datetime) -> str:
    session = stripe_gateway.retrieve_session(session_id)  # the state now, not the event's
    metadata = session.get("metadata") or {}
    if metadata.get("purpose") != "top_up":
        return "ignored: not a top-up"
    if session.get("payment_status") != "paid":
        return "waiting: not paid yet"
    org_id = str(metadata["org_id"])
    amount = parse_credits(str(metadata["credits"]), field="credits")
    # The card first: a customer who sees the credits may turn auto-reload on at once.
    intent = session.get("payment_intent")
    method = intent.get("payment_method") if isinstance(intent, dict) else None
    if isinstance(method, dict) and method.get("card"):
        card = method["card"]
        orgs.save_card(
            org_id,
            orgs.Card(
                payment_method_id=str(method["id"]),
                brand=str(card.get("brand", "card")),
                last4=str(card.get("last4", "")),
                exp_month=int(card.get("exp_month") or 0),
                exp_year=int(card.get("exp_year") or 0),
            ),
        )
    _, created = entries.post_entry(
        org_id,
        kind="top_up",
        key=session_id,
        amount=amount,
        description=f"Top-up of {format_credits(amount)} credits",
        now=now,
    )
    if created:
        alerts.after_credit(org_id, now)
        org = orgs.get_org(org_id)
        invoice = session.get("invoice")
        url = invoice.get("hosted_invoice_url") if isinstance(invoice, dict) else None
        notices.top_up_receipt(org, format_credits(amount), url)
    return "credited" if created else "already credited"


def _checkout_completed(obj: dict[str, Any], now: datetime) -> str:
    return _land_checkout(str(obj["id"]), now)


def _checkout_async_failed(obj: dict[str, Any], now: datetime) -> str:
    log.warning("a delayed top-up payment failed", extra={"session_id": obj.get("id")})
    return "nothing credited: the payment failed"


def _reload_metadata(intent: dict[str, Any]) -> tuple[str, int, int] | None:
    metadata = intent.get("metadata") or {}
    if metadata.get("purpose") != "auto_reload":
        return None
    return (
        str(metadata["org_id"]),
        parse_credits(str(metadata["credits"]), field="credits"),
        int(metadata["episode"]),
    )


def _intent_succeeded(obj: dict[str, Any], now: datetime) -> str:
    intent = stripe_gateway.retrieve_payment_intent(str(obj["id"]))
    reload = _reload_metadata(intent)
    if reload is None:
        return "ignored: credited through its Checkout Session"
    if intent.get("status") != "succeeded":
        return "waiting: not succeeded"
    org_id, amount, episode = reload
    created = autoreload.land(org_id, str(intent["id"]), amount, episode, now)
    return "credited" if created else "already credited"


def _intent_failed(obj: dict[str, Any], now: datetime) -> str:
    reload = _reload_metadata(obj)
    if reload is None:
        return "ignored"
    org_id, _, episode = reload
    error = obj.get("last_payment_error") or {}
    autoreload.fail(org_id, episode, str(error.get("message") or "The card was declined."), now)
    return "recorded failure"


# ------------------------------------------------------------------ reversals: refunds and disputes


@dataclass(frozen=True)
class Purchase:
    """What one payment bought: the credits its ledger entry added, for how many cents."""

    org_id: str
    entry_id: str  # the ledger entry that credited it (or, for a top-up, its PaymentIntent)
    credits: int
    paid_cents: int


def _org_of_customer(customer_id: str | None) -> str | None:
    if not customer_id:
        return None
    org_id = (stripe_gateway.retrieve_customer(customer_id).get("metadata") or {}).get("org_id")
    return str(org_id) if org_id else None


def purchase_of(intent_id: str) -> Purchase | None:
    """The credits a PaymentIntent bought: a top-up or an auto-reload (named in its metadata),
    or an invoice that credited the wallet: a plan period's included credits, or a usage
    invoice's payment. None for a payment that bought no credits."""
    intent = stripe_gateway.retrieve_payment_intent(intent_id)
    metadata = intent.get("metadata") or {}
    paid = int(intent.get("amount_received") or intent.get("amount") or 0)
    if metadata.get("purpose") in ("top_up", "auto_reload"):
        credits = parse_credits(str(metadata["credits"]), field="credits")
        kind = "auto_reload:" if metadata["purpose"] == "auto_reload" else "top_up payment "
        return Purchase(str(metadata["org_id"]), kind + intent_id, credits, paid)
    invoice = stripe_gateway.invoice_of_payment(intent_id)
    if invoice is None:
        return None
    invoice_meta = invoice.get("metadata") or {}
    if invoice_meta.get("purpose") == invoicing.PURPOSE:
        kind, org_id = "invoice_payment", invoice_meta.get("org_id")
    elif invoice.get("billing_reason") in ("subscription_create", "subscription_cycle"):
        details = (invoice.get("parent") or {}).get("subscription_details") or {}
        kind = "plan_credits"
        org_id = (details.get("metadata") or {}).get("org_id") or _org_of_customer(
            _id(invoice.get("customer"))
        )
    else:
        return None
    if not org_id:
        return None
    entry = entries.ledger_entry(str(org_id), f"{kind}:{invoice['id']}")
    if entry is None or entry.amount <= 0:
        return None  # it credited nothing (yet): there is nothing to take back
    return Purchase(str(org_id), entry.entry_id, entry.amount, int(invoice.get("amount_paid") or paid))


def reversal_share(purchase: Purchase, before_cents: int, cents: int) -> int:
    """The rounding rule of reversals: after refunds and disputes of R cents in all out of P
    paid, floor(credits x R / P) nano-credits have been taken back. Each refund or dispute
    takes the step its own cents add, in the order Stripe made them, so a full refund takes
    back exactly what was bought, however it was split."""
    paid = max(purchase.paid_cents, 1)
    after = min(before_cents + cents, paid)
    return purchase.credits * after // paid - purchase.credits * min(before_cents, paid) // paid


def _refunds_in_order(charge_id: str) -> list[dict[str, Any]]:
    """Oldest first. Stripe lists newest first in the order it made them; `created` has only
    whole seconds, so two refunds in one second could not be ordered by it, and a refund's
    share must never change once a later refund exists."""
    refunds = [r for r in stripe_gateway.list_refunds(charge_id) if r.get("status") == "succeeded"]
    return refunds[::-1]


def refund_reversals(charge: dict[str, Any], purchase: Purchase) -> list[tuple[str, int]]:
    """(refund id, nano-credits it takes back) for each succeeded refund of the charge."""
    shares, before = [], 0
    for refund in _refunds_in_order(str(charge["id"])):
        shares.append((str(refund["id"]), reversal_share(purchase, before, int(refund["amount"]))))
        before += int(refund["amount"])
    return shares


def dispute_reversal(dispute: dict[str, Any], purchase: Purchase) -> int:
    """A dispute comes after the charge's refunds (a disputed charge cannot be refunded)."""
    refunded = sum(int(r["amount"]) for r in _refunds_in_order(str(dispute["charge"])))
    return reversal_share(purchase, refunded, int(dispute.get("amount") or 0))


def _take_back(purchase: Purchase, kind: str, key: str, nanos: int, what: str, now: datetime) -> bool:
    """One reversing entry, once per Stripe object (the balance may go negative: prepaid
    requests are then refused until it is positive again)."""
    _, created = entries.post_entry(
        purchase.org_id,
        kind=kind,
        key=key,
        amount=-nanos,
        description=f"{what} {key} of {purchase.entry_id}: -{format_credits(nanos)} credits",
        now=now,
    )
    if created:
        alerts.after_credit(purchase.org_id, now)
    return created


def _charge_refunded(obj: dict[str, Any], now: datetime) -> str:
    """Each refund of the charge reverses its share of the credits, once (keyed by the refund).
    The refunds are listed from Stripe: the event only says how much was refunded in all."""
    intent_id = _id(obj.get("payment_intent"))
    purchase = purchase_of(intent_id) if intent_id else None
    if purchase is None:
        return "ignored: not a credit purchase"
    outcomes = [
        "reversed" if _take_back(purchase, "refund", refund_id, nanos, "Refund", now) else "already reversed"
        for refund_id, nanos in refund_reversals(obj, purchase)
    ]
    return ", ".join(outcomes) or "no refund yet"


def _dispute_reversed(dispute: dict[str, Any], now: datetime) -> tuple[Purchase | None, str]:
    intent_id = _id(dispute.get("payment_intent")) or _id(
        stripe_gateway.retrieve_charge(str(dispute["charge"])).get("payment_intent")
    )
    purchase = purchase_of(intent_id) if intent_id else None
    if purchase is None:
        return None, "ignored: not a credit purchase"
    nanos = dispute_reversal(dispute, purchase)
    created = _take_back(purchase, "dispute", str(dispute["id"]), nanos, "Dispute", now)
    return purchase, "reversed" if created else "already reversed"


def _dispute_created(obj: dict[str, Any], now: datetime) -> str:
    """The disputed payment's credits go back, and auto-reload stops: the disputed card is not
    charged again until the customer turns it back on."""
    dispute = stripe_gateway.retrieve_dispute(str(obj["id"]))
    purchase, outcome = _dispute_reversed(dispute, now)
    if purchase is not None and reloads.turn_off(
        purchase.org_id, "Turned off after a payment was disputed.", now
    ):
        org = orgs.get_org(purchase.org_id)
        notices.auto_reload_turned_off(
            org,
            "A payment of yours was disputed, so we stopped charging your saved card. "
            "Turn auto-reload on again once the card can be charged.",
        )
    return outcome


def _dispute_closed(obj: dict[str, Any], now: datetime) -> str:
    """A won dispute restores the credits its reversal took back (once, keyed by the dispute);
    a lost one keeps them reversed."""
    dispute = stripe_gateway.retrieve_dispute(str(obj["id"]))  # the outcome now
    purchase, outcome = _dispute_reversed(dispute, now)  # made if the created event was missed
    if purchase is None or dispute.get("status") != "won":
        return f"{outcome}; dispute {dispute.get('status')}"
    reversal = entries.ledger_entry(purchase.org_id, f"dispute:{dispute['id']}")
    nanos = -reversal.amount if reversal else 0
    _, created = entries.post_entry(
        purchase.org_id,
        kind="dispute_won",
        key=str(dispute["id"]),
        amount=nanos,
        description=f"Dispute {dispute['id']} won: +{format_credits(nanos)} credits restored",
        now=now,
    )
    if created:
        alerts.after_credit(purchase.org_id, now)
    return "restored" if created else "already restored"


def _invoice_paid(obj: dict[str, Any], now: datetime) -> str:
    metadata = obj.get("metadata") or {}
    if metadata.get("purpose") == invoicing.PURPOSE:
        return invoicing.usage_invoice_paid(obj, now)
    return subscriptions.plan_invoice_paid(obj, now)


def _invoice_payment_failed(obj: dict[str, Any], now: datetime) -> str:
    return subscriptions.invoice_payment_failed(obj, now)


def _subscription_changed(obj: dict[str, Any], now: datetime) -> str:
    return subscriptions.subscription_changed(obj, now)


HANDLERS: dict[str, Callable[[dict[str, Any], datetime], str]] = {
    "checkout.session.completed": _checkout_completed,
    "checkout.session.async_payment_succeeded": _checkout_completed,
    "checkout.session.async_payment_failed": _checkout_async_failed,
    "payment_intent.succeeded": _intent_succeeded,
    "payment_intent.payment_failed": _intent_failed,
    "charge.refunded": _charge_refunded,
    "charge.dispute.created": _dispute_created,
    "charge.dispute.closed": _dispute_closed,
    "invoice.paid": _invoice_paid,
    "invoice.payment_failed": _invoice_payment_failed,
    "customer.subscription.created": _subscription_changed,
    "customer.subscription.updated": _subscription_changed,
    "customer.subscription.deleted": _subscription_changed,
}


def handle_event(event: dict[str, Any], now: datetime) -> str:
    """What this event did (for the log). Unknown types are acknowledged and ignored."""
    event_type = str(event.get("type", ""))
    handler = HANDLERS.get(event_type)
    if handler is None:
        return "ignored: unhandled type"
    return handler(event["data"]["object"], now)


def _event_envelope(payload: bytes) -> dict[str, Any]:
    """A signed body shaped like a Stripe event, or a 400: it is parsed by the same safe parser
    as every client body, and every handler may rely on a string `id` and `type` and on
    `data.object` being an object with a string `id`."""
    event = parse_json_object(payload)
    data = event.get("data")
    obj = data.get("object") if isinstance(data, dict) else None
    if not (
        isinstance(event.get("id"), str)
        and 0 < len(event["id"]) <= 255  # it keys the event log: keep it within DynamoDB's limits
        and isinstance(event.get("type"), str)
        and len(event["type"]) <= 255
        and isinstance(obj, dict)
        and isinstance(obj.get("id"), str)
        and obj["id"]
    ):
        raise InvalidRequest(
            "The event is not shaped like a Stripe event: it needs a string 'id' and 'type' "
            "and a 'data.object' with a string 'id'.",
            code="malformed_event",
        )
    return event


def receive(payload: bytes, signature: str | None, now: datetime) -> dict[str, Any]:
    """POST /webhooks/stripe: verify the signature over the raw body before anything else,
    then handle the event once. Raises InvalidSignature, ConfigurationError or ServiceBusy."""
    secret = configured_secret("STRIPE_WEBHOOK_SECRET")
    if not secret:  # never accept an unsigned event, whatever else is configured
        raise ConfigurationError("STRIPE_WEBHOOK_SECRET is not set: webhook events are refused.")
    if not signature:
        raise InvalidSignature("The Stripe-Signature header is missing.")
    try:
        stripe_gateway.verify_signature(payload, signature, secret)
    except (stripe.SignatureVerificationError, ValueError, UnicodeDecodeError):
        raise InvalidSignature("The Stripe-Signature does not match this payload, or is too old.") from None
    event = _event_envelope(payload)
    event_id, event_type = event["id"], event["type"]
    claim = webhook_log.claim(event_id, event_type, now)
    if claim == webhook_log.DONE:
        return {"received": True, "event": event_id, "outcome": "duplicate"}
    if claim == webhook_log.BUSY:
        raise ServiceBusy("This event is being handled by another delivery; retry later.")
    try:
        outcome = handle_event(event, now)
    except BaseException:
        webhook_log.abandon(event_id)
        raise
    webhook_log.finish(event_id, outcome)
    log.info("stripe event handled", extra={"event": event_id, "type": event_type, "outcome": outcome})
    return {"received": True, "event": event_id, "outcome": outcome}
