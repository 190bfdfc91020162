"""Settle: the capture of a hold, once the provider answered.

One transaction debits the actual cost, closes the hold, appends the ledger entry and counts
the usage (metering); a charge above its hold is billed exactly and leaves an over-hold
incident for reconcile. A settle that crosses an armed alert threshold learns it did from its
own condition (AlertGuard). A settle that could not land at once leaves a pending settle, an
item keyed by its request id, that HoldSweeper (or the operator) settles later, exactly once.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import Enum
from typing import Any

from conduix.core import clock
from conduix.core.config import settings
from conduix.core.errors import Conflict
from conduix.ledger import entries, holds, key_limits, metering, wallets
from conduix.store import schema
from conduix.store.dynamo import client, retrying, transact_if
from conduix.store.items import Item, as_int, as_str, n, s


@dataclass
class AlertGuard:
    """Conditions a settle keeps when alert thresholds are set (see alerts.guard): for each
    balance threshold, the balance stays at or above its floor, and for each cap threshold the
    month's spend (in `period`) below its ceiling, unless the wallet marks that threshold fired.
    The marks are read by the write itself, so a threshold re-armed or fired by another
    environment counts at once. The settle whose guard fails is the one that crosses an armed
    threshold: it drops the guard, lands, and sets `tripped`, so its caller claims and sends."""

    balance_floors: tuple[tuple[str, int], ...]  # (alert_fired key, lowest balance before the settle)
    spent_ceilings: tuple[tuple[str, int], ...]  # (alert_fired key, month_spent to stay below)
    period: str
    tripped: bool = False

    def condition(self, period: str) -> tuple[str, dict[str, str], dict[str, Any]]:
        """The condition's text, its attribute names and its values."""
        if self.tripped:
            return "", {}, {}
        parts: list[str] = []
        names: dict[str, str] = {}
        values: dict[str, Any] = {}
        guards = [("balance >=", k, v) for k, v in self.balance_floors]
        if period == self.period:
            guards += [("month_spent <", k, v) for k, v in self.spent_ceilings]
        for i, (test, key, value) in enumerate(guards):
            parts.append(f"({test} :alert{i} OR attribute_exists(alert_fired.#alert{i}))")
            names[f"#alert{i}"] = key
            values[f":alert{i}"] = n(value)
        return "".join(f" AND {p}" for p in parts), names, values

    def failed_on(self, old: Item, period: str) -> bool:
        """Whether the old wallet fails the guard (then the settle crosses an armed threshold)."""
        if self.tripped:
            return False
        fired = old.get("alert_fired", {}).get("M", {})
        balance, spent = as_int(old, "balance"), as_int(old, "month_spent")
        if any(balance < floor and key not in fired for key, floor in self.balance_floors):
            return True
        return period == self.period and any(
            spent >= ceiling and key not in fired for key, ceiling in self.spent_ceilings
        )


class SettleOutcome(Enum):
    SETTLED = "settled"
    ALREADY_SETTLED = "already_settled"  # a retry of a settle that had committed
    HOLD_GONE = "hold_gone"  # HoldSweeper released it first: the request goes unbilled


