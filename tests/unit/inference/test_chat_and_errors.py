from __future__ import annotations

import json

import pytest
from conduix.core import errors
from conduix.inference.chat import assemble, completion_chunks, event_stream, parse_request
from conduix.web.responses import error_body


def body(**fields: object) -> bytes:
    return json.dumps({"model": "acme/a", "messages": [{"role": "user", "content": "hi"}], **fields}).encode()


@pytest.mark.parametrize(
    ("raw", "param", "code"),
    [
        (b"{nope", None, "invalid_json"),
        (b"[1, 2]", None, "invalid_json"),
        (json.dumps({"messages": []}).encode(), "model", "invalid_request"),
        (json.dumps({"model": "a"}).encode(), "messages", "invalid_request"),
        (json.dumps({"model": "a", "messages": "hi"}).encode(), "messages", "invalid_request"),
        (
            json.dumps({"model": "a", "messages": [{"role": "robot"}]}).encode(),
            "messages[0].role",
            "invalid_request",
        ),
        (body(max_tokens=-5), "max_tokens", "invalid_request"),
        (body(max_tokens="many"), "max_tokens", "invalid_request"),
        (body(max_completion_tokens=0), "max_completion_tokens", "invalid_request"),
        (body(temperature=7), "temperature", "invalid_request"),
        (body(stream="yes"), "stream", "invalid_request"),
        (body(n=100), "n", "invalid_request"),
    ],
)
def test_bad_requests_name_what_is_wrong(raw: bytes, param: str | None, code: str) -> None:
    with pytest.raises(errors.InvalidRequest) as refused:
        parse_request(raw)
    assert (refused.value.param, refused.value.code) == (param, code)
    status, payload, _ = error_body(refused.value)
    assert status == 400 and payload["error"]["type"] == "invalid_request_error"


def test_oversized_body_is_413() -> None:
    with pytest.raises(errors.PayloadTooLarge) as refused:
        parse_request(b" " * (1024 * 1024 + 1))
    assert error_body(refused.value)[0] == 413


def test_insufficient_credits_body_is_exactly_the_documented_one() -> None:
    exc = errors.InsufficientCredits("Insufficient credits. Current balance: 12 credits.", available_nanos=12)
    assert error_body(exc) == (
        402,
        {
            "error": {
                "message": "Insufficient credits. Current balance: 12 credits.",
                "type": "insufficient_quota",
                "code": "insufficient_credits",
            }
        },
        {},
    )


@pytest.mark.parametrize(
    ("exc", "status"),
    [
        (errors.SpendCapExceeded("cap", limit_nanos=1, committed_nanos=1, period="2026-11"), 402),
        (errors.ModelNotFound("x"), 404),
        (errors.Unauthenticated("x"), 401),
        (errors.PermissionDenied("x"), 403),
        (errors.IdempotencyConflict("x"), 409),
        (errors.UpstreamUnavailable("x"), 503),
        (errors.UpstreamTimeout("x"), 504),
        (errors.UpstreamError("x"), 502),
        (errors.MethodNotAllowed("x", ["GET"]), 405),
    ],
)
def test_every_domain_error_has_its_status(exc: errors.ConduixError, status: int) -> None:
    assert error_body(exc)[0] == status


def test_stream_round_trip_through_assemble() -> None:
    completion = {
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "hi there"}, "finish_reason": "stop"}
        ]
    }
    chunks = completion_chunks(completion)
    assembled = assemble(chunks)
    assert assembled is not None
    assert assembled["choices"][0]["message"]["content"] == "hi there"
    text = event_stream(chunks, completion_id="c1", model_id="acme/a", created=1, usage=(1, 2, "0.5"))
    events = [json.loads(line[6:]) for line in text.split("\n\n") if line.startswith("data: {")]
    assert events[-1]["usage"] == {
        "prompt_tokens": 1,
        "completion_tokens": 2,
        "total_tokens": 3,
        "cost": "0.5",
    }
    assert text.endswith("data: [DONE]\n\n")


