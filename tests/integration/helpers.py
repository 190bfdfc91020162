"""Factories and checks for the integration tests."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import boto3
from conduix.core import config
from conduix.ledger import entries, wallets
from conduix.store import dynamo

NOW = datetime(2026, 11, 27, 12, 0, 0, tzinfo=UTC)


def fund(org_id: str, credits: str, key: str = "seed") -> None:
    from conduix.core.money import parse_credits

    entries.post_entry(
        org_id, kind="grant", key=key, amount=parse_credits(credits, field="x"), description="t", now=NOW
    )


def ledger_items(org_id: str, prefix: str = "LEDGER#") -> list[dict[str, Any]]:
    pages = (
        dynamo.client()
        .get_paginator("query")
        .paginate(
            TableName=config.settings().billing_table,
            KeyConditionExpression="pk = :pk AND begins_with(sk, :l)",
            ExpressionAttributeValues={":pk": {"S": f"ORG#{org_id}"}, ":l": {"S": prefix}},
            ConsistentRead=True,
        )
    )
    return [item for page in pages for item in page["Items"]]


def assert_consistent(org_id: str) -> wallets.Wallet:
    """Every identity the wallet promises, checked against the ledger and its holds."""
    w = wallets.get_wallet(org_id)
    assert w.balance == sum(int(i["amount"]["N"]) for i in ledger_items(org_id))
    holds = ledger_items(org_id, "HOLD#")  # each open hold is an item of its own
    assert w.held == sum(int(h["amount"]["N"]) for h in holds)
    assert w.hold_count == len(holds)
    assert w.available == w.balance - w.held
    assert w.committed == w.month_spent + w.held
    assert w.cap_remaining == w.cap_limit - w.committed
    usage = [i for i in ledger_items(org_id) if i["entry_type"]["S"] == "usage"]
    assert w.month_spent == -sum(
        int(i["amount"]["N"]) for i in usage if i["created_at"]["S"].startswith(w.period)
    )
    return w


def catalog_entries(upstream_url: str) -> list[dict[str, Any]]:
    """Models on the fake upstream: one that takes images and tools, one text-only, one whose
    provider bills above any hold."""

    def model(model_id: str, upstream_model: str, **extra: Any) -> dict[str, Any]:
        return {
            "id": model_id,
            "upstream": {"base_url": upstream_url, "model": upstream_model},
            "pricing": {"input_per_million": "2", "output_per_million": "8"},
            "max_output_tokens": 64,
            **extra,
        }

    return [
        model("t/vision", "fake-large", prompt_bounds={"per_image": 1445, "tools": 400}),
        model("t/text", "fake-small", prompt_bounds={"tools": 400}),
        model("t/overbill", "overbill-model"),
    ]


@contextmanager
def acting_as(function: str, moto_server: Any) -> Iterator[None]:
    """Run the block's AWS calls as `function` of template.yaml, under its IAM policies as the
    local IAM enforces them (an action its policy lacks is refused as AWS refuses it)."""
    import os

    from conduix_local import iam
    from conduix_local.template import load_template

    region, account = "us-east-1", iam.ACCOUNT_ID
    table_arn = f"arn:aws:dynamodb:{region}:{account}:table/BillingTable"
    refs = {
        "BillingTable": "BillingTable",
        "CacheTable": "CacheTable",
        "BillingTable.Arn": table_arn,
        "CacheTable.Arn": f"arn:aws:dynamodb:{region}:{account}:table/CacheTable",
        "ScheduledJobFailures.Arn": f"arn:aws:sqs:{region}:{account}:ScheduledJobFailures",
    }
    saved = os.environ["AWS_ACCESS_KEY_ID"]
    moto_server.enforce(iam.load_principals(load_template(), refs, region))
    os.environ["AWS_ACCESS_KEY_ID"] = iam.access_key_id(function)
    boto3.setup_default_session()  # the default session keeps the credentials it first read
    dynamo.reset_client()
    try:
        yield
    finally:
        moto_server.enforce({})
        os.environ["AWS_ACCESS_KEY_ID"] = saved
        boto3.setup_default_session()
        dynamo.reset_client()
