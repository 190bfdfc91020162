"""Checkout Sessions (modes "payment" and "subscription") and what paying one on the local
hosted page does. localstripe has no Checkout at all."""

from __future__ import annotations

from typing import Any

from localstripe import resources as ls

from . import billing
from .core import (
    HUB,
    Obj,
    StripeError,
    as_bool,
    as_dict,
    as_int,
    as_list,
    bad,
    check_params,
    currency,
    emit,
    get,
    later,
    metadata,
    new_id,
    now,
    required,
)
from .payments import (
    INCORRECT_NUMBER,
    Customer,
    Failure,
    PaymentIntent,
    PaymentMethod,
    attach,
    attempt,
    customer,
    failure_for,
    luhn_ok,
    set_default_payment_method,
    settle_delayed,
    start_delayed,
)

DELAYED = {"async_success": True, "async_failure": False}  # the page's pseudo card numbers

_ALLOWED = (
    "mode customer customer_email client_reference_id line_items metadata success_url cancel_url "
    "invoice_creation payment_intent_data subscription_data expires_at customer_creation currency "
    "payment_method_types ui_mode"
)
# Accepted so product code runs unchanged; the local page ignores them.
_IGNORED = (
    "allow_promotion_codes billing_address_collection locale submit_type customer_update automatic_tax "
    "consent_collection custom_text phone_number_collection tax_id_collection saved_payment_method_options "
    "payment_method_collection payment_method_options"
)


