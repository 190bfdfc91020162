"""A billed chat completion: hold the worst case, call the provider, settle the actual cost.

The provider is called only after the hold succeeded; a failed call releases the hold and
costs nothing; a deterministic repeat is answered from the cache, free.
"""

from __future__ import annotations

import functools
import json
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from conduix import (
    cache,
    chat,
    clock,
    leases,
    metering,
    plans,
    pricing,
    providers,
    settles,
    telemetry,
    wallet_settings,
    wallets,
    web,
)
from conduix.auth import Principal
from conduix.catalog import Model, catalog
from conduix.clock import Seconds
from conduix.errors import ConduixError, InsufficientCredits, InvalidRequest, ServiceBusy, UpstreamError
from conduix.money import format_credits, parse_credits

if TYPE_CHECKING:
    # Imported where used: only a request with an Idempotency-Key needs it, so the cold start
    # of the Completion function does not load it.
    from conduix import idempotency

log = logging.getLogger(__name__)

HIT, MISS, BYPASS = "HIT", "MISS", "BYPASS"
# A whole (non-streamed) answer sends no byte until it is complete, and API Gateway closes a
# streamed integration that stays quiet for 5 minutes (regional endpoints): stop before that.
WHOLE_ANSWER_SECONDS = 290.0


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
    replay_of: str | None = None  # the request id whose answer this replays (Idempotency-Key)
    # A stream served as the upstream writes it: iterate it for the body's events. Its cost
    # is known only at its end (in the final chunk, and then in `live.served`).
    live: LiveStream | None = None

    def headers(self) -> dict[str, str]:
        if self.live is not None:
            return {"x-conduix-cache": self.cache_status}
        return {
            "x-conduix-cache": self.cache_status,
            "x-conduix-cost": format_credits(self.cost),
            "x-conduix-balance": format_credits(self.balance),
        }


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


def _attempts(request: chat.ChatRequest) -> list[pricing.Attempt]:
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
    if not pricing.accepts(chain[0], request.prompt):
        raise InvalidRequest(
            f"{chain[0].id} does not take image parts through this gateway "
            "(its catalog entry sets no image bound).",
            param=request.image_params[0],
            code="unsupported_content",
        )
    usable = [m for m in chain if pricing.accepts(m, request.prompt)]
    return pricing.plan_attempts(usable, request.max_tokens, request.choices)


def serve(
    principal: Principal,
    raw_body: bytes,
    request_id: str,
    deadline: Seconds,
    idempotency_key: str | None = None,
) -> Served:
    request = chat.parse_request(raw_body)
    attempts = _attempts(request)
    if idempotency_key is None:
        return _serve(principal, request, attempts, request_id, deadline, None)
    from conduix import idempotency

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
        return _replay(first)
    return idempotency.serve_claimed(
        claim, lambda: _serve(principal, request, attempts, request_id, deadline, claim)
    )


def _may_run(attempts: list[pricing.Attempt], deadline: Seconds) -> int:
    """The longest the request may still run, in seconds: every model of its chain to its
    timeout, within the request's deadline."""
    chain = sum(a.model.upstream.timeout_seconds for a in attempts)
    return max(0, int(min(deadline - time.monotonic(), chain)))


def _replay(first: idempotency.Answer) -> Served:
    return Served(
        first.body,
        first.content_type,
        first.cache_status,
        first.cost,
        first.balance,
        replay_of=first.request_id,
    )


def _answer(served: Served, request_id: str) -> idempotency.Answer:
    from conduix import idempotency

    return idempotency.Answer(
        request_id, served.body, served.content_type, served.cache_status, served.cost, served.balance
    )


def _keep(claim: idempotency.Claim, served: Served, request_id: str) -> None:
    from conduix import idempotency

    _best_effort("keep the idempotent answer", idempotency.keep, claim, _answer(served, request_id))


def _answer_action(claim: idempotency.Claim, served: Served, request_id: str) -> dict[str, Any]:
    from conduix import idempotency

    return idempotency.answer_action(claim, _answer(served, request_id))


