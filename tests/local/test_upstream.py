"""The fake OpenAI-compatible upstream, driven through the official openai SDK."""

from __future__ import annotations

import http.client
import itertools
import json
import random
import socket
import statistics
import time
import urllib.error
import urllib.request
from typing import Any

import openai
import pytest
from conduix_local.upstream import (
    IMAGE_MAX_TOKENS,
    TOOL_PROMPT_TOKENS,
    FakeUpstream,
    count_tokens,
    image_tokens,
    png_data_url,
    prompt_tokens,
    reply_text,
    truncate_tokens,
)
from openai import OpenAI

HELLO = [{"role": "user", "content": "Hello there, how are you today?"}]


def _post(url: str, body: bytes) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def test_answer_and_usage(client: OpenAI) -> None:
    answer = client.chat.completions.create(model="fake-small", messages=HELLO)
    expected = reply_text("fake-small", HELLO)
    assert answer.object == "chat.completion"
    assert answer.model == "fake-small"
    assert answer.choices[0].message.role == "assistant"
    assert answer.choices[0].message.content == expected
    assert expected.startswith("Echo from fake-small: Hello there, how are you today?")
    assert answer.choices[0].finish_reason == "stop"
    assert answer.usage is not None
    assert answer.usage.prompt_tokens == prompt_tokens(HELLO) == 8 + 3 + 3
    assert answer.usage.completion_tokens == count_tokens(expected)
    assert answer.usage.total_tokens == answer.usage.prompt_tokens + answer.usage.completion_tokens


def test_answers_are_deterministic_per_model_and_messages(client: OpenAI) -> None:
    def ask(model: str, text: str) -> str | None:
        messages = [{"role": "user", "content": text}]
        return client.chat.completions.create(model=model, messages=messages).choices[0].message.content

    assert ask("fake-small", "hi") == ask("fake-small", "hi")
    assert ask("fake-small", "hi") != ask("fake-large", "hi")


def test_stream_with_usage_in_last_chunk(client: OpenAI) -> None:
    chunks = list(
        client.chat.completions.create(
            model="fake-small", messages=HELLO, stream=True, stream_options={"include_usage": True}
        )
    )
    assert all(c.object == "chat.completion.chunk" and c.model == "fake-small" for c in chunks)
    *body, last = chunks
    assert last.choices == []
    assert last.usage is not None
    assert (last.usage.prompt_tokens, last.usage.completion_tokens) == (
        prompt_tokens(HELLO),
        count_tokens(reply_text("fake-small", HELLO)),
    )
    assert all(c.usage is None for c in body)
    assert body[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in body) == reply_text("fake-small", HELLO)
    assert len(body) >= 4  # role, several content pieces, finish
    assert [c.choices[0].finish_reason for c in body][-1] == "stop"


def test_stream_without_include_usage_has_no_usage(client: OpenAI) -> None:
    chunks = list(client.chat.completions.create(model="fake-small", messages=HELLO, stream=True))
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert all(c.usage is None for c in chunks)


@pytest.mark.parametrize("param", ["max_tokens", "max_completion_tokens"])
def test_max_tokens_truncates(client: OpenAI, param: str) -> None:
    full = reply_text("fake-small", HELLO)
    answer = client.chat.completions.create(model="fake-small", messages=HELLO, **{param: 7})
    assert answer.choices[0].finish_reason == "length"
    assert answer.usage is not None and answer.usage.completion_tokens == 7
    content = answer.choices[0].message.content
    assert content == "Echo from fake-small: Hello" == truncate_tokens(full, 7)[0]

    stream = client.chat.completions.create(
        model="fake-small", messages=HELLO, stream=True, stream_options={"include_usage": True}, **{param: 7}
    )
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == content
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 7


def test_max_tokens_above_the_answer_changes_nothing(client: OpenAI) -> None:
    answer = client.chat.completions.create(model="fake-small", messages=HELLO, max_tokens=10_000)
    assert answer.choices[0].finish_reason == "stop"
    assert answer.choices[0].message.content == reply_text("fake-small", HELLO)


def test_fail_model_is_a_500(client: OpenAI) -> None:
    with pytest.raises(openai.APIStatusError) as caught:
        client.chat.completions.create(model="fail-always", messages=HELLO)
    assert caught.value.status_code == 500
    assert isinstance(caught.value.body, dict) and caught.value.body["type"] == "server_error"


