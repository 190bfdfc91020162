"""Faults on the money path: contention and throttling are retried without double debits,
a response lost after a commit is recognised, a dead request's hold is swept, and a failing
cache table only costs the cache."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from botocore.exceptions import ClientError, ConnectionClosedError
from conduix.accounts.auth import Principal
from conduix.core.money import NANOS_PER_CREDIT as C
from conduix.core.money import format_credits
from conduix.inference import answers, completion, sweeper
from conduix.ledger import entries, holds, metering, settles, wallet_settings
from conduix.pricing import catalog
from conduix.store import dynamo
from conduix_local.upstream import FakeUpstream

from tests.integration.helpers import NOW, assert_consistent, fund, ledger_items

pytestmark = pytest.mark.integration


class Faults:
    """Fails chosen DynamoDB calls through botocore's event hooks, as the service would."""

    def __init__(self) -> None:
        self.plan: dict[str, list[str]] = {}  # operation -> faults to inject, in order
        self.calls: dict[str, int] = {}

    def fail(self, operation: str, *faults: str) -> None:
        self.plan.setdefault(operation, []).extend(faults)

    @staticmethod
    def operation(model: Any, params: dict[str, Any]) -> str:
        """The call's name; a hold and a release are transactions, named apart from settles."""
        body = params.get("body") or b"{}"
        actions = json.loads(body).get("TransactItems") or [] if model.name == "TransactWriteItems" else []
        if model.name == "TransactWriteItems" and len(actions) >= 2:
            kinds = [next(iter(a)) for a in actions]
            # (a hold: the wallet, the hold, the key's rate window, perhaps its budget)
            first, second = actions[0], actions[1]
            if kinds[:2] == ["Update", "Put"] and second["Put"]["Item"]["sk"]["S"].startswith("HOLD#"):
                return "Reserve"
            if kinds[:2] == ["Delete", "Update"] and first["Delete"]["Key"]["sk"]["S"].startswith("HOLD#"):
                return "Release"
        return str(model.name)

    def before(self, model: Any, params: dict[str, Any], context: dict[str, Any], **_: Any) -> None:
        name = context["fault_operation"] = self.operation(model, params)
        self.calls[name] = self.calls.get(name, 0) + 1
        faults = self.plan.get(name)
        if not faults or faults[0] == "lost-response":
            return
        fault = faults.pop(0)
        if fault == "TransactionConflict":
            n = len(params.get("TransactItems", []))
            raise ClientError(
                {
                    "Error": {"Code": "TransactionCanceledException", "Message": "conflict"},
                    "CancellationReasons": [{"Code": "TransactionConflict"}] + [{"Code": "None"}] * (n - 1),
                },
                model.name,
            )
        raise ClientError({"Error": {"Code": fault, "Message": "injected"}}, model.name)

    def after(self, model: Any, context: dict[str, Any], **_: Any) -> None:
        faults = self.plan.get(context.get("fault_operation", model.name))
        if faults and faults[0] == "lost-response":
            faults.pop(0)  # the write happened; its answer is lost on the way back
            raise ConnectionClosedError(endpoint_url="moto")


@pytest.fixture
def faults(tables: dict[str, str]) -> Iterator[Faults]:
    injected = Faults()
    events = dynamo.client().meta.events
    events.register("before-call.dynamodb", injected.before, unique_id="faults-before")
    events.register("after-call.dynamodb", injected.after, unique_id="faults-after")
    yield injected
    events.unregister("before-call.dynamodb", unique_id="faults-before")
    events.unregister("after-call.dynamodb", unique_id="faults-after")


def usage(cost: int) -> metering.Usage:
    return metering.Usage("m", "k", 1, 1, cost)


def test_throttled_reserve_is_retried_and_holds_once(org: str, faults: Faults) -> None:
    fund(org, "5")
    faults.fail("Reserve", "ThrottlingException", "ProvisionedThroughputExceededException")
    holds.reserve(org, "a", 2 * C, model="m", key_id="k", now=NOW)
    assert assert_consistent(org).held == 2 * C


