"""The /v1 routes this stand-in serves itself (registered before localstripe's, which keep
serving products, coupons, tax rates, tokens and the balance)."""

from __future__ import annotations

import fnmatch
import json
import time
from collections.abc import Callable
from typing import Any

from aiohttp import web
from localstripe import resources as ls_resources

from . import billing, checkout
from .core import (
    StripeError,
    as_bool,
    as_dict,
    as_int,
    as_list,
    bad,
    check_params,
    currency,
    emit,
    expand_paths,
    get,
    list_object,
    ls_server,
    merge_metadata,
    metadata,
    of_kind,
    required,
)
from .payments import (
    INCORRECT_NUMBER,
    Charge,
    Customer,
    PaymentIntent,
    PaymentMethod,
    attach,
    attempt,
    card_error,
    close_dispute,
    customer,
    default_payment_method,
    failure_for,
    luhn_ok,
    number_for_token,
    open_dispute,
    payment_method,
    refund,
    update_dispute,
)

Handler = Callable[[dict[str, Any], dict[str, str]], Any]
ROUTES: list[tuple[str, str, Handler]] = []


def route(method: str, path: str) -> Callable[[Handler], Handler]:
    def register(fn: Handler) -> Handler:
        ROUTES.append((method, path, fn))
        return fn

    return register


async def request_params(request: web.Request) -> dict[str, Any]:
    """Form (what the SDK sends) or JSON body, plus the query string, with Stripe's
    a[b][0]=c keys unflattened."""
    data: dict[str, Any] = ls_server.unflatten_data(request.query) if request.query else {}
    if request.method == "POST" and request.body_exists:  # bodies are cached: safe to read twice
        if request.content_type == "application/json":
            body = await request.json()
            if not isinstance(body, dict):
                raise bad("The JSON body must be an object.")
            data.update(body)
        else:
            form = await request.post()
            data.update(ls_server.unflatten_data(form) if form else {})
    return data


def json_response(payload: Any, status: int = 200) -> web.Response:
    return web.Response(
        body=json.dumps(payload, indent=2).encode(), status=status, content_type="application/json"
    )


def _wrap(fn: Handler) -> Callable[[web.Request], Any]:
    async def handler(request: web.Request) -> web.Response:
        params = await request_params(request)
        expand = [str(e) for e in as_list(params.get("expand"), "expand")]
        params["expand"] = expand
        result = fn(params, dict(request.match_info))
        if hasattr(result, "_export"):
            result = result._export(expand)
        return json_response(result)

    return handler


def add_routes(router: web.UrlDispatcher) -> None:
    for method, path, fn in ROUTES:
        router.add_route(method, path, _wrap(fn))


def _filter_created(items: list[Any], value: Any) -> list[Any]:
    if value in (None, ""):
        return items
    if not isinstance(value, dict):
        at = as_int(value, "created")
        return [i for i in items if i.created == at]
    tests = {"gt": int.__gt__, "gte": int.__ge__, "lt": int.__lt__, "lte": int.__le__}
    for op, bound in value.items():
        if op not in tests:
            raise bad(f"Received unknown parameter: created[{op}]", f"created[{op}]")
        limit = as_int(bound, f"created[{op}]")
        items = [i for i in items if tests[op](i.created, limit)]
    return items


_PAGING = "limit starting_after ending_before"


# ------------------------------------------------------------------ customers


@route("POST", "/v1/customers")
def create_customer(p: dict[str, Any], _: dict[str, str]) -> Any:
    p.pop("expand")
    pm_id = p.pop("payment_method", None)
    p["metadata"] = metadata(p.get("metadata"))
    pm = payment_method(pm_id) if pm_id else None
    default = as_dict(p.get("invoice_settings"), "invoice_settings").get("default_payment_method")
    if default and (pm is None or default != pm.id):
        raise bad(
            "The customer does not have a payment method with the ID "
            f"{default}. The payment method must be attached to the customer.",
            "invoice_settings[default_payment_method]",
        )
    cus = Customer._api_create(**p)
    if pm is not None:
        attach(pm, cus)
    return cus


@route("GET", "/v1/customers/{id}")
def retrieve_customer(p: dict[str, Any], ids: dict[str, str]) -> Any:
    return customer(ids["id"], "id")


@route("POST", "/v1/customers/{id}")
def update_customer(p: dict[str, Any], ids: dict[str, str]) -> Any:
    cus = customer(ids["id"], "id")
    p.pop("expand")
    previous: dict[str, Any] = {}
    if "invoice_settings" in p:
        settings = as_dict(p.pop("invoice_settings"), "invoice_settings")
        check_params(settings, "default_payment_method", "custom_fields footer rendering_options")
        if "default_payment_method" in settings:
            pm_id = settings["default_payment_method"] or None
            if pm_id is not None:
                pm = payment_method(pm_id, "invoice_settings[default_payment_method]")
                if pm.customer != cus.id:
                    raise bad(
                        f"The customer does not have a payment method with the ID {pm_id}. "
                        "The payment method must be attached to the customer.",
                        "invoice_settings[default_payment_method]",
                    )
            previous["invoice_settings"] = {
                "default_payment_method": cus.invoice_settings.get("default_payment_method")
            }
            cus.invoice_settings = {**cus.invoice_settings, "default_payment_method": pm_id}
    if "metadata" in p:
        previous["metadata"] = dict(cus.metadata)
        cus.metadata = merge_metadata(cus.metadata, p.pop("metadata"))
    for key in p:
        if key.startswith("_") or not hasattr(cus, key) or key in ("id", "object", "created", "livemode"):
            raise bad(f"Received unknown parameter: {key}", key)
        previous[key] = getattr(cus, key)
    cus._update(**p)
    emit("customer.updated", cus, previous)
    return cus


