"""Prices, Invoices, InvoiceItems and Subscriptions (localstripe has only legacy Plans, plain
invoices and plan-based subscriptions). Amounts are integer cents, as in Stripe."""

from __future__ import annotations

import calendar
from datetime import UTC, datetime
from typing import Any

from localstripe import resources as ls

from .core import HUB, Obj, bad, emit, get, money, new_id, now, of_kind
from .payments import (
    Customer,
    Failure,
    PaymentIntent,
    PaymentMethod,
    attempt,
    customer,
    default_payment_method,
    invoice_prefix,
)

NO_PAYMENT_METHOD = Failure(
    "invoice_no_payment_method",
    None,
    "This customer has no attached payment source or default payment method.",
)

# ------------------------------------------------------------------ prices


class Price(Obj):
    object = "price"
    _id_prefix = "price_"

    def __init__(
        self,
        *,
        currency: str,
        unit_amount: int,
        product: str,
        recurring: dict[str, Any] | None = None,
        lookup_key: str | None = None,
        nickname: str | None = None,
        metadata: dict[str, str] | None = None,
        active: bool = True,
        tax_behavior: str = "unspecified",
    ) -> None:
        super().__init__()
        self.active = active
        self.billing_scheme = "per_unit"
        self.currency = currency
        self.custom_unit_amount = None
        self.lookup_key = lookup_key
        self.metadata = metadata or {}
        self.nickname = nickname
        self.product = product
        self.recurring = recurring
        self.tax_behavior = tax_behavior
        self.tiers_mode = None
        self.transform_quantity = None
        self.type = "recurring" if recurring else "one_time"
        self.unit_amount = unit_amount
        self.unit_amount_decimal = str(unit_amount)

    def _plan(self) -> dict[str, Any]:
        """The legacy `plan` view Stripe still puts beside a recurring price."""
        recurring = self.recurring or {}
        return {
            "id": self.id,
            "object": "plan",
            "active": self.active,
            "amount": self.unit_amount,
            "amount_decimal": self.unit_amount_decimal,
            "billing_scheme": "per_unit",
            "created": self.created,
            "currency": self.currency,
            "interval": recurring.get("interval"),
            "interval_count": recurring.get("interval_count"),
            "livemode": False,
            "metadata": dict(self.metadata),
            "nickname": self.nickname,
            "product": self.product,
            "usage_type": recurring.get("usage_type", "licensed"),
        }


def price(id_: Any, param: str = "price") -> Price:
    obj: Price = get("price", id_, param)
    return obj


def product_name(product_id: str) -> str:
    product = ls.store.get(f"product:{product_id}")
    return str(product.name) if product is not None else product_id


def add_interval(anchor: int, interval: str, count: int) -> int:
    """anchor + count intervals, months clamped to the month's end like Stripe's billing."""
    if interval == "day":
        return anchor + count * 86400
    if interval == "week":
        return anchor + count * 7 * 86400
    start = datetime.fromtimestamp(anchor, UTC)
    months = count * (12 if interval == "year" else 1)
    year, month0 = divmod(start.month - 1 + months, 12)
    year += start.year
    day = min(start.day, calendar.monthrange(year, month0 + 1)[1])
    return int(start.replace(year=year, month=month0 + 1, day=day).timestamp())


# ------------------------------------------------------------------ invoice items and invoices


