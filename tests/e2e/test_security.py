"""Security properties, end to end: keys stored only hashed, org isolation on every org
route, operator routes closed to org keys, and no secret in the logs."""

from __future__ import annotations

import json

import boto3
import pytest

from tests.support.stack import OPERATOR_KEY, Stack

pytestmark = pytest.mark.e2e

ORG_ROUTES = [
    ("GET", "/v1/billing"),
    ("GET", "/v1/billing/ledger"),
    ("GET", "/v1/usage"),
    ("GET", "/v1/billing/api-keys"),
]


def test_keys_are_stored_only_as_hashes(stack: Stack) -> None:
    _, key = stack.new_org("1")
    dynamodb = boto3.client(
        "dynamodb",
        endpoint_url=stack.moto,
        region_name="us-east-1",
        aws_access_key_id="local",
        aws_secret_access_key="local",
    )
    dump = json.dumps(dynamodb.scan(TableName="BillingTable")["Items"])
    assert key not in dump and key[8:] not in dump
    assert OPERATOR_KEY not in dump


def test_an_org_key_sees_only_its_own_org(stack: Stack) -> None:
    _, key_a = stack.new_org("3")
    org_b, key_b = stack.new_org("7")
    stack.sdk(key_b).chat.completions.create(model="test/cheap", messages=[{"role": "user", "content": "b"}])
    for method, path in ORG_ROUTES:
        reply = stack.call(method, path, key=key_a)
        assert reply.status == 200, (path, reply.body)
        assert org_b not in json.dumps(reply.body), path
    assert stack.billing(key_a)["balance"] == "3"
    key_b_id = stack.call("GET", "/v1/billing/api-keys", key=key_b).body["data"][0]["key_id"]
    stolen = stack.call("DELETE", f"/v1/billing/api-keys/{key_b_id}", key=key_a)
    assert (stolen.status, stolen.body["error"]["code"]) == (404, "not_found")
    assert stack.call("GET", "/v1/billing", key=key_b).status == 200  # B's key still works


def test_operator_routes_refuse_org_keys_everywhere(stack: Stack) -> None:
    org_id, key = stack.new_org("1")
    for method, path in [
        ("GET", f"/admin/orgs/{org_id}"),
        ("POST", f"/admin/orgs/{org_id}/credits"),
        ("POST", f"/admin/orgs/{org_id}/api-keys"),
        ("PUT", f"/admin/orgs/{org_id}/billing"),
        ("GET", f"/admin/orgs/{org_id}/reconcile"),
    ]:
        reply = stack.call(method, path, {"amount": "5", "reason": "x", "idempotency_key": "x"}, key=key)
        assert reply.status == 403, path
    assert stack.billing(key)["balance"] == "1"


def test_the_function_logs_hold_no_secret(stack: Stack) -> None:
    _, key = stack.new_org("1")
    stack.sdk(key).chat.completions.create(
        model="test/cheap", messages=[{"role": "user", "content": "log me"}]
    )
    stack.call("GET", "/v1/billing", key=key)
    stack.call("GET", "/v1/billing", key="cdx_wrong_key_for_the_log")
    # The banner prints the demo and operator keys on purpose; everything after it is logs.
    logs = stack.log.read_text().split("Ctrl-C stops everything.", 1)[-1]
    for secret in (
        key,
        OPERATOR_KEY,
        "cdx_wrong_key_for_the_log",
        "local-upstream-key",
        "sk_test_",
        "whsec_",
        "4242424242424242",
    ):
        leaks = [line for line in logs.splitlines() if secret in line]
        assert not leaks, f"{secret!r} appears in the logs: {leaks[:3]}"
