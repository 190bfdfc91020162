"""Escrow leases: the wallet write taken off the per-request path of a hot org.

A warm environment leases a slice of an org's available credit and spend cap, and a block of
one key's requests, counted in the minute it is taken, with one transaction (the wallet's sums, and a
`LEASE#<id>` item). It then reserves each request against the slice in memory, and bills
each request with one transaction of items of its own (the ledger entry's marker and line,
and a `LSPEND#<lease>#<request>` record), none of them hot. When the slice is spent, the
lease reaches its end, the environment folds the lease back into the wallet
in one transaction: the spends debited, the slice returned, the lease's usage added to the
per-day usage rows, the unused requests given back to the key's minute (while it lasts).

Sizing, and why no lease waits for the minute to turn (`bench/hot_org.py` measured both):
- A lease's requests are sized by this environment's rate under its previous one, over a
  whole lease with `HEADROOM` (from `FIRST_LEASE_REQUESTS`, at most `REQUESTS_PER_LEASE` and
  1/`SLICE_FRACTION` of the key's minute: `next_requests`), and its slice by its requests.
  Hundreds of environments of one org then reserve about what they serve, not a fixed block
  each: the key's minute and the org's credit are not stranded in idle slices.
- A lease lasts `key_cache_seconds` from when it is taken, whatever the minute: its requests
  count in the minute it was taken, so a key may serve, in one calendar minute, its limit plus
  what leases of the previous minute had left. Leases bound to the minute all ended at once,
  and every environment of a hot org renewed on the wallet in the same second.
- A hot org's lease that cannot land for contention answers 503 busy: a per-request hold would
  write the same wallet item, and holds from every environment kept it saturated.

Invariants (reconcile checks them):
- held = open holds + open leases; committed = month spend + held;
- balance = the ledger's replay + the spends not folded yet (a spend's ledger entry is
  written when the request is billed; its debit lands with the fold);
- a lease's spends never exceed its slice except by charges above their hold (incidents).

Failure cases:
- The environment dies: its lease expires (35 s after its last possible reservation), and
  HoldSweeper folds it from its `LSPEND` records. Nothing billed is lost; requests in flight at
  the death were not billed (as with an expired hold).
- A spend is written only while its lease is open and not expired (a condition of its
  transaction), and HoldSweeper folds a lease only after its expiry (plus clock skew), so a
  fold never misses a spend and a spend never lands in a folded lease. One refused that way
  is kept as a pending settle and charged by HoldSweeper on its own.
- A spend whose write cannot land (contention, throttling): the same pending settle; the
  environment leaves that lease to HoldSweeper, which folds what the store holds.
- Stranded credit: other environments' slices are not available to a request. Leases are
  taken only while the org's available credit covers `MIN_HOLDS` holds, a slice is at most
  1/`SLICE_FRACTION` of it, and below that every request takes a per-request hold, so an
  org with a small balance is refused only when its credit is truly held.
- Revocation: a lease is used for at most `key_cache_seconds`, the time a warm function may
  trust a key anyway; the per-key rate limit is leased with the slice, so it holds too.
"""

from __future__ import annotations

import logging
import math
import secrets
import threading
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from botocore.exceptions import ClientError

from conduix.core import clock
from conduix.core.config import settings
from conduix.core.errors import Conflict, ServiceBusy
from conduix.ledger import entries, holds, metering, settles, wallets
from conduix.store import schema
from conduix.store.dynamo import cancellation_reasons, client, error_code, retrying
from conduix.store.items import Item, as_int, as_str, n, s

log = logging.getLogger(__name__)

