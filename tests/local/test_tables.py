"""create_tables builds what template.yaml declares, through the locked moto server."""

from __future__ import annotations

from typing import Any

from conduix_local.tables import create_table_request, create_tables, delete_tables
from conduix_local.template import load_template, resources_of_type


def test_create_table_request_keeps_only_create_table_arguments() -> None:
    properties = resources_of_type(load_template(), "AWS::DynamoDB::Table")["CacheTable"]["Properties"]
    request = create_table_request(properties, "p-CacheTable")
    assert request == {
        "TableName": "p-CacheTable",
        "AttributeDefinitions": properties["AttributeDefinitions"],
        "KeySchema": properties["KeySchema"],
        "BillingMode": "PAY_PER_REQUEST",
    }


def test_create_tables_from_template(dynamodb: Any) -> None:
    template = load_template()
    names = create_tables(dynamodb, template, prefix="t-")
    assert names == {"BillingTable": "t-BillingTable", "CacheTable": "t-CacheTable"}

    declared = resources_of_type(template, "AWS::DynamoDB::Table")
    for logical_id, name in names.items():
        properties = declared[logical_id]["Properties"]
        table = dynamodb.describe_table(TableName=name)["Table"]
        assert table["TableStatus"] == "ACTIVE"
        assert table["KeySchema"] == properties["KeySchema"]
        assert table["BillingModeSummary"]["BillingMode"] == properties["BillingMode"]
        assert sorted(table["AttributeDefinitions"], key=str) == sorted(
            properties["AttributeDefinitions"], key=str
        )
        for kind in ("LocalSecondaryIndexes", "GlobalSecondaryIndexes"):
            got = {i["IndexName"]: (i["KeySchema"], i["Projection"]) for i in table.get(kind, [])}
            want = {i["IndexName"]: (i["KeySchema"], i["Projection"]) for i in properties.get(kind, [])}
            assert got == want, kind


def test_ttl_applied_where_the_template_asks(dynamodb: Any) -> None:
    names = create_tables(dynamodb, load_template())
    cache = dynamodb.describe_time_to_live(TableName=names["CacheTable"])["TimeToLiveDescription"]
    assert cache == {"TimeToLiveStatus": "ENABLED", "AttributeName": "expires_at"}
    billing = dynamodb.describe_time_to_live(TableName=names["BillingTable"])["TimeToLiveDescription"]
    assert billing == {"TimeToLiveStatus": "ENABLED", "AttributeName": "expires_at"}  # idempotent answers


def test_create_tables_twice_leaves_existing_tables(dynamodb: Any) -> None:
    names = create_tables(dynamodb, load_template(), prefix="x-")
    dynamodb.put_item(TableName=names["CacheTable"], Item={"cache_key": {"S": "k"}})
    assert create_tables(dynamodb, load_template(), prefix="x-") == names
    assert dynamodb.get_item(TableName=names["CacheTable"], Key={"cache_key": {"S": "k"}})["Item"]


def test_delete_tables_takes_the_mapping_and_ignores_missing(dynamodb: Any) -> None:
    names = create_tables(dynamodb, load_template(), prefix="d-")
    dynamodb.create_table(
        TableName="other",
        AttributeDefinitions=[{"AttributeName": "k", "AttributeType": "S"}],
        KeySchema=[{"AttributeName": "k", "KeyType": "HASH"}],
        BillingMode="PAY_PER_REQUEST",
    )
    delete_tables(dynamodb, names)
    delete_tables(dynamodb, ["other", "never-created"])
    assert dynamodb.list_tables()["TableNames"] == []
