"""Which Stripe events have been processed (data access).

An event is claimed with a conditional write before it is handled and marked done after,
so a replay, or two deliveries at once, are handled once. A claim whose handler died
lapses after its lease, so Stripe's next retry handles the event again; every handler is
idempotent by its ledger keys, so even that cannot move money twice.
"""

from __future__ import annotations

from datetime import datetime

from conduix.core import clock
from conduix.core.config import settings
from conduix.store import schema
from conduix.store.dynamo import client, write_if
from conduix.store.items import as_str, n, s

LEASE_SECONDS = 60


def _key(event_id: str) -> dict[str, dict[str, str]]:
    return schema.stripe_event_key(event_id)


CLAIMED, DONE, BUSY = "claimed", "done", "busy"


def claim(event_id: str, event_type: str, now: datetime) -> str:
    """CLAIMED if this delivery should handle the event, DONE if it was handled, BUSY while
    another delivery holds it (that one may still fail, so Stripe should retry this one)."""
    epoch = int(now.timestamp())
    refused = write_if(
        client().put_item,
        TableName=settings().billing_table,
        Item={
            **_key(event_id),
            "event_type": s(event_type),
            "status": s("processing"),
            "lease_until": n(epoch + LEASE_SECONDS),
            "received_at": s(clock.iso(now)),
        },
        ConditionExpression="attribute_not_exists(pk) OR (#status = :processing AND lease_until < :now)",
        ExpressionAttributeNames={"#status": "status"},
        ExpressionAttributeValues={":processing": s("processing"), ":now": n(epoch)},
        ReturnValuesOnConditionCheckFailure="ALL_OLD",
    )
    if refused:
        return DONE if as_str(refused.old, "status") == "done" else BUSY
    return CLAIMED


def finish(event_id: str, outcome: str) -> None:
    client().update_item(
        TableName=settings().billing_table,
        Key=_key(event_id),
        UpdateExpression="SET #status = :done, outcome = :outcome REMOVE lease_until",
        ExpressionAttributeNames={"#status": "status"},
        ExpressionAttributeValues={":done": s("done"), ":outcome": s(outcome)},
    )


def abandon(event_id: str) -> None:
    """Give the claim back after a failure, so Stripe's retry is handled at once."""
    client().delete_item(TableName=settings().billing_table, Key=_key(event_id))
