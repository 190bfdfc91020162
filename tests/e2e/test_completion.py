"""The billed completion, end to end through `make run` and the openai SDK."""

from __future__ import annotations

import json
import math
import threading
from decimal import Decimal

import openai
import pytest

from tests.support.stack import Stack

pytestmark = pytest.mark.e2e

HELLO = [{"role": "user", "content": "Hello there"}]


def expected_cost(prompt: int, completion: int, inp: str, out: str) -> Decimal:
    """Independent of the product's code: exact rational price, rounded up to a nano-credit."""
    exact = (prompt * Decimal(inp) + completion * Decimal(out)) / 1_000_000
    return Decimal(math.ceil(exact * 10**9)) / 10**9


def test_models_lists_the_catalog_with_prices(stack: Stack) -> None:
    models = {m.id: m for m in stack.sdk("none").models.list()}
    assert models["test/cheap"].model_extra["pricing"] == {
        "input_per_million": "1.5",
        "output_per_million": "3",
        "unit": "credits",
    }


def test_a_completion_debits_its_exact_cost(stack: Stack) -> None:
    _, key = stack.new_org("10")
    raw = stack.sdk(key).chat.completions.with_raw_response.create(model="test/cheap", messages=HELLO)
    reply = raw.parse()
    usage = reply.usage
    assert usage is not None
    cost = expected_cost(usage.prompt_tokens, usage.completion_tokens, "1.5", "3")
    assert cost > 0
    assert Decimal(usage.model_extra["cost"]) == cost
    assert Decimal(raw.headers["x-conduix-cost"]) == cost
    assert raw.headers["x-conduix-cache"] == "BYPASS"
    assert raw.headers["x-request-id"]
    assert reply.model == "test/cheap"
    billing = stack.billing(key)
    assert Decimal(billing["balance"]) == Decimal(10) - cost
    assert Decimal(raw.headers["x-conduix-balance"]) == Decimal(10) - cost
    assert (billing["held"], billing["month"]["spent"]) == ("0", str(cost.normalize()))


def test_running_dry_is_a_402_with_the_documented_body_and_no_provider_call(stack: Stack) -> None:
    _, key = stack.new_org("0.000001")
    before = stack.upstream_calls()
    with pytest.raises(openai.APIStatusError) as refused:
        stack.sdk(key).chat.completions.create(model="test/cheap", messages=HELLO)
    assert refused.value.status_code == 402
    assert refused.value.response.json() == {
        "error": {
            "message": "Insufficient credits. Current balance: 0.000001 credits.",
            "type": "insufficient_quota",
            "code": "insufficient_credits",
        }
    }
    assert stack.upstream_calls() == before
    assert stack.billing(key)["balance"] == "0.000001"


def test_the_spend_cap_refuses_before_the_provider_runs(stack: Stack) -> None:
    _, key = stack.new_org("100")
    capped = stack.call("PUT", "/v1/billing/spend-cap", {"monthly_limit": "0.0001"}, key=key)
    assert capped.status == 200 and capped.body["spend_cap"]["monthly_limit"] == "0.0001"
    before = stack.upstream_calls()
    with pytest.raises(openai.APIStatusError) as refused:
        stack.sdk(key).chat.completions.create(model="test/cheap", messages=HELLO, max_tokens=200)
    error = refused.value.response.json()["error"]
    assert (refused.value.status_code, error["code"], error["type"]) == (
        402,
        "spend_cap_exceeded",
        "insufficient_quota",
    )
    assert "0.0001 credits" in error["message"] and error["period"] in error["message"]
    assert stack.upstream_calls() == before
    assert (
        stack.call("PUT", "/v1/billing/spend-cap", {"monthly_limit": None}, key=key).body["spend_cap"] is None
    )
    stack.sdk(key).chat.completions.create(model="test/cheap", messages=HELLO, max_tokens=200)


