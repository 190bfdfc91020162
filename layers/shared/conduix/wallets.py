"""Wallets, holds and the ledger: the data access that moves money.

One wallet item per org keeps every figure a condition needs as a stored attribute, because
DynamoDB conditions compare an attribute with a value and cannot do arithmetic:

    balance        settled credits (the replay of the ledger)
    held           sum of open holds (kept in the `holds` map, keyed by request id)
    available      balance - held             (gates prepaid requests)
    month_spent    settled spend in `period` (a UTC month)
    committed      month_spent + held         (what counts against the spend cap)
    cap_remaining  cap_limit - committed      (cap_limit is 0 while `capped` is false)

Every write below keeps those identities, so one conditional write can refuse a request.
All amounts are integer nano-credits.
"""

from __future__ import annotations

import hashlib
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import Enum
from typing import Any

from botocore.exceptions import ClientError

from conduix import clock, plans
from conduix.config import settings
from conduix.dynamo import (
    Item,
    as_bool,
    as_int,
    as_str,
    cancellation_reasons,
    client,
    error_code,
    n,
    retrying,
    s,
)
from conduix.errors import (
    Conflict,
    IdempotencyConflict,
    InsufficientCredits,
    NotFound,
    RateLimited,
    SpendCapExceeded,
    Unauthenticated,
)
from conduix.money import format_credits

SWEEP_SHARDS = 8
BILLING_MODES = ("prepaid", "invoice")


def org_pk(org_id: str) -> str:
    return f"ORG#{org_id}"


def wallet_key(org_id: str) -> dict[str, Any]:
    return {"pk": s(org_pk(org_id)), "sk": s("WALLET")}


def sweep_shard(org_id: str) -> str:
    return str(zlib.crc32(org_id.encode()) % SWEEP_SHARDS)


@dataclass(frozen=True)
class Hold:
    request_id: str
    amount: int
    expires_at: int  # epoch seconds
    model: str
    key_id: str


@dataclass(frozen=True)
class Wallet:
    org_id: str
    balance: int
    held: int
    available: int
    period: str
    month_spent: int
    committed: int
    capped: bool
    cap_limit: int
    cap_remaining: int
    billing_mode: str
    holds: tuple[Hold, ...]
    paused: bool = False  # refused for lack of credits since credits last landed
    reload: AutoReload = field(default_factory=lambda: AutoReload())
    plan: str = "free"
    # Alert thresholds (conduix.alerts), on the wallet so a hold's answer brings them free.
    balance_alerts: tuple[int, ...] = ()  # nano-credits
    cap_alerts: tuple[int, ...] = ()  # percents of the cap


@dataclass(frozen=True)
class AutoReload:
    """Auto-reload settings and state, kept on the wallet so a write's condition can read them."""

    enabled: bool = False
    threshold: int = 0
    amount: int = 0
    episode: int = 0  # counts the times the balance fell below the threshold
    due: bool = False  # this episode still needs a charge
    failures: int = 0  # consecutive failed charges
    last_status: str = ""
    last_message: str = ""
    last_at: str = ""


def _reload_from_item(item: Item) -> AutoReload:
    return AutoReload(
        enabled=as_bool(item, "reload_enabled"),
        threshold=as_int(item, "reload_threshold"),
        amount=as_int(item, "reload_amount"),
        episode=as_int(item, "reload_episode"),
        due="reload_due_shard" in item,
        failures=as_int(item, "reload_failures"),
        last_status=as_str(item, "reload_last_status"),
        last_message=as_str(item, "reload_last_message"),
        last_at=as_str(item, "reload_last_at"),
    )


def _wallet_from_item(org_id: str, item: Item) -> Wallet:
    holds = tuple(
        Hold(
            request_id=rid,
            amount=int(h["M"]["a"]["N"]),
            expires_at=int(h["M"]["x"]["N"]),
            model=h["M"]["m"]["S"],
            key_id=h["M"]["k"]["S"],
        )
        for rid, h in (item.get("holds", {}).get("M") or {}).items()
    )
    return Wallet(
        org_id=org_id,
        balance=as_int(item, "balance"),
        held=as_int(item, "held"),
        available=as_int(item, "available"),
        period=as_str(item, "period"),
        month_spent=as_int(item, "month_spent"),
        committed=as_int(item, "committed"),
        capped=as_bool(item, "capped"),
        cap_limit=as_int(item, "cap_limit"),
        cap_remaining=as_int(item, "cap_remaining"),
        billing_mode=as_str(item, "billing_mode", "prepaid"),
        holds=holds,
        paused="paused_at" in item,
        reload=_reload_from_item(item),
        plan=as_str(item, "plan", "free"),
        balance_alerts=tuple(int(v["N"]) for v in item.get("alert_balance_below", {}).get("L", [])),
        cap_alerts=tuple(int(v["N"]) for v in item.get("alert_cap_percent", {}).get("L", [])),
    )