def test_broken_stream_drops_the_connection(client: OpenAI) -> None:
    received: list[str] = []
    with pytest.raises(openai.APIConnectionError):
        for chunk in client.chat.completions.create(model="broken-stream", messages=HELLO, stream=True):
            received.extend(c.delta.content or "" for c in chunk.choices)
    assert len([piece for piece in received if piece]) == 2
    with pytest.raises(openai.InternalServerError):
        client.chat.completions.create(model="broken-stream", messages=HELLO)


def test_garbage_model_answers_200_with_a_non_json_body(upstream: FakeUpstream) -> None:
    request = json.dumps({"model": "garbage-x", "messages": HELLO}).encode()
    status, body = _post(f"{upstream.url}/chat/completions", request)
    assert status == 200
    with pytest.raises(ValueError):
        json.loads(body)


def test_nousage_model_answers_without_usage(client: OpenAI) -> None:
    answer = client.chat.completions.create(model="nousage-x", messages=HELLO)
    assert answer.choices[0].message.content == reply_text("nousage-x", HELLO)
    assert answer.usage is None
    chunks = list(
        client.chat.completions.create(
            model="nousage-x", messages=HELLO, stream=True, stream_options={"include_usage": True}
        )
    )
    assert all(c.usage is None for c in chunks) and chunks[-1].choices


def test_slow_model_waits_then_answers(client: OpenAI) -> None:
    with pytest.raises(openai.APITimeoutError):
        client.with_options(timeout=0.2).chat.completions.create(model="slow-1", messages=HELLO)
    answer = client.chat.completions.create(model="slow-0.1", messages=HELLO)
    assert answer.choices[0].message.content == reply_text("slow-0.1", HELLO)


def test_bad_requests_are_400(upstream: FakeUpstream) -> None:
    url = f"{upstream.url}/chat/completions"
    for body in (b"not json", b'{"model": "m", "messages": []}', b'{"model": "m", "messages": [{}]}'):
        status, payload = _post(url, body)
        assert status == 400
        assert json.loads(payload)["error"]["type"] == "invalid_request_error"


def test_api_key_is_enforced_when_set() -> None:
    with FakeUpstream(api_key="sk-upstream") as upstream:
        with OpenAI(base_url=upstream.url, api_key="wrong", max_retries=0) as wrong:
            with pytest.raises(openai.AuthenticationError):
                wrong.chat.completions.create(model="fake-small", messages=HELLO)
            with pytest.raises(openai.AuthenticationError):
                wrong.models.list()
        with OpenAI(base_url=upstream.url, api_key="sk-upstream", max_retries=0) as right:
            assert right.chat.completions.create(model="fake-small", messages=HELLO).usage is not None
        assert upstream.calls()["total"] == 2


def test_models_list(client: OpenAI) -> None:
    ids = [m.id for m in client.models.list()]
    assert "fake-small" in ids and "fail-always" in ids


def test_call_counter_counts_every_request(client: OpenAI, upstream: FakeUpstream) -> None:
    client.chat.completions.create(model="fake-small", messages=HELLO)
    list(client.chat.completions.create(model="fake-small", messages=HELLO, stream=True))
    with pytest.raises(openai.APIStatusError):
        client.chat.completions.create(model="fail-x", messages=HELLO)
    calls = upstream.calls()
    assert (calls["total"], calls["by_model"]) == (3, {"fake-small": 2, "fail-x": 1})
    assert calls["streams"] == {"completed": 1, "cut": 0}

    base = upstream.url.removesuffix("/v1")
    with urllib.request.urlopen(f"{base}/_control/calls", timeout=5) as response:
        assert json.load(response) == upstream.calls()
    assert _post(f"{base}/_control/reset", b"")[0] == 200
    assert upstream.calls()["total"] == 0 and upstream.calls()["by_model"] == {}
    client.chat.completions.create(model="fake-small", messages=HELLO)
    upstream.reset_calls()
    assert upstream.calls()["total"] == 0


# ---------------------------------------------------------------- billing contract

