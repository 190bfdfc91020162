"""Streams as the model writes them, long answers, and how a stream is billed, end to end
through `make run` (raw HTTP, where timing is measured, and the openai SDK).

The 35-second cases run side by side, so the suite pays for them once."""

from __future__ import annotations

import http.client
import json
import threading
import time
from decimal import Decimal
from typing import Any
from urllib.parse import urlsplit

import openai
import pytest
from openai import OpenAI

from tests.support.stack import Stack, wait_until

pytestmark = pytest.mark.e2e


def _open(stack: Stack, key: str, body: dict[str, Any]) -> tuple[http.client.HTTPConnection, Any, float]:
    """POST a completion over raw HTTP; (connection, response with its head read, start time)."""
    url = urlsplit(stack.api)
    conn = http.client.HTTPConnection(url.hostname or "127.0.0.1", url.port, timeout=60)
    started = time.monotonic()
    conn.request(
        "POST",
        "/v1/chat/completions",
        json.dumps(body),
        {"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
    )
    return conn, conn.getresponse(), started


def _events(response: Any) -> Any:
    """(seconds since the read began, parsed event or "[DONE]") as each event arrives."""
    while True:
        line = response.readline()
        if not line:
            return
        if line.startswith(b"data:"):
            data = line[5:].strip()
            yield time.monotonic(), ("[DONE]" if data == b"[DONE]" else json.loads(data))


def _usage_entries(stack: Stack, org_id: str) -> list[Decimal]:
    return sorted(a for a in stack.ledger_amounts(org_id) if a < 0)


def _ask(text: str, **extra: Any) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": text}], **extra}


def test_a_stream_arrives_as_the_model_writes_it(stack: Stack) -> None:
    _, key = stack.new_org("10")
    # Raw HTTP: the head carries the request id and cache status; the first words come long
    # before the 3-second answer ends.
    conn, response, started = _open(
        stack, key, {"model": "test/stream-3s", "stream": True, **_ask("Tell me a story")}
    )
    assert response.status == 200
    assert response.getheader("Content-Type") == "text/event-stream"
    assert response.getheader("x-request-id") and response.getheader("x-conduix-cache") == "BYPASS"
    events = list(_events(response))
    conn.close()
    contents = [
        at for at, e in events if e != "[DONE]" and any(c["delta"].get("content") for c in e["choices"])
    ]
    assert contents[0] - started < 1.0, f"first content after {contents[0] - started:.2f} s"
    assert contents[-1] - started > 2.5  # the answer really took its 3 seconds
    assert len(contents) > 5 and events[-1][1] == "[DONE]"

    # The openai SDK sees the same.
    started = time.monotonic()
    stream = stack.sdk(key).chat.completions.create(
        model="test/stream-3s",
        stream=True,
        stream_options={"include_usage": True},
        **_ask("Once upon a time"),
    )
    first = None
    chunks = []
    for chunk in stream:
        chunks.append(chunk)
        if first is None and chunk.choices and chunk.choices[0].delta.content:
            first = time.monotonic() - started
    assert first is not None and first < 1.0, first
    assert time.monotonic() - started > 2.5
    usage = chunks[-1].usage
    assert usage is not None and Decimal(usage.model_extra["cost"]) > 0
    assert Decimal(usage.model_extra["balance"]) == Decimal(stack.billing(key)["balance"])


def test_long_answers_complete_billed_once_with_one_upstream_call(stack: Stack) -> None:
    org_id, key = stack.new_org("10")
    # The SDK's default retries: a timeout answered while the upstream still worked would
    # call it again.
    client = OpenAI(base_url=stack.api + "/v1", api_key=key, max_retries=2, timeout=120)
    before = stack.upstream_stats()["by_model"].get("long-35", 0)
    results: dict[str, Any] = {}

    def whole() -> None:
        raw = client.chat.completions.with_raw_response.create(model="test/long-35s", **_ask("Think hard"))
        results["whole"] = (raw.http_response.status_code, raw.parse(), raw.headers)

    def streamed() -> None:
        chunks = list(
            client.chat.completions.create(
                model="test/long-35s",
                stream=True,
                stream_options={"include_usage": True},
                **_ask("Think longer"),
            )
        )
        results["stream"] = chunks

    started = time.monotonic()
    threads = [threading.Thread(target=whole), threading.Thread(target=streamed)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(150)
    assert time.monotonic() - started > 34

    status, answer, headers = results["whole"]
    assert status == 200 and answer.choices[0].message.content
    whole_cost = Decimal(answer.usage.model_extra["cost"])
    assert Decimal(headers["x-conduix-cost"]) == whole_cost > 0
    chunks = results["stream"]
    assert chunks[-1].usage is not None and "".join(
        c.choices[0].delta.content or "" for c in chunks if c.choices
    )
    stream_cost = Decimal(chunks[-1].usage.model_extra["cost"])

    assert stack.upstream_stats()["by_model"]["long-35"] - before == 2  # once each
    assert _usage_entries(stack, org_id) == sorted([-whole_cost, -stream_cost])
    billing = stack.billing(key)
    assert (Decimal(billing["balance"]), billing["held"]) == (10 - whole_cost - stream_cost, "0")


def test_a_client_that_hangs_up_is_billed_the_whole_answer_once(stack: Stack) -> None:
    org_id, key = stack.new_org("10")
    body = {"model": "test/stream-3s", "stream": True, **_ask("Hang up on me")}
    completed = stack.upstream_stats()["streams"]["completed"]

    # Given the price of the whole answer (an identical request, read to its end)...
    full: dict[str, Decimal] = {}

    def read_all() -> None:
        conn, response, _ = _open(stack, key, {**body, "stream_options": {"include_usage": True}})
        usage = [e["usage"] for _, e in _events(response) if e != "[DONE]" and e.get("usage")]
        conn.close()
        full["cost"] = Decimal(usage[-1]["cost"])

    reader = threading.Thread(target=read_all)
    reader.start()
    # ... when a client reads the first words and hangs up,
    conn, response, _ = _open(stack, key, body)
    assert response.status == 200
    next(_events(response))
    conn.sock.shutdown(2)  # type: ignore[union-attr]
    conn.close()
    reader.join(30)

    # then the gateway reads the upstream to its end and bills it exactly, once.
    assert wait_until(lambda: stack.upstream_stats()["streams"]["completed"] - completed == 2, timeout=20)
    assert wait_until(lambda: stack.billing(key)["held"] == "0", timeout=10)
    cost = full["cost"]
    assert _usage_entries(stack, org_id) == [-cost, -cost]
    billing = stack.billing(key)
    assert (Decimal(billing["balance"]), billing["open_holds"]) == (10 - 2 * cost, 0)


def test_an_upstream_failing_mid_stream_ends_with_an_error_event_and_bills_nothing(stack: Stack) -> None:
    org_id, key = stack.new_org("5")
    received: list[Any] = []
    with pytest.raises(openai.APIError) as failed:
        for chunk in stack.sdk(key).chat.completions.create(
            model="test/broken-stream", stream=True, **_ask("Break")
        ):
            received.append(chunk)
    assert received and not isinstance(failed.value, openai.APIStatusError)  # a 200, then the error
    assert failed.value.body["code"] == "upstream_error"  # type: ignore[index]

    conn, response, _ = _open(stack, key, {"model": "test/broken-stream", "stream": True, **_ask("Break")})
    events = [e for _, e in _events(response)]
    conn.close()
    assert events[-1]["error"]["type"] == "api_error" and "[DONE]" not in events
    billing = stack.billing(key)
    assert (billing["balance"], billing["held"], billing["open_holds"]) == ("5", "0", 0)
    assert _usage_entries(stack, org_id) == []


def test_a_dripping_upstream_is_cut_at_its_timeout_and_its_hold_released_at_once(stack: Stack) -> None:
    _, key = stack.new_org("5")
    conn, response, started = _open(stack, key, {"model": "test/drip", "stream": True, **_ask("Drip")})
    assert response.status == 200  # its first chunk came within the timeout
    events = list(_events(response))
    cut_at = events[-1][0] - started
    conn.close()
    assert events[-1][1]["error"]["code"] == "upstream_timeout"
    assert 2.8 < cut_at < 4.5, cut_at  # the catalog's timeout_seconds is 3, for the whole exchange
    billing = stack.billing(key)  # right after the error event: no hold left
    assert (billing["balance"], billing["held"], billing["open_holds"]) == ("5", "0", 0)
