"""What we ask of Stripe Billing, through the gateway's client and error mapping
(stripe_gateway): plan prices and subscriptions, and NET-terms invoices built line by line.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import stripe

from conduix.payments.stripe_gateway import CURRENCY, call, checkout, client, plain, retrieve_invoice

# ------------------------------------------------------------------ plans (subscriptions)


def plan_price(*, lookup_key: str, plan_name: str, unit_amount_cents: int, plan_id: str) -> str:
    """The monthly price of a plan, found by lookup key or created once."""
    found = call(
        client().v1.prices.list,
        params={"lookup_keys": [lookup_key], "active": True, "limit": 1},
    )
    if found.data:
        return str(found.data[0].id)
    product = call(
        client().v1.products.create,
        params={"name": f"Conduix {plan_name}", "metadata": {"plan": plan_id}},
        options={"idempotency_key": f"product-{lookup_key}"},
    )
    price = call(
        client().v1.prices.create,
        params={
            "product": product.id,
            "unit_amount": unit_amount_cents,
            "currency": CURRENCY,
            "recurring": {"interval": "month"},
            "lookup_key": lookup_key,
            "metadata": {"plan": plan_id},
        },
        options={"idempotency_key": f"price-{lookup_key}"},
    )
    return str(price.id)


def create_subscription_session(
    *,
    org_id: str,
    customer_id: str,
    price_id: str,
    plan_id: str,
    success_url: str,
    cancel_url: str,
    idempotency_key: str,
) -> tuple[str, str]:
    metadata = {"org_id": org_id, "plan": plan_id, "purpose": "subscription"}
    return checkout(
        org_id=org_id,
        customer_id=customer_id,
        metadata=metadata,
        success_url=success_url,
        cancel_url=cancel_url,
        idempotency_key=idempotency_key,
        mode="subscription",
        line_items=[{"price": price_id, "quantity": 1}],
        subscription_data={"metadata": metadata},
    )


def retrieve_subscription(subscription_id: str) -> dict[str, Any]:
    return plain(call(client().v1.subscriptions.retrieve, subscription_id))


def change_subscription_price(
    subscription_id: str, item_id: str, price_id: str, plan_id: str
) -> dict[str, Any]:
    """Switch plans from the next period on, without proration: the included credits of the
    period already paid stay as they are."""
    updated = call(
        client().v1.subscriptions.update,
        subscription_id,
        params={
            "items": [{"id": item_id, "price": price_id}],
            "proration_behavior": "none",
            "metadata": {"plan": plan_id},
        },
    )
    return plain(updated)


def cancel_subscription(subscription_id: str) -> dict[str, Any]:
    return plain(call(client().v1.subscriptions.cancel, subscription_id))


# ------------------------------------------------------------------ NET-terms invoices


@dataclass(frozen=True)
class InvoiceLine:
    key: str  # stable per invoice (makes the item's creation idempotent)
    amount_cents: int
    description: str


def create_draft_invoice(
    *,
    customer_id: str,
    idempotency_key: str,
    days_until_due: int,
    po_number: str | None,
    description: str,
    metadata: dict[str, str],
) -> str:
    """A draft send_invoice invoice; only its id is returned. Within Stripe's idempotency
    window a retry gets the first response replayed as it was (still saying "draft"), so
    callers must retrieve the invoice for its state."""
    params: dict[str, Any] = {
        "customer": customer_id,
        "collection_method": "send_invoice",
        "days_until_due": days_until_due,
        "description": description,
        "metadata": metadata,
        "auto_advance": False,
        "pending_invoice_items_behavior": "exclude",
    }
    if po_number:
        params["custom_fields"] = [{"name": "PO number", "value": po_number}]
    invoice = call(
        client().v1.invoices.create,
        params=params,
        options={"idempotency_key": idempotency_key},
    )
    return str(invoice.id)


def find_invoice(customer_id: str, field: str, value: str, *, created_gte: int) -> dict[str, Any] | None:
    """The customer's invoice whose metadata[field] is value, created since created_gte. A
    list is strongly consistent, unlike Search, so an invoice created a moment ago is found."""
    page = call(
        client().v1.invoices.list,
        params={"customer": customer_id, "created": {"gte": created_gte}, "limit": 100},
    )
    for invoice in page.auto_paging_iter():
        found = plain(invoice)
        if (found.get("metadata") or {}).get(field) == value:
            return found
    return None


def invoice_line_keys(invoice_id: str, field: str) -> set[str]:
    """metadata[field] of every line the invoice has now."""
    page = call(client().v1.invoices.line_items.list, invoice_id, params={"limit": 100})
    return {str((plain(line).get("metadata") or {}).get(field)) for line in page.auto_paging_iter()}


def add_invoice_line(
    *, customer_id: str, invoice_id: str, line: InvoiceLine, metadata: dict[str, str], idempotency_key: str
) -> None:
    call(
        client().v1.invoice_items.create,
        params={
            "customer": customer_id,
            "invoice": invoice_id,
            "amount": line.amount_cents,
            "currency": CURRENCY,
            "description": line.description,
            "metadata": metadata,
        },
        options={"idempotency_key": idempotency_key},
    )


def finalize_invoice(invoice_id: str) -> dict[str, Any]:
    """Finalize a draft; one finalized meanwhile (a lost answer, a racing run) is fine."""
    try:
        return plain(call(client().v1.invoices.finalize_invoice, invoice_id))
    except stripe.InvalidRequestError:
        invoice = retrieve_invoice(invoice_id)
        if invoice.get("status") == "draft":
            raise
        return invoice


def send_invoice(invoice_id: str, *, idempotency_key: str) -> dict[str, Any]:
    return plain(
        call(
            client().v1.invoices.send_invoice,
            invoice_id,
            options={"idempotency_key": idempotency_key},
        )
    )
