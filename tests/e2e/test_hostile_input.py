"""Hostile input, end to end: every route that parses a body answers a 4xx and moves nothing.

The named cases come from the attacks that once got a 5xx (deep nesting, lone surrogates,
oversized numbers, lenient amounts, malformed but signed webhooks). The property-based tests
then send generated bodies of the same kinds to every JSON route: no answer may be a 5xx,
no hostile body may be accepted, and no refused request may move money (the wallet and the
ledger, read straight from the DynamoDB stand-in, must not change). `make test` runs a few
examples per route; CONDUIX_PROFILE=long runs many more.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from typing import Any

import boto3
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from tests.support.stack import OPERATOR_KEY, Reply, Stack

pytestmark = pytest.mark.e2e

LONG = os.environ.get("CONDUIX_PROFILE") == "long"
EXAMPLES = 150 if LONG else 8
PROFILE = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    derandomize=not LONG,
    suppress_health_check=list(HealthCheck),
)
HELLO = [{"role": "user", "content": "Hello there"}]
AMOUNT = re.compile(r"[0-9]+(\.[0-9]{1,9})?")


# ---------------------------------------------------------------------------- helpers


def deep_array(depth: int) -> str:
    return "[" * depth + "]" * depth


def deep_object(depth: int) -> str:
    return '{"a":' * depth + "0" + "}" * depth


def splice(body: dict[str, Any], raw: str) -> bytes:
    """`body` as JSON with the string "__HOSTILE__" replaced by the raw fragment `raw`."""
    return json.dumps(body).replace('"__HOSTILE__"', raw).encode()


def send(stack: Stack, method: str, path: str, raw: bytes, key: str | None, headers: dict[str, str]) -> Reply:
    all_headers = {"Content-Type": "application/json", **headers}
    if key:
        all_headers["Authorization"] = f"Bearer {key}"
    request = urllib.request.Request(stack.api + path, data=raw, headers=all_headers, method=method)
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            status, payload = response.status, response.read()
    except urllib.error.HTTPError as exc:
        status, payload = exc.code, exc.read()
    try:
        parsed = json.loads(payload) if payload else None
    except ValueError:
        parsed = payload.decode(errors="replace")
    return Reply(status, {}, parsed)


def stripe_signature(secret: str, raw: bytes) -> dict[str, str]:
    at = int(time.time())
    mac = hmac.new(secret.encode(), f"{at}.".encode() + raw, hashlib.sha256).hexdigest()
    return {"Stripe-Signature": f"t={at},v1={mac}"}


class Money:
    """An org's money as the store holds it, read without going through the product."""

    def __init__(self, stack: Stack, org_id: str) -> None:
        self.org_id = org_id
        self.dynamodb = boto3.client(
            "dynamodb",
            endpoint_url=stack.moto,
            region_name="us-east-1",
            aws_access_key_id="local",
            aws_secret_access_key="local",
        )

    def snapshot(self) -> tuple[Any, ...]:
        wallet = self.dynamodb.get_item(
            TableName="BillingTable", Key={"pk": {"S": f"ORG#{self.org_id}"}, "sk": {"S": "WALLET"}}
        )["Item"]
        ledger = self.dynamodb.query(
            TableName="BillingTable",
            KeyConditionExpression="pk = :pk AND begins_with(sk, :l)",
            ExpressionAttributeValues={":pk": {"S": f"ORG#{self.org_id}"}, ":l": {"S": "LEDGER#"}},
        )["Items"]
        figures = ("balance", "held", "available", "month_spent", "committed")
        return (
            tuple(wallet[f]["N"] for f in figures),
            len(wallet.get("holds", {}).get("M", {})),
            sorted(i["sk"]["S"] for i in ledger),
        )


@pytest.fixture(scope="module")
def target(stack: Stack) -> tuple[str, str, Money]:
    """A funded org whose key sends every request, and its money."""
    org_id, key = stack.new_org("3")
    return org_id, key, Money(stack, org_id)


def refused(
    stack: Stack, target: tuple[str, str, Money], method: str, path: str, raw: bytes, operator: bool = False
) -> Reply:
    """Send `raw`; it must get a 4xx with an OpenAI-style error, and nothing may move."""
    _, key, money = target
    before = money.snapshot()
    reply = send(stack, method, path, raw, OPERATOR_KEY if operator else key, {})
    assert 400 <= reply.status < 500, (path, reply.status, reply.body)
    assert isinstance(reply.body, dict) and reply.body["error"]["code"], reply.body
    assert money.snapshot() == before
    return reply


# ---------------------------------------------------------------------------- named cases


