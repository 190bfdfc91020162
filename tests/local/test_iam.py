"""The local IAM: the template's policies, expanded and enforced in front of moto, refuse what AWS
would refuse, with AWS's error shape."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError
from conduix_local import iam
from conduix_local.moto_server import LockedMotoServer
from conduix_local.tables import create_tables
from conduix_local.template import load_template

REGION = "us-east-1"
TABLE_ARN = f"arn:aws:dynamodb:{REGION}:{iam.ACCOUNT_ID}:table/BillingTable"
REFS = {
    "BillingTable": "BillingTable",
    "CacheTable": "CacheTable",
    "BillingTable.Arn": TABLE_ARN,
    "CacheTable.Arn": f"arn:aws:dynamodb:{REGION}:{iam.ACCOUNT_ID}:table/CacheTable",
    "ScheduledJobFailures.Arn": f"arn:aws:sqs:{REGION}:{iam.ACCOUNT_ID}:ScheduledJobFailures",
}


def _principals() -> dict[str, iam.Principal]:
    return iam.load_principals(load_template(), REFS, REGION)


def _fn(name: str) -> iam.Principal:
    return _principals()[iam.access_key_id(name)]


def test_the_templates_policies_least_privilege() -> None:
    billing_api, sweeper, reload = (
        _fn("BillingApiFunction"),
        _fn("HoldSweeperFunction"),
        _fn("AutoReloadFunction"),
    )
    assert billing_api.allows("dynamodb:GetItem", TABLE_ARN)
    assert billing_api.allows("dynamodb:PutItem", TABLE_ARN)  # key creation writes a Put in a transaction
    assert not billing_api.allows("dynamodb:DeleteItem", TABLE_ARN)
    assert not billing_api.allows("dynamodb:Scan", TABLE_ARN)
    # An index is a resource of its own: the table's ARN does not cover it, nor the other way.
    assert sweeper.allows("dynamodb:Query", TABLE_ARN + "/index/by_sweep_shard")
    assert not sweeper.allows("dynamodb:Query", TABLE_ARN + "/index/by_invoice_mode")
    assert not reload.allows("dynamodb:Query", TABLE_ARN)
    assert sweeper.allows("dynamodb:Query", TABLE_ARN + "/index/by_grant_expiry")
    invoicing = _fn("MonthlyInvoicingFunction")
    assert not invoicing.allows("ses:SendEmail", f"arn:aws:ses:{REGION}:{iam.ACCOUNT_ID}:identity/a@b.c")


def test_sam_policy_templates_expand_as_sam_does() -> None:
    statements = iam.function_statements(
        [{"DynamoDBReadPolicy": {"TableName": {"Ref": "BillingTable"}}}],
        {**REFS, "AWS::Partition": "aws", "AWS::Region": REGION, "AWS::AccountId": iam.ACCOUNT_ID},
        "Fn",
    )
    fn = iam.Principal("Fn", tuple(statements))
    assert fn.allows("dynamodb:Query", TABLE_ARN + "/index/anything")
    assert fn.allows("dynamodb:GetItem", TABLE_ARN)
    assert not fn.allows("dynamodb:PutItem", TABLE_ARN)
    deny = iam.Principal("Fn", (*statements, iam.Statement("Deny", ("dynamodb:Get*",), (TABLE_ARN,))))
    assert not deny.allows("dynamodb:GetItem", TABLE_ARN)  # an explicit Deny wins
    with pytest.raises(iam.PolicyError, match="Condition"):
        iam.function_statements(
            [{"Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*", "Condition": {}}]}],
            REFS,
            "Fn",
        )


def test_each_action_of_a_transaction_needs_its_own_permission() -> None:
    body = {
        "TransactItems": [
            {"ConditionCheck": {"TableName": "BillingTable"}},
            {"Put": {"TableName": "BillingTable"}},
            {"Update": {"TableName": "BillingTable"}},
            {"Delete": {"TableName": "CacheTable"}},
        ]
    }
    assert [a for a, _ in iam.dynamodb_actions("TransactWriteItems", body, REGION)] == [
        "dynamodb:ConditionCheckItem", "dynamodb:PutItem", "dynamodb:UpdateItem", "dynamodb:DeleteItem",
    ]  # fmt: skip
    assert iam.dynamodb_actions("Query", {"TableName": "BillingTable", "IndexName": "by_x"}, REGION) == [
        ("dynamodb:Query", TABLE_ARN + "/index/by_x")
    ]


@pytest.fixture
def enforced(moto_server: LockedMotoServer) -> Iterator[dict[str, Any]]:
    moto_server.reset()
    admin = {"endpoint_url": moto_server.url, "region_name": REGION}
    create_tables(
        boto3.client("dynamodb", **admin, aws_access_key_id="x", aws_secret_access_key="x"), load_template()
    )
    moto_server.enforce(_principals())
    try:
        yield admin
    finally:
        moto_server.enforce({})


def _as(function: str, aws: dict[str, Any], service: str = "dynamodb") -> Any:
    return boto3.client(
        service, **aws, aws_access_key_id=iam.access_key_id(function), aws_secret_access_key="local"
    )


def test_a_denied_call_gets_access_denied_and_changes_nothing(enforced: dict[str, Any]) -> None:
    sweeper = _as("HoldSweeperFunction", enforced)
    billing = _as("BillingApiFunction", enforced)  # it may never delete an item
    item = {"pk": {"S": "ORG#x"}, "sk": {"S": "WALLET"}}
    with pytest.raises(ClientError) as denied:
        billing.delete_item(TableName="BillingTable", Key=item)
    assert denied.value.response["Error"]["Code"] == "AccessDeniedException"
    assert denied.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    assert "BillingApiFunction is not authorized to perform: dynamodb:DeleteItem" in str(denied.value)
    # One denied action refuses the whole transaction, even when the others are allowed.
    webhook = _as("StripeWebhookFunction", enforced)
    with pytest.raises(ClientError, match="dynamodb:ConditionCheckItem"):
        webhook.transact_write_items(
            TransactItems=[
                {"Put": {"TableName": "BillingTable", "Item": item}},
                {
                    "ConditionCheck": {
                        "TableName": "BillingTable",
                        "Key": item,
                        "ConditionExpression": "attribute_not_exists(pk)",
                    }
                },
            ]
        )
    # What is allowed goes through; the denied calls wrote nothing.
    assert "Item" not in sweeper.get_item(TableName="BillingTable", Key=item)
    webhook.put_item(TableName="BillingTable", Item=item)
    with pytest.raises(ClientError, match="dynamodb:DeleteItem"):
        billing.delete_item(TableName="BillingTable", Key=item)
    assert "Item" in sweeper.get_item(TableName="BillingTable", Key=item)
    with pytest.raises(ClientError, match="by_invoice_mode"):
        sweeper.query(
            TableName="BillingTable",
            IndexName="by_invoice_mode",
            KeyConditionExpression="invoice_shard = :s",
            ExpressionAttributeValues={":s": {"S": "0"}},
        )


def test_ses_refuses_a_function_without_send_permission(enforced: dict[str, Any]) -> None:
    args = {
        "Source": "billing@conduix.local",
        "Destination": {"ToAddresses": ["a@example.com"]},
        "Message": {"Subject": {"Data": "s"}, "Body": {"Text": {"Data": "b"}}},
    }
    with pytest.raises(ClientError) as denied:
        _as("MonthlyInvoicingFunction", enforced, "ses").send_email(**args)
    assert denied.value.response["Error"]["Code"] == "AccessDenied"
    assert denied.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
    with pytest.raises(ClientError) as unverified:  # allowed by IAM; refused by SES for another reason
        _as("AutoReloadFunction", enforced, "ses").send_email(**args)
    assert unverified.value.response["Error"]["Code"] == "MessageRejected"