def settle(
    org_id: str,
    request_id: str,
    hold_amount: int,
    usage: metering.Usage,
    now: datetime,
    *,
    also: Sequence[dict[str, Any]] = (),
    from_pending: bool = False,
    budget_key: str = "",
    alert_guard: AlertGuard | None = None,
) -> SettleOutcome:
    """Debit the actual cost, close the hold, append the ledger entry and count the usage, in
    one transaction. Exactly one of settle and release/sweep can close a hold.

    A cost above the hold is still billed exactly (the service was delivered) and leaves an
    incident item for reconcile. `also` adds the caller's own writes to the transaction (the
    idempotent answer); `from_pending` removes the usage recorded by `record_pending`;
    `budget_key`: the key whose spend limit the hold counts against (the settle moves it too);
    `alert_guard`: see AlertGuard."""
    period = clock.period_of(now)
    c = usage.cost
    marker, line = metering.usage_ledger_items(org_id, request_id, usage, now)
    table = settings().billing_table
    invoiced = usage.billed_by == "invoice"
    drawn = min(c, max(usage.funds_hint, 0)) if invoiced else 0  # from the positive balance
    for _ in range(4):
        if invoiced:  # the part of the cost the month's invoice bills
            marker["invoiced"] = line["invoiced"] = n(c - drawn)
        guarded, guard_names, guard_values = alert_guard.condition(period) if alert_guard else ("", {}, {})
        items: list[Any] = [
            {
                "Update": {
                    "TableName": table,
                    "Key": wallets.wallet_key(org_id),
                    "UpdateExpression": (
                        "ADD balance :nc, held :nh, available :hc, "
                        "month_spent :c, committed :ch, cap_remaining :hc, hold_count :minus"
                    ),
                    "ConditionExpression": "#period = :p"
                    + (" AND balance >= :drawn" if drawn else "")
                    + guarded,
                    "ExpressionAttributeNames": {"#period": "period", **guard_names},
                    "ExpressionAttributeValues": {
                        ":minus": n(-1),
                        ":nh": n(-hold_amount),
                        ":c": n(c),
                        ":nc": n(-c),
                        ":hc": n(hold_amount - c),
                        ":ch": n(c - hold_amount),
                        ":p": s(period),
                        **({":drawn": n(drawn)} if drawn else {}),
                        **guard_values,
                    },
                    "ReturnValuesOnConditionCheckFailure": "ALL_OLD",
                }
            },
            {"Put": {"TableName": table, "Item": marker, "ConditionExpression": "attribute_not_exists(pk)"}},
            {"Put": {"TableName": table, "Item": line}},
            metering.billed_usage_update(org_id, now, usage),
            holds.hold_delete(org_id, request_id, hold_amount, bool(budget_key)),
            *also,
        ]
        if budget_key:
            items.append(key_limits.budget_close(org_id, budget_key, hold_amount, c))
        if c > hold_amount:
            items.append(
                {
                    "Put": {
                        "TableName": table,
                        "Item": over_hold_item(org_id, request_id, hold_amount, usage, now),
                    }
                }
            )
        if from_pending:
            items.append({"Delete": {"TableName": table, "Key": pending_key(org_id, request_id)}})
        # The token makes DynamoDB itself drop a replay of this exact transaction.
        # (With the period: a retry after a month roll-over is another request to DynamoDB.)
        # A deferred settle is another request to DynamoDB too (other items, another time):
        # reusing the first token there would be refused as a parameter mismatch.
        kind = "settle-pending" if from_pending else "settle"
        # (And without the alert guard once it tripped: the guarded attempt surely failed.)
        tripped = int(bool(alert_guard and alert_guard.tripped))
        token = hashlib.sha256(
            f"{kind}:{org_id}:{request_id}:{period}:{drawn}:{tripped}".encode()
        ).hexdigest()[:36]
        cancelled = transact_if(items, token=token)
        if cancelled is None:
            wallets.moved(org_id, balance=-c, held=-hold_amount, spent=c, holds=-1)
            return SettleOutcome.SETTLED
        if cancelled.failed(1):
            return SettleOutcome.ALREADY_SETTLED
        if cancelled.failed(4):
            if not cancelled.old(4):
                return SettleOutcome.HOLD_GONE
            raise Conflict(f"Request id '{request_id}' holds another amount.") from None
        if not cancelled.failed(0):
            raise cancelled.error
        old = cancelled.old(0)
        old_period = as_str(old, "period")
        if alert_guard is not None and alert_guard.failed_on(old, old_period):
            alert_guard.tripped = True  # this settle crosses a threshold: land it, then alert
            wallets.learn(org_id, old)  # and the view learns which thresholds have fired since
            continue
        month = wallets.catch_up_period(org_id, old_period, period)
        if month is not None:
            period = month
        elif drawn and as_int(old, "balance") < drawn:  # spent meanwhile: draw what is left
            drawn = min(c, max(as_int(old, "balance"), 0))
        else:
            raise cancelled.error
    raise Conflict("The wallet kept changing while settling; please retry.")


def over_hold_item(
    org_id: str, request_id: str, hold_amount: int, usage: metering.Usage, now: datetime
) -> Item:
    """The durable record of a charge above its hold, which `reconcile` reports."""
    return {
        "pk": s(schema.org_pk(org_id)),
        "sk": s(f"{schema.OVER_HOLD}{request_id}"),
        "incident": s("over-hold"),
        "request_id": s(request_id),
        "hold": n(hold_amount),
        "cost": n(usage.cost),
        "model": s(usage.model),
        "created_at": s(clock.iso(now)),
    }