def test_deep_nesting_is_a_400_everywhere(stack: Stack, target: tuple[str, str, Money]) -> None:
    org_id = target[0]
    completion = splice(
        {"model": "test/cheap", "messages": HELLO, "metadata": "__HOSTILE__"}, deep_array(10_000)
    )
    assert refused(stack, target, "POST", "/v1/chat/completions", completion).status == 400
    assert refused(stack, target, "POST", "/v1/chat/completions", deep_array(10_000).encode()).status == 400
    for method, path, operator in [
        ("POST", "/v1/billing/top-ups", False),
        ("PUT", "/v1/billing/spend-cap", False),
        ("PUT", "/v1/billing/auto-reload", False),
        ("POST", f"/admin/orgs/{org_id}/credits", True),
    ]:
        for raw in (deep_object(5_000), deep_array(5_000)):
            reply = refused(stack, target, method, path, raw.encode(), operator)
            assert (reply.status, reply.body["error"]["code"]) == (400, "invalid_json"), path


def test_lone_surrogates_are_a_400(stack: Stack, target: tuple[str, str, Money]) -> None:
    org_id = target[0]
    lone = "\ud800"
    cases = [
        ("/v1/chat/completions", {"model": "test/cheap", "messages": [{"role": "user", "content": lone}]}),
        ("/admin/orgs", {"name": f"Acme {lone}", "email": "a@example.com"}),
        (f"/admin/orgs/{org_id}/credits", {"amount": "1", "reason": lone, "idempotency_key": "s1"}),
        (f"/admin/orgs/{org_id}/credits", {"amount": "1", "reason": "r", "idempotency_key": lone}),
        (f"/admin/orgs/{org_id}/api-keys", {"name": lone}),
    ]
    for path, body in cases:
        reply = refused(stack, target, "POST", path, json.dumps(body).encode(), path.startswith("/admin"))
        assert reply.status == 400, path
        assert "surrogate" in reply.body["error"]["message"]


@pytest.mark.parametrize("number", ["1e400", "-1e400", "1" * 5000, "NaN"])
def test_oversized_numbers_are_a_400(stack: Stack, target: tuple[str, str, Money], number: str) -> None:
    org_id = target[0]
    for method, path, body, operator in [
        (
            "POST",
            "/v1/chat/completions",
            {"model": "test/cheap", "messages": HELLO, "max_tokens": "__HOSTILE__"},
            False,
        ),
        (
            "POST",
            "/v1/chat/completions",
            {"model": "test/cheap", "messages": HELLO, "temperature": "__HOSTILE__"},
            False,
        ),
        ("POST", "/v1/billing/top-ups", {"amount": "__HOSTILE__"}, False),
        ("PUT", "/v1/billing/spend-cap", {"monthly_limit": "__HOSTILE__"}, False),
        ("PUT", f"/admin/orgs/{org_id}/billing", {"mode": "invoice", "net_terms_days": "__HOSTILE__"}, True),
        (
            "POST",
            f"/admin/orgs/{org_id}/credits",
            {"amount": "__HOSTILE__", "reason": "r", "idempotency_key": "n"},
            True,
        ),
    ]:
        assert refused(stack, target, method, path, splice(body, number), operator).status == 400, path


LENIENT = [
    "5_0",
    "\uff15\uff10",
    "+50",
    " 50 ",
    "50 ",
    "5E1",
    "5e1",
    "50.",
    ".5",
    "0x32",
    "50.0000000001",
    "-50",
]


@pytest.mark.parametrize("amount", [*LENIENT, 50, 5e1, 50.0])
def test_amounts_are_plain_ascii_decimal_strings_only(
    stack: Stack, target: tuple[str, str, Money], amount: Any
) -> None:
    org_id = target[0]
    for method, path, body, field, operator in [
        ("POST", "/v1/billing/top-ups", {"amount": amount}, "amount", False),
        ("PUT", "/v1/billing/spend-cap", {"monthly_limit": amount}, "monthly_limit", False),
        ("PUT", "/v1/billing/alerts", {"balance_below": [amount]}, "balance_below", False),
        ("PUT", "/v1/billing/auto-reload", {"enabled": False, "threshold": amount}, "threshold", False),
        (
            "PUT",
            "/v1/billing/auto-reload",
            {"enabled": False, "threshold": "5", "amount": amount},
            "amount",
            False,
        ),
        (
            "POST",
            f"/admin/orgs/{org_id}/credits",
            {"amount": amount, "reason": "r", "idempotency_key": f"lenient-{uuid.uuid4().hex}"},
            "amount",
            True,
        ),
    ]:
        reply = refused(stack, target, method, path, json.dumps(body).encode(), operator)
        assert (reply.status, reply.body["error"].get("param")) == (400, field), (path, reply.body)


