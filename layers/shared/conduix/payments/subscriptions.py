"""Plans by subscription: subscribe through Checkout, change or cancel, and the webhook
events that set the org's plan and roll its included credits into the wallet."""

from __future__ import annotations

import logging
import uuid
from datetime import UTC, datetime
from typing import Any

from conduix.accounts import alerts, orgs
from conduix.core.config import payment_settings
from conduix.core.errors import InvalidRequest, NotFound
from conduix.core.money import format_credits
from conduix.ledger import entries, wallet_settings
from conduix.payments import customers, stripe_billing, stripe_gateway
from conduix.pricing import plans

log = logging.getLogger(__name__)
LIVE = ("active", "trialing", "past_due")


def _price(plan: plans.Plan) -> str:
    return stripe_billing.plan_price(
        lookup_key=plan.price_lookup_key,
        plan_name=plan.name,
        unit_amount_cents=plan.monthly_price_cents,
        plan_id=plan.id,
    )


def choose(org_id: str, plan_id: str, idempotency_key: str | None) -> dict[str, Any]:
    """POST /v1/billing/subscription {"plan": "builder"}: Checkout for a first subscription,
    a price change for an existing one, a cancellation for "free"."""
    known = plans.all_plans()
    if plan_id not in known:
        raise InvalidRequest(f"'plan' must be one of: {', '.join(known)}.", param="plan")
    plan = known[plan_id]
    org = orgs.get_org(org_id)
    current = org.subscription if org.subscription and org.subscription.status in LIVE else None
    if plan.id == plans.FREE:
        if current:
            stripe_billing.cancel_subscription(current.subscription_id)
        return {"plan": plans.FREE, "status": "canceled" if current else "unchanged"}
    if current:
        if current.plan == plan.id:
            return {"plan": plan.id, "status": "unchanged"}
        stripe_billing.change_subscription_price(
            current.subscription_id, current.item_id, _price(plan), plan.id
        )
        return {"plan": plan.id, "status": "changed"}
    public = payment_settings().public_url
    url, session_id = stripe_billing.create_subscription_session(
        org_id=org_id,
        customer_id=customers.customer_of(org),
        price_id=_price(plan),
        plan_id=plan.id,
        success_url=f"{public}/dashboard/billing?subscription=success&session_id={{CHECKOUT_SESSION_ID}}",
        cancel_url=f"{public}/pricing?subscription=cancelled",
        idempotency_key=f"subscribe-{org_id}-{idempotency_key or uuid.uuid4().hex}",
    )
    return {"plan": plan.id, "status": "checkout", "checkout_url": url, "session_id": session_id}


def cancel(org_id: str) -> dict[str, Any]:
    org = orgs.get_org(org_id)
    if not org.subscription or org.subscription.status not in LIVE:
        raise NotFound("The org has no subscription to cancel.")
    stripe_billing.cancel_subscription(org.subscription.subscription_id)
    return {"plan": plans.FREE, "status": "canceled"}


def _plan_of_subscription(sub: dict[str, Any]) -> plans.Plan | None:
    items = (sub.get("items") or {}).get("data") or []
    price = items[0].get("price") if items else None
    return plans.by_price_lookup_key(price.get("lookup_key")) if isinstance(price, dict) else None


def _subscription_of(invoice: dict[str, Any]) -> str | None:
    """An invoice names its subscription under parent.subscription_details (API 2025-03-31+)."""
    details = (invoice.get("parent") or {}).get("subscription_details") or {}
    return str(details["subscription"]) if details.get("subscription") else None


def _org_of(obj: dict[str, Any]) -> str | None:
    org_id = (obj.get("metadata") or {}).get("org_id")
    return str(org_id) if org_id else None


def subscription_changed(obj: dict[str, Any], now: datetime) -> str:
    """customer.subscription.created / updated / deleted: the state re-read from Stripe."""
    sub = stripe_billing.retrieve_subscription(str(obj["id"]))
    org_id = _org_of(sub)
    if not org_id:
        return "ignored: no org"
    plan = _plan_of_subscription(sub)
    status = str(sub.get("status"))
    if status not in LIVE or plan is None:
        orgs.forget_subscription(org_id, str(sub["id"]))
        wallet_settings.set_plan(org_id, plans.get(plans.FREE))
        return f"plan free ({status})"
    items = (sub.get("items") or {}).get("data") or []
    orgs.save_subscription(
        org_id,
        orgs.Subscription(
            subscription_id=str(sub["id"]),
            item_id=str(items[0]["id"]),
            plan=plan.id,
            status=status,
            current_period_end=int(items[0].get("current_period_end") or 0),  # periods live on items
            last_payment_failed=status == "past_due",
        ),
    )
    wallet_settings.set_plan(org_id, plan)
    return f"plan {plan.id} ({status})"


def _day(epoch: Any) -> str:
    return datetime.fromtimestamp(int(epoch or 0), UTC).strftime("%Y-%m-%d")


def plan_invoice_paid(obj: dict[str, Any], now: datetime) -> str:
    """A paid subscription invoice rolls the plan's included credits into the wallet, once
    per invoice. Plan and period come from the invoice's own line, not the org's current plan."""
    invoice = stripe_gateway.retrieve_invoice(str(obj["id"]))
    if invoice.get("billing_reason") not in ("subscription_create", "subscription_cycle"):
        return "ignored: not a subscription period"
    if invoice.get("status") != "paid":
        return "waiting: not paid"
    lines = (invoice.get("lines") or {}).get("data") or []
    line = lines[0] if lines else {}
    price_id = ((line.get("pricing") or {}).get("price_details") or {}).get("price")
    price = stripe_gateway.retrieve_price(str(price_id)) if price_id else {}
    plan = plans.by_price_lookup_key(price.get("lookup_key"))
    sub_id = _subscription_of(invoice)
    org_id = (
        _org_of(invoice)
        or _org_of(line)
        or (_org_of(stripe_billing.retrieve_subscription(str(sub_id))) if sub_id else None)
    )
    if plan is None or org_id is None:
        log.warning(
            "a subscription invoice without a known plan or org", extra={"invoice": invoice.get("id")}
        )
        return "ignored: unknown plan or org"
    if sub_id:
        orgs.mark_subscription_payment(org_id, str(sub_id), failed=False)
    if plan.included_credits == 0:
        return "paid: the plan includes no credits"
    period = line.get("period") or {}
    _, created = entries.post_entry(
        org_id,
        kind="plan_credits",
        key=str(invoice["id"]),
        amount=plan.included_credits,
        description=(
            f"{plan.name} plan: {format_credits(plan.included_credits)} included credits for "
            f"{_day(period.get('start'))} to {_day(period.get('end'))}"
        ),
        now=now,
    )
    if created:
        alerts.after_credit(org_id, now)
    return "credited" if created else "already credited"


def invoice_payment_failed(obj: dict[str, Any], now: datetime) -> str:
    invoice = stripe_gateway.retrieve_invoice(str(obj["id"]))
    sub_id = _subscription_of(invoice)
    if not sub_id:
        return "ignored: not a subscription invoice"
    org_id = _org_of(stripe_billing.retrieve_subscription(str(sub_id)))
    if org_id:
        orgs.mark_subscription_payment(org_id, str(sub_id), failed=True)
    return "recorded: subscription payment failed"