def new_wallet_item(org_id: str, now: datetime) -> Item:
    """A fresh, empty wallet (written together with its org)."""
    zero = n(0)
    return {
        **wallet_key(org_id),
        "org_id": s(org_id),
        "balance": zero,
        "held": zero,
        "available": zero,
        "period": s(clock.period_of(now)),
        "month_spent": zero,
        "committed": zero,
        "capped": {"BOOL": False},
        "cap_limit": zero,
        "cap_remaining": zero,
        "billing_mode": s("prepaid"),
        "holds": {"M": {}},
        "created_at": s(clock.iso(now)),
        "plan": s(plans.FREE),
        "rpm_limit": n(plans.get(plans.FREE).requests_per_minute),
        "rpm": {"M": {}},  # per key and minute: "<key_id>@<minute>" -> requests held
        "revoked_keys": {"M": {}},  # key id -> when it was revoked (see note_revoked_key)
    }


def get_wallet(org_id: str) -> Wallet:
    item = (
        client()
        .get_item(TableName=settings().billing_table, Key=wallet_key(org_id), ConsistentRead=True)
        .get("Item")
    )
    if not item:
        raise NotFound(f"No wallet for org '{org_id}'.")
    return _wallet_from_item(org_id, item)


def get_balance(org_id: str, key_id: str | None = None) -> int:
    """The settled balance alone (a small, eventually consistent read for response headers).
    Given the caller's key, the same read refuses a key revoked since it was cached."""
    kwargs: dict[str, Any] = {"ProjectionExpression": "balance"}
    if key_id is not None:
        kwargs = {
            "ProjectionExpression": "balance, revoked_keys.#kid",
            "ExpressionAttributeNames": {"#kid": key_id},
        }
    item = (
        client().get_item(TableName=settings().billing_table, Key=wallet_key(org_id), **kwargs).get("Item")
    ) or {}
    if key_id is not None and key_id in item.get("revoked_keys", {}).get("M", {}):
        raise Unauthenticated(REVOKED_MESSAGE)
    return as_int(item, "balance")


# ------------------------------------------------------------------ revoked keys
#
# Warm functions remember an org key for `key_cache_seconds` so that a billed request needs no
# read. To make a revocation count at once, the wallet keeps `revoked_keys` (key id -> epoch
# seconds of the revocation) and the hold's own conditional write refuses those keys: no
# extra request on the billed path. A mark is needed only while a cached copy of the key may
# be alive, so the next revocation prunes marks older than the cache lifetime (plus a minute
# for clock skew between functions).

REVOKED_MESSAGE = "This API key has been revoked."
_REVOKED_SKEW_SECONDS = 60


def note_revoked_key(org_id: str, key_id: str, now: datetime) -> None:
    """Mark `key_id` revoked on the org's wallet, pruning marks that are no longer needed."""
    table, at = settings().billing_table, int(now.timestamp())
    oldest = at - settings().key_cache_seconds - _REVOKED_SKEW_SECONDS
    for _ in range(5):
        item = (
            client()
            .get_item(TableName=table, Key=wallet_key(org_id), ProjectionExpression="pk, revoked_keys")
            .get("Item")
        )
        if not item:
            raise NotFound(f"No wallet for org '{org_id}'.")
        marks = item.get("revoked_keys", {}).get("M")
        update: dict[str, Any]
        if marks is None:  # a wallet from before revocation marks: start the map
            update = {
                "UpdateExpression": "SET revoked_keys = :marks",
                "ConditionExpression": "attribute_not_exists(revoked_keys)",
                "ExpressionAttributeValues": {":marks": {"M": {key_id: n(at)}}},
            }
        else:
            stale = [k for k, v in marks.items() if k != key_id and int(v["N"]) < oldest][:50]
            names = {"#kid": key_id, **{f"#s{i}": k for i, k in enumerate(stale)}}
            remove = ", ".join(f"revoked_keys.#s{i}" for i in range(len(stale)))
            update = {
                "UpdateExpression": "SET revoked_keys.#kid = :at" + (f" REMOVE {remove}" if remove else ""),
                "ConditionExpression": "attribute_exists(revoked_keys)",
                "ExpressionAttributeNames": names,
                "ExpressionAttributeValues": {":at": n(at)},
            }
        try:
            retrying(lambda: client().update_item(TableName=table, Key=wallet_key(org_id), **update))  # noqa: B023
            return
        except ClientError as exc:
            if error_code(exc) != "ConditionalCheckFailedException":
                raise
            # Another revocation started the map meanwhile: read it again.
    raise Conflict("The wallet kept changing while recording the revocation; please retry.")


# ------------------------------------------------------------------ period roll-over


