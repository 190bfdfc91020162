"""moto's Query at the cost of what it returns, not of the table.

moto 5 answers every Query by sorting every item of the table (`Table.all_items`), then
filtering by partition key, sorting again and walking the partition from its first item: at
100,000 items one Query of a small org took over a second under the server's one lock, and a
page of a big org's ledger half a second, so every minute's sweep stalled the whole local stack
longer as its books grew. Here a table keeps, per partition, its sort keys in order, and per
global secondary index, which items each index key holds. A Query hands moto's own query code
only the items it can reach (the sort-key range from the resume point, up to the page's end),
so results, order, pages, counts and errors stay moto's own (`tests/local/test_moto_index.py`
compares them with moto's on random tables and queries).

Why the narrowing changes nothing: moto walks the sorted partition; an item before the resume
point (ExclusiveStartKey) or outside the sort-key condition adds nothing; an item past the
condition's range (in the scan's direction) only decides whether a LastEvaluatedKey is given,
by the page's count or size, so the first of them is kept (and, when the page is near its
1 MB, all of them). Anything unusual (a non-string sort key, a legacy QueryFilter, a start key
from another partition) goes to moto's own path unchanged. The caches are kept by hooks on the
only places moto changes a table's items (`Table.put_item`, `Table.delete_item`, an update in
place), checked against the table's storage on every use, and built lazily.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable
from typing import Any

from moto.dynamodb.models import DynamoDBBackend
from moto.dynamodb.models.dynamo_type import DynamoType, Item
from moto.dynamodb.models.table import RESULT_SIZE_LIMIT, GlobalSecondaryIndex, Table

MAX_ITEM_SIZE = 400 * 1024  # DynamoDB's item limit: an item past the range cannot add more to a page

_ORIGINAL: dict[str, Callable[..., Any]] = {}
_GENERATION = [0]  # caches built before the last install() were not kept up meanwhile


class Reached:
    """What narrowed Queries handed moto, for tests: queries, and items in all."""

    queries = 0
    items = 0


_Key = tuple[DynamoType, DynamoType | None]


class _Sorted:
    """One partition's sort keys (strings), in moto's order; valid while its dict is the same."""

    __slots__ = ("keys", "partition")

    def __init__(self, partition: dict[DynamoType, Item]) -> None:
        self.partition = partition
        self.keys = sorted(str(k.value) for k in partition)


class _Index:
    """One global secondary index with a single hash key: its key value -> the items under it."""

    def __init__(self, table: Table, attr: str) -> None:
        self.attr = attr
        self.members: dict[DynamoType, set[_Key]] = {}
        self.where: dict[_Key, DynamoType] = {}
        for stored in table.items.values():  # once, unsorted: the order does not matter here
            items: list[Item] = list(stored.values()) if table.range_key_attr else [stored]  # type: ignore[list-item]
            for item in items:
                self.note((item.hash_key, item.range_key), item)

    def note(self, key: _Key, item: Item | None) -> None:
        value = item.attrs.get(self.attr) if item is not None else None
        old = self.where.get(key)
        if old is None and value is None:
            return
        if old is not None and value is not None and old == value:
            return
        if old is not None:
            self.where.pop(key)
            members = self.members[old]
            members.discard(key)
            if not members:
                del self.members[old]
        if value is not None:
            self.where[key] = value
            self.members.setdefault(value, set()).add(key)


class _Cache:
    """A table's caches, for the storage object they were built from, while installed."""

    def __init__(self, table: Table) -> None:
        self.storage = table.items
        self.generation = _GENERATION[0]
        self.partitions: dict[DynamoType, _Sorted] = {}
        self.indexes: dict[str, _Index] = {}


def _cache(table: Table) -> _Cache:
    cache = _live(table)
    if cache is None:  # new, or its table's items were replaced (a restore), or not kept up
        cache = table.__dict__["_conduix_cache"] = _Cache(table)
    return cache


def _live(table: Table) -> _Cache | None:
    cache: _Cache | None = table.__dict__.get("_conduix_cache")
    if cache is None or cache.storage is not table.items or cache.generation != _GENERATION[0]:
        return None
    return cache


def _sorted(table: Table, hash_key: DynamoType) -> _Sorted | None:
    partition = table.items.get(hash_key)
    if partition is None:
        return None
    cache = _cache(table)
    entry = cache.partitions.get(hash_key)
    if entry is None or entry.partition is not partition or len(entry.keys) != len(partition):
        entry = cache.partitions[hash_key] = _Sorted(partition)
    return entry


# ------------------------------------------------------------------ keeping them


def _put_item(self: Table, item_attrs: dict[str, Any], *args: Any, **kwargs: Any) -> Item:
    item: Item = _ORIGINAL["put_item"](self, item_attrs, *args, **kwargs)
    cache = _live(self)
    if cache is not None:
        entry = cache.partitions.get(item.hash_key)
        if entry is not None and item.range_key is not None and len(entry.keys) != len(entry.partition):
            bisect.insort(entry.keys, str(item.range_key.value))  # a new key (a replaced one keeps its place)
        for index in cache.indexes.values():
            index.note((item.hash_key, item.range_key), item)
    return item


