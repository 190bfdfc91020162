"""What providers bill beyond the text (images, tool prompts) stays inside the hold, under a
concurrent burst, through `make run` and the openai SDK; and an idempotent retry bills once."""

from __future__ import annotations

import threading
from decimal import Decimal
from typing import Any

import openai
import pytest
from conduix_local.upstream import png_data_url

from tests.e2e.test_completion import expected_cost
from tests.support.stack import Stack

pytestmark = pytest.mark.e2e

TOOLS = [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}]


def with_images(count: int, text: str = "describe these") -> list[dict[str, Any]]:
    parts: list[dict[str, Any]] = [{"type": "text", "text": text}]
    parts += [{"type": "image_url", "image_url": {"url": png_data_url(768, 2048), "detail": "high"}}] * count
    return [{"role": "user", "content": parts}]


def burst(stack: Stack, key: str, requests: int) -> tuple[list[Any], list[str]]:
    """Concurrent requests with two worst-case images and tools each: (served replies, refusals)."""
    client = stack.sdk(key)
    served: list[Any] = []
    refused: list[str] = []

    def one(i: int) -> None:
        try:
            served.append(
                client.chat.completions.with_raw_response.create(
                    model="test/vision", messages=with_images(2, f"burst {i}"), tools=TOOLS, max_tokens=5
                )
            )
        except openai.APIStatusError as exc:
            refused.append(exc.response.json()["error"]["code"])

    threads = [threading.Thread(target=one, args=(i,)) for i in range(requests)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return served, refused


def assert_each_charge_is_usage_times_price(stack: Stack, org_id: str, served: list[Any]) -> Decimal:
    charges = []
    for raw in served:
        reply = raw.parse()
        usage = reply.usage
        # The upstream billed two images (1,445 tokens each) and its hidden tool prompt.
        assert usage.prompt_tokens > 2 * 1445 + 320
        cost = expected_cost(usage.prompt_tokens, usage.completion_tokens, "100", "100")
        assert Decimal(raw.headers["x-conduix-cost"]) == cost == Decimal(usage.model_extra["cost"])
        charges.append(cost)
    usage_entries = sorted(-a for a in stack.ledger_amounts(org_id) if a < 0)
    assert usage_entries == sorted(charges)
    return sum(charges, Decimal(0))


def test_a_burst_of_images_and_tools_never_overdraws_a_small_balance(stack: Stack) -> None:
    # Each request costs about 0.33 credits at the provider's count and holds about 0.36:
    # 1.5 credits can serve four, whatever the interleaving.
    org_id, key = stack.new_org("1.5")
    before = stack.upstream_calls()
    served, refused = burst(stack, key, 16)
    assert len(served) == 4 and set(refused) == {"insufficient_credits"}
    assert stack.upstream_calls() - before == len(served)
    spent = assert_each_charge_is_usage_times_price(stack, org_id, served)
    billing = stack.billing(key)
    assert Decimal(billing["balance"]) == Decimal("1.5") - spent >= 0
    assert billing["held"] == "0"
    assert stack.operator("GET", f"/admin/orgs/{org_id}/reconcile").body["ok"] is True


def test_a_burst_of_images_and_tools_never_passes_a_small_cap(stack: Stack) -> None:
    org_id, key = stack.new_org("100")
    assert stack.call("PUT", "/v1/billing/spend-cap", {"monthly_limit": "0.8"}, key=key).status == 200
    served, refused = burst(stack, key, 12)
    assert len(served) == 2 and set(refused) == {"spend_cap_exceeded"}
    spent = assert_each_charge_is_usage_times_price(stack, org_id, served)
    billing = stack.billing(key)
    assert Decimal(billing["month"]["spent"]) == spent <= Decimal("0.8")
    assert Decimal(billing["balance"]) == 100 - spent


def test_images_on_a_model_without_an_image_bound_never_reach_the_provider(stack: Stack) -> None:
    _, key = stack.new_org("10")
    before = stack.upstream_calls()
    with pytest.raises(openai.APIStatusError) as refused:
        stack.sdk(key).chat.completions.create(model="test/cheap", messages=with_images(1))
    error = refused.value.response.json()["error"]
    assert (refused.value.status_code, error["code"], error["param"]) == (
        400,
        "unsupported_content",
        "messages[0].content[1]",
    )
    with pytest.raises(openai.APIStatusError) as priced:
        stack.sdk(key).chat.completions.create(
            model="test/cheap", messages=with_images(0), extra_body={"service_tier": "priority"}
        )
    assert priced.value.response.json()["error"]["param"] == "service_tier"
    assert stack.upstream_calls() == before
    assert stack.billing(key)["held"] == "0" and stack.billing(key)["balance"] == "10"


def test_an_idempotent_retry_returns_the_first_answer_and_bills_once(stack: Stack) -> None:
    org_id, key = stack.new_org("10")
    client = stack.sdk(key)
    ask: dict[str, Any] = {"model": "test/cheap", "messages": [{"role": "user", "content": "once only"}]}
    before = stack.upstream_calls()
    first = client.chat.completions.with_raw_response.create(
        **ask, extra_headers={"Idempotency-Key": "pay-1"}
    )
    again = client.chat.completions.with_raw_response.create(
        **ask, extra_headers={"Idempotency-Key": "pay-1"}
    )
    assert again.parse().id == first.parse().id
    assert again.http_response.content == first.http_response.content

    def conduix(raw: Any) -> dict[str, str]:
        return {k: v for k, v in raw.headers.items() if k.startswith("x-conduix-")}

    assert conduix(again) == conduix(first) and len(conduix(first)) == 3
    assert again.headers["idempotent-replayed"] == "true"
    assert stack.upstream_calls() - before == 1
    assert len([a for a in stack.ledger_amounts(org_id) if a < 0]) == 1

    with pytest.raises(openai.APIStatusError) as reused:
        client.chat.completions.create(
            model="test/cheap",
            messages=[{"role": "user", "content": "something else"}],
            extra_headers={"Idempotency-Key": "pay-1"},
        )
    assert (reused.value.status_code, reused.value.response.json()["error"]["code"]) == (
        409,
        "idempotency_key_reused",
    )

    streamed = client.chat.completions.with_raw_response.create(
        **ask, stream=True, extra_headers={"Idempotency-Key": "stream-1"}
    )
    text = "".join(c.choices[0].delta.content or "" for c in streamed.parse() if c.choices)
    replay = client.chat.completions.with_raw_response.create(
        **ask, stream=True, extra_headers={"Idempotency-Key": "stream-1"}
    )
    assert replay.headers["content-type"].startswith("text/event-stream")
    assert "".join(c.choices[0].delta.content or "" for c in replay.parse() if c.choices) == text
    assert len([a for a in stack.ledger_amounts(org_id) if a < 0]) == 2
