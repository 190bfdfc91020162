"""Customers, PaymentMethods, PaymentIntents, Charges, Refunds and Disputes, with Stripe's test
cards. Customers are localstripe's own objects (shaped like today's API on export); the rest
replace localstripe's, whose shapes and declines are those of old API versions."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from localstripe import resources as ls

from .core import HUB, Obj, StripeError, bad, emit, expand_paths, get, later, new_id, now

# ------------------------------------------------------------------ test cards


@dataclass(frozen=True)
class Failure:
    code: str
    decline_code: str | None
    message: str


GENERIC = Failure("card_declined", "generic_decline", "Your card was declined.")
AUTH_REQUIRED = Failure(
    "authentication_required",
    "authentication_required",
    "Your card was declined. This transaction requires authentication.",
)
INCORRECT_NUMBER = Failure("incorrect_number", None, "Your card number is incorrect.")

# Declined when attached and on every charge.
DECLINES: dict[str, Failure] = {
    "4000000000000002": GENERIC,
    "4000000000009995": Failure("card_declined", "insufficient_funds", "Your card has insufficient funds."),
    "4000000000009987": Failure("card_declined", "lost_card", "Your card was declined."),
    "4000000000009979": Failure("card_declined", "stolen_card", "Your card was declined."),
    "4100000000000019": Failure("card_declined", "fraudulent", "Your card was declined."),
    "4000000000000069": Failure("expired_card", None, "Your card has expired."),
    "4000000000000127": Failure("incorrect_cvc", None, "Your card's security code is incorrect."),
    "4000000000000119": Failure(
        "processing_error", None, "An error occurred while processing your card. Try again in a little bit."
    ),
}
CHARGE_DECLINES = {
    "4000000000000341": GENERIC
}  # attaches (and pays on the local Checkout page); charges fail
AUTH_ALWAYS = frozenset({"4000002760003184", "4000000000003220"})
AUTH_UNLESS_SET_UP = frozenset({"4000002500003155"})  # off-session OK once saved through Checkout
DISPUTED = frozenset({"4000000000000259"})  # pays, then a fraudulent dispute opens

# Stripe's named test cards: tok_<name> and pm_card_<name>.
NAMED_CARDS = {
    "visa": "4242424242424242",
    "visa_debit": "4000056655665556",
    "mastercard": "5555555555554444",
    "amex": "378282246310005",
    "discover": "6011111111111117",
    "chargeDeclined": "4000000000000002",
    "chargeDeclinedInsufficientFunds": "4000000000009995",
    "chargeDeclinedLostCard": "4000000000009987",
    "chargeDeclinedStolenCard": "4000000000009979",
    "chargeDeclinedFraudulent": "4100000000000019",
    "chargeDeclinedExpiredCard": "4000000000000069",
    "chargeDeclinedIncorrectCvc": "4000000000000127",
    "chargeDeclinedProcessingError": "4000000000000119",
    "chargeCustomerFail": "4000000000000341",
    "authenticationRequired": "4000002760003184",
    "authenticationRequiredOnSetup": "4000002500003155",
    "threeDSecure2Required": "4000000000003220",
    "createDispute": "4000000000000259",
}
_DEBIT = frozenset({"4000056655665556", "5200828282828210"})


def luhn_ok(number: str) -> bool:
    if not number.isdigit() or not 12 <= len(number) <= 19:
        return False
    total = 0
    for i, ch in enumerate(reversed(number)):
        d = int(ch) * (2 if i % 2 else 1)
        total += d - 9 if d > 9 else d
    return total % 10 == 0


def card_brand(number: str) -> str:
    if number.startswith("4"):
        return "visa"
    if number[:2] in ("34", "37"):
        return "amex"
    if 51 <= int(number[:2] or 0) <= 55 or 2221 <= int(number[:4] or 0) <= 2720:
        return "mastercard"
    if number.startswith(("6011", "65")):
        return "discover"
    if number.startswith("35"):
        return "jcb"
    if number.startswith(("30", "36", "38")):
        return "diners"
    if number.startswith("62"):
        return "unionpay"
    return "unknown"


def number_for_token(token: str) -> str:
    """The card number behind tok_<name>, or behind a token made with POST /v1/tokens."""
    if token.startswith("tok_") and token[4:] in NAMED_CARDS:
        return NAMED_CARDS[token[4:]]
    made = ls.store.get(f"token:{token}")
    if made is None:
        raise StripeError(404, f"No such token: '{token}'", param="card[token]", code="resource_missing")
    return str(made.card._card_number)


# ------------------------------------------------------------------ customers


def invoice_prefix(customer_id: str) -> str:
    return hashlib.sha256(customer_id.encode()).hexdigest()[:8].upper()


class Customer(ls.Customer):  # type: ignore[misc]  # localstripe is untyped
    """localstripe's Customer, exported in today's shape (no embedded sources/subscriptions,
    `balance` instead of `account_balance`, no made-up currency)."""

    subscriptions = None  # localstripe lists them on every export; today's API does not
    currency = None

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        self.created = now()  # the stand-in's clock

    def _export(self, expand: list[str] | None = None) -> dict[str, Any]:
        obj: dict[str, Any] = super()._export()
        for old in ("sources", "subscriptions", "tax_ids", "account_balance", "business_vat_id"):
            obj.pop(old, None)
        obj["balance"] = -int(self.account_balance or 0)
        obj["invoice_prefix"] = invoice_prefix(self.id)
        obj["next_invoice_sequence"] = HUB.invoice_sequence.get(self.id, 0) + 1
        obj["invoice_settings"] = {
            "custom_fields": None,
            "default_payment_method": self.invoice_settings.get("default_payment_method"),
            "footer": None,
            "rendering_options": None,
        }
        obj["tax_exempt"] = "none"
        obj["test_clock"] = None
        return expand_paths(obj, expand)


def customer(id_: Any, param: str = "customer") -> Customer:
    obj: Customer = get("customer", id_, param)
    return obj


def default_payment_method(cus: Customer) -> PaymentMethod | None:
    pm_id = cus.invoice_settings.get("default_payment_method")
    return ls.store.get(f"payment_method:{pm_id}") if pm_id else None


def set_default_payment_method(cus: Customer, pm_id: str | None) -> None:
    previous = {
        "invoice_settings": {"default_payment_method": cus.invoice_settings.get("default_payment_method")}
    }
    cus.invoice_settings = {**cus.invoice_settings, "default_payment_method": pm_id}
    emit("customer.updated", cus, previous)


# ------------------------------------------------------------------ payment methods


class PaymentMethod(Obj):
    object = "payment_method"
    _id_prefix = "pm_"

    def __init__(
        self,
        number: str | None = None,
        *,
        exp_month: int = 12,
        exp_year: int = 2034,
        billing_details: dict[str, Any] | None = None,
        metadata: dict[str, str] | None = None,
        bank: bool = False,
    ) -> None:
        super().__init__()
        details = billing_details or {}
        address = {k: None for k in ("city", "country", "line1", "line2", "postal_code", "state")}
        address.update(details.get("address") or {})
        self.allow_redisplay = "unspecified"
        self.billing_details = {
            "address": address,
            "email": details.get("email"),
            "name": details.get("name"),
            "phone": details.get("phone"),
            "tax_id": None,
        }
        self.customer: str | None = None
        self.metadata = metadata or {}
        self._number = number or ""
        self._set_up = False  # saved through an on-session payment with setup_future_usage
        if bank:  # the local page's delayed method
            self.type = "us_bank_account"
            self.us_bank_account = {
                "account_holder_type": "individual",
                "account_type": "checking",
                "bank_name": "STRIPE TEST BANK",
                "financial_connections_account": None,
                "fingerprint": hashlib.sha256(self.id.encode()).hexdigest()[:16],
                "last4": "6789",
                "networks": {"preferred": "ach", "supported": ["ach"]},
                "routing_number": "110000000",
                "status_details": {},
            }
            return
        brand = card_brand(self._number)
        self.type = "card"
        self.card: dict[str, Any] = {
            "brand": brand,
            "checks": {"address_line1_check": None, "address_postal_code_check": None, "cvc_check": "pass"},
            "country": "US",
            "display_brand": brand,
            "exp_month": exp_month,
            "exp_year": exp_year,
            "fingerprint": hashlib.sha256(self._number.encode()).hexdigest()[:16],
            "funding": "debit" if self._number in _DEBIT else "credit",
            "generated_from": None,
            "last4": self._number[-4:],
            "networks": {"available": [brand], "preferred": None},
            "regulated_status": "unregulated",
            "three_d_secure_usage": {"supported": True},
            "wallet": None,
        }

    def _details(self) -> dict[str, Any]:
        """What a Charge records as payment_method_details."""
        if self.type != "card":
            return {
                "type": self.type,
                self.type: {k: self.us_bank_account[k] for k in ("bank_name", "last4")},
            }
        card = {
            k: self.card[k] for k in ("brand", "country", "exp_month", "exp_year", "fingerprint", "funding")
        }
        card.update(
            last4=self.card["last4"],
            checks=dict(self.card["checks"]),
            network="visa" if self.card["brand"] == "visa" else self.card["brand"],
            three_d_secure=None,
            wallet=None,
        )
        return {"type": "card", "card": card}


def payment_method(id_: Any, param: str = "payment_method") -> PaymentMethod:
    """A stored PaymentMethod, or a fresh one for Stripe's pm_card_<name> test ids."""
    if isinstance(id_, str) and id_.startswith("pm_card_") and id_[8:] in NAMED_CARDS:
        return PaymentMethod(NAMED_CARDS[id_[8:]])
    obj: PaymentMethod = get("payment_method", id_, param)
    return obj


