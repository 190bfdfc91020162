"""Settling what Completion served but could not bill at once, and releasing holds whose
request died before it could settle or release them."""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from conduix.accounts import alerts
from conduix.core import telemetry
from conduix.core.errors import ServiceBusy
from conduix.core.money import format_credits
from conduix.ledger import holds, lease_folds, settles, upkeep, wallets

log = logging.getLogger(__name__)


def sweep(now: datetime) -> dict[str, Any]:
    """Settle every pending settle, then release every expired hold. Safe to run concurrently
    with settles and with itself: closing a hold is conditional on it still being open, and a
    ledger entry on its key not existing yet, so exactly one closer wins and bills once."""
    cutoff = int(now.timestamp())
    checked = released = settled = 0
    released_nanos = settled_nanos = 0
    leases_folded = unbilled = 0
    for shard in range(wallets.SWEEP_SHARDS):
        for org_id in upkeep.wallets_with_holds(str(shard)):
            checked += 1
            waiting = set()  # deferred settles still contended: their holds are not released
            for pending in settles.pending_settles(org_id):
                try:
                    if pending.lease_id:  # billed under a lease: no hold to close
                        outcome = _bill_lease_pending(org_id, pending, now)
                    else:
                        outcome = settles.settle(
                            org_id,
                            pending.request_id,
                            pending.hold_amount,
                            pending.usage,
                            now,
                            from_pending=True,
                            budget_key=pending.budget_key,
                        )
                except Exception:  # still contended: the record and its hold wait for the next run
                    log.exception(
                        "could not settle a deferred settle", extra={"request_id": pending.request_id}
                    )
                    waiting.add(pending.request_id)
                    continue
                if outcome is settles.SettleOutcome.SETTLED:
                    settled += 1
                    settled_nanos += pending.usage.cost
                else:  # its first settle had landed after all (or its credit is gone)
                    settles.drop_pending(org_id, pending.request_id)
                    if outcome is settles.SettleOutcome.HOLD_GONE:
                        unbilled += 1
                        telemetry.settle_incident(
                            "served_unbilled",
                            request_id=pending.request_id,
                            org_id=org_id,
                            cost=pending.usage.cost,
                        )
                log.warning(
                    "settled a deferred settle",
                    extra={"org_id": org_id, "request_id": pending.request_id, "outcome": outcome.value},
                )
            org_holds = holds.open_holds(org_id)
            for hold in org_holds:
                if hold.request_id in waiting or hold.expires_at > cutoff:
                    continue
                if _release(org_id, hold):
                    released += 1
                    released_nanos += hold.amount
                    log.warning(
                        "released an expired hold",
                        extra={
                            "org_id": org_id,
                            "request_id": hold.request_id,
                            "amount": format_credits(hold.amount),
                        },
                    )
            leases_folded += lease_folds.sweep(org_id, now)  # expired escrow leases, from their spends
            # Deferred settles and folds (here, or by a lease's environment since the last run)
            # carry no alert guard: the org's thresholds are checked here, within a minute.
            _check_alerts(org_id, now)
            if all(h.expires_at <= cutoff for h in org_holds):
                upkeep.forget_if_idle(org_id)
    telemetry.holds_released(released)
    return {
        "wallets_checked": checked,
        "pending_settled": settled,
        "credits_settled": format_credits(settled_nanos),
        "holds_released": released,
        "credits_released": format_credits(released_nanos),
        "leases_folded": leases_folded,
        "served_unbilled": unbilled,
    }


def _bill_lease_pending(org_id: str, pending: settles.PendingSettle, now: datetime) -> settles.SettleOutcome:
    """A lease's request whose spend could not be written joins its lease while the lease is
    open (the fold debits it from the slice it was reserved in); only once the lease is gone
    is it charged on its own, from credit nobody holds."""
    try:
        return lease_folds.absorb_pending(org_id, pending, now)
    except lease_folds.LeaseGone:
        log.warning("a deferred lease spend outlived its lease", extra={"request_id": pending.request_id})
        return lease_folds.charge_pending(org_id, pending, now)


def _release(org_id: str, hold: holds.Hold) -> bool:
    """Release an expired hold; one whose wallet stays busy past the retries waits for the
    next run instead of ending this one for every other org."""
    try:
        return holds.release(
            org_id, hold.request_id, hold.amount, budget_key=hold.key_id if hold.key_budget else ""
        )
    except ServiceBusy:
        log.warning("an expired hold waits for the next sweep", extra={"request_id": hold.request_id})
        return False


def _check_alerts(org_id: str, now: datetime) -> None:
    """Claim and send whatever threshold the org's wallet is past and was not sent yet."""
    try:
        alerts.check(org_id, now)
    except Exception:  # the next settle's guard finds a crossing still unsent
        log.exception("could not check the org's alerts", extra={"org_id": org_id})
