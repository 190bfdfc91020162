"""POST /v1/embeddings: the OpenAI wire format, billed per input token of the model that served.

The same rules as a chat completion, through the same machinery (completion.py): a hold for
the worst case before the provider is called, the catalog's fallbacks, one settle of the
actual cost, deferred settles, the cache (an embedding is deterministic: every request is
cacheable) and Idempotency-Key.

The hold bounds the input as for chat prompts: a text input never bills more tokens than it
has UTF-8 bytes, and a token-array input bills exactly its length. The vectors in the answer
are the model's output, passed through as the upstream sent them; no money is a float.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from typing import Any

from conduix.accounts.auth import Principal
from conduix.core import clock, telemetry
from conduix.core.clock import Seconds
from conduix.core.errors import InsufficientCredits, InvalidRequest, PayloadTooLarge
from conduix.core.money import format_credits, parse_credits
from conduix.core.validation import parse_json_object
from conduix.inference import answers, cache, idempotency, providers
from conduix.ledger import leases, metering, settles, wallets
from conduix.pricing import costs, plans
from conduix.pricing.catalog import Model, catalog

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 1024 * 1024
MAX_INPUTS = 2048  # OpenAI's limit per request
MAX_TOKEN_ID = 2**31 - 1
FIELDS = frozenset({"model", "input", "encoding_format", "dimensions", "user"})
ENCODINGS = ("float", "base64")


@dataclass(frozen=True)
class EmbeddingRequest:
    body: dict[str, Any]
    model_id: str
    inputs: list[str | list[int]]
    encoding_format: str
    dimensions: int | None
    prompt: costs.PromptShape


def _inputs(value: Any) -> list[str | list[int]]:
    explain = "'input' must be a string, an array of strings, or an array of token arrays (integers)."
    if isinstance(value, str):
        items: list[Any] = [value]
    elif isinstance(value, list) and value and all(type(t) is int for t in value):
        items = [value]  # one token array
    elif isinstance(value, list) and value:
        items = value
    else:
        raise InvalidRequest(explain, param="input")
    if len(items) > MAX_INPUTS:
        raise InvalidRequest(f"'input' takes at most {MAX_INPUTS} items.", param="input")
    for index, item in enumerate(items):
        where = f"input[{index}]" if isinstance(value, list) and items is value else "input"
        if isinstance(item, str):
            if not item:
                raise InvalidRequest("An input must not be empty.", param=where)
        elif isinstance(item, list) and item and all(type(t) is int and 0 <= t <= MAX_TOKEN_ID for t in item):
            pass
        else:
            raise InvalidRequest(explain, param=where)
    return items


def parse_request(raw: bytes) -> EmbeddingRequest:
    if len(raw) > MAX_BODY_BYTES:
        raise PayloadTooLarge(f"The request body is larger than {MAX_BODY_BYTES} bytes.")
    body = parse_json_object(raw)
    for name in sorted(body):
        if name not in FIELDS:
            raise InvalidRequest(
                f"'{name}' is not a parameter this gateway passes on for embeddings.",
                param=name,
                code="unsupported_parameter",
            )
    model_id = body.get("model")
    if not isinstance(model_id, str) or not model_id:
        raise InvalidRequest("'model' is required.", param="model")
    if "input" not in body:
        raise InvalidRequest("'input' is required.", param="input")
    inputs = _inputs(body["input"])
    encoding = body.get("encoding_format", "float")
    if encoding not in ENCODINGS:
        raise InvalidRequest("'encoding_format' must be float or base64.", param="encoding_format")
    dimensions = body.get("dimensions")
    if dimensions is not None and (type(dimensions) is not int or dimensions < 1):
        raise InvalidRequest("'dimensions' must be a positive integer.", param="dimensions")
    if "user" in body and not isinstance(body["user"], str):
        raise InvalidRequest("'user' must be a string.", param="user")
    text = sum(len(i.encode("utf-8")) if isinstance(i, str) else len(i) for i in inputs)
    return EmbeddingRequest(
        body,
        model_id,
        inputs,
        encoding,
        dimensions,
        costs.PromptShape(text_bytes=text, messages=len(inputs)),
    )


def _attempts(request: EmbeddingRequest) -> list[costs.Attempt]:
    chain = catalog().chain(request.model_id)
    first = chain[0]
    if first.kind != "embedding":
        raise InvalidRequest(
            f"'{first.id}' is a chat model: use POST /v1/chat/completions for it.", param="model"
        )
    if request.dimensions is not None:
        if not first.adjustable_dimensions:
            raise InvalidRequest(f"{first.id} does not take 'dimensions'.", param="dimensions")
        if request.dimensions > (first.dimensions or 0):
            raise InvalidRequest(
                f"'dimensions' is too large: {first.id} makes vectors of {first.dimensions}.",
                param="dimensions",
            )
    # A fallback that cannot give the vector size asked for would answer something else.
    usable = [m for m in chain if _gives(m, request.dimensions, first)]
    return [costs.Attempt(m, 0, 1) for m in usable]


def _gives(model: Model, dimensions: int | None, first: Model) -> bool:
    if dimensions is None:
        return model.dimensions == first.dimensions
    return model.adjustable_dimensions and dimensions <= (model.dimensions or 0)


def _payload(request: EmbeddingRequest, attempt: costs.Attempt) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "model": attempt.model.upstream.model,
        "input": request.body["input"],
        "encoding_format": request.encoding_format,
    }
    if request.dimensions is not None:
        payload["dimensions"] = request.dimensions
    if "user" in request.body:
        payload["user"] = request.body["user"]
    return payload


def _body(data: list[dict[str, Any]], model_id: str, prompt_tokens: int, cost: str) -> dict[str, Any]:
    return {
        "object": "list",
        "data": [
            {"object": "embedding", "index": i, "embedding": d["embedding"]} for i, d in enumerate(data)
        ],
        "model": model_id,
        "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens, "cost": cost},
    }


def _cache_key(org_id: str, request: EmbeddingRequest) -> str:
    # Chat messages always carry a role, so this shape never meets a chat request's key.
    shaped = {
        "embeddings": request.inputs,
        "dimensions": request.dimensions,
        "format": request.encoding_format,
    }
    return cache.cache_key(org_id, {"model": request.model_id, "messages": [shaped]})


def serve(
    principal: Principal,
    raw_body: bytes,
    request_id: str,
    deadline: Seconds,
    idempotency_key: str | None = None,
) -> answers.Served:
    request = parse_request(raw_body)
    attempts = _attempts(request)
    if idempotency_key is None:
        return _serve(principal, request, attempts, request_id, deadline, None)
    claim = idempotency.Claim(principal.org_id, idempotency.check_key(idempotency_key), request_id)
    first = idempotency.claim(claim.org_id, claim.key, request.body, request_id, clock.now())
    if first is not None:
        return answers.replay(first)
    return idempotency.serve_claimed(
        claim, lambda: _serve(principal, request, attempts, request_id, deadline, claim)
    )


def _serve(
    principal: Principal,
    request: EmbeddingRequest,
    attempts: list[costs.Attempt],
    request_id: str,
    deadline: Seconds,
    claim: idempotency.Claim | None,
) -> answers.Served:
    org_id, now = principal.org_id, clock.now()
    key = _cache_key(org_id, request)
    hit = cache.lookup(key, now)
    if hit is not None:
        usage = hit.get("usage") or {}
        saved = parse_credits(str(usage.get("cost", "0")), field="cost", allow_zero=True)
        answers.best_effort(
            "count a cache hit",
            metering.record_cache_hit,
            org_id,
            str(hit["model"]),
            principal.key_id,
            saved,
            now,
        )
        tokens = int(usage.get("prompt_tokens", 0))
        text = json.dumps(_body(hit["data"], str(hit["model"]), tokens, "0"), separators=(",", ":"))
        served = answers.Served(
            text,
            "application/json",
            "HIT",
            0,
            wallets.get_balance(org_id, principal.key_id),
            requested_model=request.model_id,
            model=str(hit["model"]),
            prompt_tokens=tokens,
        )
        if claim:
            answers.keep_answer(claim, served, request_id)
        return served

    hold = costs.hold_nanos(attempts, request.prompt)
    try:
        reservation = leases.reserve(
            org_id, request_id, hold, model=attempts[0].model.id, key_id=principal.key_id, now=now
        )
    except InsufficientCredits as refusal:
        answers.ran_dry(org_id, refusal, now)
        raise
    started = time.monotonic()
    try:
        reply = providers.embed(attempts, lambda a: _payload(request, a), len(request.inputs), deadline)
    except BaseException:
        leases.release(org_id, request_id, reservation, clock.now())
        raise
    upstream_ms = (time.monotonic() - started) * 1000
    model = reply.attempt.model
    cost = costs.charge_nanos(model, reply.prompt_tokens, 0)

    def render(charged: int) -> tuple[answers.Served, dict[str, Any]]:
        body = _body(reply.data, model.id, reply.prompt_tokens, format_credits(charged))
        served = answers.Served(
            json.dumps(body, separators=(",", ":")),
            "application/json",
            answers.MISS,
            charged,
            reservation.balance - charged,
            requested_model=request.model_id,
            model=model.id,
            fallback_used=model.id != attempts[0].model.id,
            prompt_tokens=reply.prompt_tokens,
            upstream_ms=upstream_ms,
        )
        return served, body

    served, whole = render(cost)
    if cost > hold:
        telemetry.settle_incident(
            "charge_above_hold", request_id=request_id, org_id=org_id, hold=hold, cost=cost, model=model.id
        )
    usage = metering.Usage(
        model.id,
        principal.key_id,
        reply.prompt_tokens,
        0,
        cost,
        billed_by=reservation.wallet.billing_mode,
        funds_hint=reservation.wallet.balance,
    )
    also = [idempotency.answer_action(claim, answers.answer_of(served, request_id))] if claim else []
    if answers.settle(org_id, request_id, reservation, usage, also) is settles.SettleOutcome.HOLD_GONE:
        served, whole = render(0)
        if claim:
            answers.keep_answer(claim, served, request_id)
    answers.after_settle(org_id, reservation, hold, served.cost)
    ttl = plans.get(reservation.wallet.plan).cache_ttl_seconds
    answers.best_effort("cache the answer", cache.store, key, org_id, whole, now, ttl)
    return served