@route("GET", "/v1/customers")
def list_customers(p: dict[str, Any], _: dict[str, str]) -> Any:
    check_params(p, f"email created {_PAGING}", "test_clock")
    items = [c for c in of_kind("customer") if p.get("email") in (None, c.email)]
    return list_object("/v1/customers", _filter_created(items, p.get("created")), p, p["expand"])


# ------------------------------------------------------------------ payment methods


def _card_number(card: dict[str, Any]) -> str:
    if card.get("token"):
        return number_for_token(str(card["token"]))
    number = "".join(str(required(card, "number")).split())
    if not luhn_ok(number):
        raise StripeError(
            402, INCORRECT_NUMBER.message, type_="card_error", code="incorrect_number", param="card[number]"
        )
    return number


@route("POST", "/v1/payment_methods")
def create_payment_method(p: dict[str, Any], _: dict[str, str]) -> Any:
    check_params(p, "type card billing_details metadata", "allow_redisplay radar_options")
    if required(p, "type") != "card":
        raise bad("The local Stripe creates card PaymentMethods only.", "type")
    card = as_dict(required(p, "card"), "card")
    check_params(card, "number exp_month exp_year cvc token", "networks")
    number = _card_number(card)
    exp_month = as_int(card.get("exp_month", 12), "card[exp_month]")
    exp_year = as_int(card.get("exp_year", 2034), "card[exp_year]")
    exp_year += 2000 if exp_year < 100 else 0
    if not 1 <= exp_month <= 12:
        raise StripeError(
            402,
            "Your card's expiration month is invalid.",
            type_="card_error",
            code="invalid_expiry_month",
            param="card[exp_month]",
        )
    if exp_year < time.gmtime().tm_year:
        raise StripeError(
            402,
            "Your card's expiration year is invalid.",
            type_="card_error",
            code="invalid_expiry_year",
            param="card[exp_year]",
        )
    return PaymentMethod(
        number,
        exp_month=exp_month,
        exp_year=exp_year,
        billing_details=as_dict(p.get("billing_details"), "billing_details"),
        metadata=metadata(p.get("metadata")),
    )


@route("GET", "/v1/payment_methods/{id}")
def retrieve_payment_method(p: dict[str, Any], ids: dict[str, str]) -> Any:
    return payment_method(ids["id"], "payment_method")


@route("GET", "/v1/payment_methods")
def list_payment_methods(p: dict[str, Any], _: dict[str, str]) -> Any:
    check_params(p, f"customer type {_PAGING}")
    cus = customer(required(p, "customer"))
    items = [
        pm for pm in of_kind("payment_method") if pm.customer == cus.id and p.get("type") in (None, pm.type)
    ]
    return list_object("/v1/payment_methods", items, p, p["expand"])


@route("POST", "/v1/payment_methods/{id}/attach")
def attach_payment_method(p: dict[str, Any], ids: dict[str, str]) -> Any:
    check_params(p, "customer")
    pm = payment_method(ids["id"], "payment_method")
    attach(pm, customer(required(p, "customer")))
    return pm


# ------------------------------------------------------------------ payment intents


_PI_CREATE = (
    "amount currency customer payment_method off_session confirm description metadata setup_future_usage "
    "receipt_email payment_method_types statement_descriptor statement_descriptor_suffix capture_method "
    "confirmation_method error_on_requires_action return_url automatic_payment_methods "
    "payment_method_options"
)
_PI_IGNORED = (
    "shipping transfer_group on_behalf_of application_fee_amount transfer_data use_stripe_sdk radar_options "
    "payment_method_configuration mandate_data"
)


def _amount(value: Any, cur: str) -> int:
    amount = as_int(value, "amount")
    if cur == "usd" and amount < 50:
        raise bad("Amount must be at least $0.50 usd", "amount", "amount_too_small")
    if amount < 1:
        raise bad("Amount must be at least 1.", "amount", "amount_too_small")
    return amount


def _off_session(value: Any) -> bool:
    if value in ("one_off", "recurring"):
        return True
    return False if value is None else as_bool(value, "off_session")


def _pi_payment_method(value: Any, cus_id: str | None) -> PaymentMethod:
    pm = payment_method(value)
    if pm.customer is not None and pm.customer != cus_id:
        raise bad(
            f"The provided PaymentMethod {pm.id} is attached to customer {pm.customer}; pass that customer "
            "to use it."
            if cus_id is None
            else "The provided PaymentMethod belongs to a different Customer.",
            "payment_method",
        )
    return pm