def attach(pm: PaymentMethod, cus: Customer) -> None:
    if pm.customer == cus.id:
        return
    if pm.customer is not None:
        raise bad(
            "The payment method you provided has already been attached to a customer.", "payment_method"
        )
    failure = DECLINES.get(pm._number) if pm.type == "card" else None
    if failure is not None:  # attaching runs a card check, which these cards fail
        raise StripeError(
            402,
            failure.message,
            type_="card_error",
            code=failure.code,
            decline_code=failure.decline_code,
            param="",
            payment_method=pm._export(),
        )
    pm.customer = cus.id
    emit("payment_method.attached", pm)


# ------------------------------------------------------------------ payment intents and charges


class PaymentIntent(Obj):
    object = "payment_intent"
    _id_prefix = "pi_"
    _absent = ("invoice",)  # since 2025-03-31 an invoice names its payments, not the reverse

    def __init__(
        self,
        *,
        amount: int,
        currency: str,
        customer: str | None = None,
        payment_method: str | None = None,
        description: str | None = None,
        metadata: dict[str, str] | None = None,
        setup_future_usage: str | None = None,
        receipt_email: str | None = None,
        statement_descriptor: str | None = None,
        statement_descriptor_suffix: str | None = None,
        invoice: str | None = None,
    ) -> None:
        super().__init__()
        self.amount = amount
        self.amount_capturable = 0
        self.amount_received = 0
        self.automatic_payment_methods = None
        self.canceled_at: int | None = None
        self.cancellation_reason: str | None = None
        self.capture_method = "automatic"
        self.client_secret = f"{self.id}_secret_{new_id('', 25)}"
        self.confirmation_method = "automatic"
        self.currency = currency
        self.customer = customer
        self.description = description
        self.invoice = invoice
        self.last_payment_error: dict[str, Any] | None = None
        self.latest_charge: str | None = None
        self.metadata = metadata or {}
        self.next_action: dict[str, Any] | None = None
        self.payment_method = payment_method
        self.payment_method_options = {"card": {"request_three_d_secure": "automatic"}}
        self.payment_method_types = ["card"]
        self.processing = None
        self.receipt_email = receipt_email
        self.setup_future_usage = setup_future_usage
        self.shipping = None
        self.statement_descriptor = statement_descriptor
        self.statement_descriptor_suffix = statement_descriptor_suffix
        self.status = "requires_confirmation" if payment_method else "requires_payment_method"
        emit("payment_intent.created", self)


