"""What DynamoDB does under load and moto does not: throttling and transaction conflicts.

The locked moto server runs this in front of moto (tests, bench and the local stack), so the
billing code's contention and throttling paths run rather than being assumed away:

- Throttling. Every write is charged write units (1 per started KB of the larger of the
  request's item image and 1 KB; twice that inside a transaction). One item takes at most
  `item_wcu` units a second, whatever happens; one partition key takes `partition_wcu` units
  a second per partition it has. A key starts on one partition; when its writes stay above
  `split_load` of its capacity for `split_after` seconds, DynamoDB splits it for heat: here its
  partitions double, up to the number of items (sort keys) it wrote recently, because an item
  never spans partitions. A throttled write fails as DynamoDB fails it: a single write with
  ProvisionedThroughputExceededException, a transaction with TransactionCanceledException and
  a ThrottlingError reason.
- Conflicts. A transaction holds its items from when it starts until it ends. Another
  transaction touching one of them is cancelled (TransactionCanceledException, reason
  TransactionConflict), and a single write to one of them fails with
  TransactionConflictException. moto runs one request at a time under the server's lock, so
  a transaction is in flight while moto runs it.

The model (`Capacity`, `Conflicts`) takes its clock as an argument, so bench's simulation can
drive it with simulated time; `StandIn` applies it to moto's JSON requests.
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections import defaultdict, deque
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

Key = tuple[str, str, str]  # table, partition key, sort key

_WRITES = {"PutItem", "UpdateItem", "DeleteItem", "TransactWriteItems", "BatchWriteItem"}


@dataclass
class _Bucket:
    """Write units spent in the current one-second window (DynamoDB meters per second)."""

    second: int = -1
    used: float = 0.0

    def room(self, now: float) -> float:
        if int(now) != self.second:
            self.second, self.used = int(now), 0.0
        return self.used


@dataclass
class _Partitions:
    count: int = 1
    hot_since: float | None = None
    recent: deque[tuple[float, str]] = field(default_factory=deque)  # (when, sort key) written


class Capacity:
    """Per-item and per-partition-key write limits, with split-for-heat."""

    def __init__(
        self,
        item_wcu: float = 1000,
        partition_wcu: float = 1000,
        split_after: float = 60.0,
        split_load: float = 0.8,
    ) -> None:
        self.item_wcu, self.partition_wcu = item_wcu, partition_wcu
        self.split_after, self.split_load = split_after, split_load
        self._items: dict[Key, _Bucket] = defaultdict(_Bucket)
        self._keys: dict[tuple[str, str], _Bucket] = defaultdict(_Bucket)
        self._partitions: dict[tuple[str, str], _Partitions] = defaultdict(_Partitions)
        self.throttled = 0

    def partitions(self, table: str, pk: str) -> int:
        return self._partitions[(table, pk)].count

    def admit(self, writes: list[tuple[Key, float]], now: float) -> bool:
        """Charge every write, or none and return False (throttled)."""
        per_key: dict[tuple[str, str], float] = defaultdict(float)
        for key, units in writes:
            if self._items[key].room(now) + units > self.item_wcu:
                self.throttled += 1
                return False
            per_key[key[:2]] += units
        for pkey, units in per_key.items():
            parts = self._partitions[pkey]
            bucket = self._keys[pkey]
            if int(now) != bucket.second:  # a second ended: was the key hot through it?
                ended = bucket.used / (parts.count * self.partition_wcu)
                self._heat(parts, ended if int(now) - bucket.second == 1 else 0.0, now)
            used = bucket.room(now)
            if used + units > parts.count * self.partition_wcu:
                self.throttled += 1
                return False
        for key, units in writes:
            self._items[key].used += units
            self._keys[key[:2]].used += units
            recent = self._partitions[key[:2]].recent
            recent.append((now, key[2]))
            while recent and recent[0][0] < now - self.split_after:
                recent.popleft()
        return True

    def _heat(self, parts: _Partitions, load: float, now: float) -> None:
        if load < self.split_load:
            parts.hot_since = None
            return
        if parts.hot_since is None:
            parts.hot_since = now
        elif now - parts.hot_since >= self.split_after:
            distinct = len({sk for _, sk in parts.recent})
            parts.count = max(parts.count, min(parts.count * 2, distinct))
            parts.hot_since = now


class Conflicts:
    """Items held by the transactions in flight."""

    def __init__(self) -> None:
        self._held: dict[Key, int] = defaultdict(int)
        self._lock = threading.Lock()
        self.cancelled = 0

    def clashing(self, keys: list[Key]) -> list[int]:
        """Indexes of `keys` a transaction in flight holds."""
        with self._lock:
            return [i for i, k in enumerate(keys) if self._held.get(k)]

    @contextmanager
    def running(self, keys: list[Key]) -> Iterator[None]:
        with self._lock:
            for k in keys:
                self._held[k] += 1
        try:
            yield
        finally:
            with self._lock:
                for k in keys:
                    self._held[k] -= 1
                    if not self._held[k]:
                        del self._held[k]


def _key_of(table: str, attrs: dict[str, Any], key_names: tuple[str, str]) -> Key:
    pk, sk = key_names
    return (table, json.dumps(attrs.get(pk), sort_keys=True), json.dumps(attrs.get(sk), sort_keys=True))


def item_key(table: str, key: dict[str, Any], key_names: tuple[str, str] = ("pk", "sk")) -> Key:
    """An item's key as the stand-in tracks it (for `Conflicts.running` and `StandIn.throttle_next`)."""
    return _key_of(table, key, key_names)


