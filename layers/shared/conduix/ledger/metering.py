"""What a billed request consumed (Usage), and where that is counted.

The usage counters are one item per org, day, model and key, which every settle (and every
free cache hit) adds to; the ledger entry of a billed request (`usage:<request id>`) carries
the same figures.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from conduix.core.config import settings
from conduix.ledger import entries
from conduix.store import schema
from conduix.store.dynamo import client
from conduix.store.items import Item, n, s


@dataclass(frozen=True)
class Usage:
    """What a settled request consumed, for the ledger and the per-model daily aggregate."""

    model: str
    key_id: str
    prompt_tokens: int
    completion_tokens: int
    cost: int
    billed_by: str = "prepaid"  # the wallet's billing mode when the request ran
    # Invoice mode: the balance the caller last saw. The settle draws on a positive balance
    # first and invoices only the rest (checked by the settle's own condition, not trusted).
    funds_hint: int = 0


def usage_update(
    org_id: str, now: datetime, model: str, key_id: str, counts: dict[str, int]
) -> dict[str, Any]:
    """Key and expression that add `counts` to an org's usage of one model by one key on one day."""
    day = now.strftime("%Y-%m-%d")
    names = {"#day": "day", "#model": "model", "#key": "key_id"}
    values = {":day": s(day), ":model": s(model), ":key": s(key_id)}
    adds = []
    for i, (name, count) in enumerate(counts.items()):
        names[f"#c{i}"] = name
        values[f":c{i}"] = n(count)
        adds.append(f"#c{i} :c{i}")
    return {
        "Key": schema.org_key(org_id, f"{schema.USAGE}{day}#{model}#{key_id}"),
        "UpdateExpression": "SET #day = :day, #model = :model, #key = :key ADD " + ", ".join(adds),
        "ExpressionAttributeNames": names,
        "ExpressionAttributeValues": values,
    }


def billed_usage_update(org_id: str, now: datetime, usage: Usage) -> dict[str, Any]:
    """The transaction action that counts one billed request in its usage aggregate."""
    counts = {
        "requests": 1,
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "credits": usage.cost,
    }
    return {
        "Update": {
            "TableName": settings().billing_table,
            **usage_update(org_id, now, usage.model, usage.key_id, counts),
        }
    }


def record_cache_hit(org_id: str, model: str, key_id: str, saved: int, now: datetime) -> None:
    """Count a free cache hit and what it would have cost, for the usage view."""
    client().update_item(
        TableName=settings().billing_table,
        **usage_update(org_id, now, model, key_id, {"cache_hits": 1, "saved_credits": saved}),
    )


def usage_ledger_items(org_id: str, request_id: str, usage: Usage, now: datetime) -> tuple[Item, Item]:
    """The ledger entry `usage:<request id>` (marker and line) of a billed request."""
    return entries.ledger_items(
        org_id,
        kind="usage",
        key=request_id,
        amount=-usage.cost,
        now=now,
        description=f"{usage.model}: {usage.prompt_tokens} prompt + {usage.completion_tokens} output tokens",
        extra={
            "model": s(usage.model),
            "key_id": s(usage.key_id),
            "prompt_tokens": n(usage.prompt_tokens),
            "completion_tokens": n(usage.completion_tokens),
            "billed_by": s(usage.billed_by),
        },
    )