def _outcome(failure: Failure | None, pending: bool) -> dict[str, Any]:
    if pending:
        return {
            "network_status": "approved_by_network",
            "reason": None,
            "risk_level": "not_assessed",
            "seller_message": "Payment is pending.",
            "type": "authorized",
        }
    if failure is None:
        return {
            "network_status": "approved_by_network",
            "reason": None,
            "risk_level": "normal",
            "risk_score": 20,
            "seller_message": "Payment complete.",
            "type": "authorized",
        }
    return {
        "network_status": "declined_by_network",
        "reason": failure.decline_code or failure.code,
        "risk_level": "normal",
        "risk_score": 20,
        "seller_message": "The bank did not return any further details with this decline.",
        "type": "issuer_declined",
    }


class Charge(Obj):
    object = "charge"
    _id_prefix = "ch_"
    _absent = ("invoice",)

    def __init__(self, pi: PaymentIntent, pm: PaymentMethod, failure: Failure | None, pending: bool = False):
        super().__init__()
        ok = failure is None and not pending
        self.amount = pi.amount
        self.amount_captured = pi.amount if ok else 0
        self.amount_refunded = 0
        self.application_fee_amount = None
        self.balance_transaction = None
        self.billing_details = dict(pm.billing_details)
        self.calculated_statement_descriptor = "CONDUIX LOCAL"
        self.captured = ok
        self.currency = pi.currency
        self.customer = pi.customer
        self.description = pi.description
        self.disputed = False
        self.failure_code = failure.code if failure else None
        self.failure_message = failure.message if failure else None
        self.fraud_details: dict[str, Any] = {}
        self.invoice = pi.invoice
        self.metadata = dict(pi.metadata)
        self.outcome = _outcome(failure, pending)
        self.paid = ok
        self.payment_intent = pi.id
        self.payment_method = pm.id
        self.payment_method_details = pm._details()
        self.receipt_email = pi.receipt_email
        self.receipt_number = None
        self.receipt_url = None
        self.refunded = False
        self.statement_descriptor = pi.statement_descriptor
        self.status = "pending" if pending else ("failed" if failure else "succeeded")