class InvoiceItem(Obj):
    object = "invoiceitem"
    _id_prefix = "ii_"
    # Today's invoice item names its price under `pricing` and its subscription under `parent`.
    _absent = ("created", "price", "subscription", "unit_amount", "unit_amount_decimal")

    def __init__(
        self,
        *,
        customer: str,
        currency: str,
        unit_amount: int,
        quantity: int = 1,
        description: str | None = None,
        price: Price | None = None,
        invoice: str | None = None,
        metadata: dict[str, str] | None = None,
        period: dict[str, int] | None = None,
        discountable: bool = True,
    ) -> None:
        super().__init__()
        self.amount = unit_amount * quantity
        self.currency = currency
        self.customer = customer
        self.date = self.created
        self.description = description or (product_name(price.product) if price else None)
        self.discountable = discountable
        self.discounts: list[Any] = []
        self.invoice = invoice
        self.metadata = metadata or {}
        self.parent = None
        self.period = period or {"start": self.created, "end": self.created}
        self.proration = False
        self.quantity = quantity
        self.subscription = None
        self.tax_rates: list[Any] = []
        self.unit_amount = unit_amount
        self.unit_amount_decimal = str(unit_amount)
        self._price = price.id if price else None
        self._line_id = new_id("il_")

    @property
    def price(self) -> dict[str, Any] | None:
        found = ls.store.get(f"price:{self._price}") if self._price else None
        return found._export() if found is not None else None

    @property
    def pricing(self) -> dict[str, Any] | None:
        found = ls.store.get(f"price:{self._price}") if self._price else None
        if found is None:
            return None
        details = {"price": found.id, "product": found.product}
        return {
            "price_details": details,
            "type": "price_details",
            "unit_amount_decimal": self.unit_amount_decimal,
        }

    def _line(self) -> dict[str, Any]:
        return {
            "id": self._line_id,
            "object": "line_item",
            "amount": self.amount,
            "currency": self.currency,
            "description": self.description,
            "discount_amounts": [],
            "discountable": self.discountable,
            "discounts": [],
            "invoice": self.invoice,
            "livemode": False,
            "metadata": dict(self.metadata),
            "parent": {
                "type": "invoice_item_details",
                "invoice_item_details": {"invoice_item": self.id, "proration": False, "subscription": None},
            },
            "period": dict(self.period),
            "pricing": self.pricing,
            "quantity": self.quantity,
            "subscription": None,
            "subtotal": self.amount,
        }


def invoice_item(id_: Any, param: str = "id") -> InvoiceItem:
    obj: InvoiceItem = get("invoiceitem", id_, param)
    return obj


