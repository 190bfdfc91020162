"""A billed chat completion: hold the worst case, call the provider, settle the actual cost.

The provider is called only after the hold succeeded; a failed call releases the hold and
costs nothing; a deterministic repeat is answered from the cache, free.
"""

from __future__ import annotations

import functools
import json
import logging
import time
from typing import TYPE_CHECKING, Any

from conduix.accounts.auth import Principal
from conduix.core import clock
from conduix.core.clock import Seconds
from conduix.core.errors import InsufficientCredits, InvalidRequest
from conduix.core.money import format_credits, parse_credits
from conduix.inference import answers, cache, chat, providers
from conduix.ledger import leases, metering, wallets
from conduix.pricing import costs
from conduix.pricing.catalog import catalog

if TYPE_CHECKING:
    # Imported where used: only a request with an Idempotency-Key needs it, so the cold start
    # of the Completion function does not load it.
    from conduix.inference import idempotency  # only requests with an Idempotency-Key (cold start)

log = logging.getLogger(__name__)

# A whole (non-streamed) answer sends no byte until it is complete, and API Gateway closes a
# streamed integration that stays quiet for 5 minutes (regional endpoints): stop before that.
WHOLE_ANSWER_SECONDS = 290.0


def _respond(
    request: chat.ChatRequest,
    completion: dict[str, Any] | None,
    chunks: list[dict[str, Any]],
    *,
    completion_id: str,
    model_id: str,
    prompt_tokens: int,
    completion_tokens: int,
    cost: str,
    balance: str | None = None,
) -> tuple[str, str, dict[str, Any] | None]:
    """The client's answer (JSON or event stream) and the completion object worth caching."""
    if request.stream:
        chunks = chunks or chat.completion_chunks(completion or {})
        usage = (prompt_tokens, completion_tokens, cost) if request.include_usage else None
        created = int(time.time())
        text = chat.event_stream(
            chunks,
            completion_id=completion_id,
            model_id=model_id,
            created=created,
            usage=usage,
            balance=balance,
        )
        assembled = completion if completion is not None else chat.assemble(chunks)
        whole = None
        if assembled is not None:
            whole = chat.completion_body(
                assembled,
                completion_id=completion_id,
                model_id=model_id,
                prompt_tokens=prompt_tokens,
                completion_tokens=completion_tokens,
                cost=cost,
            )
        return text, "text/event-stream", whole
    body = chat.completion_body(
        completion or {},
        completion_id=completion_id,
        model_id=model_id,
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        cost=cost,
    )
    return json.dumps(body, separators=(",", ":")), "application/json", body


def _attempts(request: chat.ChatRequest) -> list[costs.Attempt]:
    """The models that may serve the request, each with its output budget. A model whose
    catalog entry cannot bound what the request sends (images) is never called."""
    chain = catalog().chain(request.model_id)
    if chain[0].kind != "chat":
        raise InvalidRequest(
            f"'{chain[0].id}' is an embedding model: use POST /v1/embeddings for it.", param="model"
        )
    if request.max_tokens is not None and request.max_tokens > chain[0].max_output_tokens:
        raise InvalidRequest(
            f"'{request.max_tokens_field}' is too large: {request.max_tokens}. "
            f"{chain[0].id} supports at most "
            f"{chain[0].max_output_tokens} completion tokens.",
            param=request.max_tokens_field,
        )
    if not costs.accepts(chain[0], request.prompt):
        raise InvalidRequest(
            f"{chain[0].id} does not take image parts through this gateway "
            "(its catalog entry sets no image bound).",
            param=request.image_params[0],
            code="unsupported_content",
        )
    usable = [m for m in chain if costs.accepts(m, request.prompt)]
    return costs.plan_attempts(usable, request.max_tokens, request.choices)


def serve(
    principal: Principal,
    raw_body: bytes,
    request_id: str,
    deadline: Seconds,
    idempotency_key: str | None = None,
) -> answers.Served:
    request = chat.parse_request(raw_body)
    attempts = _attempts(request)
    if idempotency_key is None:
        return _serve(principal, request, attempts, request_id, deadline, None)
    from conduix.inference import idempotency  # only requests with an Idempotency-Key (cold start)

    claim = idempotency.Claim(principal.org_id, idempotency.check_key(idempotency_key), request_id)
    # A long answer keeps its key as long as it may run.
    first = idempotency.claim(
        claim.org_id,
        claim.key,
        request.body,
        request_id,
        clock.now(),
        lease_seconds=_may_run(attempts, deadline) + 10,
    )
    if first is not None:
        return answers.replay(first)
    return idempotency.serve_claimed(
        claim, lambda: _serve(principal, request, attempts, request_id, deadline, claim)
    )


def _may_run(attempts: list[costs.Attempt], deadline: Seconds) -> int:
    """The longest the request may still run, in seconds: every model of its chain to its
    timeout, within the request's deadline."""
    chain = sum(a.model.upstream.timeout_seconds for a in attempts)
    return max(0, int(min(deadline - time.monotonic(), chain)))