class PageError(Exception):
    """The hosted page refuses the request (session complete or expired)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class CheckoutSession(Obj):
    object = "checkout.session"
    _id_prefix = "cs_test_"

    def __init__(
        self,
        *,
        mode: str,
        lines: list[tuple[billing.Price, int]],
        customer: str | None,
        customer_email: str | None,
        client_reference_id: str | None,
        metadata: dict[str, str],
        success_url: str | None,
        cancel_url: str | None,
        invoice_creation: dict[str, Any] | None,
        payment_intent_data: dict[str, Any],
        subscription_data: dict[str, Any],
        expires_at: int | None,
        customer_creation: str | None,
    ) -> None:
        super().__init__()
        total = sum(p.unit_amount * q for p, q in lines)
        self.adaptive_pricing = None
        self.after_expiration = None
        self.allow_promotion_codes = None
        self.amount_subtotal = total
        self.amount_total = total
        self.automatic_tax = {"enabled": False, "liability": None, "provider": None, "status": None}
        self.billing_address_collection = None
        self.cancel_url = cancel_url
        self.client_reference_id = client_reference_id
        self.client_secret = None
        self.consent = None
        self.consent_collection = None
        self.currency = lines[0][0].currency
        self.custom_fields: list[Any] = []
        self.customer = customer
        self.customer_creation = customer_creation
        self.customer_details: dict[str, Any] | None = None
        self.customer_email = customer_email
        self.discounts: list[Any] = []
        self.expires_at = expires_at or self.created + 24 * 3600
        self.invoice: str | None = None
        self.invoice_creation = invoice_creation
        self.locale = None
        self.metadata = metadata
        self.mode = mode
        self.payment_intent: str | None = None
        self.payment_link = None
        self.payment_method_collection = "always" if mode == "subscription" else None
        self.payment_method_options: dict[str, Any] = {}
        self.payment_method_types = ["card"]
        self.payment_status = "unpaid"
        self.phone_number_collection = {"enabled": False}
        self.recovered_from = None
        self.saved_payment_method_options = None
        self.setup_intent = None
        self.shipping_address_collection = None
        self.shipping_cost = None
        self.shipping_options: list[Any] = []
        self.status = "open"
        self.submit_type = None
        self.subscription: str | None = None
        self.success_url = success_url
        self.total_details = {"amount_discount": 0, "amount_shipping": 0, "amount_tax": 0}
        self.ui_mode = "hosted"
        self.url: str | None = f"{HUB.base_url}/pay/{self.id}"
        self._lines = [(new_id("li_"), p.id, q) for p, q in lines]
        self._pi_data = payment_intent_data
        self._sub_data = subscription_data

    def _extras(self) -> dict[str, Any]:
        return {"line_items": self._line_items}

    def _line_items(self) -> dict[str, Any]:
        data = []
        for line_id, price_id, quantity in self._lines:
            p = billing.price(price_id)
            amount = p.unit_amount * quantity
            data.append(
                {
                    "id": line_id,
                    "object": "item",
                    "amount_discount": 0,
                    "amount_subtotal": amount,
                    "amount_tax": 0,
                    "amount_total": amount,
                    "currency": p.currency,
                    "description": billing.product_name(p.product),
                    "price": p._export(),
                    "quantity": quantity,
                }
            )
        return {
            "object": "list",
            "data": data,
            "has_more": False,
            "url": f"/v1/checkout/sessions/{self.id}/line_items",
        }

    def _prices(self) -> list[tuple[billing.Price, int]]:
        return [(billing.price(price_id), quantity) for _, price_id, quantity in self._lines]


def session(id_: Any, param: str = "session") -> CheckoutSession:
    obj: CheckoutSession = get("checkout.session", id_, param)
    expire_if_due(obj)
    return obj


# ------------------------------------------------------------------ creation


def _inline_price(data: dict[str, Any], param: str) -> billing.Price:
    check_params(
        data,
        "currency unit_amount unit_amount_decimal product product_data recurring tax_behavior",
    )
    amount = data.get("unit_amount", data.get("unit_amount_decimal"))
    if amount is None:
        raise bad("Missing required param: unit_amount.", f"{param}[unit_amount]")
    unit_amount = as_int(amount, f"{param}[unit_amount]")
    if unit_amount < 0:
        raise bad("Invalid unit_amount: must be at least 0.", f"{param}[unit_amount]")
    recurring = as_dict(data.get("recurring"), f"{param}[recurring]") or None
    if recurring is not None:
        recurring = billing_recurring(recurring, f"{param}[recurring]")
    with HUB.quiet():  # Stripe makes these objects silently
        if data.get("product"):
            product_id = str(ls.Product._api_retrieve(str(data["product"])).id)
        else:
            product_data = as_dict(required(data, "product_data"), f"{param}[product_data]")
            product = ls.Product(
                name=str(required(product_data, "name")),
                description=product_data.get("description"),
                metadata=metadata(product_data.get("metadata")),
            )
            product_id = str(product.id)
        return billing.Price(
            currency=currency(required(data, "currency"), f"{param}[currency]"),
            unit_amount=unit_amount,
            product=product_id,
            recurring=recurring,
            active=False,
        )


def billing_recurring(recurring: dict[str, Any], param: str) -> dict[str, Any]:
    interval = recurring.get("interval")
    if interval not in ("day", "week", "month", "year"):
        raise bad(
            "Invalid recurring[interval]: must be one of day, week, month, or year", f"{param}[interval]"
        )
    count = as_int(recurring.get("interval_count", 1), f"{param}[interval_count]")
    return {
        "interval": interval,
        "interval_count": count,
        "meter": None,
        "trial_period_days": None,
        "usage_type": "licensed",
    }


def create(params: dict[str, Any]) -> CheckoutSession:
    check_params(params, _ALLOWED, _IGNORED)
    mode = required(params, "mode")
    if mode not in ("payment", "subscription"):
        raise bad(f"The local Stripe emulates Checkout modes payment and subscription, not {mode}.", "mode")
    if params.get("ui_mode", "hosted") != "hosted":
        raise bad("The local Stripe emulates the hosted Checkout page only.", "ui_mode")
    cus_id = params.get("customer") or None
    if cus_id:
        customer(cus_id)
        if params.get("customer_email"):
            raise bad(
                "You may only specify one of these parameters: customer, customer_email.", "customer_email"
            )
    raw_lines = as_list(required(params, "line_items"), "line_items")
    lines: list[tuple[billing.Price, int]] = []
    for i, raw in enumerate(raw_lines):
        item = as_dict(raw, f"line_items[{i}]")
        check_params(item, "price price_data quantity", "adjustable_quantity tax_rates")
        quantity = as_int(item.get("quantity", 1), f"line_items[{i}][quantity]")
        if quantity < 1:
            raise bad("Quantity must be at least 1.", f"line_items[{i}][quantity]")
        if item.get("price"):
            p = billing.price(item["price"], f"line_items[{i}][price]")
        else:
            p = _inline_price(
                as_dict(required(item, "price_data"), f"line_items[{i}][price_data]"),
                f"line_items[{i}][price_data]",
            )
        if (p.type == "recurring") != (mode == "subscription"):
            raise bad(
                "In payment mode every price must be one-time; in subscription mode (locally) every price "
                "must be recurring.",
                f"line_items[{i}]",
            )
        lines.append((p, quantity))
    if len({p.currency for p, _ in lines}) > 1:
        raise bad("All line items must share one currency.", "line_items")
    if mode == "subscription":
        billing.check_items(lines)
    total = sum(p.unit_amount * q for p, q in lines)
    if mode == "payment" and total < 50 and lines[0][0].currency == "usd":
        raise bad(
            "The Checkout Session's total amount due must add up to at least $0.50 usd",
            "line_items",
            "amount_too_small",
        )
    invoice_creation = _invoice_creation(params, mode)
    pi_data = as_dict(params.get("payment_intent_data"), "payment_intent_data")
    sub_data = as_dict(params.get("subscription_data"), "subscription_data")
    if pi_data and mode != "payment":
        raise bad("You can only specify payment_intent_data in payment mode.", "payment_intent_data")
    if sub_data and mode != "subscription":
        raise bad("You can only specify subscription_data in subscription mode.", "subscription_data")
    check_params(
        pi_data,
        (
            "setup_future_usage metadata description receipt_email statement_descriptor "
            "statement_descriptor_suffix"
        ),
        "capture_method shipping transfer_data",
    )
    if pi_data.get("setup_future_usage") not in (None, "on_session", "off_session"):
        raise bad(
            "Invalid setup_future_usage: must be on_session or off_session",
            "payment_intent_data[setup_future_usage]",
        )
    pi_data["metadata"] = metadata(pi_data.get("metadata"), "payment_intent_data[metadata]")
    check_params(sub_data, "metadata description", "default_tax_rates proration_behavior")
    sub_data["metadata"] = metadata(sub_data.get("metadata"), "subscription_data[metadata]")
    expires_at = as_int(params["expires_at"], "expires_at") if params.get("expires_at") else None
    if expires_at is not None and not now() + 1800 - 5 <= expires_at <= now() + 24 * 3600 + 5:
        raise bad("expires_at must be between 30 minutes and 24 hours from now.", "expires_at")
    customer_creation = params.get("customer_creation") or (None if cus_id else "if_required")
    if customer_creation not in (None, "if_required", "always"):
        raise bad("Invalid customer_creation: must be if_required or always", "customer_creation")
    made = CheckoutSession(
        mode=mode,
        lines=lines,
        customer=cus_id,
        customer_email=params.get("customer_email") or None,
        client_reference_id=params.get("client_reference_id") or None,
        metadata=metadata(params.get("metadata")),
        success_url=params.get("success_url") or None,
        cancel_url=params.get("cancel_url") or None,
        invoice_creation=invoice_creation,
        payment_intent_data=pi_data,
        subscription_data=sub_data,
        expires_at=expires_at,
        customer_creation=customer_creation,
    )
    return made


def _invoice_creation(params: dict[str, Any], mode: str) -> dict[str, Any] | None:
    raw = as_dict(params.get("invoice_creation"), "invoice_creation")
    if not raw:
        return {"enabled": False, "invoice_data": _invoice_data({})} if mode == "payment" else None
    if mode != "payment":
        raise bad("You can only use invoice_creation in payment mode.", "invoice_creation")
    check_params(raw, "enabled invoice_data")
    enabled = as_bool(required(raw, "enabled"), "invoice_creation[enabled]")
    data = as_dict(raw.get("invoice_data"), "invoice_creation[invoice_data]")
    check_params(
        data,
        "description metadata custom_fields footer",
        "account_tax_ids issuer rendering_options",
    )
    return {"enabled": enabled, "invoice_data": _invoice_data(data)}


def _invoice_data(data: dict[str, Any]) -> dict[str, Any]:
    fields = [
        {"name": str(f["name"]), "value": str(f["value"])}
        for f in as_list(data.get("custom_fields"), "invoice_creation[invoice_data][custom_fields]")
    ]
    return {
        "account_tax_ids": None,
        "custom_fields": fields or None,
        "description": data.get("description") or None,
        "footer": data.get("footer") or None,
        "issuer": None,
        "metadata": metadata(data.get("metadata"), "invoice_creation[invoice_data][metadata]"),
        "rendering_options": None,
    }


# ------------------------------------------------------------------ lifecycle


def expire_if_due(cs: CheckoutSession) -> None:
    if cs.status == "open" and now() >= cs.expires_at:
        expire(cs)


def expire(cs: CheckoutSession) -> None:
    if cs.status != "open":
        raise bad(f"Only open Checkout Sessions can be expired; this one is {cs.status}.", "session")
    cs.status, cs.url = "expired", None
    emit("checkout.session.expired", cs)


def _customer_for(cs: CheckoutSession, email: str | None) -> Customer | None:
    """The session's customer, made now when Checkout would make one."""
    if cs.customer:
        return customer(cs.customer)
    needed = (
        cs.mode == "subscription"
        or cs.customer_creation == "always"
        or (cs.invoice_creation or {}).get("enabled")
        or cs._pi_data.get("setup_future_usage")
    )
    if not needed:
        return None
    made = Customer(email=email or cs.customer_email)
    cs.customer = made.id
    return made