class Invoice(Obj):
    object = "invoice"
    _id_prefix = "in_"
    # Older API versions' fields, kept here for bookkeeping only: today an invoice names its
    # subscription under parent.subscription_details and its payments under `payments`.
    _absent = (
        "charge",
        "payment_intent",
        "paid",
        "subscription",
        "days_until_due",
        "paid_out_of_band",
        "total_tax_amounts",
    )

    def __init__(
        self,
        cus: Customer,
        *,
        currency: str = "usd",
        collection_method: str = "charge_automatically",
        billing_reason: str = "manual",
        description: str | None = None,
        metadata: dict[str, str] | None = None,
        custom_fields: list[dict[str, str]] | None = None,
        footer: str | None = None,
        days_until_due: int | None = None,
        due_date: int | None = None,
        auto_advance: bool = False,
        default_payment_method: str | None = None,
        subscription: Subscription | None = None,
        period: tuple[int, int] | None = None,
    ) -> None:
        super().__init__()
        self.account_country = "US"
        self.account_name = "Conduix (local Stripe)"
        self.amount_shipping = 0
        self.attempt_count = 0
        self.attempted = False
        self.auto_advance = auto_advance
        self.automatic_tax = {"enabled": False, "liability": None, "status": None}
        self.billing_reason = billing_reason
        self.charge: str | None = None
        self.collection_method = collection_method
        self.currency = currency
        self.custom_fields = custom_fields or None
        self.customer = cus.id
        self.customer_address = cus.address
        self.customer_email = cus.email
        self.customer_name = cus.name
        self.customer_phone = cus.phone
        self.customer_tax_exempt = "none"
        self.customer_tax_ids: list[Any] = []
        self.days_until_due = days_until_due
        self.default_payment_method = default_payment_method
        self.description = description
        self.discounts: list[Any] = []
        self.due_date = due_date or (
            self.created + days_until_due * 86400 if days_until_due is not None else None
        )
        self.effective_at: int | None = None
        self.ending_balance: int | None = None
        self.footer = footer
        self.hosted_invoice_url: str | None = None
        self.invoice_pdf: str | None = None
        self.issuer = {"type": "self"}
        self.last_finalization_error = None
        self.latest_revision = None
        self.metadata = metadata or {}
        self.next_payment_attempt: int | None = None
        self.number: str | None = None
        self.on_behalf_of = None
        self.paid_out_of_band = False
        self.parent = (
            {
                "type": "subscription_details",
                "quote_details": None,
                "subscription_details": {
                    "metadata": dict(subscription.metadata),
                    "subscription": subscription.id,
                },
            }
            if subscription
            else None
        )
        self.payment_intent: str | None = None
        start, end = period or (self.created, self.created)
        self.period_start: int = start
        self.period_end: int = end
        self.post_payment_credit_notes_amount = 0
        self.pre_payment_credit_notes_amount = 0
        self.receipt_number = None
        self.rendering = None
        self.starting_balance = 0
        self.statement_descriptor = None
        self.status = "draft"
        self.status_transitions: dict[str, int | None] = {
            "finalized_at": None,
            "marked_uncollectible_at": None,
            "paid_at": None,
            "voided_at": None,
        }
        self.subscription = subscription.id if subscription else None
        self.total_discount_amounts: list[Any] = []
        self.total_tax_amounts: list[Any] = []
        self.total_taxes: list[Any] = []
        self.webhooks_delivered_at: int | None = None
        self._subscription_lines: list[dict[str, Any]] = []

    # -- amounts, computed from the lines
    def _lines(self) -> list[dict[str, Any]]:
        items = [ii._line() for ii in of_kind("invoiceitem") if ii.invoice == self.id]
        return [*self._subscription_lines, *items]

    @property
    def lines(self) -> dict[str, Any]:
        data = [dict(line) for line in self._lines()]
        url = f"/v1/invoices/{self.id}/lines"
        return {"object": "list", "data": data, "has_more": False, "url": url}

    def _extras(self) -> dict[str, Any]:
        return {"payments": self._payments}

    def _payments(self) -> dict[str, Any]:
        """The invoice's payments (Stripe returns them when asked: expand[]=payments)."""
        data = []
        if self.payment_intent:
            pi = ls.store.get(f"payment_intent:{self.payment_intent}")
            paid = pi is not None and pi.status == "succeeded"
            data.append(
                {
                    "id": "inpay_" + self.id[len("in_") :],
                    "object": "invoice_payment",
                    "amount_paid": self.amount_paid if paid else None,
                    "amount_requested": self.amount_due,
                    "created": pi.created if pi is not None else self.created,
                    "currency": self.currency,
                    "invoice": self.id,
                    "is_default": True,
                    "livemode": False,
                    "payment": {"type": "payment_intent", "payment_intent": self.payment_intent},
                    "status": "paid" if paid else "open",
                    "status_transitions": {
                        "canceled_at": None,
                        "paid_at": self.status_transitions["paid_at"],
                    },
                }
            )
        url = f"/v1/invoice_payments?invoice={self.id}"
        return {"object": "list", "data": data, "has_more": False, "url": url}

    @property
    def subtotal(self) -> int:
        return sum(int(line["amount"]) for line in self._lines())

    @property
    def subtotal_excluding_tax(self) -> int:
        return self.subtotal

    @property
    def total(self) -> int:
        return self.subtotal

    @property
    def total_excluding_tax(self) -> int:
        return self.subtotal

    @property
    def amount_due(self) -> int:
        return 0 if self.status == "void" else self.total

    @property
    def amount_paid(self) -> int:
        return self.total if self.status == "paid" else 0

    @property
    def amount_remaining(self) -> int:
        return 0 if self.status in ("paid", "void") else self.amount_due

    @property
    def amount_overpaid(self) -> int:
        return 0

    @property
    def paid(self) -> bool:  # older API versions' field
        return self.status == "paid"


class InvoicePayment(Obj):
    """A payment applied to an invoice (API 2025-03-31 and later: the invoice no longer has
    `charge` or `payment_intent`, and the PaymentIntent no longer has `invoice`)."""

    object = "invoice_payment"
    _id_prefix = "inpay_"

    def __init__(self, inv: Invoice, pi: PaymentIntent) -> None:
        super().__init__()
        self.amount_paid = pi.amount_received
        self.amount_requested = pi.amount
        self.currency = pi.currency
        self.invoice = inv.id
        self.is_default = True
        self.payment = {"type": "payment_intent", "payment_intent": pi.id}
        self.status = "paid"
        self.status_transitions = {"canceled_at": None, "paid_at": now()}


def invoice(id_: Any, param: str = "id") -> Invoice:
    obj: Invoice = get("invoice", id_, param)
    return obj


