"""Creates the template's DynamoDB tables through any DynamoDB endpoint (moto, in the local stack).

The definitions come from template.yaml itself, so keys and indexes never drift from what deploys.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from conduix_local.template import resources_of_type

if TYPE_CHECKING:
    from mypy_boto3_dynamodb.client import DynamoDBClient
else:
    DynamoDBClient = Any

# CloudFormation properties that CreateTable takes with the very same shape. Others differ
# (SSESpecification, StreamSpecification) or are separate calls (TimeToLiveSpecification, PITR).
_CREATE_TABLE_PROPERTIES = (
    "AttributeDefinitions",
    "KeySchema",
    "LocalSecondaryIndexes",
    "GlobalSecondaryIndexes",
    "BillingMode",
    "ProvisionedThroughput",
    "OnDemandThroughput",
    "TableClass",
    "DeletionProtectionEnabled",
    "Tags",
)


def create_table_request(properties: dict[str, Any], table_name: str) -> dict[str, Any]:
    """The CreateTable arguments for one template table."""
    request: dict[str, Any] = {"TableName": table_name}
    request.update({key: properties[key] for key in _CREATE_TABLE_PROPERTIES if key in properties})
    stream = properties.get("StreamSpecification")
    if stream:
        # CloudFormation implies StreamEnabled; the API wants it spelled out.
        request["StreamSpecification"] = {"StreamEnabled": True, **stream}
    return request


def create_tables(client: DynamoDBClient, template: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """Create every AWS::DynamoDB::Table of the template; return {logical_id: table_name}.

    A table that exists already is left as it is (TTL included), so reruns are harmless.
    """
    names: dict[str, str] = {}
    for logical_id, resource in resources_of_type(template, "AWS::DynamoDB::Table").items():
        properties: dict[str, Any] = resource.get("Properties", {})
        table_name = prefix + logical_id
        names[logical_id] = table_name
        try:
            client.create_table(**create_table_request(properties, table_name))
        except client.exceptions.ResourceInUseException:
            continue
        # Real DynamoDB rejects UpdateTimeToLive while the table is still CREATING.
        client.get_waiter("table_exists").wait(
            TableName=table_name, WaiterConfig={"Delay": 1, "MaxAttempts": 60}
        )
        ttl = properties.get("TimeToLiveSpecification")
        if ttl and ttl.get("Enabled"):
            client.update_time_to_live(
                TableName=table_name,
                TimeToLiveSpecification={"AttributeName": ttl["AttributeName"], "Enabled": True},
            )
    return names


def delete_tables(client: DynamoDBClient, names: Iterable[str] | Mapping[str, str]) -> None:
    """Delete the named tables; missing ones are ignored.

    Takes create_tables' result as it is: a mapping's values are the table names, not its keys.
    """
    for name in names.values() if isinstance(names, Mapping) else names:
        with contextlib.suppress(client.exceptions.ResourceNotFoundException):
            client.delete_table(TableName=name)
