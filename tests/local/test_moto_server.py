"""The locked moto server: lifecycle, SES, and atomic conditional writes under concurrency."""

from __future__ import annotations

import json
import socket
import sys
import threading
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

import boto3
import pytest
from botocore.config import Config
from conduix_local.moto_server import LockedMotoServer
from conduix_local.serving import ThreadedServer
from conduix_local.upstream import FakeUpstream

THREADS = 50
BALANCE = 20


def test_start_stop_frees_the_port() -> None:
    with LockedMotoServer() as server:
        assert server.url.startswith("http://127.0.0.1:")
        port = server.port
        with urllib.request.urlopen(f"{server.url}/moto-api/data.json", timeout=5) as response:
            assert response.status == 200
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
        pass


@pytest.mark.parametrize("server_class", [LockedMotoServer, FakeUpstream])
def test_every_local_server_binds_loopback_only_and_starts_once(server_class: type[ThreadedServer]) -> None:
    # (conduix_local.serving: the lifecycle the local servers share)
    with pytest.raises(ValueError, match=r"127\.0\.0\.1 only"):
        server_class(host="0.0.0.0")
    with server_class() as server:
        with pytest.raises(RuntimeError, match="already started"):
            server.start()
        port = server.port
    with pytest.raises(RuntimeError, match="not started"):
        _ = server.port
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
        pass


def test_reset_clears_state(dynamodb: Any, moto_server: LockedMotoServer) -> None:
    _wallet_table(dynamodb)
    moto_server.reset()
    assert dynamodb.list_tables()["TableNames"] == []


def test_ses_through_the_locked_server(aws: dict[str, Any], moto_server: LockedMotoServer) -> None:
    ses = boto3.client("ses", **aws)
    message = {"Subject": {"Data": "Low balance"}, "Body": {"Text": {"Data": "Top up."}}}
    with pytest.raises(ses.exceptions.MessageRejected):
        ses.send_email(
            Source="billing@conduix.test", Destination={"ToAddresses": ["a@b.test"]}, Message=message
        )
    ses.verify_email_identity(EmailAddress="billing@conduix.test")
    ses.send_email(Source="billing@conduix.test", Destination={"ToAddresses": ["a@b.test"]}, Message=message)
    with urllib.request.urlopen(f"{moto_server.url}/moto-api/data.json", timeout=5) as response:
        sent = json.load(response)["ses"]["Message"]  # moto's record of every sent mail
    assert [(m["source"], m["subject"]) for m in sent] == [("billing@conduix.test", "Low balance")]


# ---------------------------------------------------------------- concurrency


@pytest.fixture
def racy() -> Iterator[None]:
    """Switch threads very often, which is what made unlocked moto over-spend."""
    previous = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        yield
    finally:
        sys.setswitchinterval(previous)


@pytest.fixture
def moto_alone(moto_server: LockedMotoServer) -> Iterator[None]:
    """moto's own atomicity, without the stand-in's transaction conflicts in front of it."""
    with moto_server.without_standin():
        yield


def _wallet_table(dynamodb: Any) -> str:
    dynamodb.create_table(
        TableName="wallets",
        AttributeDefinitions=[
            {"AttributeName": "pk", "AttributeType": "S"},
            {"AttributeName": "sk", "AttributeType": "S"},
        ],
        KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}, {"AttributeName": "sk", "KeyType": "RANGE"}],
        BillingMode="PAY_PER_REQUEST",
    )
    dynamodb.put_item(
        TableName="wallets",
        Item={"pk": {"S": "org#1"}, "sk": {"S": "wallet"}, "balance": {"N": str(BALANCE)}},
    )
    return "wallets"


def _race(attempt: Callable[[int], bool]) -> int:
    """Run `attempt` in THREADS threads released together; return how many succeeded."""
    barrier = threading.Barrier(THREADS)
    results: list[bool] = []
    errors: list[BaseException] = []

    def run(i: int) -> None:
        barrier.wait()
        try:
            results.append(attempt(i))
        except BaseException as exc:  # surfaced below, not lost in a thread
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors, errors[:3]
    assert len(results) == THREADS
    return sum(results)


def _balance(dynamodb: Any) -> int:
    item = dynamodb.get_item(
        TableName="wallets", Key={"pk": {"S": "org#1"}, "sk": {"S": "wallet"}}, ConsistentRead=True
    )
    return int(item["Item"]["balance"]["N"])