@pytest.mark.parametrize(
    "event",
    [
        [{"id": "evt_1", "type": "checkout.session.completed"}],
        {"type": "checkout.session.completed", "data": {"object": {"id": "cs_1"}}},
        {"id": 12345, "type": "checkout.session.completed", "data": {"object": {"id": "cs_1"}}},
        {"id": "evt_x", "type": "checkout.session.completed", "data": None},
        {"id": "evt_x", "type": "charge.refunded", "data": {"object": None}},
        {"id": "evt_x", "type": "charge.refunded", "data": {"object": {"id": 7}}},
        {"id": "evt_x", "type": None, "data": {"object": {"id": "ch_1"}}},
        {"id": "e" * 300, "type": "charge.refunded", "data": {"object": {"id": "ch_1"}}},
        {"id": "evt_\ud800", "type": "invoice.paid", "data": {"object": {"id": "in_1"}}},
        "just a string",
    ],
)
def test_signed_but_malformed_webhooks_are_a_400(
    stack: Stack, target: tuple[str, str, Money], event: Any
) -> None:
    raw = json.dumps(event).encode()
    before = target[2].snapshot()
    reply = send(stack, "POST", "/webhooks/stripe", raw, None, stripe_signature(stack.webhook_secret, raw))
    assert reply.status == 400, reply.body
    assert reply.body["error"]["code"] in ("malformed_event", "invalid_json", "invalid_request")
    assert target[2].snapshot() == before


def test_deep_signed_webhook_is_a_400(stack: Stack) -> None:
    raw = splice({"id": "evt_deep", "type": "x", "data": {"object": "__HOSTILE__"}}, deep_object(5_000))
    reply = send(stack, "POST", "/webhooks/stripe", raw, None, stripe_signature(stack.webhook_secret, raw))
    assert (reply.status, reply.body["error"]["code"]) == (400, "invalid_json")


# ---------------------------------------------------------------------------- properties

# Fragments that no route may accept, wherever they sit in a body.
HOSTILE = st.one_of(
    st.integers(65, 6_000).map(deep_array),
    st.integers(65, 6_000).map(deep_object),
    st.sampled_from(['"\\ud800"', '"x\\udfff y"', '"\\ud83d"', '{"\\udc00": 1}', '["ok", "\\ud800"]']),
    st.sampled_from(["1e400", "-1e400", "1E999", "NaN", "Infinity", "-Infinity"]),
    st.integers(31, 5_000).map(lambda digits: "9" * digits),
)
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)


def routes(org_id: str) -> list[tuple[str, str, dict[str, Any], bool]]:
    """Every JSON route with a plausible body: (method, path, body, operator)."""
    return [
        ("POST", "/v1/chat/completions", {"model": "test/cheap", "messages": HELLO, "max_tokens": 5}, False),
        ("POST", "/v1/embeddings", {"model": "test/embed", "input": ["hello", [1, 2]]}, False),
        ("PUT", "/v1/billing/spend-cap", {"monthly_limit": "100"}, False),
        ("PUT", "/v1/billing/alerts", {"balance_below": ["5"], "cap_used_percent": [80]}, False),
        ("PUT", "/v1/billing/auto-reload", {"enabled": False, "threshold": "5", "amount": "25"}, False),
        ("POST", "/v1/billing/top-ups", {"amount": "10"}, False),
        ("POST", "/v1/billing/subscription", {"plan": "builder"}, False),
        ("POST", "/v1/billing/api-keys", {"name": "n", "scopes": ["billing"]}, False),
        ("POST", "/admin/orgs", {"name": "n", "email": "n@example.com"}, True),
        ("POST", f"/admin/orgs/{org_id}/api-keys", {"name": "n"}, True),
        (
            "POST",
            f"/admin/orgs/{org_id}/credits",
            {"amount": "1", "reason": "r", "idempotency_key": "k"},
            True,
        ),
        ("PUT", f"/admin/orgs/{org_id}/billing", {"mode": "prepaid"}, True),
        (
            "POST",
            "/webhooks/stripe",
            {"id": "evt_p", "type": "x.unknown", "data": {"object": {"id": "o_1"}}},
            False,
        ),
    ]


def _with_hostile(body: dict[str, Any], field: str, how: str, raw: str) -> bytes:
    if how == "root":
        return raw.encode()
    shaped = {"replace": "__HOSTILE__", "list": ["x", "__HOSTILE__"], "object": {"k": "__HOSTILE__"}}[how]
    return splice({**body, field: shaped}, raw)