def _needs_action(pm: PaymentMethod, *, on_page: bool, off_session: bool) -> bool:
    """An on-session API confirmation of a card that asks for 3D Secure."""
    return not on_page and not off_session and pm._number in AUTH_ALWAYS | AUTH_UNLESS_SET_UP


def failure_for(pm: PaymentMethod, *, on_page: bool, off_session: bool) -> Failure | None:
    if pm.type != "card":
        return None
    if pm._number in DECLINES:
        return DECLINES[pm._number]
    if not on_page and pm._number in CHARGE_DECLINES:
        return CHARGE_DECLINES[pm._number]
    if off_session and (pm._number in AUTH_ALWAYS or (pm._number in AUTH_UNLESS_SET_UP and not pm._set_up)):
        return AUTH_REQUIRED
    return None


def attempt(
    pi: PaymentIntent, pm: PaymentMethod, *, off_session: bool, on_page: bool = False
) -> Failure | None:
    """Confirm `pi` with `pm` as Stripe's test cards behave; `on_page` is a payment on the local
    Checkout or invoice page, where 3D Secure is taken as passed. Emits the events; returns the
    failure, if any (the caller turns it into a 402 or an error page)."""
    pi.payment_method = pm.id
    pi.last_payment_error = None
    pi.next_action = None
    if _needs_action(pm, on_page=on_page, off_session=off_session):
        pi.status = "requires_action"
        pi.next_action = {
            "type": "use_stripe_sdk",
            "use_stripe_sdk": {"type": "three_d_secure_redirect", "stripe_js": "", "source": "src_local"},
        }
        emit("payment_intent.requires_action", pi)
        return None
    failure = failure_for(pm, on_page=on_page, off_session=off_session)
    charge = None
    if failure is not AUTH_REQUIRED:  # no charge is attempted when authentication is missing
        charge = Charge(pi, pm, failure)
        pi.latest_charge = charge.id
    if failure is not None:
        pi.status = "requires_payment_method"
        pi.payment_method = None
        pi.last_payment_error = {
            "type": "card_error",
            "code": failure.code,
            "decline_code": failure.decline_code,
            "message": failure.message,
            "charge": charge.id if charge else None,
            "doc_url": f"https://stripe.com/docs/error-codes/{failure.code.replace('_', '-')}",
            "payment_method": pm._export(),
        }
        emit("payment_intent.payment_failed", pi)
        return failure
    assert charge is not None
    pi.status = "succeeded"
    pi.amount_received = pi.amount
    if on_page and pi.setup_future_usage:
        pm._set_up = True
    emit("payment_intent.succeeded", pi)
    emit("charge.succeeded", charge)
    if pm._number in DISPUTED:
        later(HUB.async_payment_delay, lambda: open_dispute(charge, "fraudulent"))
    return None


