"""Per-key spend limits: each limited key's budget item (`KEYBUDGET#<key id>`), the window it
counts in, and its share of the holds, settles and releases of that key (the hold's own
transaction writes it; see holds.reserve).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from conduix.core import clock
from conduix.core.config import settings
from conduix.core.errors import Conflict, KeySpendLimitExceeded
from conduix.core.money import format_credits
from conduix.ledger import entries, wallets
from conduix.store import schema
from conduix.store.dynamo import client, transact_if, write_if
from conduix.store.items import Item, as_int, as_str, n, s

# ------------------------------------------------------------------ per-key spend limits
#
# A key's limit lives in an item of its own, `KEYBUDGET#<key id>`, holding the stored figures its
# condition compares (as the wallet does for the cap):
#
#     lim      the limit (0 once removed: open holds still close against the item)
#     period   day | week | month | total;  window: the current one (clock.limit_window)
#     spent    settled spend in the window;  held: the key's open holds that count against it
#     room     lim - spent - held
#
# The wallet's `limited_keys` map says which keys have one, and its period; the hold's wallet
# condition checks the view's idea of both, so a limit set (or changed) a moment ago refuses a
# stale hold, which is retried with the budget. A limited key's hold reads nothing more.
# A request counts in the window its hold was placed in while that window lasts; one still
# open when the window turns counts in the next (its hold carries over), like the cap.


@dataclass(frozen=True)
class KeyBudget:
    key_id: str
    limit: int
    period: str
    window: str
    spent: int
    held: int
    room: int


def key_budget_key(org_id: str, key_id: str) -> dict[str, Any]:
    return schema.org_key(org_id, f"{schema.KEY_BUDGET}{key_id}")


def budget_from_item(key_id: str, item: Item) -> KeyBudget | None:
    if not item:
        return None
    return KeyBudget(
        key_id=key_id,
        limit=as_int(item, "lim"),
        period=as_str(item, "period", "day"),
        window=as_str(item, "window"),
        spent=as_int(item, "spent"),
        held=as_int(item, "held"),
        room=as_int(item, "room"),
    )


def key_budget(org_id: str, key_id: str) -> KeyBudget | None:
    item = (
        client()
        .get_item(TableName=settings().billing_table, Key=key_budget_key(org_id, key_id), ConsistentRead=True)
        .get("Item")
    )
    return budget_from_item(key_id, item or {})


def key_budgets(org_id: str) -> dict[str, KeyBudget]:
    """Every budget item of the org's keys (limited now, or once), by key id."""
    out = {}
    for item in entries.query_prefix(org_id, schema.KEY_BUDGET):
        key_id = as_str(item, "sk").removeprefix(schema.KEY_BUDGET)
        budget = budget_from_item(key_id, item)
        if budget is not None:
            out[key_id] = budget
    return out


def key_limit_refusal(budget: KeyBudget, amount: int) -> KeySpendLimitExceeded:
    resets = clock.limit_resets_at(budget.period, budget.window)
    when = f"It resets at {clock.iso_seconds(resets)}." if resets else "It does not reset (a total limit)."
    per = "in total" if budget.period == "total" else f"per {budget.period}"
    return KeySpendLimitExceeded(
        f"This API key's spend limit of {format_credits(budget.limit)} credits {per} is reached "
        f"(spent {format_credits(budget.spent)}, in flight {format_credits(budget.held)}, this request "
        f"holds {format_credits(amount)}). {when} The org's other keys are not affected.",
        limit_nanos=budget.limit,
        period=budget.period,
        resets_at=clock.iso_seconds(resets) if resets else None,
    )


def roll_key_window(org_id: str, key_id: str, window: str) -> None:
    """Start a new window: spend resets; the key's holds still open keep counting."""
    write_if(  # (refused: already rolled by another request)
        client().update_item,
        TableName=settings().billing_table,
        Key=key_budget_key(org_id, key_id),
        UpdateExpression="SET #w = :w, spent = :zero, room = lim - held",
        ConditionExpression="#w < :w",
        ExpressionAttributeNames={"#w": "window"},
        ExpressionAttributeValues={":w": s(window), ":zero": n(0)},
    )


