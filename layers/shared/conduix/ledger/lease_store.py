"""Escrow leases in the store: the `LEASE#<id>` item and its `LSPEND#<lease>#<request>` spend
records (the design, its invariants and failure cases: `conduix.ledger.leases`).

`acquire` takes a slice of the wallet's credit and cap (and of a limited key's budget) with one
transaction; `record` bills one request of a lease with items nobody else writes; what is
still open is read back by `open_leases`, `open_spends` and `unfolded`. Folding a lease back
into the wallet is `conduix.ledger.lease_folds`.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from conduix.core import clock
from conduix.core.config import settings
from conduix.core.errors import Conflict
from conduix.ledger import entries, holds, key_limits, metering, settles, wallets
from conduix.store import schema
from conduix.store.dynamo import transact_if
from conduix.store.items import Item, as_int, as_str, n, s

MAX_FOLD_ACTIONS = 96  # a fold (lease, wallet, key budget, a usage row per day and model): one transaction
SLICE_FRACTION = 16  # a slice is at most this fraction of the available credit (and key budget) when taken
SETTLE_MARGIN_SECONDS = 35  # a lease expires this long after its last reservation (Completion: <= 30 s)


def lease_key(org_id: str, lease_id: str) -> dict[str, Any]:
    return schema.org_key(org_id, f"{schema.LEASE}{lease_id}")


def spend_key(org_id: str, lease_id: str, request_id: str) -> dict[str, Any]:
    return schema.org_key(org_id, f"{schema.LEASE_SPEND}{lease_id}#{request_id}")


@dataclass(frozen=True)
class Spend:
    request_id: str
    cost: int
    created_at: str
    usage: metering.Usage
    lease_id: str = ""


@dataclass
class Lease:
    org_id: str
    key_id: str  # a key with a spend limit, whose budget the slice is held in too; or "" (any key)
    lease_id: str
    amount: int
    requests: int  # at most, whatever their keys (each key's are counted in its rate windows)
    use_until: float  # epoch seconds: no new reservation after this
    taken_at: float  # epoch seconds
    expires_at: int  # epoch seconds: HoldSweeper folds it after this
    reserved: int = 0  # in flight
    inflight: int = 0
    spends: dict[str, Spend] = field(default_factory=dict)
    rows: set[tuple[str, str]] = field(default_factory=set)  # (day, model) usage rows
    retired: bool = False
    uncertain: bool = False  # a spend's write may or may not have landed: HoldSweeper folds it
    spent: int = 0  # the sum of `spends`' costs, kept as they are added (not summed per request)
    budget: bool = False  # the slice is held against `key_id`'s spend limit too (its budget item)

    def room(self, amount: int, now: float) -> bool:
        used = len(self.spends) + self.inflight
        return (
            not self.retired
            and now < self.use_until
            and self.reserved + self.spent + amount <= self.amount
            and used < self.requests
            and len(self.rows) + 3 <= MAX_FOLD_ACTIONS
        )


# ------------------------------------------------------------------ data access


def acquire(org_id: str, key_id: str, amount: int, requests: int, now: datetime) -> Lease | None:
    """Lease `amount` for up to `requests` requests in one transaction, or None when the wallet
    cannot spare it (the caller takes a per-request hold, which refuses precisely).

    A lease is the org's, for any of its keys without a spend limit (`key_id` is the key of the
    request that takes it); a key with a spend limit (as the view knows it) leases its own,
    from its budget too. A key's requests per minute are counted apart (rate_windows)."""
    known = wallets.known_wallet(org_id)
    key_period = known.limited_keys.get(key_id, "")
    at = int(now.timestamp())
    lease_id = secrets.token_hex(8)
    # Reserve no longer than a warm function may trust a key; a request reserved by then has
    # settled SETTLE_MARGIN_SECONDS later, when the lease expires.
    use_until = at + settings().key_cache_seconds
    expires = use_until + SETTLE_MARGIN_SECONDS
    same, same_values = holds.same_settings(known)
    table = settings().billing_table
    actions: list[Any] = [
        {
            "Update": {
                "TableName": table,
                "Key": wallets.wallet_key(org_id),
                "UpdateExpression": (
                    "SET sweep_shard = :shard ADD held :a, available :na, committed :a, cap_remaining :na, "
                    "lease_count :one"
                ),
                # The requesting key's marks are checked as a hold would: a view that missed a
                # revocation or a new limit learns it here (the others' come with the view).
                "ConditionExpression": (
                    "#period = :p AND attribute_not_exists(revoked_keys.#kid) AND "
                    + (
                        "limited_keys.#kid = :kperiod "
                        if key_period
                        else "attribute_not_exists(limited_keys.#kid) "
                    )
                    + "AND rpm_limit = :limit AND available >= :a "
                    "AND (capped = :false OR cap_remaining >= :a) AND " + same
                ),
                "ExpressionAttributeNames": {"#period": "period", "#kid": key_id, "#plan": "plan"},
                "ExpressionAttributeValues": {
                    ":shard": s(wallets.sweep_shard(org_id)),
                    ":a": n(amount),
                    ":na": n(-amount),
                    ":one": n(1),
                    ":limit": n(known.rpm_limit),
                    ":p": s(clock.period_of(now)),
                    ":false": {"BOOL": False},
                    **({":kperiod": s(key_period)} if key_period else {}),
                    **same_values,
                },
                "ReturnValuesOnConditionCheckFailure": "ALL_OLD",
            }
        },
        {
            "Put": {
                "TableName": table,
                "Item": {
                    **lease_key(org_id, lease_id),
                    "lease_id": s(lease_id),
                    "key_id": s(key_id if key_period else ""),
                    "amount": n(amount),
                    "requests": n(requests),
                    "lease_expires": n(expires),  # not `expires_at`, the table's TTL attribute
                    "created_at": s(clock.iso(now)),
                    **({"budget_key": s(key_id)} if key_period else {}),
                },
                "ConditionExpression": "attribute_not_exists(pk)",
            }
        },
    ]
    if key_period:  # (refused, a per-request hold rolls the window or refuses exactly)
        budget_window = clock.limit_window(key_period, now)
        actions.append(key_limits.budget_take(org_id, key_id, amount, budget_window, amount * SLICE_FRACTION))
    cancelled = transact_if(actions)
    if cancelled is not None:
        old = cancelled.old(0)
        if old:
            wallets.learn(org_id, old)  # whatever refused it, the view is fresh for the fallback
        return None
    wallets.moved(org_id, held=amount, leases=1)
    return Lease(
        org_id,
        key_id if key_period else "",
        lease_id,
        amount,
        requests,
        float(use_until),
        now.timestamp(),
        expires,
        budget=bool(key_period),
    )