def add_price_line(inv: Invoice, p: Price, quantity: int, period: tuple[int, int], sub: Subscription) -> None:
    item = next((si for si in sub._item_objects() if si._price == p.id), None)
    inv._subscription_lines.append(
        {
            "id": new_id("il_"),
            "object": "line_item",
            "amount": p.unit_amount * quantity,
            "currency": p.currency,
            "description": f"{quantity} \N{MULTIPLICATION SIGN} {product_name(p.product)} "
            f"(at {money(p.unit_amount, p.currency)} / {(p.recurring or {}).get('interval', 'once')})",
            "discount_amounts": [],
            "discountable": True,
            "discounts": [],
            "invoice": inv.id,
            "livemode": False,
            "metadata": dict(sub.metadata),
            "parent": {
                "type": "subscription_item_details",
                "subscription_item_details": {
                    "invoice_item": None,
                    "proration": False,
                    "subscription": sub.id,
                    "subscription_item": item.id if item else None,
                },
            },
            "period": {"start": period[0], "end": period[1]},
            "pricing": {
                "price_details": {"price": p.id, "product": p.product},
                "type": "price_details",
                "unit_amount_decimal": p.unit_amount_decimal,
            },
            "quantity": quantity,
            "subscription": sub.id,
            "subtotal": p.unit_amount * quantity,
        }
    )


def finalize(inv: Invoice) -> None:
    if inv.status != "draft":
        raise bad("This invoice is already finalized, you can't re-finalize a non-draft invoice.", "invoice")
    at = now()
    sequence = HUB.invoice_sequence.get(inv.customer, 0) + 1
    HUB.invoice_sequence[inv.customer] = sequence
    inv.number = f"{invoice_prefix(inv.customer)}-{sequence:04d}"
    inv.status = "open"
    inv.status_transitions["finalized_at"] = inv.effective_at = at
    inv.hosted_invoice_url = f"{HUB.base_url}/invoices/{inv.id}"
    inv.invoice_pdf = f"{HUB.base_url}/invoices/{inv.id}.pdf"
    inv.ending_balance = 0
    inv.webhooks_delivered_at = at
    if inv.collection_method == "send_invoice" and inv.days_until_due is not None:
        inv.due_date = at + inv.days_until_due * 86400
    emit("invoice.finalized", inv)
    if inv.total == 0:
        mark_paid(inv, None)


def mark_paid(inv: Invoice, pi: PaymentIntent | None, *, out_of_band: bool = False) -> None:
    inv.status = "paid"
    inv.status_transitions["paid_at"] = now()
    inv.paid_out_of_band = out_of_band
    inv.next_payment_attempt = None
    if pi is not None:
        inv.payment_intent, inv.charge = pi.id, pi.latest_charge
        pi.invoice = inv.id
        InvoicePayment(inv, pi)
        charge = ls.store.get(f"charge:{pi.latest_charge}")
        if charge is not None:
            charge.invoice = inv.id
    emit("invoice.paid", inv)
    if not out_of_band:
        emit("invoice.payment_succeeded", inv)
    sub = ls.store.get(f"subscription:{inv.subscription}") if inv.subscription else None
    if (
        sub is not None
        and sub.latest_invoice == inv.id
        and sub.status in ("incomplete", "past_due", "unpaid")
    ):
        set_status(sub, "active")


def pay(
    inv: Invoice, pm: PaymentMethod | None, *, off_session: bool, on_page: bool = False
) -> Failure | None:
    """Collect an open invoice with `pm`: Stripe's invoice payment (one PaymentIntent per
    invoice, confirmed again on each attempt). Emits the events; returns the failure."""
    if inv.status != "open":
        raise bad(
            f"Invoice is already {inv.status}." if inv.status == "paid" else "This invoice is not open."
        )
    if inv.amount_due == 0:
        mark_paid(inv, None)
        return None
    inv.attempt_count += 1
    inv.attempted = True
    if pm is None:
        emit("invoice.payment_failed", inv)
        return NO_PAYMENT_METHOD
    pi = ls.store.get(f"payment_intent:{inv.payment_intent}") if inv.payment_intent else None
    if pi is None or pi.status == "succeeded":
        reason = {"subscription_create": "Subscription creation", "subscription_cycle": "Subscription update"}
        pi = PaymentIntent(
            amount=inv.amount_due,
            currency=inv.currency,
            customer=inv.customer,
            description=reason.get(inv.billing_reason, f"Invoice {inv.number}"),
            invoice=inv.id,
        )
        inv.payment_intent = pi.id
    failure = attempt(pi, pm, off_session=off_session, on_page=on_page)
    if failure is None and pi.status == "succeeded":
        mark_paid(inv, pi)
        return None
    if failure is not None and failure.code == "authentication_required":
        emit("invoice.payment_action_required", inv)
    inv.next_payment_attempt = None
    emit("invoice.payment_failed", inv)
    return failure


