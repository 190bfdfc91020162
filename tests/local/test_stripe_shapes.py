"""The local Stripe answers in the shapes of the API version the SDK pins.

Two authorities, both Stripe's own: the example objects of Stripe's OpenAPI fixtures (vendored
in tests/fixtures/stripe, with their licence) and the typed classes of the pinned `stripe`
SDK, which is generated for exactly that API version. A field the stand-in returns must be in
both. (The fixtures snapshot still lists an invoice's top-level `subscription`, which the
pinned version removed; the SDK does not, so it is refused.) Nested objects are checked
against the SDK's nested classes, and every object carrying an `object` name is checked as
that resource wherever it appears: expanded, in a list, or inside an event.
"""

from __future__ import annotations

import json
import re
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import stripe
from conduix_local.stripe_local import API_KEY, LocalStripe

from tests.local import test_stripe_local as base
from tests.local.test_stripe_local import (
    Receiver,
    builder_price,
    http,
    new_customer,
    pay,
    saved_card,
    subscribe,
    top_up_session,
)

# The local Stripe and its webhook receiver, as test_stripe_local sets them up.
receiver, server, local, client = base.receiver, base.server, base.local, base.client

FIXTURES: dict[str, dict[str, Any]] = json.loads(
    (Path(__file__).parents[1] / "fixtures" / "stripe" / "fixtures3-subset.json").read_text()
)["resources"]

SDK_CLASSES: dict[str, type] = {
    "customer": stripe.Customer,
    "payment_intent": stripe.PaymentIntent,
    "payment_method": stripe.PaymentMethod,
    "charge": stripe.Charge,
    "refund": stripe.Refund,
    "dispute": stripe.Dispute,
    "invoice": stripe.Invoice,
    "line_item": stripe.InvoiceLineItem,
    "invoiceitem": stripe.InvoiceItem,
    "invoice_payment": stripe.InvoicePayment,
    "subscription": stripe.Subscription,
    "subscription_item": stripe.SubscriptionItem,
    "checkout.session": stripe.checkout.Session,
    "item": stripe.LineItem,
    "event": stripe.Event,
    "price": stripe.Price,
    "plan": stripe.Plan,
    "product": stripe.Product,
}

# Fields Stripe returns only when asked (expand / include) or for another type of the same
# resource than the fixture's example (a bank-account PaymentMethod): the SDK still names them.
NOT_IN_EXAMPLE = {
    "checkout.session": {"line_items"},
    "invoice": {"payments"},
    "payment_method": {"us_bank_account"},
}
LIST_FIELDS = {"object", "data", "has_more", "url"}
FREE_FORM = {"metadata", "previous_attributes"}  # maps of the caller's own keys


def _annotations(cls: type) -> set[str]:
    names: set[str] = set()
    for klass in cls.__mro__:
        names |= set(getattr(klass, "__annotations__", {}))
    return {n for n in names if not n.startswith("_") and n.isidentifier() and n.islower()}


def allowed_fields(kind: str) -> set[str]:
    sdk = _annotations(SDK_CLASSES[kind])
    return sdk & (set(FIXTURES[kind]) | NOT_IN_EXAMPLE.get(kind, set()))


def _nested_class(cls: type | None, field: str) -> type | None:
    if cls is None:
        return None
    camel = "".join(part.capitalize() for part in field.split("_"))
    for name in (camel, camel[:-1] if camel.endswith("s") else camel):
        found = getattr(cls, name, None)
        if isinstance(found, type):
            return found
    return None


def check(
    value: Any, path: str = "$", cls: type | None = None, problems: list[str] | None = None
) -> list[str]:
    """Every field the stand-in returned that the pinned API version lacks, by path."""
    problems = [] if problems is None else problems
    if isinstance(value, list):
        for i, item in enumerate(value):
            check(item, f"{path}[{i}]", cls, problems)
        return problems
    if not isinstance(value, dict):
        return problems
    kind = value.get("object")
    if kind == "list":
        problems += [f"{path}.{k}" for k in value if k not in LIST_FIELDS]
        check(value.get("data", []), f"{path}.data", None, problems)
        return problems
    if isinstance(kind, str) and kind in SDK_CLASSES:
        allowed, cls = allowed_fields(kind), SDK_CLASSES[kind]
        path = f"{path}<{kind}>"
    elif cls is not None:
        allowed = _annotations(cls)
    else:
        return problems  # a shape neither authority describes: not checked
    for key, item in value.items():
        if key not in allowed:
            problems.append(f"{path}.{key}")
        elif key not in FREE_FORM:
            check(item, f"{path}.{key}", _nested_class(cls, key), problems)
    if kind == "event":
        data = value.get("data") or {}
        obj = data.get("object") or {}
        if obj.get("object") in SDK_CLASSES:
            fields = allowed_fields(obj["object"])
            previous = data.get("previous_attributes") or {}
            problems += [f"{path}.data.previous_attributes.{k}" for k in previous if k not in fields]
    return problems


# ------------------------------------------------------------------ the check itself


