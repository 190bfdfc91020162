"""The account's flags and settings, kept on the wallet so that a write's condition reads them.

The paused flag (requests refused for lack of credits), the auto-reload episode, the spend
cap, the plan (its requests per minute) and the billing mode; and the sparse indexes that list
wallets by such a flag (auto-reload due, invoice mode).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from conduix.core import clock
from conduix.core.config import settings
from conduix.core.errors import NotFound
from conduix.ledger import wallets
from conduix.pricing import plans
from conduix.store import schema
from conduix.store.dynamo import client, write_if
from conduix.store.items import n, s

BILLING_MODES = ("prepaid", "invoice")


# ------------------------------------------------------------------ account state: paused, auto-reload due


def mark_paused(org_id: str, now: datetime) -> bool:
    """Note that requests are being refused for lack of credits. True only for the first
    refusal since credits last landed, so the notice goes out once per pause."""
    return wallets.conditional_update(
        org_id,
        UpdateExpression="SET paused_at = :now",
        ConditionExpression="attribute_exists(pk) AND attribute_not_exists(paused_at)",
        ExpressionAttributeValues={":now": s(clock.iso(now))},
    )


def mark_reload_due(org_id: str) -> bool:
    """Start an auto-reload episode: once, when the available balance is below the threshold.

    The condition compares the stored attributes themselves, so concurrent settles mark the
    episode once and a stale estimate can never mark one speculatively.
    """
    return wallets.conditional_update(
        org_id,
        UpdateExpression="SET reload_due_shard = :shard ADD reload_episode :one",
        ConditionExpression=(
            "reload_enabled = :true AND attribute_not_exists(reload_due_shard) "
            "AND available < reload_threshold"
        ),
        ExpressionAttributeValues={
            ":shard": s(wallets.sweep_shard(org_id)),
            ":one": n(1),
            ":true": {"BOOL": True},
        },
    )


def end_reload_episode(org_id: str) -> bool:
    """Close the episode once credits brought the balance back to or above the threshold."""
    return wallets.conditional_update(
        org_id,
        UpdateExpression="REMOVE reload_due_shard",
        ConditionExpression="attribute_exists(reload_due_shard) AND available >= reload_threshold",
    )


# ------------------------------------------------------------------ settings kept on the wallet


def write_spend_cap(org_id: str, limit: int | None, now: datetime) -> None:
    """Set (or with None remove) the monthly cap; the month's spend and holds count at once."""
    wallets.forget_view(org_id)
    period = clock.period_of(now)
    wallets.roll_period(org_id, period)
    if limit is None:
        update = "SET capped = :false, cap_limit = :zero, cap_remaining = :zero - committed"
        values: dict[str, Any] = {":false": {"BOOL": False}, ":zero": n(0)}
    else:
        # cap_floor: what the month may still spend whatever the cap (the holds already placed),
        # so reconcile can tell a cap set below the spend from a cap overshoot.
        update = (
            "SET capped = :true, cap_limit = :limit, cap_remaining = :limit - committed, "
            "cap_floor = committed"
        )
        values = {":true": {"BOOL": True}, ":limit": n(limit)}
    refused = write_if(
        client().update_item,
        TableName=settings().billing_table,
        Key=wallets.wallet_key(org_id),
        UpdateExpression=update,
        ConditionExpression="attribute_exists(pk)",
        ExpressionAttributeValues=values,
    )
    if refused:
        raise NotFound(f"No wallet for org '{org_id}'.")


def set_plan(org_id: str, plan: plans.Plan) -> None:
    """The plan whose features the wallet's own writes enforce (requests per minute)."""
    wallets.forget_view(org_id)
    client().update_item(
        TableName=settings().billing_table,
        Key=wallets.wallet_key(org_id),
        UpdateExpression="SET #plan = :plan, rpm_limit = :rpm",
        ConditionExpression="attribute_exists(pk)",
        ExpressionAttributeNames={"#plan": "plan"},
        ExpressionAttributeValues={":plan": s(plan.id), ":rpm": n(plan.requests_per_minute)},
    )


def set_billing_mode(org_id: str, mode: str, now: datetime | None = None) -> None:
    """prepaid: the balance gates requests; invoice: usage accrues and is invoiced monthly
    (caps still hold). Wallets that have invoice-billed usage stay listed in a sparse index for
    MonthlyInvoicing after a switch back to prepaid, until the month of the switch is invoiced
    (`forget_invoiced_org`). Invoice mode keeps auto-reload off: the card must not pay for
    what the invoice bills."""
    wallets.forget_view(org_id)
    if mode == "invoice":
        update = (
            "SET billing_mode = :m, invoice_shard = :shard, reload_enabled = :false REMOVE reload_due_shard"
        )
        values: dict[str, Any] = {":m": s(mode), ":shard": s("all"), ":false": {"BOOL": False}}
    else:
        period = clock.period_of(now or clock.now())
        update, values = "SET billing_mode = :m, invoice_last_period = :p", {":m": s(mode), ":p": s(period)}
    client().update_item(
        TableName=settings().billing_table,
        Key=wallets.wallet_key(org_id),
        UpdateExpression=update,
        ConditionExpression="attribute_exists(pk)",
        ExpressionAttributeValues=values,
    )


# ------------------------------------------------------------------ sparse indexes of wallets


def orgs_in_index(index: str, key_attribute: str, value: str) -> list[str]:
    """Org ids of the wallets a sparse index lists under one key value (all pages)."""
    org_ids: list[str] = []
    kwargs: dict[str, Any] = {
        "TableName": settings().billing_table,
        "IndexName": index,
        "KeyConditionExpression": "#k = :v",
        "ExpressionAttributeNames": {"#k": key_attribute},
        "ExpressionAttributeValues": {":v": s(value)},
    }
    while True:
        page = client().query(**kwargs)
        org_ids += [schema.org_of(item["pk"]["S"]) for item in page.get("Items", [])]
        if "LastEvaluatedKey" not in page:
            return org_ids
        kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]


def invoice_mode_orgs() -> list[str]:
    """Orgs in invoice mode, and those that left it but still have a month to invoice."""
    return orgs_in_index("by_invoice_mode", "invoice_shard", "all")


def forget_invoiced_org(org_id: str, period: str) -> bool:
    """Drop a prepaid org from the invoicing index once `period`, the month it left invoice
    mode (or a later one), has been invoiced."""
    return wallets.conditional_update(
        org_id,
        UpdateExpression="REMOVE invoice_shard, invoice_last_period",
        ConditionExpression="billing_mode = :prepaid AND invoice_last_period <= :p",
        ExpressionAttributeValues={":prepaid": s("prepaid"), ":p": s(period)},
    )