REQUESTS_PER_LEASE = 1000  # at most; and at most 1/SLICE_FRACTION of the key's requests a minute
FIRST_LEASE_REQUESTS = 16  # an environment's first lease of a key; then sized by its rate
HEADROOM = 1.5  # a lease asks this much more than the last one's rate would use
MAX_FOLD_ACTIONS = 96  # a fold (lease, wallet, one usage row per day and model) is one transaction
SLICE_FRACTION = 16  # a slice is at most this fraction of the available credit when taken
MIN_HOLDS = 64  # leases only while the available credit covers this many holds
HOT_IN_FLIGHT = 8  # ...and for an org with this many holds open (or a lease already): a hot org
CONTENDED_SECONDS = 60  # ...or whose holds could not land for contention here that recently
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
    key_id: str
    lease_id: str
    amount: int
    requests: int  # of `key_id`, counted in `minute` (when the lease was taken)
    minute: int
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
    """Lease `amount` and `requests` of `key_id` (counted in the current minute) in one transaction, or None
    when the wallet cannot spare them (the caller takes a per-request hold, which refuses
    precisely)."""
    known = wallets.known_wallet(org_id)
    # The key's rate limit is the wallet's own (what a hold compares), not the plan's catalog
    # entry: a custom limit, or a catalog changed since, must bound a lease's requests too.
    limit = known.rpm_limit
    if requests > limit:
        return None
    at = int(now.timestamp())
    minute = at // 60
    window = f"{key_id}@{minute}"
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
                    "lease_count :one, rpm.#win :r"
                ),
                "ConditionExpression": (
                    "#period = :p AND attribute_not_exists(revoked_keys.#kid) "
                    "AND attribute_not_exists(limited_keys.#kid) "
                    "AND rpm_limit = :limit AND (attribute_not_exists(rpm.#win) OR rpm.#win <= :room) "
                    "AND available >= :a AND (capped = :false OR cap_remaining >= :a) AND " + same
                ),
                "ExpressionAttributeNames": {
                    "#period": "period",
                    "#win": window,
                    "#kid": key_id,
                    "#plan": "plan",
                },
                "ExpressionAttributeValues": {
                    ":shard": s(wallets.sweep_shard(org_id)),
                    ":a": n(amount),
                    ":na": n(-amount),
                    ":one": n(1),
                    ":r": n(requests),
                    ":room": n(limit - requests),
                    ":limit": n(limit),
                    ":p": s(clock.period_of(now)),
                    ":false": {"BOOL": False},
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
                    "key_id": s(key_id),
                    "amount": n(amount),
                    "requests": n(requests),
                    "minute": n(minute),
                    "lease_expires": n(expires),  # not `expires_at`, the table's TTL attribute
                    "created_at": s(clock.iso(now)),
                },
                "ConditionExpression": "attribute_not_exists(pk)",
            }
        },
    ]
    try:
        retrying(lambda: client().transact_write_items(TransactItems=actions))
    except ClientError as exc:
        reasons = cancellation_reasons(exc)
        if error_code(exc) != "TransactionCanceledException" or not reasons:
            raise
        old = reasons[0].get("Item")
        if old:
            wallets.learn(org_id, old)  # whatever refused it, the view is fresh for the fallback
        return None
    wallets.moved(org_id, held=amount)
    return Lease(
        org_id, key_id, lease_id, amount, requests, minute, float(use_until), now.timestamp(), expires
    )


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
    marker, line = metering.usage_ledger_items(org_id, request_id, usage, now)
    line["lease_id"] = marker["lease_id"] = s(lease.lease_id)
    spend = {
        **spend_key(org_id, lease.lease_id, request_id),
        "lease_id": s(lease.lease_id),
        "request_id": s(request_id),
        "cost": n(c),
        "model": s(usage.model),
        "key_id": s(usage.key_id),
        "prompt_tokens": n(usage.prompt_tokens),
        "completion_tokens": n(usage.completion_tokens),
        "created_at": s(clock.iso(now)),
        # Kept a week: once its lease is folded a spend is history (its ledger entry stays).
        "expires_at": n(int(now.timestamp()) + 7 * 86400),
    }
    table = settings().billing_table
    items: list[Any] = [
        {"Put": {"TableName": table, "Item": marker, "ConditionExpression": "attribute_not_exists(pk)"}},
        {"Put": {"TableName": table, "Item": line}},
        {"Put": {"TableName": table, "Item": spend}},
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
    try:
        retrying(lambda: client().transact_write_items(TransactItems=items))
    except ClientError as exc:
        reasons = cancellation_reasons(exc)
        if error_code(exc) != "TransactionCanceledException" or len(reasons) != len(items):
            raise
        if reasons[0].get("Code") == "ConditionalCheckFailed":
            outcome = settles.SettleOutcome.ALREADY_SETTLED  # a retry after a lost answer: it landed
        elif reasons[3].get("Code") == "ConditionalCheckFailed":
            raise Conflict("The request's lease was folded before it could be billed.") from None
        else:
            raise
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


def fold(
    org_id: str,
    lease_id: str,
    amount: int,
    spends: Sequence[Spend],
    now: datetime,
    *,
    key_id: str = "",
    minute: int = 0,
    unused_requests: int = 0,
) -> bool:
    """Debit `spends`, return the lease's slice and unused requests, add its usage rows and
    close the lease, in one transaction. False if the lease was folded already. Its spend
    records stay (until the table's TTL): a spend is unfolded while its lease is open."""
    pending = list(spends)
    period = clock.period_of(now)
    table = settings().billing_table
    for _ in range(6):
        in_month = sum(sp.cost for sp in pending if sp.created_at.startswith(period))
        total = sum(sp.cost for sp in pending)
        names: dict[str, str] = {"#period": "period"}
        values: dict[str, Any] = {
            ":p": s(period),
            ":nt": n(-total),
            ":na": n(-amount),
            ":avail": n(amount - total),
            ":spent": n(in_month),
            ":com": n(in_month - amount),
            ":cap": n(amount - in_month),
        }
        update = (
            "ADD balance :nt, held :na, available :avail, month_spent :spent, committed :com, "
            "cap_remaining :cap, lease_count :minus"
        )
        values[":minus"] = n(-1)
        # Given back only while the lease's minute lasts: a past window is gone (or going) from
        # the wallet, and adding to it would bring it back.
        if unused_requests and int(now.timestamp()) // 60 == minute:
            names["#win"] = f"{key_id}@{minute}"
            values[":unused"] = n(-unused_requests)
            update += ", rpm.#win :unused"
        actions: list[Any] = [
            {
                "Delete": {
                    "TableName": table,
                    "Key": lease_key(org_id, lease_id),
                    "ConditionExpression": "attribute_exists(pk)",
                }
            }
        ]
        actions.append(
            {
                "Update": {
                    "TableName": table,
                    "Key": wallets.wallet_key(org_id),
                    "UpdateExpression": update,
                    "ConditionExpression": "#period = :p",
                    "ExpressionAttributeNames": names,
                    "ExpressionAttributeValues": values,
                    "ReturnValuesOnConditionCheckFailure": "ALL_OLD",
                }
            }
        )
        rows: dict[tuple[str, str, str], dict[str, int]] = defaultdict(lambda: defaultdict(int))
        for sp in pending:
            row = rows[(sp.created_at[:10], sp.usage.model, sp.usage.key_id)]
            row["requests"] += 1
            row["prompt_tokens"] += sp.usage.prompt_tokens
            row["completion_tokens"] += sp.usage.completion_tokens
            row["credits"] += sp.cost
        for (day, model, key), counts in rows.items():
            at = datetime.fromisoformat(f"{day}T00:00:00+00:00")
            actions.append(
                {"Update": {"TableName": table, **metering.usage_update(org_id, at, model, key, counts)}}
            )
        try:
            retrying(lambda: client().transact_write_items(TransactItems=actions))  # noqa: B023
        except ClientError as exc:
            reasons = cancellation_reasons(exc)
            if error_code(exc) != "TransactionCanceledException" or len(reasons) != len(actions):
                raise
            failed = {i for i, r in enumerate(reasons) if r.get("Code") == "ConditionalCheckFailed"}
            if 0 in failed:
                return False  # folded already (HoldSweeper, or the owner)
            if 1 in failed:
                month = wallets.catch_up_period(
                    org_id, as_str(reasons[1].get("Item") or {}, "period"), period
                )
                if month is None:
                    raise
                period = month
            continue
        wallets.moved(org_id, balance=-total, held=-amount, spent=in_month)
        return True
    raise Conflict("The wallet kept changing while folding a lease; please retry.")


@dataclass(frozen=True)
class OpenLease:
    lease_id: str
    key_id: str
    amount: int
    requests: int
    minute: int
    expires_at: int


def open_leases(org_id: str) -> list[OpenLease]:
    return [
        OpenLease(
            as_str(i, "lease_id"),
            as_str(i, "key_id"),
            as_int(i, "amount"),
            as_int(i, "requests"),
            as_int(i, "minute"),
            as_int(i, "lease_expires"),
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


FOLD_SKEW_SECONDS = 5  # clocks of environments and HoldSweeper may differ this much


def sweep(org_id: str, now: datetime) -> int:
    """Fold the org's expired leases from their spend records; returns how many. A spend is
    written only into a lease not expired by its writer's clock, so after the expiry (and the
    skew) the records are complete."""
    at = int(now.timestamp())
    expired = [lease for lease in open_leases(org_id) if lease.expires_at + FOLD_SKEW_SECONDS <= at]
    folded = 0
    for lease_id, mine in open_spends(org_id, expired).items():
        lease = next(x for x in expired if x.lease_id == lease_id)
        unused = max(lease.requests - len(mine), 0)
        if fold(
            org_id,
            lease_id,
            lease.amount,
            mine,
            now,
            key_id=lease.key_id,
            minute=lease.minute,
            unused_requests=unused,
        ):
            folded += 1
    return folded


def charge_pending(org_id: str, pending: settles.PendingSettle, now: datetime) -> settles.SettleOutcome:
    """Bill a lease's request whose spend could not be written (a pending settle with no
    hold): its ledger entry and the debit in one transaction, once (the ledger marker)."""
    usage = pending.usage
    marker, line = metering.usage_ledger_items(org_id, pending.request_id, usage, now)
    c = usage.cost
    table = settings().billing_table
    period = clock.period_of(now)
    for _ in range(4):
        actions: list[Any] = [
            {"Put": {"TableName": table, "Item": marker, "ConditionExpression": "attribute_not_exists(pk)"}},
            {"Put": {"TableName": table, "Item": line}},
            {
                "Update": {
                    "TableName": table,
                    "Key": wallets.wallet_key(org_id),
                    "UpdateExpression": (
                        "ADD balance :nc, available :nc, month_spent :c, committed :c, cap_remaining :nc"
                    ),
                    "ConditionExpression": "#period = :p",
                    "ExpressionAttributeNames": {"#period": "period"},
                    "ExpressionAttributeValues": {":c": n(c), ":nc": n(-c), ":p": s(period)},
                    "ReturnValuesOnConditionCheckFailure": "ALL_OLD",
                }
            },
            metering.billed_usage_update(org_id, now, usage),
            {"Delete": {"TableName": table, "Key": settles.pending_key(org_id, pending.request_id)}},
        ]
        try:
            retrying(lambda: client().transact_write_items(TransactItems=actions))  # noqa: B023
        except ClientError as exc:
            reasons = cancellation_reasons(exc)
            if error_code(exc) != "TransactionCanceledException" or len(reasons) != len(actions):
                raise
            if reasons[0].get("Code") == "ConditionalCheckFailed":
                return settles.SettleOutcome.ALREADY_SETTLED  # its spend had landed after all
            month = wallets.catch_up_period(org_id, as_str(reasons[2].get("Item") or {}, "period"), period)
            if month is None:
                raise
            period = month
            continue
        wallets.moved(org_id, balance=-c, spent=c)
        return settles.SettleOutcome.SETTLED
    raise Conflict("The wallet kept changing while charging a deferred settle; please retry.")


# ------------------------------------------------------------------ the environment's side


_leases: dict[tuple[str, str], Lease] = {}
_contended_until: dict[str, float] = {}  # org id -> monotonic time
# (org, key) -> requests reserved under this environment's last lease, and over how long
_last_served: dict[tuple[str, str], tuple[int, float]] = {}


def next_requests(served: int, seconds: float, most: int, lease_seconds: float) -> int:
    """A lease's requests: the last lease's rate over a whole lease, with headroom. A lease
    used up in 4 s asks for 7.5x as many; one that ran its time asks 1.5x what it served."""
    if served <= 0:
        return min(most, FIRST_LEASE_REQUESTS)
    wanted = math.ceil(HEADROOM * served * lease_seconds / max(seconds, 1.0))
    return min(most, max(FIRST_LEASE_REQUESTS, wanted))


_lock = threading.Lock()


def forget() -> None:
    """Drop this environment's leases from memory (tests point at a fresh store)."""
    with _lock:
        _leases.clear()
        _contended_until.clear()
        _last_served.clear()


@dataclass(frozen=True)
class Reservation:
    hold_nanos: int
    wallet: wallets.Wallet
    lease: Lease | None = None
    budget_key: str = ""  # a per-request hold that counts against this key's spend limit

    @property
    def balance(self) -> int:
        return self.wallet.balance


def reserve(
    org_id: str, request_id: str, amount: int, *, model: str, key_id: str, now: datetime, runs_for: int = 0
) -> Reservation:
    """Reserve against this environment's lease for the org and key, taking a new one when
    the org is hot and its credit is large against the request; otherwise a per-request hold."""
    known = wallets.known_wallet(org_id)
    eligible = (
        # Balance and cap alerts are judged by each settle's own guard; under a lease the
        # debit lands at the fold, so an org with alerts keeps per-request holds (for now).
        not (known.balance_alerts or known.cap_alerts)
        # A key with a spend limit is checked by each request's own hold (see holds.reserve).
        and key_id not in known.limited_keys
        # A lease expires SETTLE_MARGIN_SECONDS after its last reservation: a request that may
        # run longer (a long streamed answer) takes a hold that outlives it instead.
        and runs_for < SETTLE_MARGIN_SECONDS - FOLD_SKEW_SECONDS
        and known.billing_mode == "prepaid"
        and known.available >= MIN_HOLDS * amount
        and amount > 0
    )
    # Hot: requests in flight as this environment's view counts them, or holds on the wallet
    # that kept colliding here lately (the view of one environment sees only its own).
    hot = (
        known.lease_count > 0
        or known.hold_count >= HOT_IN_FLIGHT
        or _contended_until.get(org_id, 0.0) > time.monotonic()
    )
    if hot and eligible:
        at = now.timestamp()
        retire: Lease | None = None
        busy: ServiceBusy | None = None
        with _lock:
            lease = _leases.get((org_id, key_id))
            if lease is not None and lease.room(amount, at):
                lease.reserved += amount
                lease.inflight += 1
                return Reservation(amount, known, lease)
            if lease is not None:
                lease.retired = True
                del _leases[(org_id, key_id)]
                if lease.inflight == 0:
                    retire = lease
                if len(_last_served) >= 10_000:
                    _last_served.clear()
                _last_served[(org_id, key_id)] = (len(lease.spends) + lease.inflight, at - lease.taken_at)
            most = min(REQUESTS_PER_LEASE, known.rpm_limit // SLICE_FRACTION)
            served, seconds = _last_served.get((org_id, key_id), (0, 0.0))
            requests = next_requests(served, seconds, most, settings().key_cache_seconds)
            slice_ = min(known.available // SLICE_FRACTION, amount * requests)
            if known.capped:
                slice_ = min(slice_, known.cap_remaining // SLICE_FRACTION)
            fresh = None
            if slice_ >= amount and requests >= 2:
                try:
                    fresh = acquire(org_id, key_id, slice_, requests, now)
                except ServiceBusy as exc:
                    # Answered busy (503): a hold would write the same wallet item, adding to
                    # what keeps it busy (bench/hot_org.py: the fallback cost a fifth of the rate).
                    busy = exc
            if fresh is not None:
                fresh.reserved += amount
                fresh.inflight += 1
                _leases[(org_id, key_id)] = fresh
        if retire is not None:
            close(retire, now)
        if busy is not None:
            raise busy
        if fresh is not None:
            return Reservation(amount, known, fresh)
    try:
        held = holds.reserve(
            org_id, request_id, amount, model=model, key_id=key_id, now=now, runs_for=runs_for
        )
    except ServiceBusy:
        if hot or not eligible:
            raise
        # The hold kept colliding with others on the wallet: the org is hot, whatever this
        # environment's view says. Note it, and serve this request from a lease instead.
        if len(_contended_until) >= 10_000:
            _contended_until.clear()
        _contended_until[org_id] = time.monotonic() + CONTENDED_SECONDS
        return reserve(org_id, request_id, amount, model=model, key_id=key_id, now=now, runs_for=runs_for)
    return Reservation(held.hold_nanos, held.wallet, budget_key=held.budget_key)


def _done(lease: Lease, amount: int, now: datetime) -> None:
    with _lock:
        lease.reserved -= amount
        lease.inflight -= 1
        last = lease.retired and lease.inflight == 0
    if last:
        close(lease, now)


def release(org_id: str, request_id: str, reservation: Reservation, now: datetime) -> None:
    """The request failed: nothing billed. A lease's reservation is given back in memory."""
    if reservation.lease is None:
        holds.release(org_id, request_id, reservation.hold_nanos, budget_key=reservation.budget_key)
        return
    _done(reservation.lease, reservation.hold_nanos, now)


def settle(
    org_id: str,
    request_id: str,
    reservation: Reservation,
    usage: metering.Usage,
    now: datetime,
    *,
    also: Sequence[dict[str, Any]] = (),
    alert_guard: settles.AlertGuard | None = None,
) -> settles.SettleOutcome:
    if reservation.lease is None:
        return settles.settle(
            org_id,
            request_id,
            reservation.hold_nanos,
            usage,
            now,
            also=also,
            budget_key=reservation.budget_key,
            alert_guard=alert_guard,
        )
    lease = reservation.lease
    try:
        return record(lease, request_id, reservation.hold_nanos, usage, now, also=also)
    except Exception:
        lease.uncertain = True  # whether it landed is unknown: HoldSweeper folds from the store
        raise
    finally:
        _done(lease, reservation.hold_nanos, now)


def close(lease: Lease, now: datetime) -> None:
    """Fold a retired lease once its last request finished (best effort: HoldSweeper folds
    whatever is left once the lease expires)."""
    if lease.uncertain:
        return
    try:
        fold(
            lease.org_id,
            lease.lease_id,
            lease.amount,
            list(lease.spends.values()),
            now,
            key_id=lease.key_id,
            minute=lease.minute,
            unused_requests=max(lease.requests - len(lease.spends), 0),
        )
    except Exception:  # HoldSweeper folds it from the store once it expires
        log.warning("could not fold a lease", exc_info=True, extra={"lease_id": lease.lease_id})


def close_all(now: datetime) -> None:
    """Fold every lease this environment holds (tests, and a worker that stops)."""
    with _lock:
        held = list(_leases.values())
        _leases.clear()
        for lease in held:
            lease.retired = True
    for lease in held:
        if lease.inflight == 0:
            close(lease, now)