def _delete_item(self: Table, hash_key: DynamoType, range_key: DynamoType | None) -> Item | None:
    item: Item | None = _ORIGINAL["delete_item"](self, hash_key, range_key)
    cache = _live(self)
    if item is not None and cache is not None:
        entry = cache.partitions.get(hash_key)
        if entry is not None and range_key is not None:
            at = bisect.bisect_left(entry.keys, str(range_key.value))
            if at < len(entry.keys) and entry.keys[at] == str(range_key.value):
                del entry.keys[at]
        for index in cache.indexes.values():
            index.note((hash_key, range_key), None)
    return item


def _update_item(
    self: DynamoDBBackend, table_name: str, key: dict[str, Any], *args: Any, **kwargs: Any
) -> Any:
    """An update changes the item in place (and may add or drop its index keys)."""
    try:
        return _ORIGINAL["update_item"](self, table_name, key, *args, **kwargs)
    finally:
        table = self.tables.get(table_name)
        cache = _live(table) if table is not None else None
        if table is not None and cache is not None and cache.indexes:
            try:
                hash_value, range_value = self.get_keys_value(table, key)
            except Exception:
                hash_value = None
            if hash_value is not None:
                item = table.get_item(hash_value, range_value) if table.range_key_attr else None
                for index in cache.indexes.values():
                    index.note((hash_value, range_value), item)


# ------------------------------------------------------------------ answering from them


def _range_bounds(keys: list[str], comparison: str | None, values: list[str]) -> tuple[int, int] | None:
    """The slice of `keys` that the sort-key condition can match, or None if not known."""
    n = len(keys)
    if comparison is None:
        return 0, n
    op = comparison.upper()
    if op in ("=", "EQ") and len(values) == 1:
        return bisect.bisect_left(keys, values[0]), bisect.bisect_right(keys, values[0])
    if op in ("<", "LT") and len(values) == 1:
        return 0, bisect.bisect_left(keys, values[0])
    if op in ("<=", "LE") and len(values) == 1:
        return 0, bisect.bisect_right(keys, values[0])
    if op in (">", "GT") and len(values) == 1:
        return bisect.bisect_right(keys, values[0]), n
    if op in (">=", "GE") and len(values) == 1:
        return bisect.bisect_left(keys, values[0]), n
    if op == "BETWEEN" and len(values) == 2:
        low, high = bisect.bisect_left(keys, values[0]), bisect.bisect_right(keys, values[1])
        return low, max(low, high)
    if op == "BEGINS_WITH" and len(values) == 1:
        prefix = values[0]
        low = hi = bisect.bisect_left(keys, prefix)
        top = n
        while hi < top:  # the keys with the prefix follow each other from `low`
            mid = (hi + top) // 2
            if keys[mid].startswith(prefix):
                hi = mid + 1
            else:
                top = mid
        return low, hi
    return None


def _partition_candidates(
    table: Table,
    hash_key: DynamoType,
    range_comparison: str | None,
    range_objs: list[DynamoType],
    limit: int | None,
    exclusive_start_key: dict[str, Any] | None,
    forward: bool,
) -> list[Item] | None:
    """The partition's items moto's query would walk to any effect, or None for moto's path."""
    if table.range_key_attr is None or table.range_key_type != "S" or hash_key.type != table.hash_key_type:
        return None
    if any(obj.type != "S" for obj in range_objs) or (limit is not None and limit < 1):
        return None
    entry = _sorted(table, hash_key)
    if entry is None:
        return []
    keys = entry.keys
    bounds = _range_bounds(keys, range_comparison, [str(obj.value) for obj in range_objs])
    if bounds is None:
        return None
    low, high = bounds
    if exclusive_start_key is not None:  # moto skips up to and including it, in scan order
        start_hash = exclusive_start_key.get(table.hash_key_attr)
        start_range = exclusive_start_key.get(table.range_key_attr)
        if (
            not isinstance(start_hash, dict)
            or DynamoType(start_hash) != hash_key
            or not isinstance(start_range, dict)
            or set(start_range) != {"S"}
        ):
            return None
        if forward:
            low = max(low, bisect.bisect_right(keys, start_range["S"]))
        else:
            high = min(high, bisect.bisect_left(keys, start_range["S"]))
    partition = entry.partition
    order = range(low, high) if forward else range(high - 1, low - 1, -1)
    picked: list[Item] = []
    size = 0
    for i in order:  # the page: up to the item whose count or size ends it
        item = partition[DynamoType({"S": keys[i]})]
        picked.append(item)
        if (limit is not None and len(picked) > limit) or size + item.size() > RESULT_SIZE_LIMIT:
            return picked
        size += item.size()
    # The range ran out first: past it, items match nothing but may still end the page, by its
    # count (the first of them) or its size (any of them, only when the page is near 1 MB).
    full = limit is not None and len(picked) >= limit
    after = range(high, len(keys)) if forward else range(low - 1, -1, -1)
    for i in after:
        item = partition[DynamoType({"S": keys[i]})]
        picked.append(item)
        if full or size + item.size() > RESULT_SIZE_LIMIT or size + MAX_ITEM_SIZE <= RESULT_SIZE_LIMIT:
            break
    return picked