def test_deterministic_repeats_are_free_cache_hits_scoped_to_the_org(stack: Stack) -> None:
    _, key = stack.new_org("10")
    client = stack.sdk(key)
    ask = {"model": "test/cheap", "messages": [{"role": "user", "content": "cache me"}], "temperature": 0}
    first = client.chat.completions.with_raw_response.create(**ask)
    balance_after_first = stack.billing(key)["balance"]
    second = client.chat.completions.with_raw_response.create(**ask)
    assert (first.headers["x-conduix-cache"], second.headers["x-conduix-cache"]) == ("MISS", "HIT")
    assert Decimal(first.headers["x-conduix-cost"]) > 0
    assert second.headers["x-conduix-cost"] == "0"
    assert second.parse().choices[0].message.content == first.parse().choices[0].message.content
    assert second.parse().usage.model_extra["cost"] == "0"
    assert stack.billing(key)["balance"] == balance_after_first == second.headers["x-conduix-balance"]

    streamed = client.chat.completions.with_raw_response.create(**ask, stream=True)
    assert streamed.headers["x-conduix-cache"] == "HIT"
    text = "".join(c.choices[0].delta.content or "" for c in streamed.parse() if c.choices)
    assert text == first.parse().choices[0].message.content

    _, other_key = stack.new_org("10")
    other = stack.sdk(other_key).chat.completions.with_raw_response.create(**ask)
    assert other.headers["x-conduix-cache"] == "MISS"


def test_a_failing_upstream_costs_nothing(stack: Stack) -> None:
    _, key = stack.new_org("5")
    for model, status in (("test/down", 503), ("test/slow", 504), ("test/garbage", 502)):
        with pytest.raises(openai.APIStatusError) as failed:
            stack.sdk(key).chat.completions.create(model=model, messages=HELLO)
        assert failed.value.status_code == status, model
    with pytest.raises(openai.APIError):  # a 200 whose stream ends in an error event
        list(stack.sdk(key).chat.completions.create(model="test/broken-stream", messages=HELLO, stream=True))
    billing = stack.billing(key)
    assert (billing["balance"], billing["held"], billing["open_holds"]) == ("5", "0", 0)


def test_a_fallback_is_billed_at_the_serving_models_price(stack: Stack) -> None:
    _, key = stack.new_org("10")
    raw = stack.sdk(key).chat.completions.with_raw_response.create(model="test/flaky", messages=HELLO)
    reply = raw.parse()
    assert reply.model == "test/backup"
    usage = reply.usage
    assert usage is not None
    cost = expected_cost(usage.prompt_tokens, usage.completion_tokens, "2", "7")
    assert Decimal(raw.headers["x-conduix-cost"]) == cost
    assert Decimal(stack.billing(key)["balance"]) == 10 - cost