def roll_period(org_id: str, period: str) -> None:
    """Start a new month for the cap: spend resets; holds still open keep counting."""
    try:
        client().update_item(
            TableName=settings().billing_table,
            Key=wallet_key(org_id),
            UpdateExpression=(
                "SET #period = :p, month_spent = :zero, committed = held, cap_remaining = cap_limit - held, "
                "cap_floor = held"
            ),
            ConditionExpression="#period < :p",
            ExpressionAttributeNames={"#period": "period"},
            ExpressionAttributeValues={":p": s(period), ":zero": n(0)},
        )
    except ClientError as exc:
        if error_code(exc) != "ConditionalCheckFailedException":
            raise
        # Somebody else rolled it first: nothing to do.


# ------------------------------------------------------------------ hold / settle / release


@dataclass(frozen=True)
class Reservation:
    hold_nanos: int
    wallet: Wallet  # as the hold left it

    @property
    def balance(self) -> int:
        """The settled balance when the hold was placed."""
        return self.wallet.balance


def _refusal(org_id: str, old: Item, amount: int, window: str, now: datetime) -> Exception | None:
    wallet = _wallet_from_item(org_id, old)
    used = int(old.get("rpm", {}).get("M", {}).get(window, {}).get("N", 0))
    limit = as_int(old, "rpm_limit")
    if used >= limit:
        return RateLimited(
            f"Rate limit reached: {limit} requests per minute for this API key on the "
            f"{plans.get(wallet.plan).name} plan. Retry after the minute turns.",
            retry_after_seconds=60 - now.second,
        )
    if wallet.capped and wallet.cap_remaining < amount:
        return SpendCapExceeded(
            f"Monthly spend cap of {format_credits(wallet.cap_limit)} credits reached for {wallet.period} "
            f"(spent {format_credits(wallet.month_spent)}, in flight {format_credits(wallet.held)}). "
            "Raise the cap at /dashboard/settings.",
            limit_nanos=wallet.cap_limit,
            committed_nanos=wallet.committed,
            period=wallet.period,
        )
    if wallet.billing_mode != "invoice" and wallet.available < amount:
        reload = wallet.reload
        return InsufficientCredits(
            f"Insufficient credits. Current balance: {format_credits(wallet.available)} credits.",
            available_nanos=wallet.available,
            balance_nanos=wallet.balance,
            already_paused=wallet.paused,
            reload_can_start=reload.enabled and not reload.due and wallet.available < reload.threshold,
        )
    return None


def reserve(
    org_id: str,
    request_id: str,
    amount: int,
    *,
    model: str,
    key_id: str,
    now: datetime,
    runs_for: int = 0,
) -> Reservation:
    """Hold `amount` for a request in one conditional write, or refuse it.

    The hold outlives the longest the request may run (`runs_for` seconds), so HoldSweeper
    never frees the hold of a long answer still being written.
    Raises SpendCapExceeded or InsufficientCredits; nothing is held then.
    """
    period = clock.period_of(now)
    expires = int(now.timestamp()) + max(
        settings().hold_ttl_seconds, runs_for + settings().hold_ttl_seconds // 5
    )
    hold = {"M": {"a": n(amount), "x": n(expires), "m": s(model), "k": s(key_id)}}
    minute = int(now.timestamp()) // 60
    window, previous = f"{key_id}@{minute}", f"{key_id}@{minute - 1}"
    for _ in range(4):
        try:
            result = retrying(
                lambda: client().update_item(
                    TableName=settings().billing_table,
                    Key=wallet_key(org_id),
                    # The key's request count for this minute rides on the same write; the
                    # previous minute's count is dropped so the map stays small.
                    UpdateExpression=(
                        "SET holds.#rid = :hold, sweep_shard = :shard "
                        "ADD held :h, available :nh, committed :h, cap_remaining :nh, rpm.#win :one "
                        "REMOVE rpm.#prev"
                    ),
                    ConditionExpression=(
                        "#period = :p AND attribute_not_exists(holds.#rid) "
                        "AND attribute_not_exists(revoked_keys.#kid) "
                        "AND (attribute_not_exists(rpm.#win) OR rpm.#win < rpm_limit) "
                        "AND (billing_mode = :invoice OR available >= :h) "
                        "AND (capped = :false OR cap_remaining >= :h)"
                    ),
                    ExpressionAttributeNames={
                        "#rid": request_id,
                        "#period": "period",
                        "#win": window,
                        "#prev": previous,
                        "#kid": key_id,
                    },
                    ExpressionAttributeValues={
                        ":one": n(1),
                        ":hold": hold,
                        ":shard": s(sweep_shard(org_id)),
                        ":h": n(amount),
                        ":nh": n(-amount),
                        ":p": s(period),  # noqa: B023 - called at once, inside the iteration
                        ":invoice": s("invoice"),
                        ":false": {"BOOL": False},
                    },
                    # The whole wallet comes back at no extra cost: the caller learns the
                    # balance and the auto-reload settings without a read.
                    ReturnValues="ALL_NEW",
                    ReturnValuesOnConditionCheckFailure="ALL_OLD",
                )
            )
        except ClientError as exc:
            if error_code(exc) != "ConditionalCheckFailedException":
                raise
            old: Item = dict(exc.response.get("Item") or {})  # type: ignore[call-overload]
            if not old:
                raise NotFound(f"No wallet for org '{org_id}'.") from None
            old_period = as_str(old, "period")
            if old_period < period:
                roll_period(org_id, period)
                continue
            if old_period > period:  # our clock lags the writer's: use the wallet's month
                period = old_period
                continue
            existing = old.get("holds", {}).get("M", {}).get(request_id)
            if existing is not None:
                if int(existing["M"]["a"]["N"]) == amount:  # our own hold: a retry after a lost answer
                    return Reservation(hold_nanos=amount, wallet=_wallet_from_item(org_id, old))
                raise Conflict(f"Request id '{request_id}' already holds credits.") from None
            if key_id in old.get("revoked_keys", {}).get("M", {}):
                raise Unauthenticated(REVOKED_MESSAGE) from None
            refusal = _refusal(org_id, old, amount, window, now)
            if refusal:
                raise refusal from None
            continue  # the state it failed on has changed since: try again
        return Reservation(hold_nanos=amount, wallet=_wallet_from_item(org_id, result["Attributes"]))
    raise Conflict("The wallet kept changing while placing the hold; please retry.")


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


