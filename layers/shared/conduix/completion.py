"""A billed chat completion: hold the worst case, call the provider, settle the actual cost.

The provider is called only after the hold succeeded; a failed call releases the hold and
costs nothing; a deterministic repeat is answered from the cache, free.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from conduix import cache, chat, clock, plans, pricing, providers, telemetry, wallets
from conduix.auth import Principal
from conduix.catalog import catalog
from conduix.clock import Seconds
from conduix.errors import InsufficientCredits, InvalidRequest
from conduix.money import format_credits, parse_credits

log = logging.getLogger(__name__)

HIT, MISS, BYPASS = "HIT", "MISS", "BYPASS"


@dataclass(frozen=True)
class Served:
    body: str
    content_type: str
    cache_status: str
    cost: int  # nano-credits charged for this request
    balance: int  # settled balance after it
    # For the request's log line and metrics (telemetry.completion_served).
    requested_model: str = ""
    model: str = ""
    fallback_used: bool = False
    prompt_tokens: int = 0
    completion_tokens: int = 0
    upstream_ms: float | None = None


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
) -> tuple[str, str, dict[str, Any] | None]:
    """The client's answer (JSON or event stream) and the completion object worth caching."""
    if request.stream:
        chunks = chunks or chat.completion_chunks(completion or {})
        usage = (prompt_tokens, completion_tokens, cost) if request.include_usage else None
        created = int(time.time())
        text = chat.event_stream(
            chunks, completion_id=completion_id, model_id=model_id, created=created, usage=usage
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


def serve(principal: Principal, raw_body: bytes, request_id: str, deadline: Seconds) -> Served:
    request = chat.parse_request(raw_body)
    chain = catalog().chain(request.model_id)
    if request.max_tokens is not None and request.max_tokens > chain[0].max_output_tokens:
        raise InvalidRequest(
            f"'{request.max_tokens_field}' is too large: {request.max_tokens}. "
            f"{chain[0].id} supports at most "
            f"{chain[0].max_output_tokens} completion tokens.",
            param=request.max_tokens_field,
        )
    org_id, now = principal.org_id, clock.now()
    completion_id = f"chatcmpl-{request_id}"

    key = cache.cache_key(org_id, request.body) if cache.is_deterministic(request.body) else None
    if key:
        hit = cache.lookup(key, now)
        if hit is not None:
            usage = hit.get("usage") or {}
            saved = parse_credits(str(usage.get("cost", "0")), field="cost", allow_zero=True)
            try:
                wallets.record_cache_hit(org_id, str(hit.get("model")), principal.key_id, saved, now)
            except Exception:  # statistics only: never fail a free answer over them
                log.warning("could not count a cache hit", exc_info=True)
            text, content_type, _ = _respond(
                request,
                hit,
                [],
                completion_id=completion_id,
                model_id=str(hit.get("model")),
                prompt_tokens=int(usage.get("prompt_tokens", 0)),
                completion_tokens=int(usage.get("completion_tokens", 0)),
                cost="0",
            )
            return Served(
                text,
                content_type,
                HIT,
                0,
                wallets.get_balance(org_id, principal.key_id),
                requested_model=request.model_id,
                model=str(hit.get("model")),
                prompt_tokens=int(usage.get("prompt_tokens", 0)),
                completion_tokens=int(usage.get("completion_tokens", 0)),
            )

    attempts = pricing.plan_attempts(chain, request.max_tokens, request.choices)
    hold = pricing.hold_nanos(
        attempts, pricing.prompt_token_ceiling(request.prompt_bytes, request.message_count)
    )
    try:
        reservation = wallets.reserve(
            org_id, request_id, hold, model=chain[0].id, key_id=principal.key_id, now=now
        )
    except InsufficientCredits as refusal:
        _ran_dry(org_id, refusal, now)
        advice = pricing.hold_advice(
            attempts,
            pricing.prompt_token_ceiling(request.prompt_bytes, request.message_count),
            hold,
            refusal.available_nanos,
            requested=request.max_tokens,
            field=request.max_tokens_field,
        )
        if advice:  # the documented first sentence stays; what to change follows it
            refusal.message = f"{refusal.message} {advice}"
        raise
    started = time.monotonic()
    try:
        reply = providers.complete(
            attempts, lambda attempt: chat.upstream_payload(request, attempt), request.stream, deadline
        )
    except BaseException:
        wallets.release(org_id, request_id, hold)
        raise
    upstream_ms = (time.monotonic() - started) * 1000

    model = reply.attempt.model
    cost = pricing.charge_nanos(model, reply.prompt_tokens, reply.completion_tokens)
    if cost > hold:  # only if the provider ignored the output budget we sent it
        telemetry.settle_incident("charge_above_hold", request_id=request_id, hold=hold, cost=cost)
    usage_record = wallets.Usage(
        model.id,
        principal.key_id,
        reply.prompt_tokens,
        reply.completion_tokens,
        cost,
        billed_by=reservation.wallet.billing_mode,
        funds_hint=reservation.wallet.balance,
    )
    try:
        outcome = wallets.settle(org_id, request_id, hold, usage_record, clock.now())
    except Exception:
        # The answer exists and the client gets it; the hold stays until HoldSweeper frees it,
        # so the request goes unbilled rather than billed twice or lost with its answer.
        log.exception("settle failed; the request goes unbilled", extra={"request_id": request_id})
        telemetry.settle_incident("settle_failed", request_id=request_id)
        outcome = wallets.SettleOutcome.HOLD_GONE
    if outcome is wallets.SettleOutcome.HOLD_GONE:
        cost = 0
    reload = reservation.wallet.reload
    if reload.enabled and not reload.due and reservation.wallet.available + hold - cost < reload.threshold:
        wallets.mark_reload_due(org_id)  # conditional: concurrent settles start one episode
    text, content_type, whole = _respond(
        request,
        reply.completion,
        reply.chunks,
        completion_id=completion_id,
        model_id=model.id,
        prompt_tokens=reply.prompt_tokens,
        completion_tokens=reply.completion_tokens,
        cost=format_credits(cost),
    )
    if key and whole is not None:  # kept as long as the org's plan keeps answers
        cache.store(key, org_id, whole, now, plans.get(reservation.wallet.plan).cache_ttl_seconds)
    return Served(
        text,
        content_type,
        MISS if key else BYPASS,
        cost,
        reservation.balance - cost,
        requested_model=request.model_id,
        model=model.id,
        fallback_used=model.id != chain[0].id,
        prompt_tokens=reply.prompt_tokens,
        completion_tokens=reply.completion_tokens,
        upstream_ms=upstream_ms,
    )


def _ran_dry(org_id: str, refusal: InsufficientCredits, now: datetime) -> None:
    """A refusal for lack of credits: start an auto-reload episode if one is set up, and send
    the "account paused" notice once per pause. Each write is made only if the refused write
    saw that it could succeed, so a refusal in a steady pause costs one write. Failures here
    never hide the 402."""
    try:
        if refusal.reload_can_start:
            wallets.mark_reload_due(org_id)
        if not refusal.already_paused and wallets.mark_paused(org_id, now):
            from conduix import notices, orgs  # rare path: keep it off the cold start

            org = orgs.get_org(org_id)
            notices.account_paused(org.email, org.name, format_credits(wallets.get_wallet(org_id).available))
    except Exception:
        log.exception("could not record the pause", extra={"org_id": org_id})


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
                "max_output_tokens": m.max_output_tokens,
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
