"""The wallet: the one item per org whose sums every movement of money keeps.

One wallet item per org keeps every figure a condition needs as a stored attribute, because
DynamoDB conditions compare an attribute with a value and cannot do arithmetic:

    balance        settled credits (the replay of the ledger)
    held           sum of open holds (each an item of its own, `HOLD#<request id>`) and of
                   open escrow leases' slices (`LEASE#<id>`, see leases.py)
    hold_count     how many holds are open (lease_count: leases)
    available      balance - held             (gates prepaid requests)
    month_spent    settled spend in `period` (a UTC month)
    committed      month_spent + held         (what counts against the spend cap)
    cap_remaining  cap_limit - committed      (cap_limit is 0 while `capped` is false)

Every write to the wallet keeps those identities, so one conditional write can refuse a
request. All amounts are integer nano-credits.

This module owns the item (its key, mapping and reads), this environment's view of it, the
revoked-key marks, the month's roll-over and the conditional-write helper. The writes that
move money build on it, each importing only those before it: wallet_settings (flags and
settings), ledger (entries), key_limits (per-key spend limits), holds (reserve, release),
metering (usage), settles (settle, deferred settles) and upkeep (what HoldSweeper tidies).
"""

from __future__ import annotations

import dataclasses
import threading
import time
import zlib
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from conduix.core import clock
from conduix.core.config import settings
from conduix.core.errors import Conflict, NotFound, Unauthenticated
from conduix.pricing import plans
from conduix.store import schema
from conduix.store.dynamo import Refused, client, retrying, write_if
from conduix.store.items import Item, as_bool, as_int, as_str, n, s

SWEEP_SHARDS = 8


def wallet_key(org_id: str) -> dict[str, Any]:
    return schema.org_key(org_id, schema.WALLET)


def sweep_shard(org_id: str) -> str:
    return str(zlib.crc32(org_id.encode()) % SWEEP_SHARDS)


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
    hold_count: int = 0
    lease_count: int = 0  # escrow leases open (see leases.py); their slices count in `held`
    paused: bool = False  # refused for lack of credits since credits last landed
    reload: AutoReload = field(default_factory=lambda: AutoReload())
    plan: str = "free"
    rpm_limit: int = 0  # requests per minute per key, as the plan set them (what holds compare)
    # Alert thresholds (conduix.accounts.alerts), on the wallet so a hold's answer brings them free.
    balance_alerts: tuple[int, ...] = ()  # nano-credits
    cap_alerts: tuple[int, ...] = ()  # percents of the cap
    # Keys with a spend limit: their holds also write the key's budget item (see reserve).
    limited_keys: dict[str, str] = field(default_factory=dict)  # key id -> its limit's period
    # Keys revoked lately (see note_revoked_key): a leased request checks this view's marks.
    revoked_keys: frozenset[str] = frozenset()
    alerts_fired: frozenset[str] = frozenset()  # keys of the alert thresholds fired (alerts.py)
    alert_rev: int = 0  # bumped by every change of the thresholds (holds compare it)


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
        hold_count=as_int(item, "hold_count"),
        lease_count=as_int(item, "lease_count"),
        paused="paused_at" in item,
        reload=_reload_from_item(item),
        plan=as_str(item, "plan", "free"),
        rpm_limit=as_int(item, "rpm_limit"),
        balance_alerts=tuple(int(v["N"]) for v in item.get("alert_balance_below", {}).get("L", [])),
        cap_alerts=tuple(int(v["N"]) for v in item.get("alert_cap_percent", {}).get("L", [])),
        limited_keys={k: v.get("S", "day") for k, v in item.get("limited_keys", {}).get("M", {}).items()},
        revoked_keys=frozenset(item.get("revoked_keys", {}).get("M", {})),
        alerts_fired=frozenset(item.get("alert_fired", {}).get("M", {})),
        alert_rev=as_int(item, "alert_rev"),
    )


wallet_from_item = _wallet_from_item


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
        "hold_count": zero,
        "created_at": s(clock.iso(now)),
        "plan": s(plans.FREE),
        "rpm_limit": n(plans.get(plans.FREE).requests_per_minute),
        "revoked_keys": {"M": {}},  # key id -> when it was revoked (see note_revoked_key)
        "limited_keys": {"M": {}},  # key id -> its limit's period (see set_key_limit)
        "alert_fired": {"M": {}},  # alert key -> when it fired (see alerts.py)
    }


