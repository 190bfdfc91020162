"""Per-key request counts, one small item per key and minute (`RPM#<key id>@<minute>`).

A key's requests per minute are counted on an item of their own, not on the wallet: the
wallet is written once per lease whatever the number of keys, and a key's count is written
by that key's traffic only. A hold counts its one request in its own transaction (the
`count_one` action); a leasing environment takes a key's requests in blocks (`take_block`,
one conditional update), and gives back what a block did not use while its minute lasts.
Both compare the count with the limit the environment's view of the wallet knows, and the
hold's wallet condition checks that limit is still the stored one.

An item outlives its minute by a few (TTL), so the table keeps no more than a key's active
minutes; a count is never read on the billed path.
"""

from __future__ import annotations

import contextlib
from datetime import datetime
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from conduix.core.config import settings
from conduix.core.errors import RateLimited, ServiceBusy
from conduix.store import schema
from conduix.store.dynamo import client, retrying, write_if
from conduix.store.items import as_int, n

KEEP_MINUTES = 5  # an item's TTL after its minute: past minutes are never written again


def window_key(org_id: str, key_id: str, minute: int) -> dict[str, Any]:
    return schema.org_key(org_id, f"{schema.RATE}{key_id}@{minute}")


def _expires(minute: int) -> dict[str, str]:
    return n((minute + 1 + KEEP_MINUTES) * 60)


def count_one(org_id: str, key_id: str, minute: int, limit: int) -> dict[str, Any]:
    """A hold's transaction action: count one request in the key's minute, below `limit`."""
    return {
        "Update": {
            "TableName": settings().billing_table,
            "Key": window_key(org_id, key_id, minute),
            "UpdateExpression": "ADD requests :one SET expires_at = :exp",
            "ConditionExpression": "attribute_not_exists(requests) OR requests < :limit",
            "ExpressionAttributeValues": {":one": n(1), ":limit": n(limit), ":exp": _expires(minute)},
        }
    }


def take_block(org_id: str, key_id: str, minute: int, requests: int, limit: int) -> int:
    """Count up to `requests` of the key in `minute` at once, as many as fit under `limit`:
    how many were counted, fewer than asked for the minute's last ones, 0 when it is full.
    Raises ServiceBusy when the item stays throttled, or keeps changing under the refusals."""
    want = requests
    for _ in range(5):

        def update(k: int = want) -> object:
            return client().update_item(
                TableName=settings().billing_table,
                Key=window_key(org_id, key_id, minute),
                UpdateExpression="ADD requests :k SET expires_at = :exp",
                ConditionExpression="attribute_not_exists(requests) OR requests <= :room",
                ExpressionAttributeValues={":k": n(k), ":room": n(limit - k), ":exp": _expires(minute)},
                ReturnValuesOnConditionCheckFailure="ALL_OLD",
            )

        refused = write_if(retrying, update)
        if refused is None:
            return want
        room = limit - as_int(refused.old, "requests")
        if room <= 0:
            return 0
        want = min(want, room)  # the minute's last requests: what is left of it
    raise ServiceBusy("The billing store is busy; please retry the request.")


def rate_limited(limit: int, plan_name: str, now: datetime) -> RateLimited:
    """The refusal of a request over its key's limit, however it was counted."""
    return RateLimited(
        f"Rate limit reached: {limit} requests per minute for this API key on the "
        f"{plan_name} plan. Retry after the minute turns.",
        retry_after_seconds=60 - now.second,
    )


def give_back(org_id: str, key_id: str, minute: int, requests: int) -> None:
    """Uncount a block's unused requests (best effort: a minute that is over, or an item that
    stays busy, keeps them; the key then serves fewer, never more)."""
    with contextlib.suppress(ClientError, BotoCoreError):
        write_if(
            client().update_item,
            TableName=settings().billing_table,
            Key=window_key(org_id, key_id, minute),
            UpdateExpression="ADD requests :nk",
            ConditionExpression="requests >= :k",  # never creates an item, nor goes below zero
            ExpressionAttributeValues={":nk": n(-requests), ":k": n(requests)},
        )


def counted(org_id: str, key_id: str, minute: int) -> int:
    """The key's requests counted in `minute` (operators and tests; never on the billed path)."""
    item = (
        client()
        .get_item(
            TableName=settings().billing_table, Key=window_key(org_id, key_id, minute), ConsistentRead=True
        )
        .get("Item")
    )
    return as_int(item or {}, "requests")