def _complete(cs: CheckoutSession, cus: Customer | None, email: str | None, *, paid: bool) -> None:
    cs.status, cs.url = "complete", None
    cs.payment_status = "paid" if paid else "unpaid"
    cs.customer_details = {
        "address": None,
        "email": (cus.email if cus else None) or email or cs.customer_email,
        "name": cus.name if cus else None,
        "phone": None,
        "tax_exempt": "none",
        "tax_ids": [],
    }
    emit("checkout.session.completed", cs)


def _draft_invoice(cs: CheckoutSession, cus: Customer | None) -> billing.Invoice | None:
    """The invoice invoice_creation asks for, as a draft; _issue announces and pays it."""
    if cus is None or not (cs.invoice_creation or {}).get("enabled"):
        return None
    data = cs.invoice_creation["invoice_data"] if cs.invoice_creation else {}
    inv = billing.Invoice(
        cus,
        currency=cs.currency,
        description=data.get("description"),
        metadata=dict(data.get("metadata") or {}),
        custom_fields=data.get("custom_fields"),
        footer=data.get("footer"),
    )
    for p, quantity in cs._prices():
        billing.InvoiceItem(
            customer=cus.id,
            currency=p.currency,
            unit_amount=p.unit_amount,
            quantity=quantity,
            price=p,
            invoice=inv.id,
        )
    cs.invoice = inv.id
    return inv