def spend_puts(
    org_id: str, lease_id: str, request_id: str, usage: metering.Usage, now: datetime
) -> list[dict[str, Any]]:
    """A lease's spend: the request's ledger entry (marker, put only once, and line) and its
    `LSPEND` record, which the lease's fold debits."""
    marker, line = metering.usage_ledger_items(org_id, request_id, usage, now)
    line["lease_id"] = marker["lease_id"] = s(lease_id)
    spend = {
        **spend_key(org_id, lease_id, request_id),
        "lease_id": s(lease_id),
        "request_id": s(request_id),
        "cost": n(usage.cost),
        "model": s(usage.model),
        "key_id": s(usage.key_id),
        "prompt_tokens": n(usage.prompt_tokens),
        "completion_tokens": n(usage.completion_tokens),
        "created_at": s(clock.iso(now)),
        # Kept a week: once its lease is folded a spend is history (its ledger entry stays).
        "expires_at": n(int(now.timestamp()) + 7 * 86400),
    }
    table = settings().billing_table
    return [
        {"Put": {"TableName": table, "Item": marker, "ConditionExpression": "attribute_not_exists(pk)"}},
        {"Put": {"TableName": table, "Item": line}},
        {"Put": {"TableName": table, "Item": spend}},
    ]


def record(
    lease: Lease,
    request_id: str,
    hold_amount: int,
    usage: metering.Usage,
    now: datetime,
    *,
    also: Sequence[dict[str, Any]] = (),
) -> settles.SettleOutcome:
    """Bill one request of a lease: its ledger entry and its spend record, in one transaction
    of items no other request writes. The debit lands with the lease's fold."""
    org_id, c = lease.org_id, usage.cost
    table = settings().billing_table
    items: list[Any] = [
        *spend_puts(org_id, lease.lease_id, request_id, usage, now),
        {  # only into a lease still open and not expired: HoldSweeper folds after its expiry
            "ConditionCheck": {
                "TableName": table,
                "Key": lease_key(org_id, lease.lease_id),
                "ConditionExpression": "lease_expires > :now",
                "ExpressionAttributeValues": {":now": n(int(now.timestamp()))},
            }
        },
        *also,
    ]
    if c > hold_amount:
        items.append(
            {
                "Put": {
                    "TableName": table,
                    "Item": settles.over_hold_item(org_id, request_id, hold_amount, usage, now),
                }
            }
        )
    outcome = settles.SettleOutcome.SETTLED
    cancelled = transact_if(items)
    if cancelled is not None:
        if cancelled.failed(0):
            outcome = settles.SettleOutcome.ALREADY_SETTLED  # a retry after a lost answer: it landed
        elif cancelled.failed(3):
            raise Conflict("The request's lease was folded before it could be billed.") from None
        else:
            raise cancelled.error
    previous = lease.spends.get(request_id)
    lease.spends[request_id] = Spend(request_id, c, clock.iso(now), usage, lease.lease_id)
    lease.spent += c - (previous.cost if previous else 0)
    lease.rows.add((now.strftime("%Y-%m-%d"), usage.model))
    return outcome


