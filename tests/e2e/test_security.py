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


HELLO = [{"role": "user", "content": "Hello there"}]


def test_a_revoked_key_is_refused_on_its_very_next_call_on_every_route(stack: Stack) -> None:
    """The stack's functions remember keys for minutes (CONDUIX_KEY_CACHE_SECONDS=300 in the
    test stack), so only the wallet's revocation marks and the fresh reads can refuse it."""
    org_id, key = stack.new_org("2")
    cached = {"model": "test/cheap", "messages": [{"role": "user", "content": "cache me"}], "temperature": 0}
    for _ in range(2):  # warms the worker that serves the next call, and fills the response cache
        assert stack.call("POST", "/v1/chat/completions", cached, key=key).status == 200
    assert stack.call("GET", "/v1/billing/api-keys", key=key).status == 200
    key_id = stack.operator("GET", f"/admin/orgs/{org_id}").body["api_keys"][0]["key_id"]
    watcher = stack.new_org_key(org_id, ["billing"])
    before = stack.billing(watcher)
    calls = stack.upstream_calls()

    assert stack.operator("DELETE", f"/admin/orgs/{org_id}/api-keys/{key_id}").body["revoked"] is True
    # At once: a billed request on the warm worker (the hold refuses it), a cache hit...
    billed = stack.call("POST", "/v1/chat/completions", {"model": "test/cheap", "messages": HELLO}, key=key)
    assert (billed.status, billed.body["error"]["code"]) == (401, "invalid_api_key")
    assert "revoked" in billed.body["error"]["message"]  # refused by the warm path, not a fresh read
    hit = stack.call("POST", "/v1/chat/completions", cached, key=key)
    assert (hit.status, hit.body["error"]["code"]) == (401, "invalid_api_key")
    # ...and every billing route, including minting a replacement key.
    for method, path, body in [
        ("GET", "/v1/billing", None),
        ("GET", "/v1/billing/ledger", None),
        ("POST", "/v1/billing/api-keys", {"name": "escape"}),
        ("PUT", "/v1/billing/spend-cap", {"monthly_limit": "1"}),
    ]:
        reply = stack.call(method, path, body, key=key)
        assert (reply.status, reply.body["error"]["code"]) == (401, "invalid_api_key"), path
    assert stack.upstream_calls() == calls
    after = stack.billing(watcher)
    assert (after["balance"], after["held"], after["spend_cap"]) == (before["balance"], "0", None)
    assert len(stack.operator("GET", f"/admin/orgs/{org_id}").body["api_keys"]) == 2  # none was minted


def test_a_billing_only_key_cannot_mint_an_inference_key(stack: Stack) -> None:
    org_id, key = stack.new_org("1", scopes=["billing"])
    for scopes in (["inference"], ["billing", "inference"]):
        reply = stack.call("POST", "/v1/billing/api-keys", {"name": "x", "scopes": scopes}, key=key)
        assert reply.status == 403, reply.body
        assert reply.body["error"]["code"] == "insufficient_permissions"
        assert reply.body["error"]["type"] == "permission_error"
        assert "inference" in reply.body["error"]["message"]
    made = stack.call("POST", "/v1/billing/api-keys", {"name": "same scopes"}, key=key)
    assert (made.status, made.body["scopes"]) == (201, ["billing"])  # by default, its own scopes
    refused = stack.call(
        "POST", "/v1/chat/completions", {"model": "test/cheap", "messages": HELLO}, key=made.body["api_key"]
    )
    assert refused.status == 403
    assert [k["scopes"] for k in stack.operator("GET", f"/admin/orgs/{org_id}").body["api_keys"]] == [
        ["billing"],
        ["billing"],
    ]
