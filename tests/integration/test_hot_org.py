"""One hot org: 500 requests in flight at once. Holds are items of their own, so no item grows
with the org's concurrency; the hold's condition still never lets the org overdraw."""

from __future__ import annotations

import random
import threading

import pytest
from conduix import dynamo, errors, plans, sweeper, wallets
from conduix.config import settings
from conduix.money import NANOS_PER_CREDIT as C

from bench.meter import item_size
from tests.integration.helpers import NOW, assert_consistent, fund, ledger_items

pytestmark = pytest.mark.integration

IN_FLIGHT = 500


def test_500_requests_in_flight_keep_every_item_small_and_never_overdraw(org: str) -> None:
    # Given an org on the plan with the most requests per minute, with credit for 450 holds
    wallets.set_plan(org, plans.get("scale"))
    fund(org, "450")
    placed: list[str] = []
    refused: list[errors.InsufficientCredits] = []
    busy: list[errors.ServiceBusy] = []  # transaction conflicts on the wallet outlasted the retries
    reserved = threading.Barrier(IN_FLIGHT + 1)
    settle_now = threading.Event()
    lock = threading.Lock()
    rng = random.Random(14)
    costs = [rng.randint(0, C) for _ in range(IN_FLIGHT)]
    outcomes: list[object] = []

    def request(i: int) -> None:
        rid = f"req-{i:03d}"
        try:
            wallets.reserve(org, rid, C, model="acme/fast", key_id="key_1", now=NOW)
            with lock:
                placed.append(rid)
        except errors.InsufficientCredits as refusal:
            with lock:
                refused.append(refusal)
            rid = ""
        except errors.ServiceBusy as contended:
            with lock:
                busy.append(contended)
            rid = ""
        finally:
            reserved.wait()
        settle_now.wait()
        if rid:  # as Completion does: a settle that cannot land now is kept for HoldSweeper
            usage = wallets.Usage("acme/fast", "key_1", 10, 20, costs[i])
            try:
                outcomes.append(wallets.settle(org, rid, C, usage, NOW))
            except errors.ServiceBusy:
                wallets.record_pending(org, rid, C, usage, NOW)
                outcomes.append("deferred")

    # When 500 requests hold at once
    threads = [threading.Thread(target=request, args=(i,)) for i in range(IN_FLIGHT)]
    for t in threads:
        t.start()
    reserved.wait(timeout=600)

    # Then, with every hold open: at most the 450 the credit covers; a 402 only once all of it is
    # held (per-request holds all write the one wallet item, so DynamoDB's transaction conflicts
    # turn some requests away as busy: escrow leases take the wallet off that path); and no
    # item of the org larger than 2 KB
    assert len(placed) + len(refused) + len(busy) == IN_FLIGHT
    assert len(placed) <= 450
    assert all(r.available_nanos < C for r in refused)
    if refused:
        assert len(placed) == 450, "a 402 while the org still had credit"
    items = dynamo.client().query(
        TableName=settings().billing_table,
        KeyConditionExpression="pk = :pk",
        ExpressionAttributeValues={":pk": {"S": wallets.org_pk(org)}},
        ConsistentRead=True,
    )["Items"]
    assert len([i for i in items if i["sk"]["S"].startswith("HOLD#")]) == len(placed)
    assert max(item_size(i) for i in items) <= 2048
    w = assert_consistent(org)
    assert (w.held, w.available, w.hold_count) == (len(placed) * C, (450 - len(placed)) * C, len(placed))

    # And every settle lands exactly, with nothing overdrawn
    settle_now.set()
    for t in threads:
        t.join()
    assert len(outcomes) == len(placed)
    assert set(outcomes) <= {wallets.SettleOutcome.SETTLED, "deferred"}
    assert sweeper.sweep(NOW)["pending_settled"] == outcomes.count("deferred")
    w = assert_consistent(org)
    spent = sum(costs[int(rid.split("-")[1])] for rid in placed)
    assert (w.balance, w.held, w.available) == (450 * C - spent, 0, 450 * C - spent)
    assert len([i for i in ledger_items(org) if i["entry_type"]["S"] == "usage"]) == len(placed)