def card_error(pi: PaymentIntent | None, failure: Failure, pm: PaymentMethod | None = None) -> StripeError:
    """The 402 Stripe answers a failed confirmation with (the SDK raises stripe.CardError)."""
    return StripeError(
        402,
        failure.message,
        type_="card_error",
        code=failure.code,
        decline_code=failure.decline_code,
        charge=pi.latest_charge if pi is not None and failure is not AUTH_REQUIRED else None,
        doc_url=f"https://stripe.com/docs/error-codes/{failure.code.replace('_', '-')}",
        payment_intent=pi._export() if pi is not None else None,
        payment_method=pm._export() if pm is not None else None,
    )


def start_delayed(pi: PaymentIntent, pm: PaymentMethod) -> Charge:
    """A bank debit: the charge stays pending until settle_delayed."""
    pi.payment_method = pm.id
    pi.payment_method_types = ["card", "us_bank_account"]
    charge = Charge(pi, pm, None, pending=True)
    pi.latest_charge = charge.id
    pi.status = "processing"
    emit("payment_intent.processing", pi)
    emit("charge.pending", charge)
    return charge


_BANK_FAILURE = Failure(
    "insufficient_funds", None, "The customer's account has insufficient funds to cover this payment."
)


def settle_delayed(pi: PaymentIntent, charge: Charge, succeed: bool) -> None:
    if succeed:
        charge.status, charge.paid, charge.captured = "succeeded", True, True
        charge.amount_captured = charge.amount
        pi.status, pi.amount_received = "succeeded", pi.amount
        emit("payment_intent.succeeded", pi)
        emit("charge.succeeded", charge)
        return
    charge.status, charge.outcome = "failed", _outcome(_BANK_FAILURE, False)
    charge.failure_code, charge.failure_message = _BANK_FAILURE.code, _BANK_FAILURE.message
    pm = ls.store.get(f"payment_method:{pi.payment_method}")
    pi.status, pi.payment_method = "requires_payment_method", None
    pi.last_payment_error = {
        "type": "card_error" if pm is None or pm.type == "card" else "invalid_request_error",
        "code": _BANK_FAILURE.code,
        "message": _BANK_FAILURE.message,
        "charge": charge.id,
        "payment_method": pm._export() if pm is not None else None,
    }
    emit("payment_intent.payment_failed", pi)


# ------------------------------------------------------------------ refunds and disputes


class Refund(Obj):
    object = "refund"
    _id_prefix = "re_"
    _absent = ("livemode",)

    def __init__(self, charge: Charge, amount: int, reason: str | None, metadata: dict[str, str]) -> None:
        super().__init__()
        self.amount = amount
        self.balance_transaction = None
        self.charge = charge.id
        self.currency = charge.currency
        self.destination_details = {"card": {"type": "refund"}, "type": "card"}
        self.metadata = metadata
        self.payment_intent = charge.payment_intent
        self.reason = reason
        self.receipt_number = None
        self.source_transfer_reversal = None
        self.status = "succeeded"
        self.transfer_reversal = None