def _serve(
    principal: Principal,
    request: chat.ChatRequest,
    attempts: list[costs.Attempt],
    request_id: str,
    deadline: Seconds,
    claim: idempotency.Claim | None,
) -> answers.Served:
    org_id, now = principal.org_id, clock.now()
    completion_id = f"chatcmpl-{request_id}"

    key = cache.cache_key(org_id, request.body) if cache.is_deterministic(request.body) else None
    if key:
        hit = cache.lookup(key, now)
        if hit is not None:
            usage = hit.get("usage") or {}
            saved = parse_credits(str(usage.get("cost", "0")), field="cost", allow_zero=True)
            try:
                metering.record_cache_hit(org_id, str(hit.get("model")), principal.key_id, saved, now)
            except Exception:  # statistics only: never fail a free answer over them
                log.warning("could not count a cache hit", exc_info=True)
            balance = wallets.get_balance(org_id, principal.key_id)
            text, content_type, _ = _respond(
                request,
                hit,
                [],
                completion_id=completion_id,
                model_id=str(hit.get("model")),
                prompt_tokens=int(usage.get("prompt_tokens", 0)),
                completion_tokens=int(usage.get("completion_tokens", 0)),
                cost="0",
                balance=format_credits(balance),
            )
            served = answers.Served(
                text,
                content_type,
                answers.HIT,
                0,
                balance,
                requested_model=request.model_id,
                model=str(hit.get("model")),
                prompt_tokens=int(usage.get("prompt_tokens", 0)),
                completion_tokens=int(usage.get("completion_tokens", 0)),
            )
            if claim:  # a free answer: if it is not kept, a retry is answered free again
                answers.keep_answer(claim, served, request_id)
            return served

    hold = costs.hold_nanos(attempts, request.prompt)
    try:
        # A hot org's requests reserve against this environment's escrow lease, others hold.
        reservation = leases.reserve(
            org_id,
            request_id,
            hold,
            model=attempts[0].model.id,
            key_id=principal.key_id,
            now=now,
            runs_for=_may_run(attempts, deadline),
        )
    except InsufficientCredits as refusal:
        answers.ran_dry(org_id, refusal, now)
        advice = costs.hold_advice(
            attempts,
            request.prompt,
            hold,
            refusal.available_nanos,
            requested=request.max_tokens,
            field=request.max_tokens_field,
        )
        if advice:  # the documented first sentence stays; what to change follows it
            refusal.message = f"{refusal.message} {advice}"
        raise
    started = time.monotonic()
    payload = functools.partial(chat.upstream_payload, request)
    if request.stream:
        try:  # up to the first chunk: a failing model still falls back, the client still gets a status
            opened = providers.open_stream(attempts, payload, deadline)
        except BaseException:
            leases.release(org_id, request_id, reservation, clock.now())
            raise
        live = answers.LiveStream(
            principal, request, attempts, request_id, claim, key, hold, reservation, opened, started
        )
        return answers.Served(
            "",
            "text/event-stream",
            live.cache_status,
            0,
            reservation.balance,
            requested_model=request.model_id,
            model=opened.attempt.model.id,
            live=live,
        )
    try:  # a whole answer sends nothing until it is complete: API Gateway's idle timeout bounds it
        reply = providers.complete(attempts, payload, False, min(deadline, started + WHOLE_ANSWER_SECONDS))
    except BaseException:
        leases.release(org_id, request_id, reservation, clock.now())
        raise
    upstream_ms = (time.monotonic() - started) * 1000

    model = reply.attempt.model

    def render(charged: int) -> tuple[answers.Served, dict[str, Any] | None]:
        text, content_type, whole = _respond(
            request,
            reply.completion,
            reply.chunks,
            completion_id=completion_id,
            model_id=model.id,
            prompt_tokens=reply.prompt_tokens,
            completion_tokens=reply.completion_tokens,
            cost=format_credits(charged),
            balance=format_credits(reservation.balance - charged),
        )
        served = answers.Served(
            text,
            content_type,
            answers.MISS if key else answers.BYPASS,
            charged,
            reservation.balance - charged,
            requested_model=request.model_id,
            model=model.id,
            fallback_used=model.id != attempts[0].model.id,
            prompt_tokens=reply.prompt_tokens,
            completion_tokens=reply.completion_tokens,
            upstream_ms=upstream_ms,
        )
        return served, whole

    return answers.bill(
        principal,
        request_id,
        claim,
        key,
        hold,
        reservation,
        model,
        (reply.prompt_tokens, reply.completion_tokens),
        render,
        now,
    )


def list_models() -> dict[str, Any]:
    """GET /v1/models: the catalog, with each model's prices as decimal strings."""
    return {
        "object": "list",
        "data": [
            {
                "id": m.id,
                "object": "model",
                "created": 0,
                "owned_by": m.owned_by,
                "kind": m.kind,
                **(
                    {"dimensions": m.dimensions}
                    if m.dimensions
                    else {"max_output_tokens": m.max_output_tokens}
                ),
                "fallbacks": list(m.fallbacks),
                "pricing": {
                    "input_per_million": format_credits(m.pricing.input_per_million),
                    "output_per_million": format_credits(m.pricing.output_per_million),
                    "unit": "credits",
                },
            }
            for m in catalog()
        ],
    }