def _confirm(pi: PaymentIntent, pm: PaymentMethod, off_session: bool) -> PaymentIntent:
    failure = attempt(pi, pm, off_session=off_session)
    if failure is not None:
        raise card_error(pi, failure, pm)
    if pi.status == "succeeded" and pi.setup_future_usage and pi.customer and pm.customer is None:
        attach(pm, customer(pi.customer))  # saving the card is what setup_future_usage asks for
    return pi


@route("POST", "/v1/payment_intents")
def create_payment_intent(p: dict[str, Any], _: dict[str, str]) -> Any:
    check_params(p, _PI_CREATE, _PI_IGNORED)
    cur = currency(required(p, "currency"))
    amount = _amount(required(p, "amount"), cur)
    cus = customer(p["customer"]) if p.get("customer") else None
    confirm = as_bool(p.get("confirm", False), "confirm")
    off_session = _off_session(p.get("off_session"))
    if "off_session" in p and not confirm:
        raise bad("off_session can only be used with confirm=true.", "off_session")
    if p.get("capture_method", "automatic") not in ("automatic", "automatic_async"):
        raise bad("The local Stripe captures automatically only.", "capture_method")
    sfu = p.get("setup_future_usage") or None
    if sfu not in (None, "on_session", "off_session"):
        raise bad(
            "Invalid setup_future_usage: must be one of on_session or off_session", "setup_future_usage"
        )
    pm = _pi_payment_method(p["payment_method"], cus.id if cus else None) if p.get("payment_method") else None
    if confirm and pm is None:
        raise bad(
            "You cannot confirm this PaymentIntent because it's missing a payment method.",
            "payment_method",
            "payment_intent_unexpected_state",
        )
    pi = PaymentIntent(
        amount=amount,
        currency=cur,
        customer=cus.id if cus else None,
        payment_method=pm.id if pm else None,
        description=p.get("description") or None,
        metadata=metadata(p.get("metadata")),
        setup_future_usage=sfu,
        receipt_email=p.get("receipt_email") or None,
        statement_descriptor=p.get("statement_descriptor") or None,
        statement_descriptor_suffix=p.get("statement_descriptor_suffix") or None,
    )
    if confirm and pm is not None:
        _confirm(pi, pm, off_session)
    return pi


def _intent(id_: str) -> PaymentIntent:
    pi: PaymentIntent = get("payment_intent", id_, "intent")
    return pi


@route("GET", "/v1/payment_intents/{id}")
def retrieve_payment_intent(p: dict[str, Any], ids: dict[str, str]) -> Any:
    return _intent(ids["id"])


@route("GET", "/v1/payment_intents")
def list_payment_intents(p: dict[str, Any], _: dict[str, str]) -> Any:
    check_params(p, f"customer created {_PAGING}")
    items = [i for i in of_kind("payment_intent") if p.get("customer") in (None, i.customer)]
    return list_object("/v1/payment_intents", _filter_created(items, p.get("created")), p, p["expand"])


# ------------------------------------------------------------------ charges, refunds, disputes


def _charge(id_: Any, param: str = "charge") -> Charge:
    ch: Charge = get("charge", id_, param)
    return ch


@route("GET", "/v1/charges/{id}")
def retrieve_charge(p: dict[str, Any], ids: dict[str, str]) -> Any:
    return _charge(ids["id"])


@route("GET", "/v1/charges")
def list_charges(p: dict[str, Any], _: dict[str, str]) -> Any:
    check_params(p, f"customer payment_intent created {_PAGING}")
    items = [
        c
        for c in of_kind("charge")
        if p.get("customer") in (None, c.customer) and p.get("payment_intent") in (None, c.payment_intent)
    ]
    return list_object("/v1/charges", _filter_created(items, p.get("created")), p, p["expand"])


@route("POST", "/v1/refunds")
def create_refund(p: dict[str, Any], _: dict[str, str]) -> Any:
    check_params(
        p,
        "charge payment_intent amount reason metadata",
        "instructions_email refund_application_fee reverse_transfer origin",
    )
    if p.get("charge"):
        ch = _charge(p["charge"])
    elif p.get("payment_intent"):
        pi: PaymentIntent = get("payment_intent", p["payment_intent"], "payment_intent")
        if pi.status != "succeeded" or not pi.latest_charge:
            raise bad(
                "This PaymentIntent does not have a successful charge to refund.",
                "payment_intent",
                "charge_not_refundable",
            )
        ch = _charge(pi.latest_charge)
    else:
        raise bad(
            "One of the following params should be provided for this request: payment_intent or charge."
        )
    reason = p.get("reason") or None
    if reason not in (None, "duplicate", "fraudulent", "requested_by_customer"):
        raise bad("Invalid reason: must be one of duplicate, fraudulent, or requested_by_customer", "reason")
    amount = as_int(p["amount"], "amount") if p.get("amount") not in (None, "") else None
    return refund(ch, amount, reason, metadata(p.get("metadata")))


@route("GET", "/v1/refunds/{id}")
def retrieve_refund(p: dict[str, Any], ids: dict[str, str]) -> Any:
    return get("refund", ids["id"], "refund")


