"""The operator API and the routes around it, end to end."""

from __future__ import annotations

import pytest

from tests.support.stack import Stack

pytestmark = pytest.mark.e2e


def test_org_key_and_idempotent_grant_show_in_billing(stack: Stack) -> None:
    org = stack.operator("POST", "/admin/orgs", {"name": "Acme", "email": "ops@acme.test"})
    assert org.status == 201
    org_id = org.body["org_id"]
    key = stack.operator("POST", f"/admin/orgs/{org_id}/api-keys", {"name": "ci"})
    assert key.status == 201 and key.body["api_key"].startswith("cdx_")
    assert sorted(key.body["scopes"]) == ["billing", "inference"]

    grant = {"amount": "10.5", "reason": "welcome", "idempotency_key": "welcome-1"}
    first = stack.operator("POST", f"/admin/orgs/{org_id}/credits", grant)
    again = stack.operator("POST", f"/admin/orgs/{org_id}/credits", grant)
    changed = stack.operator("POST", f"/admin/orgs/{org_id}/credits", {**grant, "amount": "11"})
    assert (first.status, again.status, changed.status) == (201, 200, 409)
    assert first.body == again.body and first.body["amount"] == "10.5"
    assert changed.body["error"]["code"] == "idempotency_key_reused"

    billing = stack.billing(key.body["api_key"])
    assert (billing["balance"], billing["held"], billing["available"]) == ("10.5", "0", "10.5")
    assert stack.operator("GET", f"/admin/orgs/{org_id}").body["wallet"]["balance"] == "10.5"


def test_operator_routes_refuse_anything_but_the_operator_key(stack: Stack) -> None:
    _, org_key = stack.new_org()
    assert stack.call("POST", "/admin/orgs", {"name": "x", "email": "x@x.io"}).status == 401
    forbidden = stack.call("POST", "/admin/orgs", {"name": "x", "email": "x@x.io"}, key=org_key)
    assert (forbidden.status, forbidden.body["error"]["type"]) == (403, "permission_error")
    assert stack.call("GET", "/admin/orgs/anything", key="wrong").status == 403


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        ("/admin/orgs", {"name": "", "email": "a@b.co"}, "name"),
        ("/admin/orgs", {"name": "n", "email": "nope"}, "email"),
        ("/admin/orgs/{org}/credits", {"amount": "ten", "reason": "r", "idempotency_key": "k"}, "amount"),
        (
            "/admin/orgs/{org}/credits",
            {"amount": "0.0000000001", "reason": "r", "idempotency_key": "k"},
            "amount",
        ),
        ("/admin/orgs/{org}/credits", {"amount": "-1", "reason": "r", "idempotency_key": "k"}, "amount"),
        ("/admin/orgs/{org}/credits", {"amount": "1", "reason": "r"}, "idempotency_key"),
        ("/admin/orgs/{org}/api-keys", {"scopes": ["root"]}, "scopes"),
        ("/admin/orgs/{org}/credits", "not an object", None),
    ],
)
def test_operator_bad_input_is_a_400_naming_the_field(
    stack: Stack, path: str, body: object, param: str | None
) -> None:
    org_id, key = stack.new_org()
    reply = stack.operator("POST", path.format(org=org_id), body)
    assert reply.status == 400, reply.body
    if param:
        assert reply.body["error"]["param"] == param
    assert stack.billing(key)["balance"] == "0"


def test_unknown_orgs_routes_and_methods(stack: Stack) -> None:
    assert stack.operator("GET", "/admin/orgs/org_missing").status == 404
    grant = {"amount": "1", "reason": "r", "idempotency_key": "k"}
    assert stack.operator("POST", "/admin/orgs/org_missing/credits", grant).status == 404
    assert stack.operator("GET", "/admin/nothing-here").status == 404
    wrong = stack.operator("DELETE", "/admin/orgs")
    assert (wrong.status, wrong.body["error"]["code"], wrong.headers["allow"]) == (
        405,
        "method_not_allowed",
        "GET, POST",
    )
    assert stack.call("GET", "/no/such/route").status == 404
    assert stack.call("POST", "/v1/models").status == 405
