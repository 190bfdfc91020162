"""The OpenAI chat-completions wire format: reading a client's request, writing what we send
upstream, and shaping the answer (JSON or server-sent events) we give back."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

from conduix.core.errors import InvalidRequest, PayloadTooLarge
from conduix.core.validation import parse_json_object
from conduix.pricing.costs import Attempt, PromptShape

MAX_BODY_BYTES = 1024 * 1024
MAX_CHOICES = 16
ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})
# Request fields that are sent to the model as prompt and therefore cost prompt tokens.
_PROMPT_FIELDS = ("messages", "tools", "functions", "response_format", "tool_choice")
# The only fields sent upstream: each is either priced by the hold (prompt, output budget) or
# changes nothing the provider charges. Anything else is refused, never passed on unpriced:
# an unknown field may be one that changes the price.
FORWARDED_FIELDS = frozenset(
    {
        *_PROMPT_FIELDS,
        "model",
        "stream",
        "stream_options",
        "max_tokens",
        "max_completion_tokens",
        "n",
        "temperature",
        "top_p",
        "stop",
        "seed",
        "user",
        "presence_penalty",
        "frequency_penalty",
        "logit_bias",
        "logprobs",
        "top_logprobs",
        "parallel_tool_calls",
        "function_call",
        "reasoning_effort",  # reasoning is billed as output, within max_completion_tokens
    }
)
# Fields we know change what the provider bills, named so the refusal says why.
PRICED_FIELDS = frozenset(
    {"service_tier", "audio", "modalities", "prediction", "web_search_options", "store", "metadata"}
)
_MESSAGE_FIELDS = frozenset(
    {"role", "content", "name", "tool_calls", "tool_call_id", "function_call", "refusal"}
)
_TEXT_PARTS = frozenset({"text", "refusal"})


@dataclass(frozen=True)
class ChatRequest:
    body: dict[str, Any]
    model_id: str
    stream: bool
    include_usage: bool
    max_tokens: int | None
    max_tokens_field: str
    choices: int
    prompt: PromptShape  # what the provider bills as prompt
    image_params: tuple[str, ...] = ()  # where the image parts are, to name one in a refusal


def _positive_int(body: dict[str, Any], name: str) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidRequest(f"'{name}' must be an integer.", param=name)
    if value < 1:
        raise InvalidRequest(f"'{name}' must be at least 1, not {value}.", param=name)
    return value


# Parsed by hand, not by pydantic (conduix.core.bodies): Completion's cold start stays without it.
def parse_request(raw: bytes) -> ChatRequest:
    """Validate a client's body; every refusal names the parameter at fault."""
    if len(raw) > MAX_BODY_BYTES:
        raise PayloadTooLarge(f"The request body is larger than {MAX_BODY_BYTES} bytes.")
    body = parse_json_object(raw)  # depth, surrogates and number sizes checked here
    model = body.get("model")
    if not isinstance(model, str) or not model.strip():
        raise InvalidRequest("You must provide a model parameter.", param="model")
    messages = body.get("messages")
    if not isinstance(messages, list):
        raise InvalidRequest("'messages' must be a list of message objects.", param="messages")
    if not messages:
        raise InvalidRequest("'messages' must contain at least one message.", param="messages")
    for name in body:
        if name not in FORWARDED_FIELDS:
            why = (
                "changes what the provider charges, and this gateway does not price it"
                if name in PRICED_FIELDS
                else "is not a parameter this gateway supports"
            )
            raise InvalidRequest(f"'{name}' {why}.", param=name, code="unsupported_parameter")
    images: list[str] = []
    text_messages: list[Any] = []  # the messages as the hold weighs them: image parts apart
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise InvalidRequest(f"messages[{i}] must be an object.", param=f"messages[{i}]")
        if message.get("role") not in ROLES:
            raise InvalidRequest(
                f"messages[{i}].role must be one of {', '.join(sorted(ROLES))}.", param=f"messages[{i}].role"
            )
        for name in message:
            if name not in _MESSAGE_FIELDS:
                raise InvalidRequest(
                    f"messages[{i}].{name} is not supported: the provider may bill it and this "
                    "gateway cannot bound it.",
                    param=f"messages[{i}].{name}",
                    code="unsupported_content",
                )
        content = message.get("content")
        if content is not None and not isinstance(content, str | list):
            raise InvalidRequest(
                f"messages[{i}].content must be a string or a list of parts.", param=f"messages[{i}].content"
            )
        if isinstance(content, list):
            parts = []
            for j, part in enumerate(content):
                kind = part.get("type") if isinstance(part, dict) else None
                where = f"messages[{i}].content[{j}]"
                if kind == "image_url":
                    images.append(where)
                    parts.append({"type": kind})  # billed by the image bound, not by its URL's bytes
                elif kind in _TEXT_PARTS:
                    parts.append(part)
                else:
                    raise InvalidRequest(
                        f"{where} is a content part of type {kind!r}, which this gateway cannot bound "
                        "before the provider bills it. Supported: text, image_url (on models that "
                        "take images).",
                        param=where,
                        code="unsupported_content",
                    )
            message = {**message, "content": parts}
        text_messages.append(message)
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise InvalidRequest("'stream' must be true or false.", param="stream")
    options = body.get("stream_options") or {}
    if not isinstance(options, dict):
        raise InvalidRequest("'stream_options' must be an object.", param="stream_options")
    temperature = body.get("temperature")
    if temperature is not None and (
        isinstance(temperature, bool) or not isinstance(temperature, int | float) or not 0 <= temperature <= 2
    ):
        raise InvalidRequest("'temperature' must be a number between 0 and 2.", param="temperature")
    field = "max_completion_tokens" if "max_completion_tokens" in body else "max_tokens"
    max_tokens = _positive_int(body, field)
    choices = _positive_int(body, "n") or 1
    if choices > MAX_CHOICES:
        raise InvalidRequest(f"'n' must be at most {MAX_CHOICES}.", param="n")
    prompt = {k: body[k] for k in _PROMPT_FIELDS if k in body}
    prompt["messages"] = text_messages
    text_bytes = len(json.dumps(prompt, ensure_ascii=False, separators=(",", ":")).encode("utf-8"))
    return ChatRequest(
        body=body,
        model_id=model.strip(),
        stream=stream,
        include_usage=bool(options.get("include_usage")),
        max_tokens=max_tokens,
        max_tokens_field=field,
        choices=choices,
        prompt=PromptShape(
            text_bytes=text_bytes,
            messages=len(messages),
            images=len(images),
            tools=bool(body.get("tools") or body.get("functions")),
        ),
        image_params=tuple(images),
    )