def test_streaming_is_billed_from_the_final_usage(stack: Stack) -> None:
    _, key = stack.new_org("10")
    raw = stack.sdk(key).chat.completions.with_raw_response.create(
        model="test/cheap", messages=HELLO, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(raw.parse())
    usage = chunks[-1].usage
    assert usage is not None and chunks[-1].choices == []
    cost = expected_cost(usage.prompt_tokens, usage.completion_tokens, "1.5", "3")
    assert Decimal(usage.model_extra["cost"]) == cost
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert Decimal(stack.billing(key)["balance"]) == 10 - cost == Decimal(usage.model_extra["balance"])
    # The head goes out before the cost is known: it carries the request id and cache status.
    assert raw.headers["x-request-id"] and raw.headers["x-conduix-cache"] == "BYPASS"

    # Without include_usage the client gets no usage chunk, and is billed all the same.
    quiet = stack.sdk(key).chat.completions.with_raw_response.create(
        model="test/cheap", messages=HELLO, stream=True
    )
    assert all(c.usage is None for c in quiet.parse())
    assert Decimal(stack.billing(key)["balance"]) == 10 - 2 * cost  # the same answer, the same price


def test_a_burst_never_spends_more_than_the_balance(stack: Stack) -> None:
    # Each request costs exactly 10 credits (10 output tokens at 1 credit each, prompt free),
    # and the wallet holds 35: three can be served, whatever the interleaving.
    org_id, key = stack.new_org("35")
    client = stack.sdk(key)
    served: list[str] = []
    refused: list[str] = []

    def one() -> None:
        try:
            r = client.chat.completions.with_raw_response.create(
                model="test/per-token",
                messages=[{"role": "user", "content": "a long answer please"}],
                max_tokens=10,
            )
            served.append(r.headers["x-conduix-cost"])
        except openai.APIStatusError as exc:
            refused.append(exc.response.json()["error"]["code"])

    before = stack.upstream_calls()
    threads = [threading.Thread(target=one) for _ in range(36)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert served == ["10"] * 3
    assert refused == ["insufficient_credits"] * 33
    assert stack.upstream_calls() - before == 3
    billing = stack.billing(key)
    assert (billing["balance"], billing["held"]) == ("5", "0")
    entries = stack.ledger_amounts(org_id)
    assert sorted(entries) == sorted([Decimal(35)] + [Decimal(-10)] * 3)
    assert sum(entries) == Decimal(billing["balance"])


@pytest.mark.parametrize(
    ("raw", "status", "code"),
    [
        (b"{not json", 400, "invalid_json"),
        (b"[]", 400, "invalid_json"),
        (json.dumps({"messages": HELLO}).encode(), 400, "invalid_request"),
        (json.dumps({"model": "test/cheap"}).encode(), 400, "invalid_request"),
        (json.dumps({"model": "test/cheap", "messages": "hi"}).encode(), 400, "invalid_request"),
        (
            json.dumps({"model": "test/cheap", "messages": HELLO, "max_tokens": -1}).encode(),
            400,
            "invalid_request",
        ),
        (
            json.dumps({"model": "test/cheap", "messages": HELLO, "max_tokens": 10**9}).encode(),
            400,
            "invalid_request",
        ),
        (json.dumps({"model": "nope/none", "messages": HELLO}).encode(), 404, "model_not_found"),
        (
            b'{"model": "test/cheap", "messages": [], "pad": "' + b"x" * (1024 * 1024) + b'"}',
            413,
            "payload_too_large",
        ),
    ],
)
def test_bad_input_is_an_openai_style_error_and_moves_nothing(
    stack: Stack, raw: bytes, status: int, code: str
) -> None:
    _, key = stack.new_org("1")
    before = stack.upstream_calls()
    reply = stack.call("POST", "/v1/chat/completions", key=key, raw=raw)
    assert (reply.status, reply.body["error"]["code"]) == (status, code)
    assert reply.headers["x-request-id"]
    assert stack.upstream_calls() == before
    billing = stack.billing(key)
    assert (billing["balance"], billing["held"]) == ("1", "0")


def test_keys_missing_unknown_revoked_or_without_scope_are_refused(stack: Stack) -> None:
    org_id, key = stack.new_org("1")
    assert (
        stack.call("POST", "/v1/chat/completions", {"model": "test/cheap", "messages": HELLO}).status == 401
    )
    unknown = stack.call(
        "POST", "/v1/chat/completions", {"model": "test/cheap", "messages": HELLO}, key="cdx_nope"
    )
    assert (unknown.status, unknown.body["error"]["code"]) == (401, "invalid_api_key")

    _, billing_only = stack.new_org("1", scopes=["billing"])
    denied = stack.call(
        "POST", "/v1/chat/completions", {"model": "test/cheap", "messages": HELLO}, key=billing_only
    )
    assert denied.status == 403

    key_id = stack.operator("GET", f"/admin/orgs/{org_id}").body["api_keys"][0]["key_id"]
    assert stack.operator("DELETE", f"/admin/orgs/{org_id}/api-keys/{key_id}").body["revoked"] is True
    revoked = stack.call("POST", "/v1/chat/completions", {"model": "test/cheap", "messages": HELLO}, key=key)
    assert (revoked.status, revoked.body["error"]["code"]) == (401, "invalid_api_key")