def _serve(
    principal: Principal,
    request: chat.ChatRequest,
    attempts: list[pricing.Attempt],
    request_id: str,
    deadline: Seconds,
    claim: idempotency.Claim | None,
) -> Served:
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
            served = Served(
                text,
                content_type,
                HIT,
                0,
                balance,
                requested_model=request.model_id,
                model=str(hit.get("model")),
                prompt_tokens=int(usage.get("prompt_tokens", 0)),
                completion_tokens=int(usage.get("completion_tokens", 0)),
            )
            if claim:  # a free answer: if it is not kept, a retry is answered free again
                _keep(claim, served, request_id)
            return served

    hold = pricing.hold_nanos(attempts, request.prompt)
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
        _ran_dry(org_id, refusal, now)
        advice = pricing.hold_advice(
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
        live = LiveStream(
            principal, request, attempts, request_id, claim, key, hold, reservation, opened, started
        )
        return Served(
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

    def render(charged: int) -> tuple[Served, dict[str, Any] | None]:
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
        served = Served(
            text,
            content_type,
            MISS if key else BYPASS,
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

    return _bill(
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


def _bill(
    principal: Principal,
    request_id: str,
    claim: idempotency.Claim | None,
    key: str | None,
    hold: int,
    reservation: leases.Reservation,
    model: Model,
    tokens: tuple[int, int],
    render: Callable[[int], tuple[Served, dict[str, Any] | None]],
    now: datetime,
) -> Served:
    """Settle a served answer from its usage (the answer kept for its Idempotency-Key in the
    same write), then the work that never changes the answer: auto-reload, the cache."""
    org_id = principal.org_id
    cost = pricing.charge_nanos(model, *tokens)
    if cost > hold:  # billed all the same (the service was delivered); settle records it
        telemetry.settle_incident(
            "charge_above_hold", request_id=request_id, org_id=org_id, hold=hold, cost=cost, model=model.id
        )
    served, whole = render(cost)
    usage_record = metering.Usage(
        model.id,
        principal.key_id,
        tokens[0],
        tokens[1],
        cost,
        billed_by=reservation.wallet.billing_mode,
        funds_hint=reservation.wallet.balance,
    )
    # The answer to an Idempotency-Key is kept by the same write that bills it.
    also = [_answer_action(claim, served, request_id)] if claim else []
    outcome = _settle(org_id, request_id, reservation, usage_record, also)
    if outcome is settles.SettleOutcome.HOLD_GONE:  # HoldSweeper released it first
        served, whole = render(0)
        if claim:
            _keep(claim, served, request_id)

    # Work after the settle never changes the client's answer: it is billed, and it goes out.
    _after_settle(org_id, reservation, hold, served.cost)
    if key and whole is not None:  # kept as long as the org's plan keeps answers
        ttl = plans.get(reservation.wallet.plan).cache_ttl_seconds
        _best_effort("cache the answer", cache.store, key, org_id, whole, now, ttl)
    return served


class LiveStream:
    """A stream served as the upstream writes it. Iterating it yields the client's events;
    the hold was taken before the first of them, and the end bills the upstream's final usage.

    - The upstream fails or passes its deadline mid-stream: an OpenAI-style error event ends
      the stream, the hold is released at once, nothing is billed.
    - The client hangs up (the generator is closed, or its events go nowhere): the upstream is
      still read to its end, which the hold bounds, and billed exactly once from its usage.
    """

    def __init__(
        self,
        principal: Principal,
        request: chat.ChatRequest,
        attempts: list[pricing.Attempt],
        request_id: str,
        claim: idempotency.Claim | None,
        key: str | None,
        hold: int,
        reservation: leases.Reservation,
        upstream: providers.UpstreamStream,
        started: float,
    ) -> None:
        self._principal, self._request, self._attempts = principal, request, attempts
        self._request_id, self._claim, self._key = request_id, claim, key
        self._hold, self._reservation, self._upstream = hold, reservation, upstream
        self._started = started
        self.cache_status = MISS if key else BYPASS
        self.served: Served | None = None  # what was billed, once the stream has ended
        self.failure: ConduixError | None = None  # why it ended without a bill

    def __iter__(self) -> Iterator[str]:
        model = self._upstream.attempt.model
        ids = chat.StreamIds(f"chatcmpl-{self._request_id}", model.id, int(time.time()))
        org_id, request_id = self._principal.org_id, self._request_id
        chunks: list[dict[str, Any]] = []
        listening = True
        try:
            for chunk in self._upstream.chunks():
                chunks.append(chunk)
                if listening:
                    try:
                        yield chat.event(chunk, ids)
                    except GeneratorExit:  # the client is gone: read on, bill, say nothing more
                        listening = False
        except UpstreamError as exc:
            self.failure = exc
            leases.release(org_id, request_id, self._reservation, clock.now())
            if self._claim:
                from conduix import idempotency

                _best_effort("give back an idempotency key", idempotency.abandon, self._claim)
            if listening:
                _, body, _ = web.error_body(exc)
                yield chat.error_event(body)
            return
        except BaseException:
            # A bug of ours mid-stream: the hold stays for HoldSweeper, which never bills it.
            log.exception("stream failed", extra={"request_id": request_id})
            raise
        assert self._upstream.usage is not None  # chunks() ends only at [DONE], with usage
        prompt_tokens, completion_tokens = self._upstream.usage
        upstream_ms = (time.monotonic() - self._started) * 1000
        head = "".join(chat.event(chunk, ids) for chunk in chunks)

        def render(charged: int) -> tuple[Served, dict[str, Any] | None]:
            balance = self._reservation.balance - charged
            tail = ""
            if self._request.include_usage:
                usage = (prompt_tokens, completion_tokens, format_credits(charged))
                tail = chat.usage_event(usage, ids, format_credits(balance))
            assembled = chat.assemble(chunks)
            whole = None
            if assembled is not None:
                whole = chat.completion_body(
                    assembled,
                    completion_id=ids.completion_id,
                    model_id=model.id,
                    prompt_tokens=prompt_tokens,
                    completion_tokens=completion_tokens,
                    cost=format_credits(charged),
                )
            served = Served(
                head + tail + chat.DONE,  # what a retry with the same Idempotency-Key replays
                "text/event-stream",
                self.cache_status,
                charged,
                balance,
                requested_model=self._request.model_id,
                model=model.id,
                fallback_used=model.id != self._attempts[0].model.id,
                prompt_tokens=prompt_tokens,
                completion_tokens=completion_tokens,
                upstream_ms=upstream_ms,
            )
            return served, whole

        try:
            served = _bill(
                self._principal,
                request_id,
                self._claim,
                self._key,
                self._hold,
                self._reservation,
                model,
                (prompt_tokens, completion_tokens),
                render,
                clock.now(),
            )
        except ServiceBusy as exc:
            self.failure = exc
            if listening:
                yield chat.error_event(web.error_body(exc)[1])
            return
        self.served = served
        if listening:
            tail = served.body[len(head) :]  # the usage chunk (when asked for) and [DONE]
            try:
                yield tail
            except GeneratorExit:
                return


def _settle(
    org_id: str,
    request_id: str,
    reservation: leases.Reservation,
    usage: metering.Usage,
    also: list[dict[str, Any]],
) -> settles.SettleOutcome:
    """Bill a served request. When the settle cannot land now (contention, throttling, a lost
    answer), keep what the request used, and its hold, for HoldSweeper to settle exactly once.
    Only if even that fails does the client get no answer (a 503); the hold is then released
    unbilled. A settle that crosses an armed alert threshold claims and sends it, best effort."""
    hold = reservation.hold_nanos
    guard = _alert_guard(reservation.wallet, usage.cost)
    try:
        outcome = leases.settle(
            org_id, request_id, reservation, usage, clock.now(), also=also, alert_guard=guard
        )
    except Exception:
        log.warning("settle deferred", exc_info=True, extra={"request_id": request_id})
        try:
            lease_id = reservation.lease.lease_id if reservation.lease else ""  # charged, not settled
            settles.record_pending(
                org_id,
                request_id,
                hold,
                usage,
                clock.now(),
                also=also,
                lease_id=lease_id,
                budget_key=reservation.budget_key,
            )
        except Exception:
            log.exception("could not record a deferred settle", extra={"request_id": request_id})
            raise ServiceBusy("The billing store is busy; please retry the request.") from None
        telemetry.settle_incident("settle_deferred", request_id=request_id, org_id=org_id, cost=usage.cost)
        return settles.SettleOutcome.SETTLED
    if outcome is settles.SettleOutcome.HOLD_GONE:
        telemetry.settle_incident("served_unbilled", request_id=request_id, org_id=org_id, cost=usage.cost)
    if guard is not None and guard.tripped:
        from conduix import alerts

        _best_effort("send alerts", alerts.check, org_id, clock.now())
    return outcome


def _alert_guard(wallet: wallets.Wallet, cost: int) -> settles.AlertGuard | None:
    if not (wallet.balance_alerts or wallet.cap_alerts):
        return None
    from conduix import alerts  # only orgs with alerts pay for the import

    return alerts.guard(wallet, cost)


def _after_settle(org_id: str, reservation: leases.Reservation, hold: int, cost: int) -> None:
    """Best-effort work after a settle: it never changes the client's answer."""
    wallet = reservation.wallet
    reload = wallet.reload
    if reload.enabled and not reload.due and wallet.available + hold - cost < reload.threshold:
        _best_effort("mark auto-reload due", wallet_settings.mark_reload_due, org_id)  # once per episode


def _best_effort(what: str, work: Callable[..., Any], *args: Any) -> None:
    try:
        work(*args)
    except Exception:
        log.exception("could not %s after a billed answer", what)


def _ran_dry(org_id: str, refusal: InsufficientCredits, now: datetime) -> None:
    """A refusal for lack of credits: start an auto-reload episode if one is set up, and send
    the "account paused" notice once per pause. Each write is made only if the refused write
    saw that it could succeed, so a refusal in a steady pause costs one write. Failures here
    never hide the 402."""
    try:
        if refusal.reload_can_start:
            wallet_settings.mark_reload_due(org_id)
        if not refusal.already_paused and wallet_settings.mark_paused(org_id, now):
            from conduix import notices, orgs  # rare path: keep it off the cold start

            org = orgs.get_org(org_id)
            notices.account_paused(org, format_credits(wallets.get_wallet(org_id).available))
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