@route("GET", "/v1/refunds")
def list_refunds(p: dict[str, Any], _: dict[str, str]) -> Any:
    check_params(p, f"charge payment_intent created {_PAGING}")
    items = [
        r
        for r in of_kind("refund")
        if p.get("charge") in (None, r.charge) and p.get("payment_intent") in (None, r.payment_intent)
    ]
    return list_object("/v1/refunds", _filter_created(items, p.get("created")), p, p["expand"])


@route("GET", "/v1/disputes/{id}")
def retrieve_dispute(p: dict[str, Any], ids: dict[str, str]) -> Any:
    return get("dispute", ids["id"], "dispute")


@route("GET", "/v1/disputes")
def list_disputes(p: dict[str, Any], _: dict[str, str]) -> Any:
    check_params(p, f"charge payment_intent created {_PAGING}")
    items = [
        d
        for d in of_kind("dispute")
        if p.get("charge") in (None, d.charge) and p.get("payment_intent") in (None, d.payment_intent)
    ]
    return list_object("/v1/disputes", _filter_created(items, p.get("created")), p, p["expand"])


@route("POST", "/v1/disputes/{id}")
def update_dispute_route(p: dict[str, Any], ids: dict[str, str]) -> Any:
    check_params(p, "evidence submit metadata")
    dispute = get("dispute", ids["id"], "dispute")
    return update_dispute(
        dispute,
        as_dict(p.get("evidence"), "evidence"),
        as_bool(p.get("submit", False), "submit"),
        metadata(p.get("metadata")),
    )


@route("POST", "/v1/disputes/{id}/close")
def close_dispute_route(p: dict[str, Any], ids: dict[str, str]) -> Any:
    """Accepting a dispute closes it as lost."""
    check_params(p, "")
    return close_dispute(get("dispute", ids["id"], "dispute"), won=False)


def local_dispute(p: dict[str, Any]) -> Any:
    """POST /_local/disputes: open a dispute on a charge, as a cardholder would."""
    check_params(p, "charge payment_intent reason amount")
    if p.get("payment_intent"):
        pi: PaymentIntent = get("payment_intent", p["payment_intent"], "payment_intent")
        ch = _charge(pi.latest_charge)
    else:
        ch = _charge(required(p, "charge"))
    amount = as_int(p["amount"], "amount") if p.get("amount") else None
    return open_dispute(ch, str(p.get("reason") or "fraudulent"), amount)


# ------------------------------------------------------------------ prices


def _lookup_key(value: Any, transfer: bool, owner: billing.Price | None = None) -> str | None:
    if not value:
        return None
    holder = next((x for x in of_kind("price") if x.lookup_key == value and x is not owner), None)
    if holder is not None:
        if not transfer:
            raise bad(
                f"A price ({holder.id}) already uses this lookup key; pass transfer_lookup_key to move it.",
                "lookup_key",
            )
        holder.lookup_key = None
    return str(value)


@route("POST", "/v1/prices")
def create_price(p: dict[str, Any], _: dict[str, str]) -> Any:
    check_params(
        p,
        (
            "currency unit_amount unit_amount_decimal product product_data recurring lookup_key "
            "transfer_lookup_key metadata nickname active tax_behavior"
        ),
        "billing_scheme",
    )
    if p.get("billing_scheme", "per_unit") != "per_unit":
        raise bad("The local Stripe emulates per_unit prices only.", "billing_scheme")
    amount = as_int(p.get("unit_amount", p.get("unit_amount_decimal")), "unit_amount")
    if amount < 0:
        raise bad("Invalid unit_amount: must be at least 0.", "unit_amount")
    if p.get("product"):
        product = str(get("product", p["product"], "product").id)
    else:
        data = as_dict(required(p, "product_data"), "product_data")
        product = str(
            ls_resources.Product(name=str(required(data, "name")), metadata=metadata(data.get("metadata"))).id
        )
    recurring = as_dict(p.get("recurring"), "recurring") or None
    made = billing.Price(
        currency=currency(required(p, "currency")),
        unit_amount=amount,
        product=product,
        recurring=checkout.billing_recurring(recurring, "recurring") if recurring else None,
        lookup_key=_lookup_key(
            p.get("lookup_key"), as_bool(p.get("transfer_lookup_key", False), "transfer_lookup_key")
        ),
        nickname=p.get("nickname") or None,
        metadata=metadata(p.get("metadata")),
        active=as_bool(p.get("active", True), "active"),
        tax_behavior=str(p.get("tax_behavior") or "unspecified"),
    )
    emit("price.created", made)
    return made


@route("GET", "/v1/prices/{id}")
def retrieve_price(p: dict[str, Any], ids: dict[str, str]) -> Any:
    return billing.price(ids["id"], "price")


@route("GET", "/v1/prices")
def list_prices(p: dict[str, Any], _: dict[str, str]) -> Any:
    check_params(p, f"active product type lookup_keys currency recurring created {_PAGING}")
    items = of_kind("price")
    if "active" in p:
        active = as_bool(p["active"], "active")
        items = [x for x in items if x.active == active]
    if p.get("lookup_keys"):
        keys = {str(k) for k in as_list(p["lookup_keys"], "lookup_keys")}
        items = [x for x in items if x.lookup_key in keys]
    for key in ("product", "type", "currency"):
        if p.get(key):
            items = [x for x in items if getattr(x, key) == p[key]]
    interval = as_dict(p.get("recurring"), "recurring").get("interval")
    if interval:
        items = [x for x in items if (x.recurring or {}).get("interval") == interval]
    return list_object("/v1/prices", _filter_created(items, p.get("created")), p, p["expand"])


