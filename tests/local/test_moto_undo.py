"""The locked moto server's transactions: all or nothing, at a cost that does not grow with
the table (moto itself deep-copies every table a transaction touches)."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError
from conduix_local.moto_server import LockedMotoServer


@pytest.fixture(scope="module")
def ddb() -> Iterator[object]:
    with LockedMotoServer() as server:
        client = boto3.client(
            "dynamodb",
            endpoint_url=server.url,
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )
        client.create_table(
            TableName="T",
            KeySchema=[
                {"AttributeName": "pk", "KeyType": "HASH"},
                {"AttributeName": "sk", "KeyType": "RANGE"},
            ],
            AttributeDefinitions=[
                {"AttributeName": "pk", "AttributeType": "S"},
                {"AttributeName": "sk", "AttributeType": "S"},
            ],
            BillingMode="PAY_PER_REQUEST",
        )
        yield client
        client.delete_table(TableName="T")  # moto's state is shared by every server in this process


def key(sk: str) -> dict[str, dict[str, str]]:
    return {"pk": {"S": "P"}, "sk": {"S": sk}}


def test_a_cancelled_transaction_undoes_each_of_its_writes_and_nothing_else(ddb: object) -> None:
    client = ddb  # type: ignore[assignment]
    client.put_item(TableName="T", Item={**key("a"), "n": {"N": "1"}})  # type: ignore[attr-defined]
    client.put_item(TableName="T", Item={**key("gone"), "n": {"N": "7"}})  # type: ignore[attr-defined]
    with pytest.raises(ClientError) as cancelled:
        client.transact_write_items(  # type: ignore[attr-defined]
            TransactItems=[
                {
                    "Update": {
                        "TableName": "T",
                        "Key": key("a"),
                        "UpdateExpression": "ADD n :one",
                        "ExpressionAttributeValues": {":one": {"N": "1"}},
                    }
                },
                {"Put": {"TableName": "T", "Item": {**key("new"), "n": {"N": "5"}}}},
                {"Delete": {"TableName": "T", "Key": key("gone")}},
                {
                    "Put": {
                        "TableName": "T",
                        "Item": {**key("a2"), "n": {"N": "0"}},
                        "ConditionExpression": "attribute_exists(pk)",
                    }
                },
            ]
        )
    reasons = [r["Code"] for r in cancelled.value.response["CancellationReasons"]]
    assert reasons == ["None", "None", "None", "ConditionalCheckFailed"]
    items = client.scan(TableName="T")["Items"]  # type: ignore[attr-defined]
    assert sorted((i["sk"]["S"], i["n"]["N"]) for i in items) == [("a", "1"), ("gone", "7")]


def test_a_transaction_costs_the_same_in_a_large_table(ddb: object, monkeypatch: pytest.MonkeyPatch) -> None:
    """Counted, not timed: every object moto deep-copies while transactions run (nested copies
    included), at 40 items and at 3,000. moto's own rollback copied the whole table each time."""
    client = ddb  # type: ignore[assignment]
    copies = [0]
    real = copy.deepcopy

    def counting(obj: Any, memo: Any = None, _nil: Any = None) -> Any:
        copies[0] += 1
        return real(obj, memo)

    def transact(i: int) -> None:
        client.transact_write_items(  # type: ignore[attr-defined]
            TransactItems=[
                {
                    "Update": {
                        "TableName": "T",
                        "Key": key("counter"),
                        "UpdateExpression": "ADD n :one",
                        "ExpressionAttributeValues": {":one": {"N": "1"}},
                    }
                },
                {"Put": {"TableName": "T", "Item": {**key(f"line#{i:06d}"), "n": {"N": str(i)}}}},
            ]
        )

    def copies_of(rounds: range) -> int:
        copies[0] = 0
        with monkeypatch.context() as patch:
            patch.setattr(copy, "deepcopy", counting)  # the copy module's own recursion sees it too
            for i in rounds:
                transact(i)
        return copies[0]

    small = copies_of(range(40))
    for i in range(40, 3000):
        client.put_item(TableName="T", Item={**key(f"line#{i:06d}"), "n": {"N": str(i)}})  # type: ignore[attr-defined]
    large = copies_of(range(3000, 3040))
    # moto's own copy made this grow with the table (about 5x slower at 1,000 items, 30x at 4,000)
    assert large <= small * 1.1 + 10, (small, large)