def refund(charge: Charge, amount: int | None, reason: str | None, metadata: dict[str, str]) -> Refund:
    if charge.status != "succeeded":
        raise bad("This charge has no successful payment to refund.", "charge", "charge_not_refundable")
    if charge.disputed:
        raise bad(
            f"Charge {charge.id} has been charged back; cannot issue a refund.", "charge", "charge_disputed"
        )
    left = charge.amount - charge.amount_refunded
    if left <= 0:
        raise bad(f"Charge {charge.id} has already been refunded.", "charge", "charge_already_refunded")
    amount = left if amount is None else amount
    if amount <= 0:
        raise bad("Refund amount must be positive.", "amount")
    if amount > left:
        raise bad(
            f"Refund amount ({amount}) is greater than unrefunded amount on charge ({left})",
            "amount",
            "amount_too_large",
        )
    made = Refund(charge, amount, reason, metadata)
    charge.amount_refunded += amount
    charge.refunded = charge.amount_refunded >= charge.amount
    emit("charge.refunded", charge)
    emit("refund.created", made)
    return made


class Dispute(Obj):
    object = "dispute"
    _id_prefix = "dp_"

    def __init__(self, charge: Charge, reason: str, amount: int) -> None:
        super().__init__()
        self.amount = amount
        self.balance_transactions: list[Any] = []
        self.charge = charge.id
        self.currency = charge.currency
        self.evidence = {
            "customer_email_address": charge.billing_details.get("email"),
            "uncategorized_text": None,
        }
        self.evidence_details = {
            "due_by": now() + 7 * 86400,
            "has_evidence": False,
            "past_due": False,
            "submission_count": 0,
        }
        self.is_charge_refundable = False
        self.metadata: dict[str, str] = {}
        self.payment_intent = charge.payment_intent
        self.reason = reason
        self.status = "needs_response"


def open_dispute(charge: Charge, reason: str = "fraudulent", amount: int | None = None) -> Dispute:
    if charge.status != "succeeded" or charge.disputed:
        raise bad("Only a successful, undisputed charge can be disputed.", "charge")
    dispute = Dispute(charge, reason, charge.amount if amount is None else amount)
    charge.disputed = True
    emit("charge.dispute.created", dispute)
    emit("charge.dispute.funds_withdrawn", dispute)
    return dispute


# Stripe's test-mode evidence texts that decide a dispute once submitted.
WINNING_EVIDENCE, LOSING_EVIDENCE = "winning_evidence", "losing_evidence"
_OPEN_DISPUTE = ("warning_needs_response", "needs_response", "warning_under_review", "under_review")


def update_dispute(dispute: Dispute, evidence: dict[str, Any], submit: bool, meta: dict[str, str]) -> Dispute:
    """Evidence (and, with submit, its submission). As in Stripe's test mode, submitted
    evidence whose uncategorized_text is winning_evidence wins the dispute a moment later, and
    losing_evidence loses it."""
    if dispute.status not in _OPEN_DISPUTE:
        raise bad(f"This dispute is already closed ({dispute.status}).", "dispute")
    dispute.evidence.update({str(k): v for k, v in evidence.items()})
    dispute.metadata.update(meta)
    if evidence:
        dispute.evidence_details["has_evidence"] = True
    if submit:
        dispute.evidence_details["submission_count"] += 1
        dispute.status = "under_review"
        text = dispute.evidence.get("uncategorized_text")
        if text in (WINNING_EVIDENCE, LOSING_EVIDENCE):
            later(HUB.async_payment_delay, lambda: close_dispute(dispute, won=text == WINNING_EVIDENCE))
    emit("charge.dispute.updated", dispute)
    return dispute


def close_dispute(dispute: Dispute, *, won: bool) -> Dispute:
    """Decide the dispute: lost (also what accepting it through POST .../close means), or won,
    in which case the disputed funds come back to the merchant."""
    if dispute.status not in _OPEN_DISPUTE:
        raise bad(f"This dispute is already closed ({dispute.status}).", "dispute")
    dispute.status = "won" if won else "lost"
    emit("charge.dispute.closed", dispute)
    if won:
        emit("charge.dispute.funds_reinstated", dispute)
    return dispute