# ------------------------------------------------------------------ checkout sessions


@route("POST", "/v1/checkout/sessions")
def create_session(p: dict[str, Any], _: dict[str, str]) -> Any:
    p.pop("expand")
    return checkout.create(p)


@route("GET", "/v1/checkout/sessions/{id}")
def retrieve_session(p: dict[str, Any], ids: dict[str, str]) -> Any:
    return checkout.session(ids["id"])


@route("POST", "/v1/checkout/sessions/{id}/expire")
def expire_session(p: dict[str, Any], ids: dict[str, str]) -> Any:
    cs = checkout.session(ids["id"])
    checkout.expire(cs)
    return cs


@route("GET", "/v1/checkout/sessions")
def list_sessions(p: dict[str, Any], _: dict[str, str]) -> Any:
    check_params(p, f"customer payment_intent subscription status created {_PAGING}")
    items = of_kind("checkout.session")
    for cs in items:
        checkout.expire_if_due(cs)
    for key in ("customer", "payment_intent", "subscription", "status"):
        if p.get(key):
            items = [x for x in items if getattr(x, key) == p[key]]
    return list_object("/v1/checkout/sessions", _filter_created(items, p.get("created")), p, p["expand"])


# ------------------------------------------------------------------ invoices


_INVOICE_FIELDS = (
    "collection_method days_until_due due_date custom_fields description metadata auto_advance footer "
    "default_payment_method"
)
_INVOICE_IGNORED = (
    "automatic_tax rendering payment_settings account_tax_ids default_tax_rates statement_descriptor issuer "
    "number effective_at"
)


def _custom_fields(value: Any) -> list[dict[str, str]] | None:
    fields = []
    for i, raw in enumerate(as_list(value, "custom_fields")):
        field = as_dict(raw, f"custom_fields[{i}]")
        check_params(field, "name value")
        name, text = str(required(field, "name")), str(required(field, "value"))
        if len(name) > 40 or len(text) > 140:
            raise bad(
                "A custom field's name is at most 40 characters and its value 140.", f"custom_fields[{i}]"
            )
        fields.append({"name": name, "value": text})
    if len(fields) > 4:
        raise bad("You can add at most 4 custom fields to an invoice.", "custom_fields")
    return fields or None


def _invoice_terms(p: dict[str, Any], method: str) -> tuple[int | None, int | None]:
    days = (
        as_int(p["days_until_due"], "days_until_due") if p.get("days_until_due") not in (None, "") else None
    )
    due = as_int(p["due_date"], "due_date") if p.get("due_date") not in (None, "") else None
    if method == "send_invoice" and days is None and due is None:
        raise bad("Missing required param: days_until_due.", "days_until_due")
    if method == "charge_automatically" and (days is not None or due is not None):
        raise bad(
            "You can only set days_until_due or due_date when collection_method is send_invoice.",
            "days_until_due",
        )
    return days, due


@route("POST", "/v1/invoices")
def create_invoice(p: dict[str, Any], _: dict[str, str]) -> Any:
    check_params(p, f"customer currency pending_invoice_items_behavior {_INVOICE_FIELDS}", _INVOICE_IGNORED)
    if p.get("subscription"):
        raise bad("The local Stripe makes subscription invoices itself.", "subscription")
    cus = customer(required(p, "customer"))
    method = p.get("collection_method") or "charge_automatically"
    if method not in ("charge_automatically", "send_invoice"):
        raise bad(
            "Invalid collection_method: must be one of charge_automatically or send_invoice",
            "collection_method",
        )
    days, due = _invoice_terms(p, method)
    behavior = p.get("pending_invoice_items_behavior") or "exclude"
    if behavior not in ("include", "exclude"):
        raise bad(
            "Invalid pending_invoice_items_behavior: must be one of exclude or include",
            "pending_invoice_items_behavior",
        )
    dpm = p.get("default_payment_method") or None
    if dpm:
        payment_method(dpm, "default_payment_method")
    inv = billing.Invoice(
        cus,
        currency=currency(p.get("currency") or "usd"),
        collection_method=method,
        description=p.get("description") or None,
        metadata=metadata(p.get("metadata")),
        custom_fields=_custom_fields(p.get("custom_fields")),
        footer=p.get("footer") or None,
        days_until_due=days,
        due_date=due,
        auto_advance=as_bool(p.get("auto_advance", False), "auto_advance"),
        default_payment_method=dpm,
    )
    if behavior == "include":
        for ii in of_kind("invoiceitem"):
            if ii.customer == cus.id and ii.invoice is None and ii.currency == inv.currency:
                ii.invoice = inv.id
    emit("invoice.created", inv)
    return inv


@route("GET", "/v1/invoices/{id}")
def retrieve_invoice(p: dict[str, Any], ids: dict[str, str]) -> Any:
    return billing.invoice(ids["id"], "invoice")