def _issue(inv: billing.Invoice, pi: PaymentIntent) -> None:
    emit("invoice.created", inv)
    billing.finalize(inv)
    if inv.status == "open":
        billing.mark_paid(inv, pi)


def pay(cs: CheckoutSession, card_input: str, email: str | None = None) -> Failure | None:
    """What the local page's Pay button does. Returns the card failure, if any (the page shows
    it and the session stays open); raises PageError when the session cannot be paid."""
    expire_if_due(cs)
    if cs.status == "complete":
        raise PageError(409, "This Checkout Session is already complete; no second payment was taken.")
    if cs.status == "expired":
        raise PageError(410, "This Checkout Session has expired.")
    card = "".join(card_input.split()).replace("-", "")
    delayed = DELAYED.get(card.lower())
    if delayed is not None and cs.mode != "payment":
        raise PageError(400, "The local delayed payment methods work in payment mode only.")
    if delayed is None and not luhn_ok(card):
        return INCORRECT_NUMBER
    if cs.mode == "subscription":
        return _pay_subscription(cs, card, email)
    cus = _customer_for(cs, email)
    details = {
        "email": (cus.email if cus else None) or email or cs.customer_email,
        "name": cus.name if cus else None,
    }
    pm = PaymentMethod(
        None if delayed is not None else card, billing_details=details, bank=delayed is not None
    )
    pi = ls.store.get(f"payment_intent:{cs.payment_intent}") if cs.payment_intent else None
    if pi is None:  # one PaymentIntent per session, confirmed again after a decline
        pi = PaymentIntent(
            amount=cs.amount_total,
            currency=cs.currency,
            customer=cus.id if cus else None,
            description=cs._pi_data.get("description"),
            metadata=dict(cs._pi_data["metadata"]),
            setup_future_usage=cs._pi_data.get("setup_future_usage"),
            receipt_email=cs._pi_data.get("receipt_email"),
            statement_descriptor=cs._pi_data.get("statement_descriptor"),
            statement_descriptor_suffix=cs._pi_data.get("statement_descriptor_suffix"),
        )
        cs.payment_intent = pi.id
    if delayed is not None:
        charge = start_delayed(pi, pm)
        _complete(cs, cus, email, paid=False)
        later(HUB.async_payment_delay, lambda: _settle(cs, cus, pi, charge, delayed))
        return None
    failure = attempt(pi, pm, off_session=False, on_page=True)
    if failure is not None:
        return failure
    sfu = cs._pi_data.get("setup_future_usage")
    if sfu and cus is not None:
        attach(pm, cus)
        if sfu == "off_session":  # a local convenience: real Checkout leaves the default alone
            set_default_payment_method(cus, pm.id)
    inv = _draft_invoice(cs, cus)
    _complete(cs, cus, email, paid=True)
    if inv is not None:
        _issue(inv, pi)
    return None


