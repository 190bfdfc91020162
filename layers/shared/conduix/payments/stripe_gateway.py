"""Everything we ask of Stripe, through the official SDK, in one place.

Only the functions that take money (BillingApi's top-ups and invoices, StripeWebhook,
AutoReload) import this module, so the Completion function never pays for `import stripe`.
Stripe objects are turned into plain dicts at this boundary. Subscriptions and NET-terms
invoices, built on the same client and error mapping, are in `stripe_billing`.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from typing import Any

import stripe

from conduix.core.config import secret, stripe_api_base
from conduix.core.errors import ConfigurationError, NotFound, UpstreamUnavailable

CURRENCY = "usd"


@cache
def client() -> stripe.StripeClient:
    """A StripeClient for the STRIPE_API_KEY secret. STRIPE_API_BASE points it at a local stand-in."""
    api_key = secret("STRIPE_API_KEY")
    if not api_key:
        raise ConfigurationError("STRIPE_API_KEY is not set: Stripe is not configured on this deployment.")
    base = stripe_api_base()
    return stripe.StripeClient(
        api_key,
        base_addresses={"api": base} if base else None,
        max_network_retries=2,  # the SDK sends an idempotency key with its own retries
    )


def plain(obj: Any) -> dict[str, Any]:
    result: dict[str, Any] = obj.to_dict() if hasattr(obj, "to_dict") else dict(obj)
    return result


def call(fn: Any, *args: Any, **kwargs: Any) -> Any:
    """Stripe outages and missing objects become our domain errors; card errors and other
    bad requests pass through."""
    try:
        return fn(*args, **kwargs)
    except (stripe.APIConnectionError, stripe.RateLimitError) as exc:
        raise UpstreamUnavailable(f"Stripe could not be reached: {exc.user_message or exc}") from exc
    except stripe.InvalidRequestError as exc:
        if exc.http_status == 404:
            raise NotFound(f"Stripe has no such object: {exc.user_message or exc}") from exc
        raise


def cents(credits_nanos: int) -> int:
    """1 credit is 1 USD; credits for sale are whole cents."""
    whole, rest = divmod(credits_nanos, 10_000_000)
    if rest:
        raise ValueError("credits for sale must be whole cents")
    return whole


def create_customer(org_id: str, name: str, email: str) -> str:
    customer = call(
        client().v1.customers.create,
        params={"name": name, "email": email, "metadata": {"org_id": org_id}},
        # One customer per org even when two first top-ups race.
        options={"idempotency_key": f"customer-{org_id}"},
    )
    return str(customer.id)


def checkout(
    *,
    org_id: str,
    customer_id: str,
    metadata: dict[str, str],
    success_url: str,
    cancel_url: str,
    idempotency_key: str,
    **mode: Any,
) -> tuple[str, str]:
    """A Checkout Session for the org's customer, with the org in its metadata; `mode` holds
    what differs between a top-up and a subscription."""
    session = call(
        client().v1.checkout.sessions.create,
        params={
            **mode,
            "customer": customer_id,
            "client_reference_id": org_id,
            "metadata": metadata,
            "success_url": success_url,
            "cancel_url": cancel_url,
        },
        options={"idempotency_key": idempotency_key},
    )
    return str(session.url), str(session.id)


def create_top_up_session(
    *,
    org_id: str,
    customer_id: str,
    credits_nanos: int,
    credits_label: str,
    success_url: str,
    cancel_url: str,
    idempotency_key: str,
) -> tuple[str, str]:
    metadata = {"org_id": org_id, "credits": credits_label, "purpose": "top_up"}
    return checkout(
        org_id=org_id,
        customer_id=customer_id,
        metadata=metadata,
        success_url=success_url,
        cancel_url=cancel_url,
        idempotency_key=idempotency_key,
        mode="payment",
        line_items=[
            {
                "price_data": {
                    "currency": CURRENCY,
                    "unit_amount": cents(credits_nanos),
                    "product_data": {"name": f"{credits_label} Conduix credits"},
                },
                "quantity": 1,
            }
        ],
        # Every top-up yields an invoice the customer can download.
        invoice_creation={
            "enabled": True,
            "invoice_data": {"description": f"{credits_label} Conduix credits", "metadata": metadata},
        },
        # Save the card for auto-reload's off-session charges.
        payment_intent_data={"setup_future_usage": "off_session", "metadata": metadata},
    )


def retrieve_session(session_id: str) -> dict[str, Any]:
    session = call(
        client().v1.checkout.sessions.retrieve,
        session_id,
        params={"expand": ["payment_intent", "payment_intent.payment_method", "invoice"]},
    )
    return plain(session)


def retrieve_payment_intent(payment_intent_id: str) -> dict[str, Any]:
    intent = call(
        client().v1.payment_intents.retrieve, payment_intent_id, params={"expand": ["payment_method"]}
    )
    return plain(intent)


@dataclass(frozen=True)
class Charge:
    succeeded: bool
    payment_intent_id: str | None
    failure_code: str | None
    message: str


def charge_off_session(
    *,
    customer_id: str,
    payment_method_id: str,
    amount_cents: int,
    description: str,
    metadata: dict[str, str],
    idempotency_key: str,
) -> Charge:
    """Charge a saved card with nobody present. The idempotency key makes a retried or
    overlapping run get the first attempt's answer instead of a second charge."""
    try:
        intent = call(
            client().v1.payment_intents.create,
            params={
                "amount": amount_cents,
                "currency": CURRENCY,
                "customer": customer_id,
                "payment_method": payment_method_id,
                "off_session": True,
                "confirm": True,
                "description": description,
                "metadata": metadata,
            },
            options={"idempotency_key": idempotency_key},
        )
    except stripe.CardError as exc:
        error = exc.error
        intent_id = getattr(getattr(error, "payment_intent", None), "id", None) if error else None
        return Charge(False, intent_id, exc.code or "card_error", exc.user_message or str(exc))
    if intent.status == "succeeded":
        return Charge(True, str(intent.id), None, "Charged the saved card.")
    return Charge(False, str(intent.id), intent.status, f"The payment is {intent.status.replace('_', ' ')}.")