@route("GET", "/v1/invoices")
def list_invoices(p: dict[str, Any], _: dict[str, str]) -> Any:
    check_params(p, f"customer status subscription collection_method created due_date {_PAGING}")
    items = of_kind("invoice")
    if p.get("customer"):
        customer(p["customer"])
    for key in ("customer", "status", "subscription", "collection_method"):
        if p.get(key):
            items = [x for x in items if getattr(x, key) == p[key]]
    return list_object("/v1/invoices", _filter_created(items, p.get("created")), p, p["expand"])


@route("GET", "/v1/invoices/{id}/lines")
def invoice_lines(p: dict[str, Any], ids: dict[str, str]) -> Any:
    return expand_paths(billing.invoice(ids["id"], "invoice").lines, p["expand"])


@route("POST", "/v1/invoices/{id}/finalize")
def finalize_invoice(p: dict[str, Any], ids: dict[str, str]) -> Any:
    check_params(p, "auto_advance")
    inv = billing.invoice(ids["id"], "invoice")
    if "auto_advance" in p:
        inv.auto_advance = as_bool(p["auto_advance"], "auto_advance")
    billing.finalize(inv)
    return inv


@route("POST", "/v1/invoices/{id}/send")
def send_invoice(p: dict[str, Any], ids: dict[str, str]) -> Any:
    inv = billing.invoice(ids["id"], "invoice")
    if inv.status == "draft":  # sending finalizes a draft first, as Stripe does
        billing.finalize(inv)
    if inv.status not in ("open", "paid"):
        raise bad(f"You can't send an invoice that is {inv.status}.", "invoice")
    emit("invoice.sent", inv)
    return inv


@route("POST", "/v1/invoices/{id}/pay")
def pay_invoice(p: dict[str, Any], ids: dict[str, str]) -> Any:
    check_params(p, "payment_method paid_out_of_band off_session forgive", "mandate source")
    inv = billing.invoice(ids["id"], "invoice")
    if inv.status == "draft":
        billing.finalize(inv)
    if inv.status == "paid":
        raise bad("Invoice is already paid", "invoice", "invoice_already_paid")
    if inv.status != "open":
        raise bad(f"You can't pay an invoice that is {inv.status}.", "invoice")
    if as_bool(p.get("paid_out_of_band", False), "paid_out_of_band"):
        billing.mark_paid(inv, None, out_of_band=True)
        return inv
    off_session = as_bool(p.get("off_session", True), "off_session")
    if p.get("payment_method"):
        pm = payment_method(p["payment_method"])
        failure = billing.pay(inv, pm, off_session=off_session)
    else:
        failure = billing.collect(inv, off_session=off_session)
    if failure is not None:
        if failure is billing.NO_PAYMENT_METHOD:
            raise bad(failure.message, "payment_method", failure.code)
        pi = get("payment_intent", inv.payment_intent) if inv.payment_intent else None
        raise card_error(pi, failure)
    return inv


@route("GET", "/v1/invoice_payments")
def list_invoice_payments(p: dict[str, Any], _: dict[str, str]) -> Any:
    """Today's link between an invoice and the payments that paid it (invoices and payment
    intents no longer name each other)."""
    check_params(p, f"invoice payment status created {_PAGING}")
    items = of_kind("invoice_payment")
    if p.get("invoice"):
        items = [x for x in items if x.invoice == p["invoice"]]
    if p.get("status"):
        items = [x for x in items if x.status == p["status"]]
    payment = as_dict(p.get("payment"), "payment")
    if payment:
        check_params(payment, "type payment_intent payment_record")
        if payment.get("type") != "payment_intent" or not payment.get("payment_intent"):
            raise bad("payment[type] must be payment_intent, with payment[payment_intent].", "payment")
        items = [x for x in items if x.payment.get("payment_intent") == payment["payment_intent"]]
    return list_object("/v1/invoice_payments", _filter_created(items, p.get("created")), p, p["expand"])


# ------------------------------------------------------------------ invoice items


@route("POST", "/v1/invoiceitems")
def create_invoice_item(p: dict[str, Any], _: dict[str, str]) -> Any:
    check_params(
        p,
        (
            "customer invoice amount currency description metadata quantity unit_amount unit_amount_decimal "
            "price pricing period discountable"
        ),
        "tax_behavior tax_rates tax_code discounts",
    )
    cus = customer(required(p, "customer"))
    inv = billing.invoice(p["invoice"], "invoice") if p.get("invoice") else None
    if inv is not None and (inv.status != "draft" or inv.customer != cus.id):
        raise bad("You can only add invoice items to draft invoices of the same customer.", "invoice")
    price_id = p.get("price") or as_dict(p.get("pricing"), "pricing").get("price")
    price = billing.price(price_id) if price_id else None
    quantity = as_int(p.get("quantity", 1), "quantity")
    if price is not None:
        unit, cur = price.unit_amount, price.currency
    elif p.get("amount") not in (None, ""):
        if "quantity" in p:
            raise bad("You may only specify one of these parameters: amount, quantity.", "quantity")
        unit, cur = as_int(p["amount"], "amount"), currency(required(p, "currency"))
    else:
        unit = as_int(p.get("unit_amount", p.get("unit_amount_decimal")), "unit_amount")
        cur = currency(required(p, "currency"))
    if inv is not None and cur != inv.currency:
        raise bad("The invoice item's currency must match the invoice's.", "currency")
    period = as_dict(p.get("period"), "period")
    item = billing.InvoiceItem(
        customer=cus.id,
        currency=cur,
        unit_amount=unit,
        quantity=quantity,
        description=p.get("description") or None,
        price=price,
        invoice=inv.id if inv else None,
        metadata=metadata(p.get("metadata")),
        period={
            "start": as_int(period["start"], "period[start]"),
            "end": as_int(period["end"], "period[end]"),
        }
        if period
        else None,
        discountable=as_bool(p.get("discountable", True), "discountable"),
    )
    emit("invoiceitem.created", item)
    return item


