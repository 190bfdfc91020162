"""The month's invoice record of an org, `INVOICE#<YYYY-MM>` (data access for invoicing).

Written once, with the month's figures frozen, before any Stripe call; then moved forward
only, step by step, so a rerun resumes where the last run stopped (see invoicing).
"""

from __future__ import annotations

from datetime import datetime

from conduix.core import clock
from conduix.core.config import settings
from conduix.store import schema
from conduix.store.dynamo import client, write_if
from conduix.store.items import Item, n, s

STEPS = ("intent", "created", "finalized", "sent")  # forward only: a record never moves back


def _key(org_id: str, period: str) -> Item:
    return schema.org_key(org_id, f"{schema.INVOICE}{period}")


def get(org_id: str, period: str) -> Item | None:
    item = client().get_item(
        TableName=settings().billing_table, Key=_key(org_id, period), ConsistentRead=True
    )
    found: Item | None = item.get("Item")
    return found


def record_intent(org_id: str, period: str, figures: Item, now: datetime) -> Item:
    """Write the intent once (`figures`: the month's frozen amounts, as attributes); a
    concurrent or earlier run's intent wins and is returned."""
    item: Item = {
        **_key(org_id, period),
        "status": s("intent"),
        "idempotency_key": s(f"usage-invoice-{org_id}-{period}"),
        **figures,
        "intent_at": s(clock.iso(now)),
        "intent_epoch": n(int(now.timestamp())),
    }
    refused = write_if(
        client().put_item,
        TableName=settings().billing_table,
        Item=item,
        ConditionExpression="attribute_not_exists(pk)",
        ReturnValuesOnConditionCheckFailure="ALL_OLD",
    )
    return refused.old if refused else item  # a record written first (another run) stands


def advance(org_id: str, period: str, status: str, invoice_id: str, now: datetime) -> None:
    """Move the record to `status` (never back) and keep the invoice's id."""
    later = [s(step) for step in STEPS[STEPS.index(status) :]]
    names = ", ".join(f":s{i}" for i in range(len(later)))
    write_if(  # (refused: already at or past `status`)
        client().update_item,
        TableName=settings().billing_table,
        Key=_key(org_id, period),
        UpdateExpression="SET #status = :status, stripe_invoice_id = :id, #at = :now",
        ConditionExpression=f"attribute_exists(pk) AND NOT #status IN ({names})",
        ExpressionAttributeNames={"#status": "status", "#at": f"{status}_at"},
        ExpressionAttributeValues={
            ":status": s(status),
            ":id": s(invoice_id),
            ":now": s(clock.iso(now)),
            **{f":s{i}": v for i, v in enumerate(later)},
        },
    )
