"""API key items (data access): minted, found by hash, listed, revoked.

A key is shown once and stored only as its SHA-256: keys are 32 random bytes, so a plain
hash is as strong as a slow one and lets a request find its key with one GetItem. The key
item sits under its hash; a second item under the org lists the org's keys. The org's profile
item counts its live keys, so a plan's limit holds under races.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from botocore.exceptions import ClientError

from conduix.core import clock
from conduix.core.config import settings
from conduix.core.errors import Conflict, NotFound
from conduix.ledger.wallets import note_revoked_key
from conduix.store import schema
from conduix.store.dynamo import cancellation_reasons, client, error_code
from conduix.store.items import Item, as_str, n, s

KEY_PREFIX = "cdx_"
SCOPES = ("inference", "billing")


def hash_key(api_key: str) -> str:
    return hashlib.sha256(api_key.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class ApiKey:
    key_id: str
    org_id: str
    name: str
    scopes: tuple[str, ...]
    created_at: str
    revoked: bool


def _key_from_item(item: Item) -> ApiKey:
    return ApiKey(
        key_id=as_str(item, "key_id"),
        org_id=as_str(item, "org_id"),
        name=as_str(item, "name"),
        scopes=tuple(item.get("scopes", {}).get("SS", [])),
        created_at=as_str(item, "created_at"),
        revoked=bool(item.get("revoked", {}).get("BOOL", False)),
    )


def insert_api_key(
    org_id: str, name: str, scopes: tuple[str, ...], now: datetime, max_keys: int
) -> tuple[str, ApiKey]:
    """Mint a key, if the org has fewer than `max_keys` live ones (its plan's limit).
    Returns the secret (never stored, shown once) and its record."""
    secret = KEY_PREFIX + secrets.token_urlsafe(32)
    key = ApiKey(
        key_id=f"key_{secrets.token_hex(6)}",
        org_id=org_id,
        name=name,
        scopes=scopes,
        created_at=clock.iso(now),
        revoked=False,
    )
    fields: Item = {
        "key_id": s(key.key_id),
        "org_id": s(org_id),
        "name": s(name),
        "scopes": {"SS": list(scopes)},
        "created_at": s(key.created_at),
        "revoked": {"BOOL": False},
        "hint": s(secret[:8] + "…" + secret[-4:]),
    }
    key_hash = hash_key(secret)
    table = settings().billing_table
    # Not through `transact_if`, which retries: the org's key count is not idempotent.
    try:
        client().transact_write_items(
            TransactItems=[
                {
                    # The live-key count is kept on the org so the plan's limit holds under races.
                    "Update": {
                        "TableName": table,
                        "Key": schema.org_key(org_id, schema.PROFILE),
                        "UpdateExpression": "ADD live_keys :one",
                        "ConditionExpression": (
                            "attribute_exists(pk) AND (attribute_not_exists(live_keys) OR live_keys < :max)"
                        ),
                        "ExpressionAttributeValues": {":one": n(1), ":max": n(max_keys)},
                        "ReturnValuesOnConditionCheckFailure": "ALL_OLD",
                    }
                },
                {"Put": {"TableName": table, "Item": {**schema.key_lookup_key(key_hash), **fields}}},
                {
                    "Put": {
                        "TableName": table,
                        "Item": {
                            **schema.org_key(org_id, f"{schema.API_KEY}{key.key_id}"),
                            "key_hash": s(key_hash),
                            **fields,
                        },
                    }
                },
            ]
        )
    except ClientError as exc:
        reasons = cancellation_reasons(exc)
        if (
            error_code(exc) == "TransactionCanceledException"
            and reasons[0].get("Code") == "ConditionalCheckFailed"
        ):
            if not reasons[0].get("Item"):
                raise NotFound(f"No org '{org_id}'.") from None
            raise Conflict(
                f"The org already has {max_keys} live API keys, the most its plan allows. "
                "Revoke one or change plan.",
                code="api_key_limit_reached",
            ) from None
        raise
    return secret, key


def find_key(key_hash: str, *, consistent: bool = False) -> ApiKey | None:
    item = (
        client()
        .get_item(
            TableName=settings().billing_table,
            Key=schema.key_lookup_key(key_hash),
            ConsistentRead=consistent,
        )
        .get("Item")
    )
    return _key_from_item(item) if item else None


def list_api_keys(org_id: str) -> list[ApiKey]:
    kwargs: dict[str, Any] = {
        "TableName": settings().billing_table,
        "KeyConditionExpression": "pk = :pk AND begins_with(sk, :prefix)",
        "ExpressionAttributeValues": {":pk": s(schema.org_pk(org_id)), ":prefix": s(schema.API_KEY)},
    }
    return [_key_from_item(item) for item in client().query(**kwargs).get("Items", [])]


def mark_key_revoked(org_id: str, key_id: str, now: datetime) -> ApiKey:
    """Revoke a key: its items say so for every later lookup, and the org's wallet refuses it
    in the hold's own condition, so a warm function that still remembers it is refused too."""
    item = (
        client()
        .get_item(
            TableName=settings().billing_table,
            Key=schema.org_key(org_id, f"{schema.API_KEY}{key_id}"),
            ConsistentRead=True,
        )
        .get("Item")
    )
    if not item:
        raise NotFound(f"No API key '{key_id}' in org '{org_id}'.")
    if item.get("revoked", {}).get("BOOL"):
        # Marked again: a retry may follow a call that failed between the two writes.
        note_revoked_key(org_id, key_id, now)
        return _key_from_item(item)
    table = settings().billing_table
    revoke: dict[str, Any] = {
        "UpdateExpression": "SET revoked = :true",
        "ExpressionAttributeValues": {":true": {"BOOL": True}},
    }
    updates: list[Any] = [
        {
            "Update": {
                "TableName": table,
                "Key": {"pk": item["pk"], "sk": item["sk"]},
                **revoke,
                "ConditionExpression": "revoked = :false",
                "ExpressionAttributeValues": {":true": {"BOOL": True}, ":false": {"BOOL": False}},
            }
        },
        {
            "Update": {
                "TableName": table,
                "Key": schema.org_key(org_id, schema.PROFILE),
                "UpdateExpression": "ADD live_keys :minus_one",
                "ExpressionAttributeValues": {":minus_one": n(-1)},
            }
        },
        {
            "Update": {
                "TableName": table,
                "Key": schema.key_lookup_key(as_str(item, "key_hash")),
                **revoke,
            }
        },
    ]
    try:
        client().transact_write_items(TransactItems=updates)
    except ClientError as exc:
        if error_code(exc) != "TransactionCanceledException":
            raise
        # Revoked meanwhile by another call: the outcome is the same.
    note_revoked_key(org_id, key_id, now)
    return _key_from_item({**item, "revoked": {"BOOL": True}})
