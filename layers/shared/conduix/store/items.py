"""DynamoDB items as plain values: build and read attribute values (no client, no boto3).

Data-access modules return items, and the modules above them may read those with these
helpers without reaching the store itself (see conduix.store.dynamo).
"""

from __future__ import annotations

from typing import Any

Item = dict[str, Any]


def s(value: str) -> dict[str, str]:
    return {"S": value}


def n(value: int) -> dict[str, str]:
    return {"N": str(value)}


def as_int(item: Item, name: str, default: int = 0) -> int:
    attr = item.get(name)
    return int(attr["N"]) if attr else default


def as_str(item: Item, name: str, default: str = "") -> str:
    attr = item.get(name)
    return str(attr["S"]) if attr else default


def as_bool(item: Item, name: str, default: bool = False) -> bool:
    attr = item.get(name)
    return bool(attr["BOOL"]) if attr else default