def _spend_from_item(item: Item) -> Spend:
    return Spend(
        request_id=as_str(item, "request_id"),
        cost=as_int(item, "cost"),
        created_at=as_str(item, "created_at"),
        usage=metering.Usage(
            as_str(item, "model"),
            as_str(item, "key_id"),
            as_int(item, "prompt_tokens"),
            as_int(item, "completion_tokens"),
            as_int(item, "cost"),
        ),
        lease_id=as_str(item, "lease_id"),
    )


@dataclass(frozen=True)
class OpenLease:
    lease_id: str
    key_id: str
    amount: int
    requests: int
    expires_at: int
    budget: bool = False


def open_leases(org_id: str) -> list[OpenLease]:
    return [
        OpenLease(
            as_str(i, "lease_id"),
            as_str(i, "key_id"),
            as_int(i, "amount"),
            as_int(i, "requests"),
            as_int(i, "lease_expires"),
            bool(as_str(i, "budget_key")),
        )
        for i in entries.query_prefix(org_id, schema.LEASE)
    ]


def open_spends(org_id: str, leases: Sequence[OpenLease]) -> dict[str, list[Spend]]:
    """The spend records of open leases (not folded yet), by lease id."""
    return {
        lease.lease_id: [
            _spend_from_item(i)
            for i in entries.query_prefix(org_id, f"{schema.LEASE_SPEND}{lease.lease_id}#")
        ]
        for lease in leases
    }


def unfolded(org_id: str, period: str) -> tuple[int, int]:
    """Credits billed under leases and not folded into the wallet yet: in all, and in `period`."""
    spends = [sp for mine in open_spends(org_id, open_leases(org_id)).values() for sp in mine]
    return sum(sp.cost for sp in spends), sum(sp.cost for sp in spends if sp.created_at.startswith(period))