def _units(payload: Any, transactional: bool) -> float:
    size = len(json.dumps(payload, separators=(",", ":")))
    return (2 if transactional else 1) * max(1, math.ceil(size / 1024))


def writes_of(
    operation: str, body: dict[str, Any], key_names: tuple[str, str] = ("pk", "sk")
) -> list[tuple[Key, float]]:
    """The items a write request touches, each with the write units it is charged."""
    if operation == "TransactWriteItems":
        out = []
        for action in body.get("TransactItems", []):
            ((kind, op),) = action.items()
            attrs = op["Item"] if kind == "Put" else op["Key"]
            out.append((_key_of(op["TableName"], attrs, key_names), _units(op, True)))
        return out
    if operation == "BatchWriteItem":
        out = []
        for table, requests in body.get("RequestItems", {}).items():
            for request in requests:
                ((kind, op),) = request.items()
                attrs = op["Item"] if kind == "PutRequest" else op["Key"]
                out.append((_key_of(table, attrs, key_names), _units(op, False)))
        return out
    attrs = body.get("Item") if operation == "PutItem" else body.get("Key")
    return [(_key_of(body.get("TableName", ""), attrs or {}, key_names), _units(body, False))]


def _error(code: str, message: str, reasons: list[dict[str, str]] | None = None) -> tuple[int, bytes]:
    payload: dict[str, Any] = {"__type": f"com.amazonaws.dynamodb.v20120810#{code}", "message": message}
    if reasons is not None:
        payload["CancellationReasons"] = reasons
    return 400, json.dumps(payload).encode()


class StandIn:
    """Applies `Capacity` and `Conflicts` to DynamoDB JSON requests (X-Amz-Target)."""

    def __init__(self, capacity: Capacity | None = None, clock: Any = time.monotonic) -> None:
        self.capacity = capacity or Capacity()
        self.conflicts = Conflicts()
        self._clock = clock
        self._lock = threading.Lock()
        self._forced = 0  # write requests still to throttle (`throttle_next`)
        self._forced_keys: frozenset[Key] = frozenset()
        self.forced_throttles = 0

    def throttle_next(self, writes: int, keys: Collection[Key] = ()) -> None:
        """Throttle the next `writes` write requests (only those touching one of `keys`, if
        given) as if their items were over capacity: tests reach the throttled paths of the
        billing code deterministically, without depending on the wall clock."""
        with self._lock:
            self._forced, self._forced_keys = writes, frozenset(keys)

    @property
    def throttles_pending(self) -> int:
        """Writes `throttle_next` has yet to refuse."""
        return self._forced

    def before(self, target: str, raw: bytes) -> tuple[tuple[int, bytes] | None, list[Key]]:
        """On arrival: a refusal (status, body), or None and the items a transaction will hold
        while it runs (`running`)."""
        operation = target.rpartition(".")[2]
        if operation not in _WRITES:
            return None, []
        try:
            writes = writes_of(operation, json.loads(raw or b"{}"))
        except (ValueError, KeyError, TypeError, AttributeError):
            return None, []  # malformed: moto answers it as DynamoDB would
        keys = [k for k, _ in writes]
        transaction = operation == "TransactWriteItems"
        clashing = self.conflicts.clashing(keys)
        if clashing:
            self.conflicts.cancelled += 1
            if not transaction:
                return _error("TransactionConflictException", "Transaction is ongoing for the item"), []
            return _cancelled(
                ["TransactionConflict" if i in clashing else "None" for i in range(len(keys))]
            ), []
        with self._lock:
            forced = self._forced > 0 and (not self._forced_keys or not self._forced_keys.isdisjoint(keys))
            if forced:
                self._forced -= 1
                self.forced_throttles += 1
            admitted = not forced and self.capacity.admit(writes, self._clock())
        if not admitted:
            if transaction:
                return _cancelled(["ThrottlingError"] * len(keys)), []
            return _error(
                "ProvisionedThroughputExceededException",
                "The level of configured provisioned throughput for the table was exceeded.",
            ), []
        return None, keys if transaction else []


def _cancelled(codes: list[str]) -> tuple[int, bytes]:
    reasons = [{"Code": c, **({"Message": _REASONS[c]} if c in _REASONS else {})} for c in codes]
    return _error(
        "TransactionCanceledException",
        f"Transaction cancelled, please refer cancellation reasons for specific reasons [{', '.join(codes)}]",
        reasons,
    )


_REASONS = {
    "TransactionConflict": "Transaction is ongoing for the item",
    "ThrottlingError": "Throughput exceeds the current capacity for one or more items.",
}