def _client(aws: dict[str, Any]) -> Any:
    # One pooled connection per thread, so requests really arrive together.
    return boto3.client(
        "dynamodb", config=Config(max_pool_connections=THREADS, retries={"max_attempts": 1}), **aws
    )


_DECREMENT = {
    "UpdateExpression": "SET balance = balance - :one",
    "ConditionExpression": "balance >= :one",
    "ExpressionAttributeValues": {":one": {"N": "1"}},
}


@pytest.mark.usefixtures("racy")
def test_concurrent_conditional_update_never_overspends(aws: dict[str, Any], dynamodb: Any) -> None:
    table = _wallet_table(dynamodb)
    client = _client(aws)

    def attempt(_: int) -> bool:
        try:
            client.update_item(
                TableName=table, Key={"pk": {"S": "org#1"}, "sk": {"S": "wallet"}}, **_DECREMENT
            )
        except client.exceptions.ConditionalCheckFailedException:
            return False
        return True

    assert _race(attempt) == BALANCE
    assert _balance(dynamodb) == 0


@pytest.mark.usefixtures("racy", "moto_alone")
def test_concurrent_transactions_never_overspend(aws: dict[str, Any], dynamodb: Any) -> None:
    table = _wallet_table(dynamodb)
    client = _client(aws)

    def attempt(i: int) -> bool:
        try:
            client.transact_write_items(
                TransactItems=[
                    {
                        "Update": {
                            "TableName": table,
                            "Key": {"pk": {"S": "org#1"}, "sk": {"S": "wallet"}},
                            **_DECREMENT,
                        }
                    },
                    {
                        "Put": {
                            "TableName": table,
                            "Item": {"pk": {"S": "org#1"}, "sk": {"S": f"ledger#{i:03d}"}},
                            "ConditionExpression": "attribute_not_exists(pk)",
                        }
                    },
                ]
            )
        except client.exceptions.TransactionCanceledException:
            return False
        return True

    assert _race(attempt) == BALANCE
    assert _balance(dynamodb) == 0
    # A cancelled transaction must not have wiped the ledger entries of concurrent winners.
    ledger = dynamodb.query(
        TableName=table,
        KeyConditionExpression="pk = :pk AND begins_with(sk, :ledger)",
        ExpressionAttributeValues={":pk": {"S": "org#1"}, ":ledger": {"S": "ledger#"}},
        ConsistentRead=True,
    )
    assert ledger["Count"] == BALANCE


def test_transactions_do_not_leave_tracked_items_behind(dynamodb: Any, moto_server: LockedMotoServer) -> None:
    """moto's dashboard tracks every item it ever made, and each transaction deep-copies the
    table: without the server dropping them, /moto-api/data.json slows with every request."""
    from moto.dynamodb.models.dynamo_type import Item

    moto_server.reset()
    table = _wallet_table(dynamodb)
    for i in range(30):
        dynamodb.transact_write_items(
            TransactItems=[
                {"Put": {"TableName": table, "Item": {"pk": {"S": "org#1"}, "sk": {"S": f"e{i}"}}}}
            ]
        )
    assert len(Item.instances_tracked) == 0  # type: ignore[attr-defined]
    assert len(dynamodb.scan(TableName=table)["Items"]) == 31


def test_items_put_directly_are_served_and_operations_timed(
    dynamodb: Any, moto_server: LockedMotoServer
) -> None:
    table = _wallet_table(dynamodb)
    moto_server.operation_times(reset=True)
    written = moto_server.put_items_directly(
        table, ({"pk": {"S": "org#2"}, "sk": {"S": f"LEDGER#{i:03d}"}} for i in range(120))
    )
    page = dynamodb.query(
        TableName=table,
        KeyConditionExpression="pk = :p AND begins_with(sk, :l)",
        ExpressionAttributeValues={":p": {"S": "org#2"}, ":l": {"S": "LEDGER#"}},
        ScanIndexForward=False,
        Limit=2,
    )
    assert written == 120
    assert [i["sk"]["S"] for i in page["Items"]] == ["LEDGER#119", "LEDGER#118"]
    calls, seconds = moto_server.operation_times()["Query"]
    assert calls == 1 and seconds > 0