def wallet_item(org_id: str) -> Item:
    item = (
        client()
        .get_item(TableName=settings().billing_table, Key=wallet_key(org_id), ConsistentRead=True)
        .get("Item")
    )
    if not item:
        raise NotFound(f"No wallet for org '{org_id}'.")
    return item


def get_wallet(org_id: str) -> Wallet:
    return _wallet_from_item(org_id, wallet_item(org_id))


# ------------------------------------------------------------------ what this environment knows
#
# The hold is a transaction (the wallet's sums and the hold item), and a transaction returns
# no values. What a billed request needs from the wallet besides the hold (the balance for
# its answer's header, the billing mode, the plan, the auto-reload settings) comes from the
# environment's own view of the wallet: read once, then moved by this environment's own writes
# and refreshed after `key_cache_seconds`, or at once from the old image a refused write
# returns. The view never gates money: every write's own condition does. The settings a
# request is billed under (mode, plan, auto-reload) are compared by the hold's condition, so a
# change refuses the stale hold, refreshes the view from the refusal, and the hold is retried.


@dataclass
class _View:
    wallet: Wallet
    until: float  # monotonic


_views: dict[str, _View] = {}
_views_lock = threading.Lock()  # threads of one environment share its views
_MAX_VIEWS = 10_000


def forget_views() -> None:
    """Drop every remembered wallet (tests point the functions at a fresh store)."""
    _views.clear()


def forget_view(org_id: str) -> None:
    """Drop this environment's view of one wallet: its next read goes to the table (a setting
    may have changed, or the month rolled over)."""
    _views.pop(org_id, None)


def learn(org_id: str, item: Item) -> Wallet:
    wallet = _wallet_from_item(org_id, item)
    if len(_views) >= _MAX_VIEWS:
        _views.clear()
    _views[org_id] = _View(wallet, time.monotonic() + settings().key_cache_seconds)
    return wallet


def known_wallet(org_id: str) -> Wallet:
    view = _views.get(org_id)
    if view is not None and view.until > time.monotonic():
        return view.wallet
    return learn(org_id, wallet_item(org_id))


def moved(
    org_id: str, *, balance: int = 0, held: int = 0, spent: int = 0, holds: int = 0, leases: int = 0
) -> Wallet | None:
    """Apply one of this environment's own committed movements to its view of the wallet (its
    own leases too: an environment that holds one sees the org hot until it folds it)."""
    with _views_lock:
        view = _views.get(org_id)
        if view is None:
            return None
        w = view.wallet
        view.wallet = dataclasses.replace(
            w,
            balance=w.balance + balance,
            held=w.held + held,
            available=w.available + balance - held,
            month_spent=w.month_spent + spent,
            committed=w.committed + spent + held,
            cap_remaining=w.cap_remaining - spent - held,
            hold_count=w.hold_count + holds,
            lease_count=w.lease_count + leases,
        )
        return view.wallet


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
        write = client().update_item
        if not write_if(retrying, lambda: write(TableName=table, Key=wallet_key(org_id), **update)):  # noqa: B023
            return
        # Another revocation started the map meanwhile: read it again.
    raise Conflict("The wallet kept changing while recording the revocation; please retry.")


# ------------------------------------------------------------------ period roll-over


def catch_up_period(org_id: str, old_period: str, period: str) -> str | None:
    """A write refused by its month condition: roll the wallet into our month (it lagged), or
    take the wallet's month (our clock lags the writer's). The month to retry in, or None if
    the month was not what refused it."""
    if old_period < period:
        roll_period(org_id, period)
        return period
    return old_period if old_period > period else None


def roll_period(org_id: str, period: str) -> None:
    """Start a new month for the cap: spend resets; holds still open keep counting."""
    write_if(  # (refused: somebody else rolled it first)
        client().update_item,
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
    forget_view(org_id)


# ------------------------------------------------------------------ conditional writes to the wallet


def update_if(org_id: str, **kwargs: Any) -> Refused | None:
    """A conditional UpdateItem on the wallet: None when it landed, else what refused it."""
    forget_view(org_id)  # a setting may change: the next hold reads the wallet again
    return write_if(
        client().update_item, TableName=settings().billing_table, Key=wallet_key(org_id), **kwargs
    )


def conditional_update(org_id: str, **kwargs: Any) -> bool:
    """A conditional UpdateItem on the wallet: whether its condition held."""
    return update_if(org_id, **kwargs) is None
