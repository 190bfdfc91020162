"""Counting DynamoDB requests and computing the capacity units they would consume.

moto returns no ConsumedCapacity for transactions (and its numbers are not DynamoDB's anyway),
so the units are computed here from item sizes, with DynamoDB's published rules:

- item size = sum over attributes of (UTF-8 bytes of the name + size of the value); a string is
  its UTF-8 bytes, a number 1 byte per 2 significant digits + 1, a boolean or null 1 byte,
  binary its raw bytes, a map or list 3 bytes + its elements + 1 byte per element (a map
  element also counts its key's bytes), a set the sum of its members;
- writes: 1 write request unit (WRU) per started KB of the larger of the item before and after
  the write (minimum 1); a conditional write whose condition fails still costs the existing
  item's size (minimum 1); each action of a TransactWriteItems costs twice that, and a
  ConditionCheck action is billed as a transactional write;
- reads: 1 read request unit (RRU) per started 4 KB of the whole stored item (a projection does
  not make a GetItem cheaper) when strongly consistent, half that when eventually consistent;
  a GetItem that finds nothing still costs the minimum; a Query costs the summed size of the
  items it returns, rounded up to 4 KB once;
- a global secondary index costs its own writes: 1 WRU per started KB of the projected entry
  when an item enters, leaves or changes a projected attribute of the index (2 writes when the
  index key changes), nothing when the write does not touch it. Index writes are not doubled by
  transactions (they are propagated asynchronously, outside the transaction).

The sizes come from the real items: a hook on the client reads every item a request will touch
just before it and just after it, through a second, uncounted client. That costs time, so the
counting runs are never the timed runs.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

Item = dict[str, Any]
WRITE_UNIT = 1024
READ_UNIT = 4096


# ------------------------------------------------------------------ sizes


def number_size(text: str) -> int:
    """1 byte per two significant digits, plus 1 (leading and trailing zeros do not count)."""
    digits = Decimal(text).normalize()
    if digits.is_zero():
        return 1
    significant = len(digits.as_tuple().digits)
    return math.ceil(significant / 2) + 1


def value_size(value: dict[str, Any]) -> int:
    ((kind, raw),) = value.items()
    if kind == "S":
        return len(raw.encode("utf-8"))
    if kind == "N":
        return number_size(raw)
    if kind == "B":
        return len(raw)
    if kind in ("BOOL", "NULL"):
        return 1
    if kind == "SS":
        return sum(len(x.encode("utf-8")) for x in raw)
    if kind == "NS":
        return sum(number_size(x) for x in raw)
    if kind == "BS":
        return sum(len(x) for x in raw)
    if kind == "M":
        return 3 + sum(len(k.encode("utf-8")) + value_size(v) + 1 for k, v in raw.items())
    if kind == "L":
        return 3 + sum(value_size(v) + 1 for v in raw)
    raise ValueError(f"unknown attribute type {kind}")


def item_size(item: Item | None) -> int:
    if not item:
        return 0
    return sum(len(name.encode("utf-8")) + value_size(value) for name, value in item.items())


def write_units(size: int) -> int:
    return max(1, math.ceil(size / WRITE_UNIT))


def read_units(size: int, consistent: bool) -> float:
    units = max(1, math.ceil(size / READ_UNIT))
    return units if consistent else units / 2


# ------------------------------------------------------------------ table shapes


@dataclass(frozen=True)
class Index:
    name: str
    keys: tuple[str, ...]
    projection: str  # ALL, KEYS_ONLY or INCLUDE
    include: tuple[str, ...] = ()


@dataclass(frozen=True)
class Table:
    name: str
    keys: tuple[str, ...]
    indexes: tuple[Index, ...] = ()

    def key_of(self, item: Item) -> Item:
        return {k: item[k] for k in self.keys}


def tables_from_template(template: dict[str, Any], names: dict[str, str]) -> dict[str, Table]:
    """{table name: Table} for every AWS::DynamoDB::Table of the template (create_tables' names)."""
    shapes: dict[str, Table] = {}
    for logical_id, resource in template["Resources"].items():
        if resource.get("Type") != "AWS::DynamoDB::Table":
            continue
        props = resource["Properties"]
        indexes = tuple(
            Index(
                name=gsi["IndexName"],
                keys=tuple(k["AttributeName"] for k in gsi["KeySchema"]),
                projection=gsi["Projection"]["ProjectionType"],
                include=tuple(gsi["Projection"].get("NonKeyAttributes", ())),
            )
            for gsi in props.get("GlobalSecondaryIndexes", [])
        )
        name = names[logical_id]
        shapes[name] = Table(name, tuple(k["AttributeName"] for k in props["KeySchema"]), indexes)
    return shapes


def _key_text(table: str, key: Item) -> str:
    return table + "|" + "|".join(str(next(iter(v.values()))) for _, v in sorted(key.items()))


# ------------------------------------------------------------------ the meter


@dataclass
class Call:
    """One DynamoDB API call and the units it consumed."""

    operation: str
    ok: bool
    wru: float = 0.0  # table write request units
    rru: float = 0.0
    index_wru: float = 0.0
    writes: list[str] = field(default_factory=list)  # items written (table|key)
    item_wru: Counter[str] = field(default_factory=Counter)  # table WRU per item
    item_sizes: dict[str, int] = field(default_factory=dict)  # largest size seen, per item
    note: str = ""


@dataclass
class _Target:
    action: str  # read, put, update, delete, check
    table: str
    key: Item
    new_item: Item | None = None  # for puts
    before: Item | None = None


class Meter:
    """Hooks on a boto3 DynamoDB client: every call is recorded with its computed units."""

    def __init__(self, client: Any, side_client: Any, tables: dict[str, Table]) -> None:
        self.client = client
        self.side = side_client
        self.tables = tables
        self.calls: list[Call] = []
        self._pending: dict[int, tuple[str, dict[str, Any], list[_Target]]] = {}

    # -------------------------------------------------------------- lifecycle

    @contextmanager
    def attached(self) -> Iterator[Meter]:
        events = self.client.meta.events
        events.register("before-parameter-build.dynamodb", self._before, unique_id="bench-meter-before")
        events.register("after-call.dynamodb", self._after, unique_id="bench-meter-after")
        try:
            yield self
        finally:
            events.unregister("before-parameter-build.dynamodb", unique_id="bench-meter-before")
            events.unregister("after-call.dynamodb", unique_id="bench-meter-after")

    def take(self) -> list[Call]:
        calls, self.calls = self.calls, []
        return calls

    # -------------------------------------------------------------- hooks

    def _read(self, table: str, key: Item) -> Item | None:
        found: Item | None = self.side.get_item(TableName=table, Key=key, ConsistentRead=True).get("Item")
        return found

    def _targets(self, operation: str, params: dict[str, Any]) -> list[_Target]:
        if operation == "GetItem":
            return [_Target("read", params["TableName"], params["Key"])]
        if operation == "PutItem":
            table = params["TableName"]
            return [_Target("put", table, self.tables[table].key_of(params["Item"]), params["Item"])]
        if operation in ("UpdateItem", "DeleteItem"):
            action = "update" if operation == "UpdateItem" else "delete"
            return [_Target(action, params["TableName"], params["Key"])]
        if operation == "TransactWriteItems":
            targets = []
            for entry in params["TransactItems"]:
                ((kind, body),) = entry.items()
                table = body["TableName"]
                if kind == "Put":
                    targets.append(
                        _Target("put", table, self.tables[table].key_of(body["Item"]), body["Item"])
                    )
                else:
                    action = {"Update": "update", "Delete": "delete", "ConditionCheck": "check"}[kind]
                    targets.append(_Target(action, table, body["Key"]))
            return targets
        return []  # Query and anything else: sized from the response

    def _before(self, params: dict[str, Any], model: Any, context: dict[str, Any], **_: Any) -> None:
        targets = self._targets(model.name, params)
        for target in targets:
            target.before = self._read(target.table, target.key)
        context["bench_meter"] = (model.name, dict(params), targets)

    def _after(
        self, http_response: Any, parsed: dict[str, Any], model: Any, context: dict[str, Any], **_: Any
    ) -> None:
        pending = context.pop("bench_meter", None)
        if pending is None:
            return
        operation, params, targets = pending
        ok = "Error" not in parsed
        call = Call(operation=operation, ok=ok)
        transactional = operation == "TransactWriteItems"
        if operation == "Query":
            size = sum(item_size(i) for i in parsed.get("Items", []))
            consistent = bool(params.get("ConsistentRead")) and "IndexName" not in params
            call.rru = read_units(size, consistent)
            call.note = params.get("IndexName", "")
        for target in targets:
            text = _key_text(target.table, target.key)
            before_size = item_size(target.before)
            if target.action == "read":
                call.rru += read_units(before_size, bool(params.get("ConsistentRead")))
                call.item_sizes[text] = before_size
                continue
            after = self._read(target.table, target.key) if ok else target.before
            after_size = item_size(after)
            call.item_sizes[text] = max(before_size, after_size)
            if not ok:
                # A failed condition costs the existing item; a cancelled transaction is counted
                # as if every action had run (an upper bound; DynamoDB does not document it).
                units = write_units(before_size) * (2 if transactional else 1)
                call.wru += units
                call.item_wru[text] += units
                continue
            units = write_units(before_size if target.action == "check" else max(before_size, after_size))
            units *= 2 if transactional else 1
            call.wru += units
            call.item_wru[text] += units
            if target.action != "check":
                call.writes.append(text)
                call.index_wru += self._index_units(self.tables[target.table], target.before, after)
        self.calls.append(call)

    @staticmethod
    def _index_units(table: Table, before: Item | None, after: Item | None) -> int:
        units = 0
        for index in table.indexes:
            old, new = _projected(table, index, before), _projected(table, index, after)
            if old is None and new is None:
                continue
            if old is None or new is None:
                units += write_units(item_size(old if new is None else new))
            elif any(old[k] != new[k] for k in index.keys):
                units += write_units(item_size(old)) + write_units(item_size(new))
            elif old != new:
                units += write_units(max(item_size(old), item_size(new)))
        return units


def _projected(table: Table, index: Index, item: Item | None) -> Item | None:
    if not item or not all(k in item for k in index.keys):
        return None  # sparse: the item is not in this index
    if index.projection == "ALL":
        return item
    keep = (
        set(table.keys) | set(index.keys) | (set(index.include) if index.projection == "INCLUDE" else set())
    )
    return {k: v for k, v in item.items() if k in keep}


@dataclass
class Summary:
    """What a batch of identical requests cost, per request."""

    requests: int
    calls: Counter[str]
    wru: float
    rru: float
    index_wru: float
    writes_per_item: Counter[str]
    wru_per_item: Counter[str]
    item_sizes: dict[str, int]

    @property
    def reads(self) -> float:
        return sum(v for k, v in self.calls.items() if k in ("GetItem", "Query", "Scan", "BatchGetItem"))

    @property
    def writes(self) -> float:
        return sum(self.calls.values()) - self.reads


def summarize(calls: list[Call], requests: int) -> Summary:
    ops: Counter[str] = Counter()
    writes: Counter[str] = Counter()
    item_wru: Counter[str] = Counter()
    sizes: dict[str, int] = {}
    for call in calls:
        ops[call.operation + ("" if call.ok else " (condition failed)")] += 1
        writes.update(call.writes)
        item_wru.update(call.item_wru)
        for key, size in call.item_sizes.items():
            sizes[key] = max(sizes.get(key, 0), size)
    return Summary(
        requests=requests,
        calls=Counter({k: v / requests for k, v in ops.items()}),  # type: ignore[misc]
        wru=sum(c.wru for c in calls) / requests,
        rru=sum(c.rru for c in calls) / requests,
        index_wru=sum(c.index_wru for c in calls) / requests,
        writes_per_item=Counter({k: v / requests for k, v in writes.items()}),  # type: ignore[misc]
        wru_per_item=Counter({k: v / requests for k, v in item_wru.items()}),  # type: ignore[misc]
        item_sizes=sizes,
    )
