"""The locked moto server's Query: moto's own answers, from the items it can reach.

moto sorts the whole table for every Query; `conduix_local.moto_index` hands moto's query code
only a partition's sort-key range (or a global index's members). These tests compare the two
on random tables, writes and queries, item for item, page for page, and count what a Query
reaches in a large partition.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError
from conduix_local import moto_index
from conduix_local.moto_server import LockedMotoServer
from moto.dynamodb.comparisons import get_filter_expression
from moto.dynamodb.models import dynamodb_backends
from moto.dynamodb.models.dynamo_type import DynamoType
from moto.dynamodb.models.table import Table

TABLE = "IndexedT"
PREFIXES = ["ENTRY#", "HOLD#", "LEDGER#2026-", "LEDGER#2027-", "USAGE#", "WALLET", "A", "z", "é", ""]
COMPARISONS = [None, "=", "<", "<=", ">", ">=", "BETWEEN", "BEGINS_WITH"]


@pytest.fixture(scope="module")
def server() -> Iterator[tuple[Any, Table]]:
    with LockedMotoServer() as locked:
        client = boto3.client(
            "dynamodb",
            endpoint_url=locked.url,
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )
        client.create_table(
            TableName=TABLE,
            KeySchema=[
                {"AttributeName": "pk", "KeyType": "HASH"},
                {"AttributeName": "sk", "KeyType": "RANGE"},
            ],
            AttributeDefinitions=[
                {"AttributeName": "pk", "AttributeType": "S"},
                {"AttributeName": "sk", "AttributeType": "S"},
                {"AttributeName": "g", "AttributeType": "S"},
            ],
            GlobalSecondaryIndexes=[
                {
                    "IndexName": "by_g",
                    "KeySchema": [{"AttributeName": "g", "KeyType": "HASH"}],
                    "Projection": {"ProjectionType": "KEYS_ONLY"},
                }
            ],
            BillingMode="PAY_PER_REQUEST",
        )
        table = dynamodb_backends["123456789012"]["us-east-1"].get_table(TABLE)
        yield client, table
        client.delete_table(TableName=TABLE)  # moto's state is shared by every server in this process


def _sk(rng: random.Random) -> str:
    sk = rng.choice(PREFIXES) + "".join(rng.choice("0123456789abé#Z") for _ in range(rng.randint(0, 6)))
    return sk or "0"  # DynamoDB refuses an empty key


def _item(rng: random.Random, pk: str, sk: str) -> dict[str, Any]:
    item: dict[str, Any] = {"pk": {"S": pk}, "sk": {"S": sk}, "n": {"N": str(rng.randint(0, 9))}}
    if rng.random() < 0.3:
        item["g"] = {"S": rng.choice(["g1", "g2", "g3"])}
    if rng.random() < 0.04:  # big items, so that pages end at moto's 1 MB too
        item["blob"] = {"S": "x" * rng.randint(60_000, 390_000)}
    return item


def _run(table: Table, query: dict[str, Any], original: bool) -> tuple[Any, ...]:
    """One Query at the Table level, as moto's backend calls it; moto's own, or the narrowed one."""
    call = moto_index._ORIGINAL["query"] if original else Table.query
    items, scanned, last = call(
        table,
        query["hash"],
        query["comparison"],
        query["values"],
        query["limit"],
        query["start"],
        query["forward"],
        query["projection"],
        query["index"],
        False,
        get_filter_expression(query["filter"], {"#n": "n"} if query["filter"] else None, None),
        hash_key_conditions=[(query["hash_attr"], query["hash"])],
        range_key_conditions=([("sk", query["comparison"], query["values"])] if query["comparison"] else []),
    )
    return [i.to_json() for i in items], scanned, last


def _random_query(rng: random.Random, table: Table, keys: dict[str, list[str]]) -> dict[str, Any]:
    if rng.random() < 0.2:  # the global index
        return {
            "hash": DynamoType({"S": rng.choice(["g1", "g2", "g3", "g4"])}),
            "hash_attr": "g",
            "index": "by_g",
            "comparison": None,
            "values": [],
            "limit": rng.choice([None, 1, 3, 20]),
            "start": None,
            "forward": rng.random() < 0.5,
            "projection": None,
            "filter": None,
        }
    pk = rng.choice([*keys, "nobody"])
    existing = keys.get(pk) or [""]
    comparison = rng.choice(COMPARISONS)

    def value() -> str:
        if rng.random() < 0.5:
            sk = rng.choice(existing)
            return sk[: rng.randint(0, len(sk))] if comparison == "BEGINS_WITH" else sk
        return _sk(rng)[: rng.randint(0, 5)] if comparison == "BEGINS_WITH" else _sk(rng)

    values = [] if comparison is None else [value(), value()] if comparison == "BETWEEN" else [value()]
    if comparison == "BETWEEN" and rng.random() < 0.8:
        values.sort()
    start = None
    if rng.random() < 0.4:
        start = {"pk": {"S": pk}, "sk": {"S": rng.choice(existing) if rng.random() < 0.6 else _sk(rng)}}
    return {
        "hash": DynamoType({"S": pk}),
        "hash_attr": "pk",
        "index": None,
        "comparison": comparison,
        "values": [DynamoType({"S": v}) for v in values],
        "limit": rng.choice([None, None, 1, 2, 5, 40]),
        "start": start,
        "forward": rng.random() < 0.6,
        "projection": [["pk"], ["n"]] if rng.random() < 0.2 else None,
        "filter": "#n > 4" if rng.random() < 0.2 else None,
    }


def _mutate(rng: random.Random, client: Any, keys: dict[str, list[str]]) -> None:
    """A write through the server: puts, deletes, updates that add or drop the index key, and
    transactions that roll back (the undo log's puts and deletes)."""
    pk = rng.choice(list(keys))
    sk = rng.choice(keys[pk]) if keys[pk] and rng.random() < 0.5 else _sk(rng)
    kind = rng.choice(["put", "delete", "update", "cancelled"])
    key = {"pk": {"S": pk}, "sk": {"S": sk}}
    if kind == "put":
        client.put_item(TableName=TABLE, Item=_item(rng, pk, sk))
    elif kind == "delete":
        client.delete_item(TableName=TABLE, Key=key)
    elif kind == "update":
        if rng.random() < 0.5:
            client.update_item(
                TableName=TABLE,
                Key=key,
                UpdateExpression="SET g = :g",
                ExpressionAttributeValues={":g": {"S": "g4"}},
            )
        else:
            client.update_item(TableName=TABLE, Key=key, UpdateExpression="REMOVE g")
    else:
        with pytest.raises(ClientError):
            client.transact_write_items(
                TransactItems=[
                    {"Put": {"TableName": TABLE, "Item": _item(rng, pk, _sk(rng))}},
                    {"Delete": {"TableName": TABLE, "Key": key}},
                    {
                        "ConditionCheck": {
                            "TableName": TABLE,
                            "Key": {"pk": {"S": pk}, "sk": {"S": "no such item"}},
                            "ConditionExpression": "attribute_exists(pk)",
                        }
                    },
                ]
            )
    table_keys = {
        k["sk"]["S"]
        for k in client.query(
            TableName=TABLE,
            KeyConditionExpression="pk = :p",
            ExpressionAttributeValues={":p": {"S": pk}},
            ProjectionExpression="sk",
        )["Items"]
    }
    keys[pk] = sorted(table_keys)


def test_queries_answer_as_moto_does(server: tuple[Any, Table]) -> None:
    client, table = server
    rng = random.Random(14)
    keys: dict[str, list[str]] = {}
    for pk, count in (("P1", 250), ("P2", 40), ("P3", 1)):
        sks = {_sk(rng) for _ in range(count)}
        for sk in sks:
            table.put_item(_item(rng, pk, sk))
        keys[pk] = sorted(sks)
    compared = pages = 0
    for round_ in range(250):
        if round_ % 5 == 0:
            _mutate(rng, client, keys)
        query = _random_query(rng, table, keys)
        page_of_query = 0
        while True:  # every page, each resuming from the last page's key
            expected, got = _run(table, query, original=True), _run(table, query, original=False)
            assert got == expected, query
            compared += 1
            if got[2] is None or page_of_query == 4:  # moto's own Query is slow: 5 pages at most
                break
            page_of_query += 1
            pages += 1
            query = {**query, "start": got[2]}
    assert compared > 400 and pages > 50  # the random queries did page


def test_a_query_reaches_only_its_range_however_large_the_partition(
    server: tuple[Any, Table], monkeypatch: pytest.MonkeyPatch
) -> None:
    client, table = server
    for i in range(5000):  # an org's history: ledger lines, and three open holds
        table.put_item({"pk": {"S": "BIG"}, "sk": {"S": f"LEDGER#{i:06d}"}, "amount": {"N": "-1"}})
    for i in range(3):
        table.put_item({"pk": {"S": "BIG"}, "sk": {"S": f"HOLD#{i}"}, "g": {"S": "hot"}})
    sorts = []
    original_all_items = moto_index._ORIGINAL["all_items"]
    monkeypatch.setitem(moto_index._ORIGINAL, "all_items", lambda t: sorts.append(t) or original_all_items(t))
    client.query(
        TableName=TABLE,
        KeyConditionExpression="pk = :p",
        ExpressionAttributeValues={":p": {"S": "BIG"}},
        Limit=1,
    )
    cases: list[tuple[dict[str, Any], int, int]] = [
        (
            {
                "KeyConditionExpression": "pk = :p AND begins_with(sk, :h)",
                "ExpressionAttributeValues": {":p": {"S": "BIG"}, ":h": {"S": "HOLD#"}},
            },
            3,
            4,
        ),
        (
            {
                "KeyConditionExpression": "pk = :p AND begins_with(sk, :l)",
                "Limit": 50,
                "ScanIndexForward": False,
                "ExpressionAttributeValues": {":p": {"S": "BIG"}, ":l": {"S": "LEDGER#"}},
            },
            50,
            51,
        ),
        (
            {
                "KeyConditionExpression": "pk = :p AND sk BETWEEN :a AND :b",
                "ExpressionAttributeValues": {
                    ":p": {"S": "BIG"},
                    ":a": {"S": "LEDGER#000100"},
                    ":b": {"S": "LEDGER#000109"},
                },
            },
            10,
            11,
        ),
        (
            {
                "IndexName": "by_g",
                "KeyConditionExpression": "g = :g",
                "ExpressionAttributeValues": {":g": {"S": "hot"}},
            },
            3,
            3,
        ),
    ]
    for request, returned, reached_at_most in cases:
        before = moto_index.Reached.items
        page = client.query(TableName=TABLE, **request)
        assert page["Count"] == returned
        assert moto_index.Reached.items - before <= reached_at_most, request
    assert sorts == []  # moto's sort of the whole table never ran
    last = client.query(
        TableName=TABLE,
        KeyConditionExpression="pk = :p",
        Limit=2,
        ScanIndexForward=False,
        ExpressionAttributeValues={":p": {"S": "BIG"}},
    )
    assert [i["sk"]["S"] for i in last["Items"]] == ["LEDGER#004999", "LEDGER#004998"]


def test_writes_made_while_moto_runs_alone_are_seen_after(server: tuple[Any, Table]) -> None:
    _, table = server
    for sk in ("a", "b", "c"):
        table.put_item({"pk": {"S": "SWAP"}, "sk": {"S": sk}})
    query = {
        "hash": DynamoType({"S": "SWAP"}),
        "hash_attr": "pk",
        "index": None,
        "comparison": None,
        "values": [],
        "limit": None,
        "start": None,
        "forward": True,
        "projection": None,
        "filter": None,
    }
    assert [i["Attributes"]["sk"]["S"] for i in _run(table, query, original=False)[0]] == ["a", "b", "c"]
    moto_index.uninstall()  # bench.load times moto alone this way
    try:
        table.delete_item(DynamoType({"S": "SWAP"}), DynamoType({"S": "b"}))
        table.put_item({"pk": {"S": "SWAP"}, "sk": {"S": "d"}})  # as many keys, not the same
    finally:
        moto_index.install()
    assert _run(table, query, original=False) == _run(table, query, original=True)
    assert [i["Attributes"]["sk"]["S"] for i in _run(table, query, original=False)[0]] == ["a", "c", "d"]
