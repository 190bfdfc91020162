"""The DynamoDB stand-in in front of moto throttles and conflicts as DynamoDB does."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError
from conduix_local.dynamo_standin import Capacity, StandIn
from conduix_local.moto_server import LockedMotoServer


def key(sk: str) -> dict[str, dict[str, str]]:
    return {"pk": {"S": "ORG#hot"}, "sk": {"S": sk}}


def bump(sk: str) -> dict[str, Any]:
    return {
        "Update": {
            "TableName": "T",
            "Key": key(sk),
            "UpdateExpression": "ADD n :one",
            "ExpressionAttributeValues": {":one": {"N": "1"}},
        }
    }


@pytest.fixture
def ddb() -> Iterator[tuple[Any, StandIn]]:
    standin = StandIn(Capacity(item_wcu=20, partition_wcu=30, split_after=0.5))
    with LockedMotoServer(standin=standin) as server:
        client = boto3.client(
            "dynamodb",
            endpoint_url=server.url,
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
            config=Config(retries={"total_max_attempts": 1, "mode": "standard"}),
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
        yield client, standin
        client.delete_table(TableName="T")  # moto's state is shared by every server in this process


def test_one_item_is_throttled_above_its_write_units_per_second(ddb: tuple[Any, StandIn]) -> None:
    client, standin = ddb
    time.sleep(1 - time.monotonic() % 1)  # a fresh one-second window
    outcomes = []
    for _ in range(25):
        try:
            client.update_item(**{k: v for k, v in bump("wallet")["Update"].items()})
            outcomes.append("ok")
        except ClientError as exc:
            outcomes.append(exc.response["Error"]["Code"])
    assert outcomes.count("ok") == 20, (outcomes, standin.capacity.throttled)  # 1 unit each, 20 a second
    assert set(outcomes[20:]) == {"ProvisionedThroughputExceededException"}
    # In a transaction each write counts twice, and a throttled one is cancelled, not applied
    time.sleep(1 - time.monotonic() % 1)
    for _ in range(10):
        client.transact_write_items(TransactItems=[bump("wallet")])
    with pytest.raises(ClientError) as throttled:
        client.transact_write_items(TransactItems=[bump("wallet")])
    assert [r["Code"] for r in throttled.value.response["CancellationReasons"]] == ["ThrottlingError"]
    item = client.get_item(TableName="T", Key=key("wallet"))["Item"]
    assert item["n"]["N"] == str(20 + 10)


def test_a_hot_partition_key_splits_for_heat_but_never_one_item(ddb: tuple[Any, StandIn]) -> None:
    client, standin = ddb
    table = "T"
    pk = '{"S": "ORG#hot"}'
    assert standin.capacity.partitions(table, pk) == 1
    served = 0
    deadline = time.monotonic() + 2.5
    i = 0
    while time.monotonic() < deadline:  # many items of one key, above one partition's 30/s
        i += 1
        try:
            client.put_item(TableName=table, Item={**key(f"line#{i}"), "n": {"N": "1"}})
            served += 1
        except ClientError as exc:
            assert exc.response["Error"]["Code"] == "ProvisionedThroughputExceededException"
    assert standin.capacity.partitions(table, pk) >= 2  # split after sustained heat
    assert standin.capacity.throttled > 0


def test_a_transaction_touching_an_item_in_flight_is_cancelled(ddb: tuple[Any, StandIn]) -> None:
    client, standin = ddb
    # Given a transaction in flight holding the wallet (held while moto runs it)
    with standin.conflicts.running([("T", '{"S": "ORG#hot"}', '{"S": "wallet"}')]):
        # Then another transaction on it is cancelled, and a single write fails
        with pytest.raises(ClientError) as cancelled:
            client.transact_write_items(TransactItems=[bump("other"), bump("wallet")])
        assert [r["Code"] for r in cancelled.value.response["CancellationReasons"]] == [
            "None",
            "TransactionConflict",
        ]
        with pytest.raises(ClientError) as single:
            client.update_item(**bump("wallet")["Update"])
        assert single.value.response["Error"]["Code"] == "TransactionConflictException"
        client.transact_write_items(TransactItems=[bump("other")])  # other items are free
    # And once it ends, the item takes writes again
    client.transact_write_items(TransactItems=[bump("wallet")])
    assert client.get_item(TableName="T", Key=key("other"))["Item"]["n"]["N"] == "1"


def test_concurrent_transactions_on_one_item_conflict(ddb: tuple[Any, StandIn]) -> None:
    client, standin = ddb
    results: list[str] = []
    # The first transaction stays in flight (inside moto, under the server's lock) until a
    # second one has arrived: on a loaded machine the threads below may otherwise never overlap.
    real_running, in_flight, arrived = standin.conflicts.running, threading.Event(), threading.Event()
    real_before = standin.before

    @contextmanager
    def first_waits(keys: list[Any]) -> Iterator[None]:
        with real_running(keys):
            if keys and not in_flight.is_set():
                in_flight.set()
                arrived.wait(10)
            yield

    def before(target: str, raw: bytes) -> Any:
        judged = real_before(target, raw)  # judged while the first is still in flight
        if in_flight.is_set():
            arrived.set()
        return judged

    standin.conflicts.running = first_waits  # type: ignore[method-assign]
    standin.before = before  # type: ignore[method-assign]

    def hammer() -> None:
        for _ in range(5):
            try:
                client.transact_write_items(TransactItems=[bump("wallet")])
                results.append("ok")
            except ClientError as exc:
                results.append(exc.response["CancellationReasons"][0]["Code"])

    threads = [threading.Thread(target=hammer) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert "TransactionConflict" in results
    applied = int(client.get_item(TableName="T", Key=key("wallet"))["Item"]["n"]["N"])
    assert applied == results.count("ok")  # a cancelled transaction wrote nothing


def test_the_billing_client_waits_out_a_transaction_in_flight_for_a_single_write(
    ddb: tuple[Any, StandIn],
) -> None:
    from conduix.store.dynamo import wait_out_transactions

    client, standin = ddb
    wait_out_transactions(client)  # as conduix.store.dynamo.client() does
    held = ("T", '{"S": "ORG#hot"}', '{"S": "wallet"}')
    before = standin.conflicts.cancelled
    # Given a transaction holding the wallet for a moment (a top-up landing)
    with standin.conflicts.running([held]):
        writer = threading.Thread(target=lambda: client.update_item(**bump("wallet")["Update"]))
        writer.start()
        time.sleep(0.05)
    # When it ends, the single write refused meanwhile is sent again and lands exactly once
    writer.join(timeout=10)
    assert standin.conflicts.cancelled > before
    assert client.get_item(TableName="T", Key=key("wallet"))["Item"]["n"]["N"] == "1"
    # And a transaction's own cancellation is left to the caller (`retrying`), not resent here
    with standin.conflicts.running([held]), pytest.raises(ClientError) as cancelled:
        client.transact_write_items(TransactItems=[bump("wallet")])
    assert cancelled.value.response["Error"]["Code"] == "TransactionCanceledException"


def test_the_next_writes_to_an_item_can_be_throttled_on_demand(ddb: tuple[Any, StandIn]) -> None:
    from conduix_local.dynamo_standin import item_key

    client, standin = ddb
    wallet = item_key("T", key("wallet"))
    # Given the next two writes touching the wallet are to be throttled
    standin.throttle_next(2, [wallet])
    # Then writes to other items pass, and the wallet's next two are refused as DynamoDB does
    client.transact_write_items(TransactItems=[bump("other")])
    with pytest.raises(ClientError) as cancelled:
        client.transact_write_items(TransactItems=[bump("other"), bump("wallet")])
    assert [r["Code"] for r in cancelled.value.response["CancellationReasons"]] == ["ThrottlingError"] * 2
    assert standin.throttles_pending == 1
    with pytest.raises(ClientError) as single:
        client.put_item(TableName="T", Item={**key("wallet"), "n": {"N": "7"}})
    assert single.value.response["Error"]["Code"] == "ProvisionedThroughputExceededException"
    # And the third lands: nothing refused had been written
    client.transact_write_items(TransactItems=[bump("wallet")])
    assert client.get_item(TableName="T", Key=key("wallet"))["Item"]["n"]["N"] == "1"
    assert client.get_item(TableName="T", Key=key("other"))["Item"]["n"]["N"] == "1"
    assert (standin.throttles_pending, standin.forced_throttles) == (0, 2)
    # And with no keys given, any write counts
    standin.throttle_next(1)
    with pytest.raises(ClientError):
        client.transact_write_items(TransactItems=[bump("else")])
    client.transact_write_items(TransactItems=[bump("else")])