VARIED: list[list[dict[str, Any]]] = [
    [{"role": "user", "content": ""}],
    [{"role": "user", "content": "!!!!!!!!!!...???"}],
    [{"role": "user", "content": "a b c d e f g h i j k l m n o p"}],
    [
        {"role": "system", "content": ""},
        {"role": "user", "content": ""},
        {"role": "assistant", "content": None},
    ],
    [{"role": "user", "content": "héllo wörld — ça va? ¿Qué tal? 你好\uff0c世界\uff01 🙂🙃👍🏽 ∑∫√"}],
    [{"role": "user", "content": "e\u0301\u0301\u0301 ‼‼‼ ¡¡¡ «» “quotes” \t\n\r \\ \" '"}],
    [
        {"role": "system", "content": "You are terse."},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "part one;"},
                {"type": "text", "text": ""},
                {"type": "text", "text": "…part two!"},
            ],
        },
    ],
    [{"role": "u", "content": [{"type": "text", "text": "x"}] * 20}],
    [{"role": "", "content": "."} for _ in range(30)],
    [{"role": ""}],
]


def _random_messages(rng: random.Random) -> list[dict[str, Any]]:
    alphabet = "a Z 0_.,;:!?'\"\\/-()[]{}<>@#$%^&*+=~`|\t\n é ß 中文 🙂 \u0301 \u200b"

    def text() -> str:
        return "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40)))

    messages: list[dict[str, Any]] = []
    for _ in range(rng.randint(1, 6)):
        role = rng.choice(["user", "system", "assistant", ""])
        if rng.random() < 0.3:
            content: Any = [{"type": "text", "text": text()} for _ in range(rng.randint(0, 4))]
        else:
            content = text()
        messages.append({"role": role, "content": content})
    return messages


def _tightest_bytes(messages: list[dict[str, Any]]) -> int:
    """The smallest JSON a caller could size messages with: compact, UTF-8, no escaping."""
    return len(json.dumps(messages, ensure_ascii=False, separators=(",", ":")).encode())


@pytest.mark.parametrize("messages", VARIED)
def test_prompt_tokens_never_exceed_json_bytes(client: OpenAI, messages: list[dict[str, Any]]) -> None:
    answer = client.chat.completions.create(model="fake-small", messages=messages)
    assert answer.usage is not None
    assert answer.usage.prompt_tokens == prompt_tokens(messages)
    assert answer.usage.prompt_tokens <= _tightest_bytes(messages)
    assert answer.usage.prompt_tokens <= len(json.dumps(messages).encode())


def test_prompt_tokens_never_exceed_json_bytes_random() -> None:
    rng = random.Random(20240601)
    for _ in range(2000):
        messages = _random_messages(rng)
        assert prompt_tokens(messages) <= _tightest_bytes(messages), messages


def test_images_are_billed_by_detail_and_size_as_openai_publishes() -> None:
    # OpenAI's worked examples for gpt-4o (high detail): 85 + 170 per 512 px tile.
    assert image_tokens(1024, 1024) == 765
    assert image_tokens(2048, 4096) == 1105  # -> 1024x2048 -> 768x1536: 6 tiles
    assert image_tokens(4096, 8192, "low") == 85
    assert image_tokens(768, 2048) == IMAGE_MAX_TOKENS == 1445  # the most tiles: 2 x 4
    assert (
        max(image_tokens(w, h) for w in range(64, 5000, 97) for h in range(64, 5000, 89)) == IMAGE_MAX_TOKENS
    )


def test_the_upstream_bills_images_tools_and_message_overhead(client: OpenAI) -> None:
    text = [{"role": "user", "content": [{"type": "text", "text": "what is in it?"}]}]
    plain = client.chat.completions.create(model="fake-small", messages=text).usage
    assert plain is not None and plain.prompt_tokens == count_tokens("what is in it?") + 3 + 3

    def with_image(url: str, detail: str = "high") -> list[dict[str, Any]]:
        part = {"type": "image_url", "image_url": {"url": url, "detail": detail}}
        return [{"role": "user", "content": [*text[0]["content"], part]}]

    for url, detail, tokens in (
        (png_data_url(1024, 1024), "high", 765),
        (png_data_url(768, 2048), "auto", 1445),
        (png_data_url(4000, 4000), "low", 85),
        ("https://example.test/cat.jpg", "high", 765),  # size unknown: taken as 1024x1024
    ):
        usage = client.chat.completions.create(model="fake-small", messages=with_image(url, detail)).usage
        assert usage is not None and usage.prompt_tokens == plain.prompt_tokens + tokens, (url, detail)

    tools = [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}]
    usage = client.chat.completions.create(model="fake-small", messages=text, tools=tools).usage
    assert usage is not None
    assert usage.prompt_tokens == plain.prompt_tokens + TOOL_PROMPT_TOKENS + count_tokens(json.dumps(tools))
    assert usage.prompt_tokens > plain.prompt_tokens + 300  # a hidden prompt, far beyond the text

    two = client.chat.completions.create(model="fake-small", messages=text * 2).usage
    assert two is not None and two.prompt_tokens == 2 * plain.prompt_tokens - 3  # +3 per message