def collect(inv: Invoice, *, off_session: bool = True) -> Failure | None:
    """Charge an automatically collected invoice to its default payment method."""
    sub = ls.store.get(f"subscription:{inv.subscription}") if inv.subscription else None
    pm_id = inv.default_payment_method or (sub.default_payment_method if sub is not None else None)
    pm = ls.store.get(f"payment_method:{pm_id}") if pm_id else default_payment_method(customer(inv.customer))
    return pay(inv, pm, off_session=off_session)


# ------------------------------------------------------------------ subscriptions


class SubscriptionItem(Obj):
    object = "subscription_item"
    _id_prefix = "si_"
    _absent = ("livemode",)

    def __init__(
        self, sub: Subscription, p: Price, quantity: int, metadata: dict[str, str] | None = None
    ) -> None:
        super().__init__()
        self.billing_thresholds = None
        self.discounts: list[Any] = []
        self.metadata = metadata or {}
        self.quantity = quantity
        self.subscription = sub.id
        self.tax_rates: list[Any] = []
        self._price = p.id

    def _sub(self) -> Subscription:
        sub: Subscription = get("subscription", self.subscription)
        return sub

    @property
    def price(self) -> dict[str, Any]:
        return price(self._price)._export()

    @property
    def plan(self) -> dict[str, Any]:
        return price(self._price)._plan()

    @property
    def current_period_start(self) -> int:
        return self._sub().current_period_start

    @property
    def current_period_end(self) -> int:
        return self._sub().current_period_end


class Subscription(Obj):
    object = "subscription"
    _id_prefix = "sub_"
    # Since 2025-03-31 the period lives on each item; `plan` and `quantity` are older shortcuts.
    _absent = ("current_period_start", "current_period_end", "plan", "quantity")

    def __init__(
        self,
        cus: Customer,
        *,
        metadata: dict[str, str] | None = None,
        description: str | None = None,
        default_payment_method: str | None = None,
    ) -> None:
        super().__init__()
        self.application = None
        self.automatic_tax = {"disabled_reason": None, "enabled": False, "liability": None}
        self.billing_cycle_anchor = self.created
        self.billing_thresholds = None
        self.cancel_at: int | None = None
        self.cancel_at_period_end = False
        self.canceled_at: int | None = None
        self.cancellation_details: dict[str, Any] = {"comment": None, "feedback": None, "reason": None}
        self.collection_method = "charge_automatically"
        self.currency = "usd"
        self.customer = cus.id
        self.days_until_due = None
        self.default_payment_method = default_payment_method
        self.default_source = None
        self.description = description
        self.discounts: list[Any] = []
        self.ended_at: int | None = None
        self.invoice_settings = {"account_tax_ids": None, "issuer": {"type": "self"}}
        self.latest_invoice: str | None = None
        self.metadata = metadata or {}
        self.pause_collection = None
        self.pending_update = None
        self.schedule = None
        self.start_date = self.created
        self.status = "incomplete"
        self.trial_end = None
        self.trial_start = None
        self._item_ids: list[str] = []
        self._period = 0  # how many periods have passed since the anchor

    def _item_objects(self) -> list[SubscriptionItem]:
        return [get("subscription_item", i) for i in self._item_ids]

    def _interval(self) -> tuple[str, int]:
        recurring = price(self._item_objects()[0]._price).recurring or {}
        return str(recurring.get("interval", "month")), int(recurring.get("interval_count", 1))

    @property
    def current_period_start(self) -> int:
        interval, count = self._interval()
        return add_interval(self.billing_cycle_anchor, interval, count * self._period)

    @property
    def current_period_end(self) -> int:
        interval, count = self._interval()
        return add_interval(self.billing_cycle_anchor, interval, count * (self._period + 1))

    @property
    def items(self) -> dict[str, Any]:
        data = [si._export() for si in self._item_objects()]
        url = f"/v1/subscription_items?subscription={self.id}"
        return {"object": "list", "data": data, "has_more": False, "url": url}

    @property
    def plan(self) -> dict[str, Any] | None:  # older API versions' single-item shortcut
        items = self._item_objects()
        return price(items[0]._price)._plan() if len(items) == 1 else None

    @property
    def quantity(self) -> int | None:
        items = self._item_objects()
        return items[0].quantity if len(items) == 1 else None


def subscription(id_: Any, param: str = "id") -> Subscription:
    obj: Subscription = get("subscription", id_, param)
    return obj


