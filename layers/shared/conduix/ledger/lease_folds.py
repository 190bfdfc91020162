"""Folding escrow leases back into the wallet: by their environment when a lease is retired,
or by HoldSweeper once it expired (from its spend records), and billing a lease's request
whose spend could not be written. The design: `conduix.ledger.leases`.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from conduix.core import clock
from conduix.core.config import settings
from conduix.core.errors import Conflict, ServiceBusy
from conduix.ledger import key_limits, metering, settles, wallets
from conduix.ledger.lease_store import Spend, lease_key, open_leases, open_spends, spend_puts
from conduix.store.dynamo import transact_if
from conduix.store.items import as_str, n, s

log = logging.getLogger(__name__)


def fold(
    org_id: str,
    lease_id: str,
    amount: int,
    spends: Sequence[Spend],
    now: datetime,
    *,
    key_id: str = "",
    budget: bool = False,
) -> bool:
    """Debit `spends`, return the lease's slice, add its usage rows and
    close the lease, in one transaction (with `budget`, the key's budget item too: its spends
    count in the window the item is at, as a hold's settle does). False if the lease was
    folded already. Its spend records stay (until the table's TTL): a spend is unfolded while
    its lease is open."""
    pending = list(spends)
    period = clock.period_of(now)
    table = settings().billing_table
    for _ in range(6):
        in_month = sum(sp.cost for sp in pending if sp.created_at.startswith(period))
        total = sum(sp.cost for sp in pending)
        names: dict[str, str] = {"#period": "period"}
        values: dict[str, Any] = {
            ":p": s(period),
            ":nt": n(-total),
            ":na": n(-amount),
            ":avail": n(amount - total),
            ":spent": n(in_month),
            ":com": n(in_month - amount),
            ":cap": n(amount - in_month),
        }
        update = (
            "ADD balance :nt, held :na, available :avail, month_spent :spent, committed :com, "
            "cap_remaining :cap, lease_count :minus"
        )
        values[":minus"] = n(-1)
        actions: list[Any] = [
            {
                "Delete": {
                    "TableName": table,
                    "Key": lease_key(org_id, lease_id),
                    "ConditionExpression": "attribute_exists(pk)",
                }
            }
        ]
        actions.append(
            {
                "Update": {
                    "TableName": table,
                    "Key": wallets.wallet_key(org_id),
                    "UpdateExpression": update,
                    "ConditionExpression": "#period = :p",
                    "ExpressionAttributeNames": names,
                    "ExpressionAttributeValues": values,
                    "ReturnValuesOnConditionCheckFailure": "ALL_OLD",
                }
            }
        )
        if budget:
            actions.append(key_limits.budget_close(org_id, key_id, amount, total))
        rows: dict[tuple[str, str, str], dict[str, int]] = defaultdict(lambda: defaultdict(int))
        for sp in pending:
            row = rows[(sp.created_at[:10], sp.usage.model, sp.usage.key_id)]
            row["requests"] += 1
            row["prompt_tokens"] += sp.usage.prompt_tokens
            row["completion_tokens"] += sp.usage.completion_tokens
            row["credits"] += sp.cost
        for (day, model, key), counts in rows.items():
            at = datetime.fromisoformat(f"{day}T00:00:00+00:00")
            actions.append(
                {"Update": {"TableName": table, **metering.usage_update(org_id, at, model, key, counts)}}
            )
        cancelled = transact_if(actions)
        if cancelled is not None:
            if cancelled.failed(0):
                return False  # folded already (HoldSweeper, or the owner)
            if cancelled.failed(1):
                month = wallets.catch_up_period(org_id, as_str(cancelled.old(1), "period"), period)
                if month is None:
                    raise cancelled.error
                period = month
            continue
        wallets.moved(org_id, balance=-total, held=-amount, spent=in_month, leases=-1)
        return True
    raise Conflict("The wallet kept changing while folding a lease; please retry.")


FOLD_SKEW_SECONDS = 5  # clocks of environments and HoldSweeper may differ this much


def sweep(org_id: str, now: datetime) -> int:
    """Fold the org's expired leases from their spend records; returns how many. A spend is
    written only into a lease not expired by its writer's clock, so after the expiry (and the
    skew) the records are complete."""
    at = int(now.timestamp())
    expired = [lease for lease in open_leases(org_id) if lease.expires_at + FOLD_SKEW_SECONDS <= at]
    folded = 0
    for lease_id, mine in open_spends(org_id, expired).items():
        lease = next(x for x in expired if x.lease_id == lease_id)
        try:
            done = fold(
                org_id,
                lease_id,
                lease.amount,
                mine,
                now,
                key_id=lease.key_id,
                budget=lease.budget,
            )
        except (ServiceBusy, Conflict):  # the wallet stayed busy: the next run folds it
            log.warning("an expired lease waits for the next sweep", extra={"lease_id": lease_id})
            continue
        folded += done
    return folded


class LeaseGone(Exception):
    """The lease of a deferred spend was folded before the spend could join it."""


def absorb_pending(org_id: str, pending: settles.PendingSettle, now: datetime) -> settles.SettleOutcome:
    """Bill a lease's request whose spend could not be written as a spend of that lease after
    all (its ledger entry and `LSPEND` record), while the lease is open: the lease's fold then
    debits it from the slice its reservation was counted in, so it never takes credit the
    slice did not hold. Raises LeaseGone once the lease is folded."""
    usage = pending.usage
    table = settings().billing_table
    actions: list[Any] = [
        *spend_puts(org_id, pending.lease_id, pending.request_id, usage, now),
        {
            "ConditionCheck": {
                "TableName": table,
                "Key": lease_key(org_id, pending.lease_id),
                "ConditionExpression": "attribute_exists(pk)",
            }
        },
        {"Delete": {"TableName": table, "Key": settles.pending_key(org_id, pending.request_id)}},
    ]
    if usage.cost > pending.hold_amount:
        item = settles.over_hold_item(org_id, pending.request_id, pending.hold_amount, usage, now)
        actions.append({"Put": {"TableName": table, "Item": item}})
    cancelled = transact_if(actions)
    if cancelled is None:
        return settles.SettleOutcome.SETTLED
    if cancelled.failed(0):
        return settles.SettleOutcome.ALREADY_SETTLED  # its spend had landed after all
    if cancelled.failed(3):
        raise LeaseGone(pending.lease_id)
    raise cancelled.error


def charge_pending(org_id: str, pending: settles.PendingSettle, now: datetime) -> settles.SettleOutcome:
    """Bill a lease's request whose spend could not be written and whose lease was folded
    without it (its environment stalled past the lease's expiry): its ledger entry and the
    debit in one transaction, once (the ledger marker), only from credit (and cap, and the
    key's spend limit when its lease held against it) nobody holds. The slice its reservation
    was counted in went back with the fold, so this never overdraws: when others took that
    credit meanwhile, the request stays unbilled (HOLD_GONE, as a hold's late settle does)
    and HoldSweeper's incident says so."""
    usage = pending.usage
    marker, line = metering.usage_ledger_items(org_id, pending.request_id, usage, now)
    c = usage.cost
    table = settings().billing_table
    period = clock.period_of(now)
    for _ in range(4):
        actions: list[Any] = [
            {"Put": {"TableName": table, "Item": marker, "ConditionExpression": "attribute_not_exists(pk)"}},
            {"Put": {"TableName": table, "Item": line}},
            {
                "Update": {
                    "TableName": table,
                    "Key": wallets.wallet_key(org_id),
                    "UpdateExpression": (
                        "ADD balance :nc, available :nc, month_spent :c, committed :c, cap_remaining :nc"
                    ),
                    "ConditionExpression": (
                        "#period = :p AND (billing_mode = :invoice OR available >= :c) "
                        "AND (capped = :false OR cap_remaining >= :c)"
                    ),
                    "ExpressionAttributeNames": {"#period": "period"},
                    "ExpressionAttributeValues": {
                        ":c": n(c),
                        ":nc": n(-c),
                        ":p": s(period),
                        ":invoice": s("invoice"),
                        ":false": {"BOOL": False},
                    },
                    "ReturnValuesOnConditionCheckFailure": "ALL_OLD",
                }
            },
            metering.billed_usage_update(org_id, now, usage),
            {"Delete": {"TableName": table, "Key": settles.pending_key(org_id, pending.request_id)}},
        ]
        if pending.budget_key:  # its lease held against the key's spend limit: it counts there too
            actions.append(
                {
                    "Update": {
                        "TableName": table,
                        "Key": key_limits.key_budget_key(org_id, pending.budget_key),
                        "UpdateExpression": "ADD spent :c, room :nc",
                        "ConditionExpression": "attribute_exists(pk) AND (lim = :zero OR room >= :c)",
                        "ExpressionAttributeValues": {":c": n(c), ":nc": n(-c), ":zero": n(0)},
                    }
                }
            )
        cancelled = transact_if(actions)
        if cancelled is not None:
            if cancelled.failed(0):
                return settles.SettleOutcome.ALREADY_SETTLED  # its spend had landed after all
            if pending.budget_key and cancelled.failed(5):
                return settles.SettleOutcome.HOLD_GONE  # the key's limit has no room for it now
            if not cancelled.failed(2):
                raise cancelled.error
            month = wallets.catch_up_period(org_id, as_str(cancelled.old(2), "period"), period)
            if month is None:  # the credit or the cap is not there any more
                return settles.SettleOutcome.HOLD_GONE
            period = month
            continue
        wallets.moved(org_id, balance=-c, spent=c)
        return settles.SettleOutcome.SETTLED
    raise Conflict("The wallet kept changing while charging a deferred settle; please retry.")