def list_refunds(charge_id: str) -> list[dict[str, Any]]:
    """The charge's refunds, newest first (Stripe's order of creation)."""
    page = call(client().v1.refunds.list, params={"charge": charge_id, "limit": 100})
    return [plain(refund) for refund in page.auto_paging_iter()]


def retrieve_dispute(dispute_id: str) -> dict[str, Any]:
    return plain(call(client().v1.disputes.retrieve, dispute_id))


def retrieve_refund(refund_id: str) -> dict[str, Any]:
    return plain(call(client().v1.refunds.retrieve, refund_id))


def retrieve_charge(charge_id: str) -> dict[str, Any]:
    return plain(call(client().v1.charges.retrieve, charge_id))


def retrieve_customer(customer_id: str) -> dict[str, Any]:
    return plain(call(client().v1.customers.retrieve, customer_id))


def invoice_of_payment(payment_intent_id: str) -> dict[str, Any] | None:
    """The invoice a PaymentIntent paid, through its invoice payment (since API 2025-03-31
    neither object names the other)."""
    page = call(
        client().v1.invoice_payments.list,
        params={"payment": {"type": "payment_intent", "payment_intent": payment_intent_id}, "limit": 1},
    )
    return retrieve_invoice(str(page.data[0].invoice)) if page.data else None


def retrieve_price(price_id: str) -> dict[str, Any]:
    return plain(call(client().v1.prices.retrieve, price_id))


def list_all(service: Any, params: dict[str, Any]) -> list[dict[str, Any]]:
    page = call(service.list, params={**params, "limit": 100})
    return [plain(obj) for obj in page.auto_paging_iter()]


def customer_payments(customer_id: str) -> dict[str, list[dict[str, Any]]]:
    """Everything of one customer that can move credits (for reconciliation): Checkout
    Sessions, PaymentIntents, charges and invoices."""
    v1 = client().v1
    by_customer = {"customer": customer_id}
    return {
        "sessions": list_all(v1.checkout.sessions, by_customer),
        "intents": list_all(v1.payment_intents, by_customer),
        "charges": list_all(v1.charges, by_customer),
        "invoices": list_all(v1.invoices, by_customer),
    }


def list_disputes(payment_intent_id: str) -> list[dict[str, Any]]:
    return list_all(client().v1.disputes, {"payment_intent": payment_intent_id})


def list_invoices(customer_id: str) -> list[dict[str, Any]]:
    page = call(client().v1.invoices.list, params={"customer": customer_id, "limit": 100})
    return [plain(invoice) for invoice in page.data]


def verify_signature(payload: bytes, signature: str | None, secret: str) -> None:
    """Check the Stripe-Signature over the raw body (with Stripe's five-minute tolerance
    against replays), before anything reads it. Raises stripe.SignatureVerificationError."""
    stripe.WebhookSignature.verify_header(payload.decode("utf-8"), signature or "", secret, tolerance=300)


def retrieve_invoice(invoice_id: str) -> dict[str, Any]:
    return plain(call(client().v1.invoices.retrieve, invoice_id))