@route("GET", "/v1/invoiceitems")
def list_invoice_items(p: dict[str, Any], _: dict[str, str]) -> Any:
    check_params(p, f"customer invoice pending created {_PAGING}")
    items = of_kind("invoiceitem")
    for key in ("customer", "invoice"):
        if p.get(key):
            items = [x for x in items if getattr(x, key) == p[key]]
    if "pending" in p and as_bool(p["pending"], "pending"):
        items = [x for x in items if x.invoice is None]
    return list_object("/v1/invoiceitems", _filter_created(items, p.get("created")), p, p["expand"])


# ------------------------------------------------------------------ subscriptions


def _items(raw: Any) -> list[tuple[billing.Price, int]]:
    items = []
    for i, entry in enumerate(as_list(raw, "items")):
        item = as_dict(entry, f"items[{i}]")
        check_params(item, "price quantity metadata", "tax_rates discounts")
        items.append(
            (
                billing.price(required(item, "price"), f"items[{i}][price]"),
                as_int(item.get("quantity", 1), f"items[{i}][quantity]"),
            )
        )
    return items


@route("POST", "/v1/subscriptions")
def create_subscription(p: dict[str, Any], _: dict[str, str]) -> Any:
    check_params(
        p,
        "customer items default_payment_method metadata description payment_behavior off_session",
        "proration_behavior payment_settings automatic_tax collection_method",
    )
    if p.get("collection_method", "charge_automatically") != "charge_automatically":
        raise bad("The local Stripe emulates charge_automatically subscriptions only.", "collection_method")
    cus = customer(required(p, "customer"))
    items = _items(required(p, "items"))
    billing.check_items(items)
    behavior = p.get("payment_behavior") or "allow_incomplete"
    if behavior not in ("allow_incomplete", "default_incomplete", "error_if_incomplete"):
        raise bad("Invalid payment_behavior.", "payment_behavior")
    pm = None
    if p.get("default_payment_method"):
        pm = payment_method(p["default_payment_method"], "default_payment_method")
        if pm.customer != cus.id:
            raise bad("The payment method must be attached to the customer.", "default_payment_method")
    if behavior == "error_if_incomplete":
        chosen = pm or default_payment_method(cus)
        failure = (
            failure_for(chosen, on_page=False, off_session=True) if chosen else billing.NO_PAYMENT_METHOD
        )
        if failure is not None:
            raise card_error(None, failure, chosen)
    sub, _failure = billing.start(
        cus,
        items,
        pm=pm,
        metadata=metadata(p.get("metadata")),
        description=p.get("description") or None,
        charge=behavior != "default_incomplete",
    )
    if pm is None:
        sub.default_payment_method = None
    return sub


@route("GET", "/v1/subscriptions/{id}")
def retrieve_subscription(p: dict[str, Any], ids: dict[str, str]) -> Any:
    return billing.subscription(ids["id"], "subscription_exposed_id")


@route("POST", "/v1/subscriptions/{id}")
def update_subscription(p: dict[str, Any], ids: dict[str, str]) -> Any:
    check_params(
        p,
        (
            "items proration_behavior metadata cancel_at_period_end default_payment_method description "
            "cancellation_details"
        ),
        "payment_behavior off_session proration_date payment_settings",
    )
    sub = billing.subscription(ids["id"], "subscription_exposed_id")
    if sub.status == "canceled" and set(p) - {"metadata", "cancellation_details", "expand"}:
        raise bad("A canceled subscription can only update its cancellation_details and metadata.")
    if p.get("proration_behavior", "none") not in ("none", "create_prorations", "always_invoice"):
        raise bad("Invalid proration_behavior.", "proration_behavior")
    previous: dict[str, Any] = {}
    if "items" in p:
        previous["items"] = sub.items
        _update_items(sub, as_list(p["items"], "items"))
    if "metadata" in p:
        previous["metadata"] = dict(sub.metadata)
        sub.metadata = merge_metadata(sub.metadata, p["metadata"])
    if "cancel_at_period_end" in p:
        previous["cancel_at_period_end"] = sub.cancel_at_period_end
        sub.cancel_at_period_end = as_bool(p["cancel_at_period_end"], "cancel_at_period_end")
        sub.cancel_at = sub.current_period_end if sub.cancel_at_period_end else None
    if "default_payment_method" in p:
        pm_id = p["default_payment_method"] or None
        if pm_id and payment_method(pm_id, "default_payment_method").customer != sub.customer:
            raise bad(
                "The payment method must be attached to the subscription's customer.",
                "default_payment_method",
            )
        previous["default_payment_method"] = sub.default_payment_method
        sub.default_payment_method = pm_id
    if "description" in p:
        previous["description"] = sub.description
        sub.description = p["description"] or None
    if "cancellation_details" in p:
        details = as_dict(p["cancellation_details"], "cancellation_details")
        previous["cancellation_details"] = dict(sub.cancellation_details)
        sub.cancellation_details.update(
            {k: details[k] or None for k in ("comment", "feedback") if k in details}
        )
    emit("customer.subscription.updated", sub, previous)
    return sub