def _usage_update(
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
        "Key": {"pk": s(org_pk(org_id)), "sk": s(f"USAGE#{day}#{model}#{key_id}")},
        "UpdateExpression": "SET #day = :day, #model = :model, #key = :key ADD " + ", ".join(adds),
        "ExpressionAttributeNames": names,
        "ExpressionAttributeValues": values,
    }


def record_cache_hit(org_id: str, model: str, key_id: str, saved: int, now: datetime) -> None:
    """Count a free cache hit and what it would have cost, for the usage view."""
    client().update_item(
        TableName=settings().billing_table,
        **_usage_update(org_id, now, model, key_id, {"cache_hits": 1, "saved_credits": saved}),
    )


class SettleOutcome(Enum):
    SETTLED = "settled"
    ALREADY_SETTLED = "already_settled"  # a retry of a settle that had committed
    HOLD_GONE = "hold_gone"  # HoldSweeper released it first: the request goes unbilled


def _ledger_items(
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
    line_sk = f"LEDGER#{created}#{entry_id}"
    entry = {
        "pk": s(org_pk(org_id)),
        "entry_id": s(entry_id),
        "entry_type": s(kind),
        "amount": n(amount),
        "description": s(description),
        "created_at": s(created),
        **(extra or {}),
    }
    fingerprint = hashlib.sha256(f"{kind}|{amount}".encode()).hexdigest()[:32]
    marker = {**entry, "sk": s(f"ENTRY#{entry_id}"), "fingerprint": s(fingerprint), "line_sk": s(line_sk)}
    return marker, {**entry, "sk": s(line_sk)}


def settle(
    org_id: str,
    request_id: str,
    hold_amount: int,
    usage: Usage,
    now: datetime,
    *,
    also: Sequence[dict[str, Any]] = (),
    from_pending: bool = False,
) -> SettleOutcome:
    """Debit the actual cost, close the hold, append the ledger entry and count the usage, in
    one transaction. Exactly one of settle and release/sweep can close a hold.

    A cost above the hold is still billed exactly (the service was delivered) and leaves an
    incident item for reconcile. `also` adds the caller's own writes to the transaction (the
    idempotent answer); `from_pending` removes the usage recorded by `record_pending`."""
    period = clock.period_of(now)
    c = usage.cost
    marker, line = _ledger_items(
        org_id,
        kind="usage",
        key=request_id,
        amount=-c,
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
    table = settings().billing_table
    invoiced = usage.billed_by == "invoice"
    drawn = min(c, max(usage.funds_hint, 0)) if invoiced else 0  # from the positive balance
    for _ in range(4):
        if invoiced:  # the part of the cost the month's invoice bills
            marker["invoiced"] = line["invoiced"] = n(c - drawn)
        items: list[Any] = [
            {
                "Update": {
                    "TableName": table,
                    "Key": wallet_key(org_id),
                    "UpdateExpression": (
                        "REMOVE holds.#rid ADD balance :nc, held :nh, available :hc, "
                        "month_spent :c, committed :ch, cap_remaining :hc"
                    ),
                    "ConditionExpression": "holds.#rid.a = :h AND #period = :p"
                    + (" AND balance >= :drawn" if drawn else ""),
                    "ExpressionAttributeNames": {"#rid": request_id, "#period": "period"},
                    "ExpressionAttributeValues": {
                        ":h": n(hold_amount),
                        ":nh": n(-hold_amount),
                        ":c": n(c),
                        ":nc": n(-c),
                        ":hc": n(hold_amount - c),
                        ":ch": n(c - hold_amount),
                        ":p": s(period),
                        **({":drawn": n(drawn)} if drawn else {}),
                    },
                    "ReturnValuesOnConditionCheckFailure": "ALL_OLD",
                }
            },
            {"Put": {"TableName": table, "Item": marker, "ConditionExpression": "attribute_not_exists(pk)"}},
            {"Put": {"TableName": table, "Item": line}},
            {
                "Update": {
                    "TableName": table,
                    **_usage_update(
                        org_id,
                        now,
                        usage.model,
                        usage.key_id,
                        {
                            "requests": 1,
                            "prompt_tokens": usage.prompt_tokens,
                            "completion_tokens": usage.completion_tokens,
                            "credits": c,
                        },
                    ),
                }
            },
            *also,
        ]
        if c > hold_amount:
            items.append(
                {
                    "Put": {
                        "TableName": table,
                        "Item": _over_hold_item(org_id, request_id, hold_amount, usage, now),
                    }
                }
            )
        if from_pending:
            items.append({"Delete": {"TableName": table, "Key": pending_key(org_id, request_id)}})
        try:
            # The token makes DynamoDB itself drop a replay of this exact transaction.
            # (With the period: a retry after a month roll-over is another request to DynamoDB.)
            # A deferred settle is another request to DynamoDB too (other items, another time):
            # reusing the first token there would be refused as a parameter mismatch.
            kind = "settle-pending" if from_pending else "settle"
            token = hashlib.sha256(f"{kind}:{org_id}:{request_id}:{period}:{drawn}".encode()).hexdigest()[:36]
            retrying(lambda: client().transact_write_items(TransactItems=items, ClientRequestToken=token))  # noqa: B023
            return SettleOutcome.SETTLED
        except ClientError as exc:
            reasons = cancellation_reasons(exc)
            if error_code(exc) != "TransactionCanceledException" or len(reasons) != len(items):
                raise
            if reasons[1].get("Code") == "ConditionalCheckFailed":
                return SettleOutcome.ALREADY_SETTLED
            old = reasons[0].get("Item") or {}
            holds = old.get("holds", {}).get("M", {})
            if request_id not in holds:
                return SettleOutcome.HOLD_GONE
            old_period = as_str(old, "period")
            if old_period < period:
                roll_period(org_id, period)
            elif old_period > period:
                period = old_period
            elif drawn and as_int(old, "balance") < drawn:  # spent meanwhile: draw what is left
                drawn = min(c, max(as_int(old, "balance"), 0))
            else:
                raise
    raise Conflict("The wallet kept changing while settling; please retry.")


def _over_hold_item(org_id: str, request_id: str, hold_amount: int, usage: Usage, now: datetime) -> Item:
    """The durable record of a charge above its hold, which `reconcile` reports."""
    return {
        "pk": s(org_pk(org_id)),
        "sk": s(f"INCIDENT#over-hold#{request_id}"),
        "incident": s("over-hold"),
        "request_id": s(request_id),
        "hold": n(hold_amount),
        "cost": n(usage.cost),
        "model": s(usage.model),
        "created_at": s(clock.iso(now)),
    }


def over_hold_incidents(org_id: str) -> list[Item]:
    return _query_prefix(org_id, "INCIDENT#over-hold#")


# ------------------------------------------------------------------ settles that could not land at once


def pending_key(org_id: str, request_id: str) -> dict[str, Any]:
    return {"pk": s(org_pk(org_id)), "sk": s(f"PENDING#{request_id}")}


@dataclass(frozen=True)
class PendingSettle:
    request_id: str
    hold_amount: int
    usage: Usage


def record_pending(
    org_id: str,
    request_id: str,
    hold_amount: int,
    usage: Usage,
    now: datetime,
    *,
    also: Sequence[dict[str, Any]] = (),
) -> None:
    """Keep a served request's usage in an item of its own (keyed by the request id, so no
    other write contends for it) while its hold stays open: HoldSweeper settles it later,
    exactly once, instead of releasing the hold. `also` joins the caller's own writes."""
    item = {
        **pending_key(org_id, request_id),
        "request_id": s(request_id),
        "hold": n(hold_amount),
        "model": s(usage.model),
        "key_id": s(usage.key_id),
        "prompt_tokens": n(usage.prompt_tokens),
        "completion_tokens": n(usage.completion_tokens),
        "cost": n(usage.cost),
        "billed_by": s(usage.billed_by),
        "funds_hint": n(usage.funds_hint),  # invoice mode: the later settle draws credits first too
        "created_at": s(clock.iso(now)),
    }
    table = settings().billing_table
    if also:
        actions: list[Any] = [{"Put": {"TableName": table, "Item": item}}, *also]
        retrying(lambda: client().transact_write_items(TransactItems=actions))
    else:
        retrying(lambda: client().put_item(TableName=table, Item=item))


def pending_settles(org_id: str) -> list[PendingSettle]:
    return [
        PendingSettle(
            request_id=as_str(i, "request_id"),
            hold_amount=as_int(i, "hold"),
            usage=Usage(
                as_str(i, "model"),
                as_str(i, "key_id"),
                as_int(i, "prompt_tokens"),
                as_int(i, "completion_tokens"),
                as_int(i, "cost"),
                billed_by=as_str(i, "billed_by", "prepaid"),
                funds_hint=as_int(i, "funds_hint"),
            ),
        )
        for i in _query_prefix(org_id, "PENDING#")
    ]


def drop_pending(org_id: str, request_id: str) -> None:
    """Forget a pending settle that turned out settled already (or whose hold is gone)."""
    retrying(
        lambda: client().delete_item(TableName=settings().billing_table, Key=pending_key(org_id, request_id))
    )


def _query_prefix(org_id: str, prefix: str) -> list[Item]:
    items: list[Item] = []
    kwargs: dict[str, Any] = {
        "TableName": settings().billing_table,
        "KeyConditionExpression": "pk = :pk AND begins_with(sk, :prefix)",
        "ExpressionAttributeValues": {":pk": s(org_pk(org_id)), ":prefix": s(prefix)},
        "ConsistentRead": True,
    }
    while True:
        page = client().query(**kwargs)
        items += page.get("Items", [])
        if "LastEvaluatedKey" not in page:
            return items
        kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]


def settle_pending_hold(
    org_id: str, request_id: str, now: datetime
) -> tuple[PendingSettle, SettleOutcome] | None:
    """Settle one hold's deferred settle now, exactly as HoldSweeper does; None if it has none."""
    pending = next((p for p in pending_settles(org_id) if p.request_id == request_id), None)
    if pending is None:
        return None
    outcome = settle(org_id, request_id, pending.hold_amount, pending.usage, now, from_pending=True)
    if outcome is not SettleOutcome.SETTLED:  # its first settle had landed after all
        drop_pending(org_id, request_id)
    return pending, outcome


def release(org_id: str, request_id: str, hold_amount: int) -> bool:
    """Return a hold untouched (the request failed). False if it was already closed."""
    try:
        retrying(
            lambda: client().update_item(
                TableName=settings().billing_table,
                Key=wallet_key(org_id),
                UpdateExpression=(
                    "REMOVE holds.#rid ADD held :nh, available :h, committed :nh, cap_remaining :h"
                ),
                ConditionExpression="holds.#rid.a = :h",
                ExpressionAttributeNames={"#rid": request_id},
                ExpressionAttributeValues={":h": n(hold_amount), ":nh": n(-hold_amount)},
            )
        )
    except ClientError as exc:
        if error_code(exc) == "ConditionalCheckFailedException":
            return False
        raise
    return True


# ------------------------------------------------------------------ credits in (grants, purchases)


@dataclass(frozen=True)
class LedgerEntry:
    entry_id: str
    entry_type: str
    amount: int
    description: str
    created_at: str


def _entry_from_item(item: Item) -> LedgerEntry:
    return LedgerEntry(
        entry_id=as_str(item, "entry_id"),
        entry_type=as_str(item, "entry_type"),
        amount=as_int(item, "amount"),
        description=as_str(item, "description"),
        created_at=as_str(item, "created_at"),
    )


def credit(
    org_id: str, *, kind: str, key: str, amount: int, description: str, now: datetime
) -> tuple[LedgerEntry, bool]:
    """Add (or, negative, remove) settled credits under an idempotency key.

    Returns the entry and whether this call created it. The same key again returns the
    original entry; the same key with another amount raises IdempotencyConflict.
    """
    marker, line = _ledger_items(org_id, kind=kind, key=key, amount=amount, now=now, description=description)
    table = settings().billing_table
    items: list[Any] = [
        {
            "Put": {
                "TableName": table,
                "Item": marker,
                "ConditionExpression": "attribute_not_exists(pk)",
                "ReturnValuesOnConditionCheckFailure": "ALL_OLD",
            }
        },
        {"Put": {"TableName": table, "Item": line}},
        {
            "Update": {
                "TableName": table,
                "Key": wallet_key(org_id),
                # Credits landing end an "account paused" spell (its notice may go out again).
                "UpdateExpression": "ADD balance :a, available :a"
                + (" REMOVE paused_at" if amount > 0 else ""),
                "ConditionExpression": "attribute_exists(pk)",
                "ExpressionAttributeValues": {":a": n(amount)},
            }
        },
    ]
    try:
        retrying(lambda: client().transact_write_items(TransactItems=items))
    except ClientError as exc:
        reasons = cancellation_reasons(exc)
        if error_code(exc) != "TransactionCanceledException" or len(reasons) != 3:
            raise
        if reasons[0].get("Code") == "ConditionalCheckFailed":
            existing = reasons[0].get("Item") or {}
            if as_str(existing, "fingerprint") != marker["fingerprint"]["S"]:
                raise IdempotencyConflict(
                    f"The idempotency key '{key}' was already used with a different amount."
                ) from None
            return _entry_from_item(existing), False
        if reasons[2].get("Code") == "ConditionalCheckFailed":
            raise NotFound(f"No wallet for org '{org_id}'.") from None
        raise
    if amount > 0:
        end_reload_episode(org_id)
    return _entry_from_item(marker), True


def ledger_entry(org_id: str, entry_id: str) -> LedgerEntry | None:
    """The ledger entry under an idempotency key, e.g. "plan_credits:<invoice id>"."""
    item = (
        client()
        .get_item(
            TableName=settings().billing_table,
            Key={"pk": s(org_pk(org_id)), "sk": s(f"ENTRY#{entry_id}")},
            ConsistentRead=True,
        )
        .get("Item")
    )
    return _entry_from_item(item) if item else None


# ------------------------------------------------------------------ account state: paused, auto-reload due


def conditional_update(org_id: str, **kwargs: Any) -> bool:
    """An UpdateItem on the wallet that reports whether its condition held."""
    try:
        client().update_item(TableName=settings().billing_table, Key=wallet_key(org_id), **kwargs)
    except ClientError as exc:
        if error_code(exc) == "ConditionalCheckFailedException":
            return False
        raise
    return True


def mark_paused(org_id: str, now: datetime) -> bool:
    """Note that requests are being refused for lack of credits. True only for the first
    refusal since credits last landed, so the notice goes out once per pause."""
    return conditional_update(
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
    return conditional_update(
        org_id,
        UpdateExpression="SET reload_due_shard = :shard ADD reload_episode :one",
        ConditionExpression=(
            "reload_enabled = :true AND attribute_not_exists(reload_due_shard) "
            "AND available < reload_threshold"
        ),
        ExpressionAttributeValues={":shard": s(sweep_shard(org_id)), ":one": n(1), ":true": {"BOOL": True}},
    )


def end_reload_episode(org_id: str) -> bool:
    """Close the episode once credits brought the balance back to or above the threshold."""
    return conditional_update(
        org_id,
        UpdateExpression="REMOVE reload_due_shard",
        ConditionExpression="attribute_exists(reload_due_shard) AND available >= reload_threshold",
    )


# ------------------------------------------------------------------ settings kept on the wallet


def set_spend_cap(org_id: str, limit: int | None, now: datetime) -> None:
    """Set (or with None remove) the monthly cap; the month's spend and holds count at once."""
    period = clock.period_of(now)
    roll_period(org_id, period)
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
    try:
        client().update_item(
            TableName=settings().billing_table,
            Key=wallet_key(org_id),
            UpdateExpression=update,
            ConditionExpression="attribute_exists(pk)",
            ExpressionAttributeValues=values,
        )
    except ClientError as exc:
        if error_code(exc) == "ConditionalCheckFailedException":
            raise NotFound(f"No wallet for org '{org_id}'.") from None
        raise


# ------------------------------------------------------------------ expiry


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
        org_ids += [item["pk"]["S"].removeprefix("ORG#") for item in page.get("Items", [])]
        if "LastEvaluatedKey" not in page:
            return org_ids
        kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]


def wallets_with_holds(shard: str) -> list[str]:
    """Org ids whose wallets may hold credits, from the sparse sweep index."""
    return orgs_in_index("by_sweep_shard", "sweep_shard", shard)


def open_holds(org_id: str) -> tuple[Hold, ...]:
    item = (
        client()
        .get_item(
            TableName=settings().billing_table,
            Key=wallet_key(org_id),
            ProjectionExpression="holds",
            ConsistentRead=True,
        )
        .get("Item")
    )
    return _wallet_from_item(org_id, item).holds if item else ()


def release_stuck_hold(org_id: str, request_id: str, now: datetime) -> tuple[Hold, LedgerEntry]:
    """The operator frees one hold by hand, on the sweeper's condition (the hold still open
    with its amount), so a racing settle or sweep and this call close it exactly once. The same
    transaction appends a ledger entry that moves no money (`hold_release:<request id>`): the
    audit trail of a hand-made change. Raises NotFound if no such hold is open. A hold with a
    deferred settle is settled instead, as HoldSweeper would (see `settle_pending_hold`)."""
    hold = next((h for h in open_holds(org_id) if h.request_id == request_id), None)
    if hold is None:
        raise NotFound(f"No open hold '{request_id}' for org '{org_id}'.")
    marker, line = _ledger_items(
        org_id,
        kind="hold_release",
        key=request_id,
        amount=0,
        now=now,
        description=(
            f"Hold of {format_credits(hold.amount)} credits released by the operator "
            f"({hold.model}, key {hold.key_id}); nothing billed"
        ),
        extra={"model": s(hold.model), "key_id": s(hold.key_id), "released_nanos": n(hold.amount)},
    )
    table = settings().billing_table
    items: list[Any] = [
        {
            "Update": {
                "TableName": table,
                "Key": wallet_key(org_id),
                # The expression and condition of `release`, which HoldSweeper uses.
                "UpdateExpression": (
                    "REMOVE holds.#rid ADD held :nh, available :h, committed :nh, cap_remaining :h"
                ),
                "ConditionExpression": "holds.#rid.a = :h",
                "ExpressionAttributeNames": {"#rid": request_id},
                "ExpressionAttributeValues": {":h": n(hold.amount), ":nh": n(-hold.amount)},
            }
        },
        {"Put": {"TableName": table, "Item": marker, "ConditionExpression": "attribute_not_exists(pk)"}},
        {"Put": {"TableName": table, "Item": line}},
        # A hold whose usage was delivered (a deferred settle waits for it) is never released:
        # one recorded between our read and this write cancels the release.
        {
            "ConditionCheck": {
                "TableName": table,
                "Key": pending_key(org_id, request_id),
                "ConditionExpression": "attribute_not_exists(pk)",
            }
        },
    ]
    try:
        retrying(lambda: client().transact_write_items(TransactItems=items))
    except ClientError as exc:
        reasons = cancellation_reasons(exc)
        if error_code(exc) != "TransactionCanceledException" or len(reasons) != 4:
            raise
        if reasons[3].get("Code") == "ConditionalCheckFailed":
            raise Conflict(
                f"Request '{request_id}' was served and its settle is pending: it will be billed, "
                "not released. Retry to settle it now.",
                code="hold_closed",
            ) from None
        if any(r.get("Code") == "ConditionalCheckFailed" for r in reasons):
            raise Conflict(
                f"Hold '{request_id}' closed meanwhile (settled, swept or released); nothing was changed.",
                code="hold_closed",
            ) from None
        raise
    return hold, _entry_from_item(marker)


def prune_rate_windows(org_id: str, now: datetime) -> int:
    """Drop per-key request counts of minutes that are over. A reserve drops its key's previous
    minute itself; a key that paused longer leaves its last window behind, and the wallet (the
    hottest item) must not keep growing. HoldSweeper calls this for every active wallet."""
    item = (
        client()
        .get_item(TableName=settings().billing_table, Key=wallet_key(org_id), ProjectionExpression="rpm")
        .get("Item")
        or {}
    )
    current = int(now.timestamp()) // 60
    stale = [w for w in (item.get("rpm", {}).get("M") or {}) if int(w.rsplit("@", 1)[1]) < current - 1]
    for start in range(0, len(stale), 50):  # a modest expression per write
        batch = stale[start : start + 50]
        names = {f"#w{i}": window for i, window in enumerate(batch)}
        client().update_item(
            TableName=settings().billing_table,
            Key=wallet_key(org_id),
            UpdateExpression="REMOVE " + ", ".join(f"rpm.{name}" for name in names),
            ConditionExpression="attribute_exists(pk)",
            ExpressionAttributeNames=names,
        )
    return len(stale)


def forget_if_idle(org_id: str) -> None:
    """Drop the wallet from the sweep index once it has no holds (a later hold re-adds it)."""
    try:
        client().update_item(
            TableName=settings().billing_table,
            Key=wallet_key(org_id),
            UpdateExpression="REMOVE sweep_shard",
            ConditionExpression="size(holds) = :zero",
            ExpressionAttributeValues={":zero": n(0)},
        )
    except ClientError as exc:
        if error_code(exc) != "ConditionalCheckFailedException":
            raise


def set_plan(org_id: str, plan: plans.Plan) -> None:
    """The plan whose features the wallet's own writes enforce (requests per minute)."""
    client().update_item(
        TableName=settings().billing_table,
        Key=wallet_key(org_id),
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
        Key=wallet_key(org_id),
        UpdateExpression=update,
        ConditionExpression="attribute_exists(pk)",
        ExpressionAttributeValues=values,
    )


def invoice_mode_orgs() -> list[str]:
    """Orgs in invoice mode, and those that left it but still have a month to invoice."""
    return orgs_in_index("by_invoice_mode", "invoice_shard", "all")


def forget_invoiced_org(org_id: str, period: str) -> bool:
    """Drop a prepaid org from the invoicing index once `period`, the month it left invoice
    mode (or a later one), has been invoiced."""
    return conditional_update(
        org_id,
        UpdateExpression="REMOVE invoice_shard, invoice_last_period",
        ConditionExpression="billing_mode = :prepaid AND invoice_last_period <= :p",
        ExpressionAttributeValues={":prepaid": s("prepaid"), ":p": s(period)},
    )
