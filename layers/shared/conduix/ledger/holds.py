"""Holds: the worst-case cost of a request, reserved before the provider is called.

The wallet keeps sums only: a hold is an item of its own (`HOLD#<request id>`), written in the
same transaction as the wallet's sums, so no item grows with the number of requests in flight.
That one transaction also refuses a revoked key, a key over its requests per minute (its
minute's count, rate_windows) or its spend limit (key_limits), the spend cap and a short
balance. Settle (settles), release and
HoldSweeper close a hold by deleting its item on condition that it still exists, so exactly
one of them wins.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from conduix.core import clock
from conduix.core.config import settings
from conduix.core.errors import (
    Conflict,
    InsufficientCredits,
    NotFound,
    SpendCapExceeded,
    Unauthenticated,
)
from conduix.core.money import format_credits
from conduix.ledger import entries, key_limits, rate_windows, wallets
from conduix.pricing import plans
from conduix.store import schema
from conduix.store.dynamo import transact_if
from conduix.store.items import Item, as_bool, as_int, as_str, n, s


@dataclass(frozen=True)
class Hold:
    request_id: str
    amount: int
    expires_at: int  # epoch seconds
    model: str
    key_id: str
    key_budget: bool = False  # counted against its key's spend limit (KEYBUDGET#<key id>)


# ------------------------------------------------------------------ hold / release


@dataclass(frozen=True)
class Reservation:
    hold_nanos: int
    wallet: wallets.Wallet  # as the hold left it
    budget_key: str = ""  # the hold also counts against this key's spend limit

    @property
    def balance(self) -> int:
        """The settled balance when the hold was placed."""
        return self.wallet.balance


def _refusal(org_id: str, old: Item, amount: int) -> Exception | None:
    wallet = wallets.wallet_from_item(org_id, old)
    if wallet.capped and wallet.cap_remaining < amount:
        return SpendCapExceeded(
            f"Monthly spend cap of {format_credits(wallet.cap_limit)} credits reached for {wallet.period} "
            f"(spent {format_credits(wallet.month_spent)}, in flight {format_credits(wallet.held)}). "
            "Raise the cap at /dashboard/settings.",
            limit_nanos=wallet.cap_limit,
            committed_nanos=wallet.committed,
            period=wallet.period,
        )
    if wallet.billing_mode != "invoice" and wallet.available < amount:
        reload = wallet.reload
        return InsufficientCredits(
            f"Insufficient credits. Current balance: {format_credits(wallet.available)} credits.",
            available_nanos=wallet.available,
            balance_nanos=wallet.balance,
            already_paused=wallet.paused,
            reload_can_start=reload.enabled and not reload.due and wallet.available < reload.threshold,
        )
    return None


def hold_key(org_id: str, request_id: str) -> dict[str, Any]:
    return schema.org_key(org_id, f"{schema.HOLD}{request_id}")


def _hold_from_item(item: Item) -> Hold:
    return Hold(
        request_id=as_str(item, "request_id"),
        amount=as_int(item, "amount"),
        expires_at=as_int(item, "hold_expires"),
        model=as_str(item, "model"),
        key_id=as_str(item, "key_id"),
        key_budget=as_bool(item, "key_budget"),
    )


def same_settings(known: wallets.Wallet) -> tuple[str, dict[str, Any]]:
    """A condition that the settings a request is billed under are still those the view knows."""
    reload = known.reload
    values: dict[str, Any] = {":mode": s(known.billing_mode), ":plan": s(known.plan)}
    parts = ["billing_mode = :mode", "#plan = :plan"]
    if reload.enabled:
        parts.append("reload_enabled = :true")
        values[":true"] = {"BOOL": True}
    else:  # ":false" is the hold's own
        parts.append("(attribute_not_exists(reload_enabled) OR reload_enabled = :false)")
    values[":rt"] = n(reload.threshold)
    parts.append(
        "reload_threshold = :rt"
        if reload.threshold
        else "(attribute_not_exists(reload_threshold) OR reload_threshold = :rt)"
    )
    parts.append(f"attribute_{'' if reload.due else 'not_'}exists(reload_due_shard)")
    # The alert thresholds: a settle's guard is built from the view's (see alerts.guard).
    values[":arev"] = n(known.alert_rev)
    parts.append(
        "alert_rev = :arev" if known.alert_rev else "(attribute_not_exists(alert_rev) OR alert_rev = :arev)"
    )
    return " AND ".join(parts), values


def reserve(
    org_id: str,
    request_id: str,
    amount: int,
    *,
    model: str,
    key_id: str,
    now: datetime,
    runs_for: int = 0,
) -> Reservation:
    """Hold `amount` for a request in one transaction (the wallet's sums, and the hold item), or
    refuse it.

    The hold outlives the longest the request may run (`runs_for` seconds), so HoldSweeper
    never frees the hold of a long answer still being written.
    Raises SpendCapExceeded or InsufficientCredits; nothing is held then.
    """
    period = clock.period_of(now)
    expires = int(now.timestamp()) + max(
        settings().hold_ttl_seconds, runs_for + settings().hold_ttl_seconds // 5
    )
    hold = {
        **hold_key(org_id, request_id),
        "request_id": s(request_id),
        "amount": n(amount),
        "hold_expires": n(expires),  # not `expires_at`: the table's TTL would delete an open hold
        "model": s(model),
        "key_id": s(key_id),
    }
    minute = int(now.timestamp()) // 60
    table = settings().billing_table
    lagging = ""  # the budget's window, when our clock lags its writer's
    for _ in range(5):
        known = wallets.known_wallet(org_id)
        same, same_values = same_settings(known)
        # A key with a spend limit (as the view knows it; the condition checks the view) also
        # holds against its budget item, in the same transaction: racing requests cannot pass it.
        key_period = known.limited_keys.get(key_id, "")
        limited = bool(key_period)
        key_window = max(clock.limit_window(key_period, now), lagging) if limited else ""
        actions: list[Any] = [
            {
                "Update": {
                    "TableName": table,
                    "Key": wallets.wallet_key(org_id),
                    "UpdateExpression": (
                        "SET sweep_shard = :shard "
                        "ADD held :h, available :nh, committed :h, cap_remaining :nh, hold_count :one"
                    ),
                    "ConditionExpression": (
                        "#period = :p AND attribute_not_exists(revoked_keys.#kid) "
                        + (
                            "AND limited_keys.#kid = :kperiod "
                            if limited
                            else "AND attribute_not_exists(limited_keys.#kid) "
                        )
                        + "AND rpm_limit = :limit "  # what the key's count is compared with
                        "AND (billing_mode = :invoice OR available >= :h) "
                        "AND (capped = :false OR cap_remaining >= :h) AND " + same
                    ),
                    "ExpressionAttributeNames": {
                        "#period": "period",
                        "#kid": key_id,
                        "#plan": "plan",
                    },
                    "ExpressionAttributeValues": {
                        ":one": n(1),
                        ":shard": s(wallets.sweep_shard(org_id)),
                        ":h": n(amount),
                        ":nh": n(-amount),
                        ":p": s(period),
                        ":limit": n(known.rpm_limit),
                        ":invoice": s("invoice"),
                        ":false": {"BOOL": False},
                        **({":kperiod": s(key_period)} if limited else {}),
                        **same_values,
                    },
                    "ReturnValuesOnConditionCheckFailure": "ALL_OLD",
                }
            },
            {
                "Put": {
                    "TableName": table,
                    "Item": {**hold, "key_budget": {"BOOL": True}} if limited else hold,
                    "ConditionExpression": "attribute_not_exists(pk)",
                    "ReturnValuesOnConditionCheckFailure": "ALL_OLD",
                }
            },
        ]
        actions.append(rate_windows.count_one(org_id, key_id, minute, known.rpm_limit))
        if limited:
            actions.append(key_limits.budget_take(org_id, key_id, amount, key_window, amount))
        # Every hold of an org writes its wallet: under a burst, DynamoDB cancels those that
        # overlap (TransactionConflict). Nothing is called yet, so a hold may wait longer.
        cancelled = transact_if(actions, attempts=10)
        if cancelled is not None:
            if cancelled.failed(1):
                existing = cancelled.old(1)
                if as_int(existing, "amount") == amount:  # our own hold: a retry after a lost answer
                    return Reservation(
                        hold_nanos=amount,
                        wallet=wallets.moved(org_id, held=amount, holds=1) or known,
                        budget_key=key_id if as_bool(existing, "key_budget") else "",
                    )
                raise Conflict(f"Request id '{request_id}' already holds credits.") from None
            if cancelled.failed(0):
                old: Item = cancelled.old(0)
                if not old:
                    wallets.forget_view(org_id)
                    raise NotFound(f"No wallet for org '{org_id}'.") from None
                wallets.learn(org_id, old)  # whatever failed, the view is fresh again
                month = wallets.catch_up_period(org_id, as_str(old, "period"), period)
                if month is not None:
                    period = month
                    continue
                if key_id in old.get("revoked_keys", {}).get("M", {}):
                    raise Unauthenticated(wallets.REVOKED_MESSAGE) from None
                if as_int(old, "rpm_limit") != known.rpm_limit:
                    continue  # the plan's limit changed: count against the new one
                if cancelled.failed(2):  # the key's minute is full: refused first, as the plan's limit
                    raise rate_windows.rate_limited(
                        known.rpm_limit, plans.get(known.plan).name, now
                    ) from None
                refusal = _refusal(org_id, old, amount)
                if refusal:
                    raise refusal from None
                continue  # the state it failed on (or the settings the view knew) changed: try again
            if cancelled.failed(2):
                raise rate_windows.rate_limited(known.rpm_limit, plans.get(known.plan).name, now) from None
            if limited and cancelled.failed(3):
                budget = key_limits.budget_from_item(key_id, cancelled.old(3))
                if budget is None or not budget.limit or budget.period != key_period:
                    wallets.forget_view(org_id)  # changed meanwhile (the wallet's mark said so too)
                    lagging = ""
                    continue
                if budget.window < key_window:
                    key_limits.roll_key_window(org_id, key_id, key_window)
                    continue
                if budget.window > key_window:  # our clock lags the writer's: use the budget's window
                    lagging = budget.window
                    continue
                raise key_limits.key_limit_refusal(budget, amount) from None
            raise cancelled.error
        wallet = wallets.moved(org_id, held=amount, holds=1)
        return Reservation(hold_nanos=amount, wallet=wallet or known, budget_key=key_id if limited else "")
    raise Conflict("The wallet kept changing while placing the hold; please retry.")


def hold_delete(org_id: str, request_id: str, hold_amount: int, key_budget: bool) -> dict[str, Any]:
    """Closing the hold, on condition it is still open as the closer knows it (its amount, and
    whether it counts against its key's budget): what settle, release and HoldSweeper race on."""
    flag = f"attribute_{'' if key_budget else 'not_'}exists(key_budget)"
    return {
        "Delete": {
            "TableName": settings().billing_table,
            "Key": hold_key(org_id, request_id),
            "ConditionExpression": f"amount = :h AND {flag}",
            "ExpressionAttributeValues": {":h": n(hold_amount)},
            "ReturnValuesOnConditionCheckFailure": "ALL_OLD",
        }
    }


def release(org_id: str, request_id: str, hold_amount: int, *, budget_key: str = "") -> bool:
    """Return a hold untouched (the request failed). False if it was already closed.
    `budget_key`: the key whose spend limit the hold counts against."""
    table = settings().billing_table
    actions: list[Any] = [
        hold_delete(org_id, request_id, hold_amount, bool(budget_key)),
        {
            "Update": {
                "TableName": table,
                "Key": wallets.wallet_key(org_id),
                "UpdateExpression": (
                    "ADD held :nh, available :h, committed :nh, cap_remaining :h, hold_count :minus"
                ),
                "ExpressionAttributeValues": {":h": n(hold_amount), ":nh": n(-hold_amount), ":minus": n(-1)},
            }
        },
    ]
    if budget_key:
        actions.append(key_limits.budget_close(org_id, budget_key, hold_amount, 0))
    cancelled = transact_if(actions)
    if cancelled is not None:
        if cancelled.failed(0):
            return False
        raise cancelled.error
    wallets.moved(org_id, held=-hold_amount, holds=-1)
    return True


def open_holds(org_id: str) -> tuple[Hold, ...]:
    """The org's open holds, oldest request id first (a strongly consistent query of its items)."""
    return tuple(_hold_from_item(i) for i in entries.query_prefix(org_id, schema.HOLD))