def test_a_hold_whose_answer_was_lost_is_recognised_not_doubled(org: str, faults: Faults) -> None:
    fund(org, "5")
    faults.fail("Reserve", "lost-response")
    reservation = holds.reserve(org, "a", 2 * C, model="m", key_id="k", now=NOW)
    assert reservation.wallet.held == 2 * C
    assert assert_consistent(org).held == 2 * C


def test_settle_conflicts_are_retried_without_a_double_debit(org: str, faults: Faults) -> None:
    fund(org, "5")
    holds.reserve(org, "a", 2 * C, model="m", key_id="k", now=NOW)
    faults.fail("TransactWriteItems", "TransactionConflict", "TransactionConflict", "ThrottlingException")
    assert settles.settle(org, "a", 2 * C, usage(C), NOW) is settles.SettleOutcome.SETTLED
    w = assert_consistent(org)
    assert (w.balance, w.held) == (4 * C, 0)


def test_a_settle_whose_answer_was_lost_is_not_billed_twice(org: str, faults: Faults) -> None:
    fund(org, "5")
    holds.reserve(org, "a", 2 * C, model="m", key_id="k", now=NOW)
    faults.calls.clear()
    faults.fail("TransactWriteItems", "lost-response")
    # The retry finds its own entry already written, and knows the debit happened.
    assert settles.settle(org, "a", 2 * C, usage(C), NOW) is settles.SettleOutcome.ALREADY_SETTLED
    assert faults.calls["TransactWriteItems"] == 2
    assert assert_consistent(org).balance == 4 * C
    assert len([i for i in ledger_items(org) if i["entry_type"]["S"] == "usage"]) == 1


def test_a_credit_whose_answer_was_lost_is_still_this_call_s_credit(org: str, faults: Faults) -> None:
    fund(org, "5")
    faults.calls.clear()
    faults.fail("TransactWriteItems", "lost-response")
    # The retry finds the marker its own first attempt wrote: created, credited once.
    entry, created = entries.post_entry(org, kind="grant", key="g1", amount=3 * C, description="g", now=NOW)
    assert created and entry.amount == 3 * C
    assert faults.calls["TransactWriteItems"] == 2
    assert assert_consistent(org).balance == 8 * C
    # Another call with the same key is the duplicate it is.
    assert entries.post_entry(org, kind="grant", key="g1", amount=3 * C, description="g", now=NOW)[1] is False
    assert assert_consistent(org).balance == 8 * C


def test_contention_that_never_clears_is_a_clean_busy_error(org: str, faults: Faults) -> None:
    from conduix.core.errors import ServiceBusy

    fund(org, "5")
    holds.reserve(org, "a", 2 * C, model="m", key_id="k", now=NOW)
    faults.fail("TransactWriteItems", *["TransactionConflict"] * 20)
    with pytest.raises(ServiceBusy):
        settles.settle(org, "a", 2 * C, usage(C), NOW)
    faults.plan.clear()
    w = assert_consistent(org)
    assert (w.balance, w.held) == (5 * C, 2 * C)  # nothing debited; the hold awaits settle or sweep


def test_a_request_that_died_after_its_hold_is_swept_and_costs_nothing(org: str) -> None:
    fund(org, "5")
    holds.reserve(org, "died", 2 * C, model="m", key_id="k", now=NOW)  # ...and the Lambda was killed
    assert sweeper.sweep(NOW)["holds_released"] == 0  # not expired yet
    from datetime import timedelta

    assert sweeper.sweep(NOW + timedelta(minutes=6))["holds_released"] == 1
    w = assert_consistent(org)
    assert (w.balance, w.held, w.available) == (5 * C, 0, 5 * C)