def _update_items(sub: billing.Subscription, raw: list[Any]) -> None:
    """Stripe's items update: change (by id), delete (id + deleted) or add (price) items.
    Checked as a whole before anything changes."""
    current = {si.id: si for si in sub._item_objects()}
    changes: list[tuple[Any, billing.Price | None, int | None, Any]] = []  # (item or None, price, qty, md)
    deleted: set[str] = set()
    for i, entry in enumerate(raw):
        item = as_dict(entry, f"items[{i}]")
        check_params(item, "id price quantity deleted metadata", "tax_rates discounts")
        si = current.get(str(item["id"])) if item.get("id") else None
        if item.get("id") and si is None:
            raise bad(f"The subscription item {item['id']} is not on this subscription.", f"items[{i}][id]")
        if si is not None and as_bool(item.get("deleted", False), f"items[{i}][deleted]"):
            deleted.add(si.id)
            continue
        p = billing.price(item["price"], f"items[{i}][price]") if item.get("price") else None
        if si is None and p is None:
            raise bad("Missing required param: price.", f"items[{i}][price]")
        quantity = as_int(item["quantity"], f"items[{i}][quantity]") if "quantity" in item else None
        changes.append((si, p, quantity, item.get("metadata")))
    after = {
        si.id: (billing.price(si._price), si.quantity) for si in current.values() if si.id not in deleted
    }
    for si, p, quantity, _ in changes:
        if si is not None:
            after[si.id] = (p or after[si.id][0], quantity or after[si.id][1])
    new_items = [(p, quantity or 1) for si, p, quantity, _ in changes if si is None and p is not None]
    billing.check_items([*after.values(), *new_items])
    sub._item_ids = [i for i in sub._item_ids if i not in deleted]
    for si, p, quantity, md in changes:
        if si is None:
            assert p is not None
            sub._item_ids.append(billing.SubscriptionItem(sub, p, quantity or 1, metadata(md)).id)
            continue
        si._price, si.quantity = after[si.id][0].id, after[si.id][1]
        if md is not None:
            si.metadata = merge_metadata(si.metadata, md)


@route("DELETE", "/v1/subscriptions/{id}")
def cancel_subscription(p: dict[str, Any], ids: dict[str, str]) -> Any:
    check_params(p, "cancellation_details invoice_now prorate")
    sub = billing.subscription(ids["id"], "subscription_exposed_id")
    details = as_dict(p.get("cancellation_details"), "cancellation_details")
    billing.cancel(sub, comment=details.get("comment") or None)
    return sub


@route("GET", "/v1/subscriptions")
def list_subscriptions(p: dict[str, Any], _: dict[str, str]) -> Any:
    check_params(p, f"customer price status created {_PAGING}", "collection_method")
    items = of_kind("subscription")
    status = p.get("status")
    if status != "all":
        ended = ("canceled", "incomplete_expired")
        items = [s for s in items if (s.status == status if status else s.status not in ended)]
    if p.get("customer"):
        items = [s for s in items if s.customer == p["customer"]]
    if p.get("price"):
        items = [s for s in items if any(si._price == p["price"] for si in s._item_objects())]
    return list_object("/v1/subscriptions", _filter_created(items, p.get("created")), p, p["expand"])


@route("GET", "/v1/subscription_items")
def list_subscription_items(p: dict[str, Any], _: dict[str, str]) -> Any:
    check_params(p, f"subscription {_PAGING}")
    sub = billing.subscription(required(p, "subscription"), "subscription")
    return list_object("/v1/subscription_items", sub._item_objects(), p, p["expand"])


# ------------------------------------------------------------------ events


@route("GET", "/v1/events/{id}")
def retrieve_event(p: dict[str, Any], ids: dict[str, str]) -> Any:
    return get("event", ids["id"])


@route("GET", "/v1/events")
def list_events(p: dict[str, Any], _: dict[str, str]) -> Any:
    check_params(p, f"type types created {_PAGING}", "delivery_success")
    items = of_kind("event")
    if p.get("type"):
        items = [e for e in items if fnmatch.fnmatchcase(e.type, str(p["type"]))]
    if p.get("types"):
        wanted = {str(t) for t in as_list(p["types"], "types")}
        items = [e for e in items if e.type in wanted]
    return list_object("/v1/events", _filter_created(items, p.get("created")), p, p["expand"])