def set_key_limit(
    org_id: str, key_id: str, limit: int | None, period: str, spent_in_window: int, now: datetime
) -> KeyBudget | None:
    """Set (or with None remove) a key's spend limit, with what the key already spent in the
    current window (from the usage counters). Returns the budget as written."""
    table = settings().billing_table
    window = clock.limit_window(period, now)
    for _ in range(5):
        current = key_budget(org_id, key_id)
        held = current.held if current else 0
        if limit is None:
            if current is None or not current.limit:
                _drop_limited_mark(org_id, key_id)
                return None
            budget_write: dict[str, Any] = {
                "Update": {
                    "TableName": table,
                    "Key": key_budget_key(org_id, key_id),
                    "UpdateExpression": "SET lim = :zero, room = :nspent - held",
                    "ConditionExpression": "spent = :spent",
                    "ExpressionAttributeValues": {
                        ":zero": n(0),
                        ":spent": n(current.spent),
                        ":nspent": n(-current.spent),
                    },
                }
            }
            result = None
        else:
            # Same period and window: keep the spend counted so far (settles add to it);
            # otherwise start from the usage counters' figure. The condition makes a settle
            # landing between our read and this write retry the read.
            # (A removed limit's budget stopped counting: it starts again from the counters.)
            keep = (
                current is not None
                and current.limit > 0
                and current.period == period
                and current.window == window
            )
            spent = current.spent if keep and current is not None else spent_in_window
            values: dict[str, Any] = {
                ":lim": n(limit),
                ":period": s(period),
                ":w": s(window),
                ":spent": n(spent),
                ":room": n(limit - spent),
                ":zero": n(0),
            }
            condition = "attribute_not_exists(pk)"
            if current is not None:
                condition = "spent = :old_spent"
                values[":old_spent"] = n(current.spent)
            budget_write = {
                "Update": {
                    "TableName": table,
                    "Key": key_budget_key(org_id, key_id),
                    "UpdateExpression": (
                        "SET lim = :lim, period = :period, #w = :w, spent = :spent, "
                        "held = if_not_exists(held, :zero), room = :room - if_not_exists(held, :zero), "
                        "key_id = :kid"
                    ),
                    "ConditionExpression": condition,
                    "ExpressionAttributeNames": {"#w": "window"},
                    "ExpressionAttributeValues": {**values, ":kid": s(key_id)},
                }
            }
            result = KeyBudget(key_id, limit, period, window, spent, held, limit - spent - held)
        mark: dict[str, Any] = {
            "Update": {
                "TableName": table,
                "Key": wallets.wallet_key(org_id),
                "UpdateExpression": (
                    "SET limited_keys.#kid = :v" if limit is not None else "REMOVE limited_keys.#kid"
                ),
                "ConditionExpression": "attribute_exists(limited_keys)",
                "ExpressionAttributeNames": {"#kid": key_id},
                **({"ExpressionAttributeValues": {":v": s(period)}} if limit is not None else {}),
            }
        }
        cancelled = transact_if([budget_write, mark])
        if cancelled is not None:
            if cancelled.failed(1):
                _start_limited_map(org_id)  # a wallet from before key limits
            continue  # (or a settle moved the budget meanwhile: read it again)
        wallets.forget_view(org_id)
        return result
    raise Conflict("The key's budget kept changing while setting its limit; please retry.")


def key_usage_spend(org_id: str, key_id: str, since_day: str | None) -> int:
    """What a key spent by the usage counters from `since_day` (a UTC date; None: ever)."""
    condition = "pk = :pk AND begins_with(sk, :usage)"
    values: dict[str, Any] = {":pk": s(schema.org_pk(org_id)), ":kid": s(key_id), ":usage": s(schema.USAGE)}
    if since_day is not None:
        condition = "pk = :pk AND sk BETWEEN :lo AND :hi"
        values = {
            ":pk": values[":pk"],
            ":kid": values[":kid"],
            ":lo": s(f"{schema.USAGE}{since_day}"),
            ":hi": s(f"{schema.USAGE}~"),
        }
    kwargs: dict[str, Any] = {
        "TableName": settings().billing_table,
        "KeyConditionExpression": condition,
        "FilterExpression": "key_id = :kid",
        "ProjectionExpression": "credits",
        "ExpressionAttributeValues": values,
        "ConsistentRead": True,
    }
    total = 0
    while True:
        page = client().query(**kwargs)
        total += sum(as_int(item, "credits") for item in page.get("Items", []))
        if "LastEvaluatedKey" not in page:
            return total
        kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]


def _start_limited_map(org_id: str) -> None:
    wallets.conditional_update(
        org_id,
        UpdateExpression="SET limited_keys = :empty",
        ConditionExpression="attribute_exists(pk) AND attribute_not_exists(limited_keys)",
        ExpressionAttributeValues={":empty": {"M": {}}},
    )


def _drop_limited_mark(org_id: str, key_id: str) -> None:
    wallets.conditional_update(
        org_id,
        UpdateExpression="REMOVE limited_keys.#kid",
        ConditionExpression="attribute_exists(limited_keys)",
        ExpressionAttributeNames={"#kid": key_id},
    )


def budget_take(org_id: str, key_id: str, amount: int, window: str, room_needed: int) -> dict[str, Any]:
    """The budget's share of a hold (or a lease's slice) of `amount` against the key's limit:
    held on condition that the budget is in `window`, limited, and has `room_needed`."""
    return {
        "Update": {
            "TableName": settings().billing_table,
            "Key": key_budget_key(org_id, key_id),
            "UpdateExpression": "ADD held :h, room :nh",
            "ConditionExpression": "#w = :w AND lim > :zero AND room >= :need",
            "ExpressionAttributeNames": {"#w": "window"},
            "ExpressionAttributeValues": {
                ":h": n(amount),
                ":nh": n(-amount),
                ":w": s(window),
                ":zero": n(0),
                ":need": n(room_needed),
            },
            "ReturnValuesOnConditionCheckFailure": "ALL_OLD",
        }
    }


def budget_close(org_id: str, key_id: str, hold_amount: int, cost: int) -> dict[str, Any]:
    """The budget's share of closing a hold that counted against it: settled (`cost`) or not (0)."""
    return {
        "Update": {
            "TableName": settings().billing_table,
            "Key": key_budget_key(org_id, key_id),
            "UpdateExpression": "ADD held :nh, spent :c, room :hc",
            "ConditionExpression": "attribute_exists(pk)",
            "ExpressionAttributeValues": {
                ":nh": n(-hold_amount),
                ":c": n(cost),
                ":hc": n(hold_amount - cost),
            },
        }
    }