def _index_candidates(
    table: Table, index_name: str, hash_key_conditions: list[Any] | None
) -> list[Item] | None:
    index = next((i for i in table.global_indexes or [] if i.name == index_name), None)
    if not isinstance(index, GlobalSecondaryIndex):
        return None
    hash_attrs = [k["AttributeName"] for k in index.schema if k["KeyType"] == "HASH"]
    conditions = dict(hash_key_conditions or [])
    if len(hash_attrs) != 1 or set(conditions) != set(hash_attrs):
        return None
    cache = _cache(table)
    cached = cache.indexes.get(index_name)
    if cached is None or cached.attr != hash_attrs[0]:
        cached = cache.indexes[index_name] = _Index(table, hash_attrs[0])
    found = []
    for hash_value, range_value in cached.members.get(conditions[hash_attrs[0]], ()):
        item = table.get_item(hash_value, range_value)
        if item is not None:
            found.append(item)
    return found


def _query(
    self: Table,
    hash_key: DynamoType | None,
    range_comparison: str | None,
    range_objs: list[DynamoType],
    limit: int,
    exclusive_start_key: dict[str, Any],
    scan_index_forward: bool,
    *args: Any,
    **kwargs: Any,
) -> Any:
    # moto's backend passes (projection, index_name, consistent_read, filter) by position.
    index_name = args[1] if len(args) > 1 else kwargs.get("index_name")
    legacy = {k for k in kwargs if k not in _QUERY_KEYWORDS}  # QueryFilter / non-key KeyConditions
    candidates: list[Item] | None = None
    if not legacy:
        if index_name:
            candidates = _index_candidates(self, index_name, kwargs.get("hash_key_conditions"))
        elif hash_key is not None and len(kwargs.get("range_key_conditions") or []) <= 1:
            names = [c[0] for c in kwargs.get("range_key_conditions") or []]
            if all(name == self.range_key_attr for name in names):
                candidates = _partition_candidates(
                    self,
                    hash_key,
                    range_comparison,
                    range_objs,
                    limit,
                    exclusive_start_key,
                    scan_index_forward is not False,
                )
    if candidates is None:
        return _ORIGINAL["query"](
            self,
            hash_key,
            range_comparison,
            range_objs,
            limit,
            exclusive_start_key,
            scan_index_forward,
            *args,
            **kwargs,
        )
    self.__dict__["_conduix_candidates"] = candidates
    Reached.queries += 1
    Reached.items += len(candidates)
    try:
        return _ORIGINAL["query"](
            self,
            hash_key,
            range_comparison,
            range_objs,
            limit,
            exclusive_start_key,
            scan_index_forward,
            *args,
            **kwargs,
        )
    finally:
        del self.__dict__["_conduix_candidates"]


_QUERY_KEYWORDS = {
    "projection_expressions",
    "index_name",
    "consistent_read",
    "filter_expression",
    "hash_key_conditions",
    "range_key_conditions",
}


def _all_items(self: Table) -> list[Item]:
    candidates: list[Item] | None = self.__dict__.get("_conduix_candidates")
    if candidates is not None:  # a narrowed Query in progress (one request at a time: the lock)
        return candidates
    items: list[Item] = _ORIGINAL["all_items"](self)
    return items


def install() -> None:
    """Patch moto's Table and backend (idempotent; every instance uses the class's methods)."""
    if _ORIGINAL:
        return
    _GENERATION[0] += 1
    _ORIGINAL.update(
        put_item=Table.put_item,
        delete_item=Table.delete_item,
        query=Table.query,
        all_items=Table.all_items,
        update_item=DynamoDBBackend.update_item,
    )
    Table.put_item = _put_item  # type: ignore[method-assign]
    Table.delete_item = _delete_item  # type: ignore[method-assign]
    Table.query = _query  # type: ignore[method-assign]
    Table.all_items = _all_items  # type: ignore[method-assign]
    DynamoDBBackend.update_item = _update_item  # type: ignore[method-assign]


def uninstall() -> None:
    """moto's own methods again (tests compare the two)."""
    if not _ORIGINAL:
        return
    Table.put_item = _ORIGINAL["put_item"]  # type: ignore[method-assign]
    Table.delete_item = _ORIGINAL["delete_item"]  # type: ignore[method-assign]
    Table.query = _ORIGINAL["query"]  # type: ignore[method-assign]
    Table.all_items = _ORIGINAL["all_items"]  # type: ignore[method-assign]
    DynamoDBBackend.update_item = _ORIGINAL["update_item"]  # type: ignore[method-assign]
    _ORIGINAL.clear()