def test_a_failing_cache_table_serves_and_bills_as_a_miss(
    org: str, upstream: FakeUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    from conduix.core import config

    fund(org, "5")
    monkeypatch.setenv("CACHE_TABLE", "NoSuchTable")
    monkeypatch.setenv("OPENAI_BASE_URL", upstream.url)
    monkeypatch.setenv("OPENAI_API_KEY", "x")
    config.settings.cache_clear()
    catalog.catalog.cache_clear()
    principal = Principal(org_id=org, key_id="k", scopes=("inference",))
    body = json.dumps(
        {"model": "openai/gpt-4o-mini", "temperature": 0, "messages": [{"role": "user", "content": "hi"}]}
    ).encode()
    first = completion.serve(principal, body, "req-1", time.monotonic() + 20)
    second = completion.serve(principal, body, "req-2", time.monotonic() + 20)
    assert (first.cache_status, second.cache_status) == ("MISS", "MISS")
    assert first.cost > 0 and second.cost == first.cost
    assert upstream.calls()["total"] == 2
    assert assert_consistent(org).balance == 5 * C - 2 * first.cost


def test_stripe_down_during_auto_reload_charges_nothing_and_keeps_the_org_due(
    org: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import socket

    from conduix.accounts import orgs
    from conduix.payments import autoreload, reloads, stripe_gateway

    with socket.socket() as closed:  # a port nothing listens on: Stripe unreachable
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    monkeypatch.setenv("STRIPE_API_KEY", "sk_test_unreachable")
    monkeypatch.setenv("STRIPE_API_BASE", f"http://127.0.0.1:{port}")
    stripe_gateway.client.cache_clear()
    orgs.attach_stripe_customer(org, "cus_test")
    orgs.save_card(org, orgs.Card("pm_test", "visa", "4242", 12, 2030))
    reloads.save_settings(org, enabled=True, threshold=5 * C, amount=25 * C)
    assert wallet_settings.mark_reload_due(org)  # balance 0 < threshold 5
    try:
        assert autoreload.charge_due(NOW) == {"orgs": 1, "error": 1}
        w = assert_consistent(org)
        assert (w.balance, w.reload.due, w.reload.failures) == (0, True, 0)  # retried on the next run
    finally:
        stripe_gateway.client.cache_clear()


# ------------------------------------------------------------------ the served request under faults


def serve(org: str, request_id: str, model: str = "t/text", key: str | None = None) -> answers.Served:
    principal = Principal(org_id=org, key_id="key_1", scopes=("inference",))
    body = json.dumps({"model": model, "messages": [{"role": "user", "content": "hello"}], "max_tokens": 8})
    return completion.serve(principal, body.encode(), request_id, time.monotonic() + 20, key)


def usage_lines(org: str) -> list[tuple[str, int]]:
    return [
        (i["entry_id"]["S"], -int(i["amount"]["N"]))
        for i in ledger_items(org)
        if i["entry_type"]["S"] == "usage"
    ]


def test_a_settle_that_cannot_land_is_kept_and_settled_once_by_the_sweeper(
    org: str, served_catalog: FakeUpstream, faults: Faults
) -> None:
    fund(org, "1")
    faults.fail("TransactWriteItems", *["TransactionConflict"] * 6)  # every retry of the settle
    served = serve(org, "r1")
    assert served.cost > 0 and json.loads(served.body)["usage"]["cost"] == format_credits(served.cost)
    w = assert_consistent(org)
    assert (w.balance, len(holds.open_holds(org)), usage_lines(org)) == (
        C,
        1,
        [],
    )  # not billed yet, hold kept
    assert [p.request_id for p in settles.pending_settles(org)] == ["r1"]

    result = sweeper.sweep(NOW)
    assert (result["pending_settled"], result["holds_released"]) == (1, 0)
    assert sweeper.sweep(NOW + timedelta(minutes=10))["pending_settled"] == 0  # exactly once
    w = assert_consistent(org)
    assert (w.balance, w.held, usage_lines(org)) == (C - served.cost, 0, [("usage:r1", served.cost)])
    assert settles.pending_settles(org) == []


def test_a_deferred_settle_that_had_landed_after_all_is_not_billed_twice(
    org: str, served_catalog: FakeUpstream, faults: Faults
) -> None:
    fund(org, "1")
    # The first attempt commits but its answer is lost; every retry then conflicts.
    faults.fail("TransactWriteItems", "lost-response", *["TransactionConflict"] * 5)
    served = serve(org, "r1")
    assert [p.request_id for p in settles.pending_settles(org)] == ["r1"]
    assert sweeper.sweep(NOW)["pending_settled"] == 0  # found its ledger entry: nothing to do
    w = assert_consistent(org)
    assert (w.balance, w.held, usage_lines(org)) == (C - served.cost, 0, [("usage:r1", served.cost)])
    assert settles.pending_settles(org) == []


def test_concurrent_requests_under_conflicts_end_exact(
    org: str, served_catalog: FakeUpstream, faults: Faults
) -> None:
    import threading

    fund(org, "1")
    faults.fail("TransactWriteItems", *["TransactionConflict"] * 9)  # some settles defer, some land
    results: list[answers.Served] = []
    threads = [threading.Thread(target=lambda i=i: results.append(serve(org, f"r{i}"))) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    sweeper.sweep(NOW)
    w = assert_consistent(org)
    assert sorted(usage_lines(org)) == sorted((f"usage:r{i}", results[0].cost) for i in range(6))
    assert (w.balance, w.held) == (C - 6 * results[0].cost, 0)


def test_a_failure_after_the_settle_never_changes_the_answer(
    org: str, served_catalog: FakeUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    from conduix.accounts import orgs
    from conduix.payments import reloads

    fund(org, "1")
    orgs.attach_stripe_customer(org, "cus_test")
    orgs.save_card(org, orgs.Card("pm_test", "visa", "4242", 12, 2030))
    reloads.save_settings(org, enabled=True, threshold=2 * C, amount=25 * C)  # every settle crosses it

    def broken(org_id: str) -> bool:
        raise RuntimeError("injected")

    monkeypatch.setattr(wallet_settings, "mark_reload_due", broken)
    served = serve(org, "r1")
    assert served.cost > 0 and json.loads(served.body)["usage"]["cost"] == format_credits(served.cost)
    assert usage_lines(org) == [("usage:r1", served.cost)]
    assert assert_consistent(org).balance == C - served.cost


def test_an_idempotent_answer_survives_a_deferred_settle(
    org: str, served_catalog: FakeUpstream, faults: Faults
) -> None:
    fund(org, "1")
    faults.fail("TransactWriteItems", *["TransactionConflict"] * 6)
    first = serve(org, "r1", key="k")
    faults.plan.clear()
    again = serve(org, "r2", key="k")
    assert (again.body, again.replay_of) == (first.body, "r1")
    sweeper.sweep(NOW)
    assert usage_lines(org) == [("usage:r1", first.cost)]
    assert assert_consistent(org).balance == C - first.cost


def test_a_provider_billing_above_the_hold_under_conflicts_is_billed_once_and_reported(
    org: str, served_catalog: FakeUpstream, faults: Faults
) -> None:
    from conduix.audit import reconcile

    fund(org, "1")
    faults.fail("TransactWriteItems", "TransactionConflict", "ThrottlingException")
    served = serve(org, "r1", model="t/overbill")
    assert usage_lines(org) == [("usage:r1", served.cost)]
    assert [i["request_id"]["S"] for i in settles.over_hold_incidents(org)] == ["r1"]
    assert [d.check for d in reconcile.reconcile_org(org)] == ["charge within its hold"]


def test_a_deferred_settle_still_contended_keeps_its_expired_hold_for_the_next_run(
    org: str, served_catalog: FakeUpstream, faults: Faults
) -> None:
    from conduix.core import clock

    fund(org, "1")
    faults.fail("TransactWriteItems", *["TransactionConflict"] * 6)
    served = serve(org, "r1")
    later = clock.now() + timedelta(minutes=10)  # the hold has expired
    faults.fail("TransactWriteItems", *["TransactionConflict"] * 6)  # the sweeper's settle too
    result = sweeper.sweep(later)
    assert (result["pending_settled"], result["holds_released"]) == (0, 0)
    assert_consistent(org)
    assert len(holds.open_holds(org)) == 1  # not released: it is owed
    assert sweeper.sweep(later)["pending_settled"] == 1
    w = assert_consistent(org)
    assert (w.balance, w.held, usage_lines(org)) == (C - served.cost, 0, [("usage:r1", served.cost)])