def test_an_overbilling_upstream_bills_far_more_than_the_text(client: OpenAI) -> None:
    usage = client.chat.completions.create(model="overbill-model", messages=HELLO).usage
    assert usage is not None and usage.prompt_tokens == prompt_tokens(HELLO) + 5000


def _timed_stream(client: OpenAI, model: str) -> list[tuple[float, str]]:
    """(seconds since the request, content) of each content chunk, as the SDK receives them."""
    started = time.monotonic()
    return [
        (time.monotonic() - started, chunk.choices[0].delta.content)
        for chunk in client.chat.completions.create(model=model, messages=HELLO, stream=True)
        if chunk.choices and chunk.choices[0].delta.content
    ]


def test_a_paced_model_writes_a_token_every_n_ms(client: OpenAI) -> None:
    pieces = _timed_stream(client, "pace-100")
    assert "".join(p for _, p in pieces) == reply_text("pace-100", HELLO)
    assert len(pieces) == count_tokens(reply_text("pace-100", HELLO))  # one token a chunk
    assert pieces[0][0] < 0.3  # the first at once, then one every 100 ms
    gaps = [b[0] - a[0] for a, b in itertools.pairwise(pieces)]
    # Never sooner than paced; later only as much as a busy machine delays a thread.
    assert all(0.08 < gap < 0.5 for gap in gaps) and 0.08 < statistics.median(gaps) < 0.2, gaps
    started = time.monotonic()  # not streamed, the answer comes whole after the same time
    whole = client.chat.completions.create(model="pace-100", messages=HELLO)
    assert whole.choices[0].message.content == reply_text("pace-100", HELLO)
    assert time.monotonic() - started > 0.08 * len(gaps)


def test_a_long_model_spreads_its_answer_over_its_seconds(client: OpenAI) -> None:
    pieces = _timed_stream(client, "long-1.5")
    assert pieces[0][0] < 0.3 and 1.4 < pieces[-1][0] < 2.5


def test_a_dripping_model_sends_a_byte_at_a_time(upstream: FakeUpstream) -> None:
    body = json.dumps({"model": "drip-20", "messages": HELLO, "stream": True}).encode()
    conn = http.client.HTTPConnection("127.0.0.1", upstream.port, timeout=5)
    conn.request("POST", "/v1/chat/completions", body, {"Content-Type": "application/json"})
    response = conn.getresponse()
    started = time.monotonic()
    assert response.status == 200
    first = response.read1(100)  # whatever has arrived: one byte
    ten = first + b"".join(response.read1(100) for _ in range(9))
    elapsed = time.monotonic() - started
    conn.close()
    assert len(first) == 1 and ten == b'data: {"id'
    assert 0.15 < elapsed < 1.5  # ten bytes, 20 ms apart (the upper bound allows a busy machine)


def test_streams_read_to_their_end_cut_short_and_connections_are_counted(upstream: FakeUpstream) -> None:
    upstream.reset_calls()
    body = json.dumps({"model": "pace-50", "messages": HELLO, "stream": True}).encode()
    conn = http.client.HTTPConnection("127.0.0.1", upstream.port, timeout=5)
    for _ in range(2):  # two whole streams over one kept-alive connection
        conn.request("POST", "/v1/chat/completions", body, {"Content-Type": "application/json"})
        conn.getresponse().read()
    conn.request("POST", "/v1/chat/completions", body, {"Content-Type": "application/json"})
    response = conn.getresponse()
    response.read1(10)
    conn.sock.shutdown(socket.SHUT_RDWR)  # type: ignore[union-attr]  # the reader hangs up
    conn.close()
    deadline = time.monotonic() + 5
    while upstream.calls()["streams"]["cut"] == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    calls = upstream.calls()
    assert (calls["streams"], calls["connections"]) == ({"completed": 2, "cut": 1}, 1)