def _exercise(
    stack: Stack, target: tuple[str, str, Money], route: tuple[str, str, dict[str, Any], bool], raw: bytes
) -> Reply:
    method, path, _, operator = route
    key = OPERATOR_KEY if operator else target[1]
    headers = stripe_signature(stack.webhook_secret, raw) if path == "/webhooks/stripe" else {}
    return send(stack, method, path, raw, None if path == "/webhooks/stripe" else key, headers)


def _check_route(
    stack: Stack,
    target: tuple[str, str, Money],
    route: tuple[str, str, dict[str, Any], bool],
    bodies: st.SearchStrategy[bytes],
    hostile: bool,
    failures: list[str],
) -> None:
    @PROFILE
    @given(raw=bodies)
    def exercise(raw: bytes) -> None:
        before = target[2].snapshot()
        reply = _exercise(stack, target, route, raw)
        moved = target[2].snapshot() != before
        if reply.status >= 500 or (hostile and reply.status < 400) or (reply.status >= 400 and moved):
            failures.append(
                f"{route[0]} {route[1]} {raw[:120]!r} -> {reply.status} moved={moved}: {reply.body}"
            )

    exercise()


def _check_each_route(
    stack: Stack,
    target: tuple[str, str, Money],
    bodies: Callable[[dict[str, Any]], st.SearchStrategy[bytes]],
    hostile: bool,
) -> None:
    failures: list[str] = []
    for route in routes(target[0]):
        _check_route(stack, target, route, bodies(route[2]), hostile, failures)
    assert not failures, "\n".join(failures[:10])


def test_property_hostile_fragments_anywhere_are_refused_and_move_nothing(
    stack: Stack, target: tuple[str, str, Money]
) -> None:
    def bodies(base: dict[str, Any]) -> st.SearchStrategy[bytes]:
        return st.builds(
            _with_hostile,
            st.just(base),
            st.sampled_from([*base, "extra"]),
            st.sampled_from(["replace", "list", "object", "root"]),
            HOSTILE,
        )

    _check_each_route(stack, target, bodies, hostile=True)


def test_property_arbitrary_values_get_no_5xx_and_refusals_move_nothing(
    stack: Stack, target: tuple[str, str, Money]
) -> None:
    def bodies(base: dict[str, Any]) -> st.SearchStrategy[bytes]:
        fields = st.dictionaries(st.sampled_from([*base, "extra"]), JSON_VALUES, max_size=3)
        return st.one_of(
            fields.map(lambda changes: json.dumps({**base, **changes}).encode()),
            JSON_VALUES.map(lambda whole: json.dumps(whole).encode()),
        )

    _check_each_route(stack, target, bodies, hostile=False)


AMOUNT_LIKE = st.one_of(
    st.text(alphabet="0123456789.+-_eE ,\u00a0\uff10\uff15\u0665x", max_size=12),
    st.integers(),
    st.floats(),
    st.none(),
).filter(lambda v: not (isinstance(v, str) and AMOUNT.fullmatch(v)))


def _check_amounts(
    stack: Stack,
    target: tuple[str, str, Money],
    where: tuple[str, str, str, dict[str, Any], bool],
    failures: list[str],
) -> None:
    method, path, field, base, operator = where

    @PROFILE
    @given(amount=AMOUNT_LIKE)
    def exercise(amount: Any) -> None:
        assume(not (amount is None and field == "monthly_limit"))  # null removes the cap
        before = target[2].snapshot()
        body = json.dumps({**base, field: amount}).encode()
        reply = send(stack, method, path, body, OPERATOR_KEY if operator else target[1], {})
        if (reply.status, (reply.body or {}).get("error", {}).get("param")) != (400, field):
            failures.append(f"{path} {field}={amount!r} -> {reply.status}: {reply.body}")
        if target[2].snapshot() != before:
            failures.append(f"{path} {field}={amount!r} moved money")

    exercise()


def test_property_any_amount_but_a_plain_decimal_string_is_a_400(
    stack: Stack, target: tuple[str, str, Money]
) -> None:
    org_id = target[0]
    failures: list[str] = []
    for where in [
        ("POST", "/v1/billing/top-ups", "amount", {}, False),
        ("PUT", "/v1/billing/spend-cap", "monthly_limit", {}, False),
        ("PUT", "/v1/billing/auto-reload", "threshold", {"enabled": False, "amount": "25"}, False),
        ("PUT", "/v1/billing/auto-reload", "amount", {"enabled": False, "threshold": "5"}, False),
        (
            "POST",
            f"/admin/orgs/{org_id}/credits",
            "amount",
            {"reason": "r", "idempotency_key": "amount-prop"},
            True,
        ),
    ]:
        _check_amounts(stack, target, where, failures)
    assert not failures, "\n".join(failures[:10])
