"""Auto-reload: charge the saved card when the balance has fallen below the threshold.

The due flag is raised by a conditional write when a settle (or a refusal) leaves the
available balance below the threshold, once per episode; AutoReload charges each due org
with an idempotency key made of the org and the episode, so overlapping or retried runs
never charge twice. An episode ends with its charge, succeeded or failed, whatever the
balance after it; if it is still below the threshold a new episode (a new key) starts, and
at most CONDUIX_RELOAD_DAILY_LIMIT charges a UTC day are made per org.
The credits land exactly once, from whichever of the synchronous answer
and the `payment_intent.succeeded` webhook is seen first (one ledger key: the PaymentIntent).
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import TYPE_CHECKING, Any

from conduix.accounts import alerts, notices, orgs
from conduix.core.config import payment_settings, reload_daily_limit
from conduix.core.errors import Conflict, InvalidRequest
from conduix.core.money import format_credits
from conduix.ledger import entries, wallet_settings, wallets
from conduix.payments import reloads

if TYPE_CHECKING:
    from conduix.core.bodies import AutoReloadRequest

log = logging.getLogger(__name__)


def configure(org_id: str, asked: AutoReloadRequest) -> None:
    """PUT /v1/billing/auto-reload: {"enabled": true, "threshold": "5", "amount": "25"}."""
    enabled = asked.enabled
    wallet = wallets.get_wallet(org_id)
    if enabled and wallet.billing_mode == "invoice":
        raise Conflict(
            "Auto-reload is not available in invoice billing mode: usage is billed on the monthly invoice.",
            code="invoice_billing_mode",
        )
    current = wallet.reload
    # A field left out keeps its saved value; turning on needs both to be known.
    threshold = current.threshold if asked.threshold is None else asked.threshold
    if enabled and not threshold:
        raise InvalidRequest("'threshold' is required to turn auto-reload on.", param="threshold")
    amount = current.amount
    if asked.amount is None and enabled and not amount:
        raise InvalidRequest("'amount' is required to turn auto-reload on.", param="amount")
    if asked.amount is not None:
        amount = asked.amount
        config = payment_settings()
        if amount not in config.top_up_tiers and not config.reload_min <= amount <= config.reload_max:
            tiers = ", ".join(format_credits(t) for t in config.top_up_tiers)
            raise InvalidRequest(
                f"'amount' must be a top-up tier ({tiers}) or between {format_credits(config.reload_min)} "
                f"and {format_credits(config.reload_max)} credits.",
                param="amount",
            )
        if amount % 10_000_000:
            raise InvalidRequest("'amount' must be whole cents.", param="amount")
    if enabled and orgs.get_org(org_id).card is None:
        raise Conflict(
            "Auto-reload needs a saved card: make a top-up first, and the card is saved with it.",
            code="saved_card_required",
        )
    reloads.save_settings(org_id, enabled=enabled, threshold=threshold, amount=amount)


def charge_idempotency_key(org_id: str, episode: int) -> str:
    return f"auto-reload-{org_id}-{episode}"


def land(org_id: str, payment_intent_id: str, amount: int, episode: int, now: datetime) -> bool:
    """Credit a successful reload charge (once, whoever gets here first) and note it."""
    _, created = entries.post_entry(
        org_id,
        kind="auto_reload",
        key=payment_intent_id,
        amount=amount,
        description=f"Auto-reload of {format_credits(amount)} credits",
        now=now,
    )
    if reloads.record_success(org_id, episode, f"Added {format_credits(amount)} credits.", now):
        # The episode is over; still below the threshold, a new one starts (with a new key).
        wallet_settings.mark_reload_due(org_id)
    if created:
        alerts.after_credit(org_id, now)
        org = orgs.get_org(org_id)
        notices.reload_succeeded(org, format_credits(amount))
    return created


def fail(org_id: str, episode: int, message: str, now: datetime) -> None:
    noted, turned_off = reloads.record_failure(org_id, episode, message, now)
    if noted:
        org = orgs.get_org(org_id)
        notices.reload_failed(org, message, turned_off)


def reload_org(org_id: str, now: datetime) -> str:
    from conduix.payments import stripe_gateway  # only this path and the webhook need Stripe

    wallet = wallets.get_wallet(org_id)
    settings = wallet.reload
    if not settings.enabled or not settings.due or wallet.billing_mode == "invoice":
        return "not_due"  # (in invoice mode the invoice pays, never the card)
    if wallet.available >= settings.threshold:
        wallet_settings.end_reload_episode(org_id)
        return "above_threshold"
    org = orgs.get_org(org_id)
    if org.card is None or org.stripe_customer_id is None:
        fail(org_id, settings.episode, "There is no saved card.", now)
        return "failed"
    day, limit = now.strftime("%Y-%m-%d"), reload_daily_limit()
    claim = reloads.claim_charge(org_id, settings.episode, day, limit)
    if claim == reloads.STALE:
        return "not_due"
    if claim == reloads.LIMIT_REACHED:  # the org stays due: the first run of the next day charges
        message = f"Auto-reload reached its limit of {limit} charges today (UTC); it resumes tomorrow."
        if reloads.note_paused(org_id, day, message, now):
            notices.reload_paused(org, limit)
        return "paused"
    charge = stripe_gateway.charge_off_session(
        customer_id=org.stripe_customer_id,
        payment_method_id=org.card.payment_method_id,
        amount_cents=stripe_gateway.cents(settings.amount),
        description=f"Conduix auto-reload: {format_credits(settings.amount)} credits",
        metadata={
            "org_id": org_id,
            "credits": format_credits(settings.amount),
            "purpose": "auto_reload",
            "episode": str(settings.episode),
        },
        idempotency_key=charge_idempotency_key(org_id, settings.episode),
    )
    if charge.succeeded and charge.payment_intent_id:
        land(org_id, charge.payment_intent_id, settings.amount, settings.episode, now)
        return "charged"
    log.warning("auto-reload charge failed", extra={"org_id": org_id, "code": charge.failure_code})
    fail(org_id, settings.episode, charge.message, now)
    return "failed"


def charge_due(now: datetime) -> dict[str, Any]:
    """One AutoReload run over every org whose episode waits for a charge."""
    outcomes: dict[str, int] = {}
    for shard in range(wallets.SWEEP_SHARDS):
        for org_id in reloads.due_orgs(str(shard)):
            try:
                outcome = reload_org(org_id, now)
            except Exception:  # one org's trouble must not starve the others
                log.exception("auto-reload failed for an org", extra={"org_id": org_id})
                outcome = "error"
            outcomes[outcome] = outcomes.get(outcome, 0) + 1
    return {"orgs": sum(outcomes.values()), **outcomes}