def test_streamed_tool_calls_are_not_assembled_for_the_cache() -> None:
    assert assemble([{"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0}]}}]}]) is None


def with_parts(*parts: object) -> bytes:
    return json.dumps({"model": "acme/a", "messages": [{"role": "user", "content": list(parts)}]}).encode()


IMAGE = {"type": "image_url", "image_url": {"url": "data:image/png;base64," + "A" * 5000, "detail": "high"}}


def test_image_parts_are_counted_and_not_weighed_by_their_url() -> None:
    request = parse_request(with_parts({"type": "text", "text": "what is this?"}, IMAGE, IMAGE))
    assert (request.prompt.images, request.image_params) == (
        2,
        ("messages[0].content[1]", "messages[0].content[2]"),
    )
    assert request.prompt.text_bytes < 200  # the 5 KB data URLs are bounded per image instead
    assert not request.prompt.tools
    assert parse_request(body(tools=[{"type": "function", "function": {"name": "f"}}])).prompt.tools


@pytest.mark.parametrize(
    ("raw", "param", "code"),
    [
        (
            with_parts({"type": "input_audio", "input_audio": {"data": "x", "format": "wav"}}),
            "messages[0].content[0]",
            "unsupported_content",
        ),
        (
            with_parts({"type": "text", "text": "a"}, {"type": "file", "file": {"file_id": "f"}}),
            "messages[0].content[1]",
            "unsupported_content",
        ),
        (with_parts({"type": "hologram"}), "messages[0].content[0]", "unsupported_content"),
        (with_parts("just a string"), "messages[0].content[0]", "unsupported_content"),
        (
            json.dumps({"model": "a", "messages": [{"role": "assistant", "audio": {"id": "a1"}}]}).encode(),
            "messages[0].audio",
            "unsupported_content",
        ),
        (body(service_tier="priority"), "service_tier", "unsupported_parameter"),
        (body(audio={"voice": "alloy", "format": "wav"}), "audio", "unsupported_parameter"),
        (body(modalities=["text", "audio"]), "modalities", "unsupported_parameter"),
        (body(prediction={"type": "content", "content": "x"}), "prediction", "unsupported_parameter"),
        (body(surprise=1), "surprise", "unsupported_parameter"),
    ],
)
def test_what_the_hold_cannot_bound_is_refused_by_name(raw: bytes, param: str, code: str) -> None:
    with pytest.raises(errors.InvalidRequest) as refused:
        parse_request(raw)
    assert (refused.value.param, refused.value.code) == (param, code)
    assert error_body(refused.value)[0] == 400


def test_only_allowed_fields_go_upstream() -> None:
    from conduix.inference.chat import FORWARDED_FIELDS, upstream_payload
    from conduix.pricing.catalog import parse_catalog
    from conduix.pricing.costs import plan_attempts

    ordinary = dict(
        temperature=0.2,
        top_p=0.9,
        stop=["x"],
        seed=1,
        user="u",
        n=2,
        presence_penalty=0.1,
        frequency_penalty=0.1,
        logit_bias={"1": 1},
        logprobs=True,
        top_logprobs=2,
        response_format={"type": "json_object"},
        tool_choice="auto",
        tools=[{"type": "function", "function": {"name": "f"}}],
        stream=True,
        stream_options={"include_usage": False},
        max_completion_tokens=10,
    )
    request = parse_request(body(**ordinary))
    model = parse_catalog(
        [
            {
                "id": "acme/a",
                "upstream": {"base_url": "http://h/v1", "model": "up-a"},
                "pricing": {"input_per_million": "1", "output_per_million": "1"},
            }
        ],
        "t",
    ).get("acme/a")
    payload = upstream_payload(request, plan_attempts([model], 10, 2)[0])
    assert set(payload) <= FORWARDED_FIELDS
    assert payload["model"] == "up-a" and payload["stream_options"] == {"include_usage": True}
    assert {k: payload[k] for k in ordinary if k not in ("stream_options",)} == {
        k: v for k, v in ordinary.items() if k != "stream_options"
    }