def over_hold_incidents(org_id: str) -> list[Item]:
    return entries.query_prefix(org_id, schema.OVER_HOLD)


# ------------------------------------------------------------------ settles that could not land at once


def pending_key(org_id: str, request_id: str) -> dict[str, Any]:
    return schema.org_key(org_id, f"{schema.PENDING}{request_id}")


@dataclass(frozen=True)
class PendingSettle:
    request_id: str
    hold_amount: int
    usage: metering.Usage
    lease_id: str = ""  # billed under an escrow lease: no hold; charged by lease_folds.charge_pending
    budget_key: str = ""  # its hold counts against this key's spend limit


def record_pending(
    org_id: str,
    request_id: str,
    hold_amount: int,
    usage: metering.Usage,
    now: datetime,
    *,
    also: Sequence[dict[str, Any]] = (),
    lease_id: str = "",
    budget_key: str = "",
) -> None:
    """Keep a served request's usage in an item of its own (keyed by the request id, so no
    other write contends for it) while its hold stays open: HoldSweeper settles it later,
    exactly once, instead of releasing the hold. `also` joins the caller's own writes."""
    item = {
        **pending_key(org_id, request_id),
        "request_id": s(request_id),
        "hold": n(hold_amount),
        "model": s(usage.model),
        "key_id": s(usage.key_id),
        "prompt_tokens": n(usage.prompt_tokens),
        "completion_tokens": n(usage.completion_tokens),
        "cost": n(usage.cost),
        "billed_by": s(usage.billed_by),
        "funds_hint": n(usage.funds_hint),  # invoice mode: the later settle draws credits first too
        "created_at": s(clock.iso(now)),
        **({"lease_id": s(lease_id)} if lease_id else {}),
        **({"budget_key": s(budget_key)} if budget_key else {}),
        # In the sweep index itself: a lease's spend has no hold keeping its wallet there (its
        # lease may be folded and the wallet idle already), and HoldSweeper must still find it.
        "sweep_shard": s(wallets.sweep_shard(org_id)),
    }
    table = settings().billing_table
    if also:
        actions: list[Any] = [{"Put": {"TableName": table, "Item": item}}, *also]
        retrying(lambda: client().transact_write_items(TransactItems=actions))
    else:
        retrying(lambda: client().put_item(TableName=table, Item=item))


def pending_settles(org_id: str) -> list[PendingSettle]:
    return [
        PendingSettle(
            request_id=as_str(i, "request_id"),
            hold_amount=as_int(i, "hold"),
            usage=metering.Usage(
                as_str(i, "model"),
                as_str(i, "key_id"),
                as_int(i, "prompt_tokens"),
                as_int(i, "completion_tokens"),
                as_int(i, "cost"),
                billed_by=as_str(i, "billed_by", "prepaid"),
                funds_hint=as_int(i, "funds_hint"),
            ),
            lease_id=as_str(i, "lease_id"),
            budget_key=as_str(i, "budget_key"),
        )
        for i in entries.query_prefix(org_id, schema.PENDING)
    ]


def drop_pending(org_id: str, request_id: str) -> None:
    """Forget a pending settle that turned out settled already (or whose hold is gone)."""
    retrying(
        lambda: client().delete_item(TableName=settings().billing_table, Key=pending_key(org_id, request_id))
    )


def settle_pending_hold(
    org_id: str, request_id: str, now: datetime
) -> tuple[PendingSettle, SettleOutcome] | None:
    """Settle one hold's deferred settle now, exactly as HoldSweeper does; None if it has none."""
    pending = next((p for p in pending_settles(org_id) if p.request_id == request_id), None)
    if pending is None:
        return None
    outcome = settle(
        org_id,
        request_id,
        pending.hold_amount,
        pending.usage,
        now,
        from_pending=True,
        budget_key=pending.budget_key,
    )
    if outcome is not SettleOutcome.SETTLED:  # its first settle had landed after all
        drop_pending(org_id, request_id)
    return pending, outcome