def test_the_checker_refuses_what_stripe_removed() -> None:
    """The check can fail: yesterday's shapes are caught, today's pass."""
    old_invoice = {"object": "invoice", "id": "in_1", "subscription": "sub_1", "paid": True}
    assert check(old_invoice) == ["$<invoice>.subscription", "$<invoice>.paid"]
    old_line = {"object": "line_item", "id": "il_1", "price": {}, "parent": {"type": "x", "made_up": 1}}
    assert check(old_line) == ["$<line_item>.price", "$<line_item>.parent.made_up"]
    assert check({"object": "subscription", "current_period_end": 1}) == [
        "$<subscription>.current_period_end"
    ]
    assert check({"object": "list", "data": [], "has_more": False, "url": "/", "total_count": 0}) == [
        "$.total_count"
    ]
    event = {
        "object": "event",
        "data": {
            "object": {"object": "payment_intent", "invoice": "in_1"},
            "previous_attributes": {"plan": 1},
        },
    }
    assert check(event) == [
        "$<event>.data.object<payment_intent>.invoice",
        "$<event>.data.previous_attributes.plan",
    ]
    # Stripe's own examples pass their own check.
    for kind in SDK_CLASSES:
        if kind not in ("invoice", "event"):  # their examples carry fields the pinned SDK lacks
            assert check(FIXTURES[kind]) == [], kind


# ------------------------------------------------------------------ the stand-in


def _get(local: LocalStripe, path: str) -> Any:
    request = urllib.request.Request(local.url + path, headers={"Authorization": f"Bearer {API_KEY}"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


@pytest.mark.integration
def test_every_object_the_stand_in_returns_has_todays_shape(
    client: stripe.StripeClient, local: LocalStripe, receiver: Receiver
) -> None:
    # Given every kind of object product code meets: top-ups through Checkout (paid, and
    # invoiced), off-session charges (paid and declined), refunds, a dispute, a subscription
    # that renews and then fails, and a NET-30 invoice.
    customer = new_customer(client)
    session = top_up_session(client, customer)
    assert pay(session.url, "4242424242424242")[0] == 303
    card = saved_card(client, customer, "4242424242424242")
    paid = client.v1.payment_intents.create(
        params={
            "amount": 3000,
            "currency": "usd",
            "customer": customer,
            "payment_method": card,
            "off_session": True,
            "confirm": True,
            "metadata": {"purpose": "auto_reload"},
        }
    )
    with pytest.raises(stripe.CardError):
        client.v1.payment_intents.create(
            params={
                "amount": 3000,
                "currency": "usd",
                "customer": customer,
                "payment_method": saved_card(client, customer, "4000000000000341"),
                "off_session": True,
                "confirm": True,
            }
        )
    client.v1.refunds.create(params={"payment_intent": paid.id, "amount": 1000})
    other = client.v1.payment_intents.create(
        params={
            "amount": 2000,
            "currency": "usd",
            "customer": customer,
            "payment_method": card,
            "off_session": True,
            "confirm": True,
        }
    )
    http(f"{local.url}/_local/disputes", {"charge": str(other.latest_charge)})
    sub = subscribe(client, customer, builder_price(client)).subscription
    http(f"{local.url}/_local/subscriptions/{sub.id}/cycle", {})
    client.v1.subscriptions.update(
        sub.id, params={"default_payment_method": saved_card(client, customer, "4000000000000341")}
    )
    http(f"{local.url}/_local/subscriptions/{sub.id}/cycle", {})
    draft = client.v1.invoices.create(
        params={
            "customer": customer,
            "collection_method": "send_invoice",
            "days_until_due": 30,
            "custom_fields": [{"name": "PO number", "value": "PO-1"}],
            "auto_advance": False,
            "pending_invoice_items_behavior": "exclude",
            "metadata": {"purpose": "usage_invoice"},
        }
    )
    client.v1.invoice_items.create(
        params={
            "customer": customer,
            "invoice": draft.id,
            "amount": 1234,
            "currency": "usd",
            "description": "Usage",
        }
    )
    client.v1.invoices.send_invoice(client.v1.invoices.finalize_invoice(draft.id).id)

    # When everything is read back, as product code reads it and as lists and events carry it
    answers: dict[str, Any] = {}
    for path in (
        f"/v1/customers/{customer}",
        "/v1/customers?limit=100",
        f"/v1/payment_methods?customer={customer}&limit=100",
        "/v1/payment_intents?limit=100",
        f"/v1/payment_intents/{paid.id}?expand[]=payment_method&expand[]=latest_charge",
        "/v1/charges?limit=100",
        "/v1/refunds?limit=100",
        "/v1/disputes?limit=100",
        "/v1/prices?limit=100",
        "/v1/checkout/sessions?limit=100",
        f"/v1/checkout/sessions/{session.id}?expand[]=payment_intent&expand[]=payment_intent.payment_method"
        "&expand[]=invoice&expand[]=line_items",
        "/v1/invoices?limit=100&expand[]=data.payments",
        f"/v1/invoices/{draft.id}/lines",
        "/v1/invoiceitems?limit=100",
        "/v1/subscriptions?status=all&limit=100",
        f"/v1/subscription_items?subscription={sub.id}",
        "/v1/events?limit=100",
    ):
        answers[path] = _get(local, path)
    answers["webhooks"] = receiver.events()
    answers["events"] = local.events()

    # Then no object carries a field that today's API lacks
    problems = [p for name, value in answers.items() for p in check(value, name)]
    # One line per field and the kind that carries it, with the first place it was seen.
    by_field: dict[str, str] = {}
    for problem in problems:
        by_field.setdefault(re.sub(r"^.*<", "<", problem), problem)
    assert not by_field, "fields today's API lacks:\n" + "\n".join(sorted(by_field))
    seen = _kinds(answers)
    assert set(SDK_CLASSES) - {"plan", "product"} <= seen, set(SDK_CLASSES) - seen


def _kinds(value: Any) -> set[str]:
    found: set[str] = set()
    if isinstance(value, dict):
        if isinstance(value.get("object"), str):
            found.add(value["object"])
        for item in value.values():
            found |= _kinds(item)
    elif isinstance(value, list):
        for item in value:
            found |= _kinds(item)
    return found
