"""Money in through Stripe: Checkout top-ups, the webhook events that turn payments into
credits (and refunds or disputes back out), and the invoice list.

Credits land only when Stripe says the money is there, never on a redirect. Handlers re-read
the object from Stripe where its state matters, so events arriving out of order are safe,
and every movement is keyed by a Stripe id, so a replay moves nothing.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Any

import stripe

from conduix import autoreload, notices, orgs, stripe_gateway, wallets, webhook_log
from conduix.config import payment_settings
from conduix.config import secret as configured_secret
from conduix.errors import ConfigurationError, InvalidRequest, InvalidSignature, ServiceBusy
from conduix.money import format_credits, parse_credits
from conduix.validation import parse_json_object

log = logging.getLogger(__name__)


# ------------------------------------------------------------------ top-ups


def customer_of(org: orgs.Org) -> str:
    """The org's Stripe customer, created on first need."""
    if org.stripe_customer_id:
        return org.stripe_customer_id
    return orgs.attach_stripe_customer(
        org.org_id, stripe_gateway.create_customer(org.org_id, org.name, org.email)
    )


def start_top_up(org_id: str, body: dict[str, Any], idempotency_key: str | None) -> dict[str, Any]:
    """POST /v1/billing/top-ups: a Checkout Session for one of the operator's tiers."""
    config = payment_settings()
    tiers = ", ".join(format_credits(t) for t in config.top_up_tiers)
    amount = parse_credits(body.get("amount"), field="amount")
    if amount not in config.top_up_tiers:
        raise InvalidRequest(f"'amount' must be one of the top-up tiers: {tiers} credits.", param="amount")
    org = orgs.get_org(org_id)
    url, session_id = stripe_gateway.create_top_up_session(
        org_id=org_id,
        customer_id=customer_of(org),
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


def list_invoices(org_id: str) -> dict[str, Any]:
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
    _, created = wallets.credit(
        org_id,
        kind="top_up",
        key=session_id,
        amount=amount,
        description=f"Top-up of {format_credits(amount)} credits",
        now=now,
    )
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
    if created:
        org = orgs.get_org(org_id)
        invoice = session.get("invoice")
        url = invoice.get("hosted_invoice_url") if isinstance(invoice, dict) else None
        notices.top_up_receipt(org.email, org.name, format_credits(amount), url)
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


def _reverse(kind: str, key: str, intent_id: str | None, amount_cents: int, now: datetime) -> str:
    """Take back the credits a refunded or disputed payment bought (the balance may go
    negative; requests are then refused until it is positive again)."""
    if not intent_id:
        return "ignored: no payment intent"
    intent = stripe_gateway.retrieve_payment_intent(intent_id)
    metadata = intent.get("metadata") or {}
    if metadata.get("purpose") not in ("top_up", "auto_reload") or not intent.get("amount"):
        return "ignored: not a credit purchase"
    bought = parse_credits(str(metadata["credits"]), field="credits")
    # In proportion to the money returned; exact for our 1 credit = 1 USD purchases.
    reversed_nanos = bought * amount_cents // int(intent["amount"])
    _, created = wallets.credit(
        str(metadata["org_id"]),
        kind=kind,
        key=key,
        amount=-reversed_nanos,
        description=f"{kind.capitalize()} of a purchase: -{format_credits(reversed_nanos)} credits",
        now=now,
    )
    return "reversed" if created else "already reversed"


def _charge_refunded(obj: dict[str, Any], now: datetime) -> str:
    """Each refund of the charge reverses its share of the credits, once (keyed by the refund).
    The refunds are listed from Stripe: the event only says how much was refunded in all."""
    intent_id = _id(obj.get("payment_intent"))
    refunds = [r for r in stripe_gateway.list_refunds(str(obj["id"])) if r.get("status") == "succeeded"]
    outcomes = [_reverse("refund", str(r["id"]), intent_id, int(r["amount"]), now) for r in refunds]
    return ", ".join(outcomes) or "no refund yet"


def _dispute_created(obj: dict[str, Any], now: datetime) -> str:
    return _reverse(
        "dispute", str(obj["id"]), _id(obj.get("payment_intent")), int(obj.get("amount") or 0), now
    )


def _invoice_paid(obj: dict[str, Any], now: datetime) -> str:
    from conduix import invoicing, subscriptions

    metadata = obj.get("metadata") or {}
    if metadata.get("purpose") == invoicing.PURPOSE:
        return invoicing.invoice_paid(obj, now)
    return subscriptions.invoice_paid(obj, now)


def _invoice_payment_failed(obj: dict[str, Any], now: datetime) -> str:
    from conduix import subscriptions

    return subscriptions.invoice_payment_failed(obj, now)


def _subscription_changed(obj: dict[str, Any], now: datetime) -> str:
    from conduix import subscriptions

    return subscriptions.subscription_changed(obj, now)


HANDLERS: dict[str, Callable[[dict[str, Any], datetime], str]] = {
    "checkout.session.completed": _checkout_completed,
    "checkout.session.async_payment_succeeded": _checkout_completed,
    "checkout.session.async_payment_failed": _checkout_async_failed,
    "payment_intent.succeeded": _intent_succeeded,
    "payment_intent.payment_failed": _intent_failed,
    "charge.refunded": _charge_refunded,
    "charge.dispute.created": _dispute_created,
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
