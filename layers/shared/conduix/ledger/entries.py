"""The ledger, append-only: each entry is two items written together, the marker under its
idempotency key (whose conditional put makes a movement happen once) and the line under its
time.

`post_entry` moves credits outside a request (a top-up, a grant, plan credits or, negative, a
refund taken back); a request's own entry is written by its settle (settles). The org's items
are read back here too, with strongly consistent queries: what reconcile replays.
"""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from conduix.core import clock
from conduix.core.config import settings
from conduix.core.errors import IdempotencyConflict, NotFound
from conduix.ledger import wallet_settings, wallets
from conduix.store import schema
from conduix.store.dynamo import client, transact_if
from conduix.store.items import Item, as_int, as_str, n, s


def ledger_items(
    org_id: str,
    *,
    kind: str,
    key: str,
    amount: int,
    now: datetime,
    description: str,
    extra: Item | None = None,
) -> tuple[Item, Item]:
    """A ledger entry as two items written together: the marker under its idempotency key
    (whose conditional put is what makes a movement happen once) and the statement line under
    its time, so an org's ledger reads in order with strongly consistent queries."""
    entry_id = f"{kind}:{key}"
    created = clock.iso(now)
    line_sk = f"{schema.LEDGER}{created}#{entry_id}"
    entry = {
        "pk": s(schema.org_pk(org_id)),
        "entry_id": s(entry_id),
        "entry_type": s(kind),
        "amount": n(amount),
        "description": s(description),
        "created_at": s(created),
        **(extra or {}),
    }
    fingerprint = hashlib.sha256(f"{kind}|{amount}".encode()).hexdigest()[:32]
    marker = {
        **entry,
        "sk": s(f"{schema.ENTRY}{entry_id}"),
        "fingerprint": s(fingerprint),
        "line_sk": s(line_sk),
    }
    return marker, {**entry, "sk": s(line_sk)}


def query_prefix(org_id: str, prefix: str) -> list[Item]:
    """Every item of the org whose sort key starts with `prefix` (a consistent read)."""
    return _query_org(
        org_id,
        "pk = :pk AND begins_with(sk, :prefix)",
        {":pk": s(schema.org_pk(org_id)), ":prefix": s(prefix)},
    )


def org_items(org_id: str) -> list[Item]:
    """Every item of the org (a consistent read): what reconcile replays."""
    return _query_org(org_id, "pk = :pk", {":pk": s(schema.org_pk(org_id))})


def _query_org(org_id: str, condition: str, values: Item) -> list[Item]:
    items: list[Item] = []
    kwargs: dict[str, Any] = {
        "TableName": settings().billing_table,
        "KeyConditionExpression": condition,
        "ExpressionAttributeValues": values,
        "ConsistentRead": True,
    }
    while True:
        page = client().query(**kwargs)
        items += page.get("Items", [])
        if "LastEvaluatedKey" not in page:
            return items
        kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]


def all_org_ids() -> list[str]:
    """Every org with a wallet (a scan: for the operator's audit, never a request path)."""
    org_ids: list[str] = []
    kwargs: dict[str, Any] = {
        "TableName": settings().billing_table,
        "FilterExpression": "sk = :wallet",
        "ExpressionAttributeValues": {":wallet": s(schema.WALLET)},
        "ProjectionExpression": "pk",
    }
    while True:
        page = client().scan(**kwargs)
        org_ids += [schema.org_of(as_str(i, "pk")) for i in page.get("Items", [])]
        if "LastEvaluatedKey" not in page:
            return sorted(org_ids)
        kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]


# ------------------------------------------------------------------ credits in (grants, purchases)


@dataclass(frozen=True)
class LedgerEntry:
    entry_id: str
    entry_type: str
    amount: int
    description: str
    created_at: str


def entry_from_item(item: Item) -> LedgerEntry:
    return LedgerEntry(
        entry_id=as_str(item, "entry_id"),
        entry_type=as_str(item, "entry_type"),
        amount=as_int(item, "amount"),
        description=as_str(item, "description"),
        created_at=as_str(item, "created_at"),
    )


def post_entry(
    org_id: str, *, kind: str, key: str, amount: int, description: str, now: datetime
) -> tuple[LedgerEntry, bool]:
    """Post one ledger entry outside a request: a credit (top-up, grant, plan credits) or,
    negative, a debit (a refund or dispute taken back, a grant expired), under its idempotency key.

    Returns the entry and whether this call created it. The same key again returns the
    original entry; the same key with another amount raises IdempotencyConflict.
    """
    marker, line = ledger_items(org_id, kind=kind, key=key, amount=amount, now=now, description=description)
    # Which call wrote the marker: a retry after a lost answer finds its own write, not a duplicate.
    writer = uuid.uuid4().hex
    table = settings().billing_table
    items: list[Any] = [
        {
            "Put": {
                "TableName": table,
                "Item": {**marker, "writer": s(writer)},
                "ConditionExpression": "attribute_not_exists(pk)",
                "ReturnValuesOnConditionCheckFailure": "ALL_OLD",
            }
        },
        {"Put": {"TableName": table, "Item": line}},
        {
            "Update": {
                "TableName": table,
                "Key": wallets.wallet_key(org_id),
                # Credits landing end an "account paused" spell (its notice may go out again).
                "UpdateExpression": "ADD balance :a, available :a"
                + (" REMOVE paused_at" if amount > 0 else ""),
                "ConditionExpression": "attribute_exists(pk)",
                "ExpressionAttributeValues": {":a": n(amount)},
            }
        },
    ]
    cancelled = transact_if(items)
    if cancelled is not None:
        if cancelled.failed(0):
            existing = cancelled.old(0)
            if as_str(existing, "fingerprint") != marker["fingerprint"]["S"]:
                raise IdempotencyConflict(
                    f"The idempotency key '{key}' was already used with a different amount."
                ) from None
            if as_str(existing, "writer") != writer:
                return entry_from_item(existing), False
            # This call's own first attempt landed and its answer was lost: it is the credit.
        elif cancelled.failed(2):
            raise NotFound(f"No wallet for org '{org_id}'.") from None
        else:
            raise cancelled.error
    wallets.moved(org_id, balance=amount)
    if amount > 0:
        wallet_settings.end_reload_episode(org_id)
    return entry_from_item(marker), True


def ledger_entry(org_id: str, entry_id: str) -> LedgerEntry | None:
    """The ledger entry under an idempotency key, e.g. "plan_credits:<invoice id>"."""
    item = (
        client()
        .get_item(
            TableName=settings().billing_table,
            Key=schema.org_key(org_id, f"{schema.ENTRY}{entry_id}"),
            ConsistentRead=True,
        )
        .get("Item")
    )
    return entry_from_item(item) if item else None