def upstream_payload(request: ChatRequest, attempt: Attempt) -> dict[str, Any]:
    """The client's request as the upstream should see it: its own model name, an output
    budget that the hold covers, usage always reported, and nothing the hold did not price."""
    payload = {k: v for k, v in request.body.items() if k in FORWARDED_FIELDS}
    payload["model"] = attempt.model.upstream.model
    payload[request.max_tokens_field] = attempt.max_tokens
    if request.stream:
        payload["stream_options"] = {**(request.body.get("stream_options") or {}), "include_usage": True}
    return payload


def _usage_out(prompt_tokens: int, completion_tokens: int, cost: str) -> dict[str, Any]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "cost": cost,
    }


def completion_body(
    upstream: dict[str, Any],
    *,
    completion_id: str,
    model_id: str,
    prompt_tokens: int,
    completion_tokens: int,
    cost: str,
) -> dict[str, Any]:
    """The upstream's answer, renamed to the model that served and with our cost in usage."""
    return {
        **upstream,
        "id": completion_id,
        "object": "chat.completion",
        "created": upstream.get("created") or int(time.time()),
        "model": model_id,
        "usage": _usage_out(prompt_tokens, completion_tokens, cost),
    }


def assemble(chunks: list[dict[str, Any]]) -> dict[str, Any] | None:
    """A streamed answer as one completion (for the cache), or None when it carries tool calls
    or anything else that does not add up to plain messages."""
    choices: dict[int, dict[str, Any]] = {}
    for chunk in chunks:
        for choice in chunk.get("choices") or []:
            delta = choice.get("delta") or {}
            if set(delta) - {"role", "content", "refusal"}:
                return None
            slot = choices.setdefault(
                int(choice.get("index", 0)),
                {
                    "index": int(choice.get("index", 0)),
                    "message": {"role": "assistant", "content": ""},
                    "finish_reason": None,
                },
            )
            if delta.get("content"):
                slot["message"]["content"] += delta["content"]
            if choice.get("finish_reason"):
                slot["finish_reason"] = choice["finish_reason"]
    return {"object": "chat.completion", "choices": [choices[i] for i in sorted(choices)]}


def completion_chunks(completion: dict[str, Any]) -> list[dict[str, Any]]:
    """A whole completion as stream chunks (a cache hit asked for with stream: true)."""
    chunks = []
    for choice in completion.get("choices") or []:
        message = dict(choice.get("message") or {})
        index = choice.get("index", 0)
        chunks.append({"choices": [{"index": index, "delta": message, "finish_reason": None}]})
        chunks.append(
            {"choices": [{"index": index, "delta": {}, "finish_reason": choice.get("finish_reason")}]}
        )
    return chunks


@dataclass(frozen=True)
class StreamIds:
    """What every chunk of one answer carries: our completion id, the model's name, the time."""

    completion_id: str
    model_id: str
    created: int


def event(chunk: dict[str, Any], ids: StreamIds) -> str:
    """One upstream chunk as the client's server-sent event, under our id and model name."""
    out = {
        **chunk,
        "id": ids.completion_id,
        "object": "chat.completion.chunk",
        "created": ids.created,
        "model": ids.model_id,
    }
    out.pop("usage", None)
    return f"data: {json.dumps(out, separators=(',', ':'))}\n\n"


def usage_event(usage: tuple[int, int, str], ids: StreamIds, balance: str | None = None) -> str:
    """The final chunk a client asks for with stream_options.include_usage: our cost in usage,
    and the balance after it beside it."""
    final: dict[str, Any] = {
        "id": ids.completion_id,
        "object": "chat.completion.chunk",
        "created": ids.created,
        "model": ids.model_id,
        "choices": [],
        "usage": _usage_out(*usage),
    }
    if balance is not None:
        final["usage"]["balance"] = balance
    return f"data: {json.dumps(final, separators=(',', ':'))}\n\n"


DONE = "data: [DONE]\n\n"


def error_event(error: dict[str, Any]) -> str:
    """An OpenAI-style error event: the way a stream that already answered 200 reports a failure."""
    return f"data: {json.dumps(error, separators=(',', ':'))}\n\n"


def event_stream(
    chunks: list[dict[str, Any]],
    *,
    completion_id: str,
    model_id: str,
    created: int,
    usage: tuple[int, int, str] | None,
    balance: str | None = None,
) -> str:
    """Server-sent events as the OpenAI API sends them; the usage chunk only when asked for."""
    ids = StreamIds(completion_id, model_id, created)
    lines = [event(chunk, ids) for chunk in chunks]
    if usage is not None:
        lines.append(usage_event(usage, ids, balance))
    lines.append(DONE)
    return "".join(lines)
