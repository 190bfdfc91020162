"""A served request, and its billing once the provider answered: the answer (`Served`, or a
`LiveStream` read as the client is served), the settle (with the answer kept for its
Idempotency-Key in the same write), and the work after it that never changes the answer.
Shared by chat completions (completion) and embeddings.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from conduix.accounts.auth import Principal
from conduix.core import clock, telemetry
from conduix.core.errors import ConduixError, InsufficientCredits, ServiceBusy, UpstreamError
from conduix.core.money import format_credits
from conduix.inference import cache, chat, providers
from conduix.ledger import leases, metering, settles, wallet_settings, wallets
from conduix.pricing import costs, plans
from conduix.pricing.catalog import Model
from conduix.web import responses

if TYPE_CHECKING:
    # Imported where used: only a request with an Idempotency-Key needs it, so the cold start
    # of the Completion function does not load it.
    from conduix.inference import idempotency  # only requests with an Idempotency-Key (cold start)

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


def replay(first: idempotency.Answer) -> Served:
    return Served(
        first.body,
        first.content_type,
        first.cache_status,
        first.cost,
        first.balance,
        replay_of=first.request_id,
    )


def answer_of(served: Served, request_id: str) -> idempotency.Answer:
    from conduix.inference import idempotency  # only requests with an Idempotency-Key (cold start)

    return idempotency.Answer(
        request_id, served.body, served.content_type, served.cache_status, served.cost, served.balance
    )


def keep_answer(claim: idempotency.Claim, served: Served, request_id: str) -> None:
    from conduix.inference import idempotency  # only requests with an Idempotency-Key (cold start)

    best_effort("keep the idempotent answer", idempotency.keep, claim, answer_of(served, request_id))


def answer_action(claim: idempotency.Claim, served: Served, request_id: str) -> dict[str, Any]:
    from conduix.inference import idempotency  # only requests with an Idempotency-Key (cold start)

    return idempotency.answer_action(claim, answer_of(served, request_id))


def bill(
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
    cost = costs.charge_nanos(model, *tokens)
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
    also = [answer_action(claim, served, request_id)] if claim else []
    outcome = settle(org_id, request_id, reservation, usage_record, also)
    if outcome is settles.SettleOutcome.HOLD_GONE:  # HoldSweeper released it first
        served, whole = render(0)
        if claim:
            keep_answer(claim, served, request_id)

    # Work after the settle never changes the client's answer: it is billed, and it goes out.
    after_settle(org_id, reservation, hold, served.cost)
    if key and whole is not None:  # kept as long as the org's plan keeps answers
        ttl = plans.get(reservation.wallet.plan).cache_ttl_seconds
        best_effort("cache the answer", cache.store, key, org_id, whole, now, ttl)
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
        attempts: list[costs.Attempt],
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
                # only requests with an Idempotency-Key load it (cold start)
                from conduix.inference import idempotency

                best_effort("give back an idempotency key", idempotency.abandon, self._claim)
            if listening:
                _, body, _ = responses.error_body(exc)
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
            served = bill(
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
                yield chat.error_event(responses.error_body(exc)[1])
            return
        self.served = served
        if listening:
            tail = served.body[len(head) :]  # the usage chunk (when asked for) and [DONE]
            try:
                yield tail
            except GeneratorExit:
                return


def settle(
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
            lease = reservation.lease  # a lease's request is charged, not settled
            lease_id = lease.lease_id if lease else ""
            # (Its key's budget counts it if its lease held against the key's spend limit.)
            budget_key = lease.key_id if lease and lease.budget else reservation.budget_key
            settles.record_pending(
                org_id,
                request_id,
                hold,
                usage,
                clock.now(),
                also=also,
                lease_id=lease_id,
                budget_key=budget_key,
            )
        except Exception:
            log.exception("could not record a deferred settle", extra={"request_id": request_id})
            raise ServiceBusy("The billing store is busy; please retry the request.") from None
        telemetry.settle_incident("settle_deferred", request_id=request_id, org_id=org_id, cost=usage.cost)
        return settles.SettleOutcome.SETTLED
    if outcome is settles.SettleOutcome.HOLD_GONE:
        telemetry.settle_incident("served_unbilled", request_id=request_id, org_id=org_id, cost=usage.cost)
    if guard is not None and guard.tripped:
        from conduix.accounts import alerts  # only orgs with alerts pay for the import

        best_effort("send alerts", alerts.check, org_id, clock.now())
    return outcome


def _alert_guard(wallet: wallets.Wallet, cost: int) -> settles.AlertGuard | None:
    if not (wallet.balance_alerts or wallet.cap_alerts):
        return None
    from conduix.accounts import alerts  # only orgs with alerts pay for the import

    return alerts.guard(wallet, cost)


def after_settle(org_id: str, reservation: leases.Reservation, hold: int, cost: int) -> None:
    """Best-effort work after a settle: it never changes the client's answer."""
    wallet = reservation.wallet
    reload = wallet.reload
    if reload.enabled and not reload.due and wallet.available + hold - cost < reload.threshold:
        best_effort("mark auto-reload due", wallet_settings.mark_reload_due, org_id)  # once per episode


def best_effort(what: str, work: Callable[..., Any], *args: Any) -> None:
    try:
        work(*args)
    except Exception:
        log.exception("could not %s after a billed answer", what)


def ran_dry(org_id: str, refusal: InsufficientCredits, now: datetime) -> None:
    """A refusal for lack of credits: start an auto-reload episode if one is set up, and send
    the "account paused" notice once per pause. Each write is made only if the refused write
    saw that it could succeed, so a refusal in a steady pause costs one write. Failures here
    never hide the 402."""
    try:
        if refusal.reload_can_start:
            wallet_settings.mark_reload_due(org_id)
        if not refusal.already_paused and wallet_settings.mark_paused(org_id, now):
            from conduix.accounts import notices, orgs  # rare path: keep it off the cold start

            org = orgs.get_org(org_id)
            notices.account_paused(org, format_credits(wallets.get_wallet(org_id).available))
    except Exception:
        log.exception("could not record the pause", extra={"org_id": org_id})