def check_items(items: list[tuple[Price, int]]) -> None:
    if not items:
        raise bad("Missing required param: items.", "items")
    intervals = set()
    for p, quantity in items:
        if p.type != "recurring":
            raise bad(f"The price specified ({p.id}) is not a recurring price.", "items")
        if quantity < 1:
            raise bad("Quantity must be at least 1.", "items")
        intervals.add((p.recurring or {}).get("interval"))
    if len(intervals) > 1 or len({p.currency for p, _ in items}) > 1:
        raise bad("All prices of a subscription must share one currency and one billing interval.", "items")


def set_status(sub: Subscription, status: str) -> None:
    previous = {"status": sub.status}
    sub.status = status
    emit("customer.subscription.updated", sub, previous)


def _period_invoice(sub: Subscription, billing_reason: str, period: tuple[int, int]) -> Invoice:
    cus = customer(sub.customer)
    inv = Invoice(cus, currency=sub.currency, billing_reason=billing_reason, subscription=sub, period=period)
    lines = (sub.current_period_start, sub.current_period_end)
    for si in sub._item_objects():
        add_price_line(inv, price(si._price), si.quantity, lines, sub)
    if billing_reason == "subscription_cycle":  # pending invoice items ride on renewals, as in Stripe
        for ii in of_kind("invoiceitem"):
            if ii.customer == cus.id and ii.invoice is None:
                ii.invoice = inv.id
    sub.latest_invoice = inv.id
    return inv


def start(
    cus: Customer,
    items: list[tuple[Price, int]],
    *,
    pm: PaymentMethod | None,
    metadata: dict[str, str],
    description: str | None = None,
    on_page: bool = False,
    charge: bool = True,
) -> tuple[Subscription, Failure | None]:
    """A new subscription and its first invoice, charged to `pm` unless charge is False."""
    check_items(items)
    sub = Subscription(
        cus, metadata=metadata, description=description, default_payment_method=pm.id if pm else None
    )
    sub.currency = items[0][0].currency
    for p, quantity in items:
        sub._item_ids.append(SubscriptionItem(sub, p, quantity).id)
    emit("customer.subscription.created", sub)
    inv = _period_invoice(sub, "subscription_create", (sub.created, sub.created))
    emit("invoice.created", inv)
    finalize(inv)
    if not charge or inv.status == "paid":
        if inv.status == "paid":
            set_status(sub, "active")
        return sub, None
    if pm is None:
        pm = default_payment_method(cus)
    failure = pay(inv, pm, off_session=not on_page, on_page=on_page)
    return sub, failure


def cycle(sub: Subscription, *, draft: bool = False) -> Invoice | None:
    """Move the subscription into its next period and bill it. The local test hook bills at
    once; a test clock (draft=True) leaves the invoice a draft that advances an hour later,
    as Stripe's renewal invoices do."""
    if sub.status in ("canceled", "incomplete", "incomplete_expired"):
        raise bad(f"A subscription in status {sub.status} does not renew.", "subscription")
    if sub.cancel_at_period_end:
        cancel(sub, reason="cancellation_requested")
        return None
    previous = {"items": sub.items, "latest_invoice": sub.latest_invoice}  # periods live on items
    old_period = (sub.current_period_start, sub.current_period_end)
    sub._period += 1
    inv = _period_invoice(sub, "subscription_cycle", old_period)
    emit("customer.subscription.updated", sub, previous)
    emit("invoice.created", inv)
    if draft:
        inv.auto_advance = True
        return inv
    advance(inv)
    return inv


def advance(inv: Invoice) -> None:
    """What auto-advance does to a draft: finalize it, then charge it or send it."""
    finalize(inv)
    if inv.status != "open":
        return
    if inv.collection_method == "send_invoice":
        emit("invoice.sent", inv)
        return
    sub = ls.store.get(f"subscription:{inv.subscription}") if inv.subscription else None
    if collect(inv) is not None and sub is not None and sub.status in ("active", "trialing"):
        set_status(sub, "past_due")


def cancel(sub: Subscription, *, reason: str = "cancellation_requested", comment: str | None = None) -> None:
    if sub.status == "canceled":
        raise bad(
            "A canceled subscription can only update its cancellation_details and metadata.", "subscription"
        )
    at = now()
    sub.status = "canceled"
    sub.canceled_at = sub.ended_at = at
    sub.cancellation_details = {"comment": comment, "feedback": None, "reason": reason}
    emit("customer.subscription.deleted", sub)
