"""Credit grants that expire, spent first (data access + the attribution rule).

A grant with an expiry is an ordinary `grant` ledger entry plus an item of its own,
`GRANT#<entry id>` under the org, that says when it expires. The hot path knows nothing of
it: which credits a request spent is decided by attribution, from the ledger, when needed:

    Walk the org's `usage` entries in time order. Each debit draws on the grants alive at its
    time (granted at or before it, expiring after it), the one that expires first first, and
    only then on credits that never expire. What a grant has left at its expiry is its
    unspent remainder.

At expiry the remainder (never more than the balance then) leaves the wallet through one
`expiry` ledger entry whose idempotency key is the grant, so a rerun of the job moves
nothing twice. Open grants carry `grant_expiry_shard` and `grant_expires`, which the sparse
index `by_grant_expiry` lists for HoldSweeper's minute run; the expiry removes them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from conduix.accounts import alerts
from conduix.core import clock
from conduix.core.config import settings
from conduix.core.errors import IdempotencyConflict, InvalidRequest
from conduix.core.money import format_credits
from conduix.ledger import entries, wallets
from conduix.store import schema
from conduix.store.dynamo import client, write_if
from conduix.store.items import Item, as_int, as_str, n, s

log = logging.getLogger(__name__)

INDEX = "by_grant_expiry"
MAX_YEARS = 10


@dataclass(frozen=True)
class Grant:
    org_id: str
    entry_id: str  # the grant's ledger entry, "grant:<idempotency key>"
    amount: int
    granted_at: str  # ISO 8601 UTC, as the ledger line's created_at
    expires_at: str  # ISO 8601 UTC
    expired: bool = False
    expired_amount: int = 0


def parse_expiry(value: Any, now: datetime) -> datetime:
    """`expires_at`: an ISO 8601 time in UTC ("2027-01-31T00:00:00Z"), in the future."""
    explain = "'expires_at' must be an ISO 8601 time in UTC, such as \"2027-01-31T00:00:00Z\"."
    if not isinstance(value, str) or not value.isascii() or len(value) > 40:
        raise InvalidRequest(explain, param="expires_at")
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise InvalidRequest(explain, param="expires_at") from None
    if moment.tzinfo is None or moment.utcoffset() != timedelta(0):
        raise InvalidRequest(explain, param="expires_at")
    moment = moment.astimezone(UTC)
    if moment <= now:
        raise InvalidRequest("'expires_at' must be in the future.", param="expires_at")
    if moment > now + timedelta(days=366 * MAX_YEARS):
        raise InvalidRequest(f"'expires_at' must be within {MAX_YEARS} years.", param="expires_at")
    return moment


def _sk(entry_id: str) -> str:
    return f"{schema.GRANT}{entry_id}"


def _from_item(org_id: str, item: Item) -> Grant:
    return Grant(
        org_id=org_id,
        entry_id=as_str(item, "entry_id"),
        amount=as_int(item, "amount"),
        granted_at=as_str(item, "granted_at"),
        expires_at=as_str(item, "expires_on"),
        expired="grant_expiry_shard" not in item,
        expired_amount=as_int(item, "expired_amount"),
    )


def record(org_id: str, entry_id: str, amount: int, expires: datetime, now: datetime) -> Grant:
    """Write the grant's expiry before its credit lands (a credit never lands without it).
    The same grant again is a replay; the same key with another amount or expiry a conflict."""
    item = {
        "pk": s(schema.org_pk(org_id)),
        "sk": s(_sk(entry_id)),
        "entry_id": s(entry_id),
        "amount": n(amount),
        "granted_at": s(clock.iso(now)),
        "expires_on": s(clock.iso(expires)),
        "grant_expires": s(clock.iso(expires)),
        "grant_expiry_shard": s(wallets.sweep_shard(org_id)),
    }
    refused = write_if(
        client().put_item,
        TableName=settings().billing_table,
        Item=item,
        ConditionExpression="attribute_not_exists(pk)",
        ReturnValuesOnConditionCheckFailure="ALL_OLD",
    )
    if refused:
        old = _from_item(org_id, refused.old)
        if old.amount != amount or old.expires_at != clock.iso(expires):
            raise IdempotencyConflict(
                f"The idempotency key of '{entry_id}' was already used with another amount or expiry."
            )
        return old
    return _from_item(org_id, item)


def get(org_id: str, entry_id: str) -> Grant | None:
    item = (
        client()
        .get_item(
            TableName=settings().billing_table,
            Key=schema.org_key(org_id, _sk(entry_id)),
            ConsistentRead=True,
        )
        .get("Item")
    )
    return _from_item(org_id, item) if item else None


def _query(**kwargs: Any) -> list[Item]:
    items: list[Item] = []
    kwargs = {"TableName": settings().billing_table, **kwargs}
    while True:
        page = client().query(**kwargs)
        items.extend(page.get("Items", []))
        if "LastEvaluatedKey" not in page:
            return items
        kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]


def org_grants(org_id: str) -> list[Grant]:
    items = _query(
        KeyConditionExpression="pk = :pk AND begins_with(sk, :g)",
        ExpressionAttributeValues={":pk": s(schema.org_pk(org_id)), ":g": s(schema.GRANT)},
        ConsistentRead=True,
    )
    return [_from_item(org_id, item) for item in items]


def _debits(org_id: str, start: str, until: str) -> list[tuple[str, int]]:
    """(time, amount spent) of each usage entry from `start` up to `until`, in ledger order."""
    items = _query(
        KeyConditionExpression="pk = :pk AND sk BETWEEN :a AND :b",
        ExpressionAttributeValues={
            ":pk": s(schema.org_pk(org_id)),
            ":a": s(f"{schema.LEDGER}{start}"),
            ":b": s(f"{schema.LEDGER}{until}~"),
            ":usage": s("usage"),
        },
        FilterExpression="entry_type = :usage",
        ProjectionExpression="created_at, amount",
        ConsistentRead=True,
    )
    return [(as_str(i, "created_at"), -as_int(i, "amount")) for i in items if as_int(i, "amount") < 0]


def attribute(grants: list[Grant], debits: list[tuple[str, int]]) -> dict[str, int]:
    """What each grant has left after the debits drew on the grants alive at their time,
    the earliest expiry first (the rule in this module's docstring). Pure: tested alone."""
    left = {g.entry_id: g.amount for g in grants}
    order = sorted(grants, key=lambda g: (g.expires_at, g.granted_at, g.entry_id))
    for at, spent in debits:
        for grant in order:
            if spent <= 0:
                break
            if grant.granted_at <= at < grant.expires_at and left[grant.entry_id] > 0:
                drawn = min(spent, left[grant.entry_id])
                left[grant.entry_id] -= drawn
                spent -= drawn
    return left


def remaining(org_id: str, until: str, grants: list[Grant] | None = None) -> dict[str, int]:
    """Each open grant's remainder at `until` (ISO time). The walk starts at the earliest
    open grant, widened to any grant alive then, since it drew on the same debits."""
    grants = org_grants(org_id) if grants is None else grants
    open_grants = [g for g in grants if not g.expired]
    if not open_grants:
        return {}
    start = min(g.granted_at for g in open_grants)
    while True:
        earlier = [g.granted_at for g in grants if g.granted_at < start < g.expires_at]
        if not earlier:
            break
        start = min(earlier)
    window = [g for g in grants if g.expires_at > start]
    left = attribute(window, _debits(org_id, start, until))
    return {g.entry_id: left[g.entry_id] for g in open_grants}


# ------------------------------------------------------------------ the expiry job


def expire_due(now: datetime) -> dict[str, Any]:
    """Expire every open grant whose time has come (HoldSweeper, every minute). Safe to rerun
    and to run concurrently: the ledger key `expiry:<grant>` moves the remainder once."""
    expired = 0
    removed = 0
    for shard in range(wallets.SWEEP_SHARDS):
        due = _query(
            IndexName=INDEX,
            KeyConditionExpression="grant_expiry_shard = :shard AND grant_expires <= :now",
            ExpressionAttributeValues={":shard": s(str(shard)), ":now": s(clock.iso(now))},
        )
        for item in due:
            org_id = schema.org_of(as_str(item, "pk"))
            entry_id = as_str(item, "sk").removeprefix(schema.GRANT)
            try:
                amount = expire(org_id, entry_id, now)
            except Exception:  # the next run tries again; the ledger key keeps it once
                log.exception("could not expire a grant", extra={"org_id": org_id, "grant": entry_id})
                continue
            if amount is not None:
                expired += 1
                removed += amount
    return {"grants_expired": expired, "credits_expired": format_credits(removed)}


def expire(org_id: str, entry_id: str, now: datetime) -> int | None:
    """Move one grant's unspent remainder out of the wallet; the amount, or None if it was
    not due or already closed."""
    grants = org_grants(org_id)
    grant = next((g for g in grants if g.entry_id == entry_id), None)
    if grant is None or grant.expired or grant.expires_at > clock.iso(now):
        return None
    key = entry_id
    entry = entries.ledger_entry(org_id, f"expiry:{key}")
    if entry is None and entries.ledger_entry(org_id, entry_id) is None:
        amount = 0  # its credit never landed (the grant call failed after recording it)
    elif entry is None:
        left = remaining(org_id, grant.expires_at, grants)[entry_id]
        balance = wallets.get_wallet(org_id).balance
        amount = max(0, min(left, balance))
        try:
            entry, _ = entries.post_entry(
                org_id,
                kind="expiry",
                key=key,
                amount=-amount,
                description=(
                    f"Expired: {format_credits(amount)} unspent credits of {entry_id} "
                    f"(granted {format_credits(grant.amount)}, expired {grant.expires_at})"
                ),
                now=now,
            )
        except IdempotencyConflict:  # a concurrent run landed it first, with its own figures
            entry = entries.ledger_entry(org_id, f"expiry:{key}")
        amount = -entry.amount if entry else amount
    else:
        amount = -entry.amount
    client().update_item(
        TableName=settings().billing_table,
        Key=schema.org_key(org_id, _sk(entry_id)),
        UpdateExpression=(
            "SET expired_amount = :a, expired_at = :now REMOVE grant_expiry_shard, grant_expires"
        ),
        ExpressionAttributeValues={":a": n(amount), ":now": s(clock.iso(now))},
    )
    if amount:
        alerts.after_credit(org_id, now)
    return amount


def view(org_id: str, now: datetime) -> list[dict[str, Any]]:
    """The org's open expiring grants, soonest first, with what each has left now."""
    grants = org_grants(org_id)
    if not any(not g.expired for g in grants):
        return []
    left = remaining(org_id, clock.iso(now), grants)
    return [
        {
            "grant": g.entry_id,
            "granted": format_credits(g.amount),
            "remaining": format_credits(left[g.entry_id]),
            "granted_at": g.granted_at,
            "expires_at": g.expires_at,
        }
        for g in sorted(grants, key=lambda g: (g.expires_at, g.entry_id))
        if not g.expired
    ]