def _settle(cs: CheckoutSession, cus: Customer | None, pi: PaymentIntent, charge: Any, succeed: bool) -> None:
    settle_delayed(pi, charge, succeed)
    if not succeed:
        emit("checkout.session.async_payment_failed", cs)
        return
    cs.payment_status = "paid"
    inv = _draft_invoice(cs, cus)
    emit("checkout.session.async_payment_succeeded", cs)
    if inv is not None:
        _issue(inv, pi)


def _pay_subscription(cs: CheckoutSession, card: str, email: str | None) -> Failure | None:
    pm = PaymentMethod(card)
    # Checkout checks the card before it makes any subscription.
    failure = failure_for(pm, on_page=True, off_session=False)
    if failure is not None:
        return failure
    cus = _customer_for(cs, email)
    assert cus is not None
    pm.billing_details.update(email=cus.email or email, name=cus.name)
    attach(pm, cus)
    pm._set_up = True  # saved for the renewals' off-session charges
    sub, failure = billing.start(
        cus,
        cs._prices(),
        pm=pm,
        metadata=dict(cs._sub_data["metadata"]),
        description=cs._sub_data.get("description"),
        on_page=True,
    )
    if failure is not None:  # cannot happen after the check above; kept for safety
        raise StripeError(402, failure.message, type_="card_error", code=failure.code)
    cs.subscription, cs.invoice = sub.id, sub.latest_invoice
    _complete(cs, cus, email, paid=True)
    return None
