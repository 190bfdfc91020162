"""One hot org: 500 requests in flight at once. Holds are items of their own, so no item grows
with the org's concurrency; the hold's condition still never lets the org overdraw."""

from __future__ import annotations

import dataclasses
import random
import threading
import time
from datetime import UTC, datetime, timedelta

import pytest
from conduix.accounts import notices
from conduix.api import billing
from conduix.audit import reconcile
from conduix.core import bodies, errors
from conduix.core.bodies import parse
from conduix.core.config import settings
from conduix.core.money import NANOS_PER_CREDIT as C
from conduix.inference import sweeper
from conduix.ledger import (
    holds,
    key_limits,
    lease_folds,
    lease_store,
    leases,
    metering,
    rate_windows,
    settles,
    wallet_settings,
    wallets,
)
from conduix.pricing import plans
from conduix.store import dynamo, schema
from conduix_local.dynamo_standin import item_key
from conduix_local.moto_server import LockedMotoServer

from bench.meter import item_size
from tests.integration.helpers import NOW, acting_as, assert_consistent, fund, ledger_items

pytestmark = pytest.mark.integration

IN_FLIGHT = 500


def test_500_requests_in_flight_keep_every_item_small_and_never_overdraw(org: str) -> None:
    # Given an org on the plan with the most requests per minute, with credit for 450 holds
    wallet_settings.set_plan(org, plans.get("scale"))
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
            holds.reserve(org, rid, C, model="acme/fast", key_id="key_1", now=NOW)
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
            usage = metering.Usage("acme/fast", "key_1", 10, 20, costs[i])
            try:
                outcomes.append(settles.settle(org, rid, C, usage, NOW))
            except errors.ServiceBusy:
                settles.record_pending(org, rid, C, usage, NOW)
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
        ExpressionAttributeValues={":pk": {"S": schema.org_pk(org)}},
        ConsistentRead=True,
    )["Items"]
    # (a hold whose answer was lost and whose retries then all conflicted is open but unused:
    # HoldSweeper releases it when it expires)
    org_holds = [i for i in items if i["sk"]["S"].startswith("HOLD#")]
    assert len(placed) <= len(org_holds) <= 450
    assert max(item_size(i) for i in items) <= 2048
    assert not any("expires_at" in i for i in items if i["sk"]["S"].startswith("HOLD#"))  # the TTL's
    w = assert_consistent(org)
    assert (w.held, w.available, w.hold_count) == (
        len(org_holds) * C,
        (450 - len(org_holds)) * C,
        len(org_holds),
    )

    # And every settle lands exactly, with nothing overdrawn
    settle_now.set()
    for t in threads:
        t.join()
    assert len(outcomes) == len(placed)
    # (already settled: a retry after an answer lost in the queue found its own entry)
    assert set(outcomes) <= {settles.SettleOutcome.SETTLED, settles.SettleOutcome.ALREADY_SETTLED, "deferred"}
    # (a hold whose first attempt sat in the store's queue past the client's timeout lands
    # after its request gave up: open, unused, released by HoldSweeper when it expires)
    strays = [h for h in holds.open_holds(org) if h.request_id not in set(placed)]
    swept = sweeper.sweep(NOW + timedelta(minutes=10))
    # (a deferred settle whose first attempt had landed after all is dropped, not billed twice)
    assert swept["pending_settled"] <= outcomes.count("deferred") and settles.pending_settles(org) == []
    assert swept["holds_released"] == len(strays)
    w = assert_consistent(org)
    spent = sum(costs[int(rid.split("-")[1])] for rid in placed)
    assert (w.balance, w.held, w.available) == (450 * C - spent, 0, 450 * C - spent)
    assert len([i for i in ledger_items(org) if i["entry_type"]["S"] == "usage"]) == len(placed)


def test_500_requests_in_flight_through_escrow_leases_are_all_served_and_billed_exactly(org: str) -> None:
    # Given a hot org (requests already in flight) with plenty of credit
    wallet_settings.set_plan(org, plans.get("scale"))
    fund(org, "2000")
    warm = [holds.reserve(org, f"warm-{i}", C, model="acme/fast", key_id="key_1", now=NOW) for i in range(8)]
    for i, _ in enumerate(warm):
        holds.release(org, f"warm-{i}", C)
    wallets.forget_views()
    for i in range(8):  # the environment has seen them in flight
        holds.reserve(org, f"seen-{i}", C, model="acme/fast", key_id="key_1", now=NOW)
    served: list[str] = []
    failed: list[BaseException] = []
    reserved = threading.Barrier(IN_FLIGHT + 1)
    settle_now = threading.Event()
    lock = threading.Lock()
    rng = random.Random(15)
    costs = [rng.randint(0, C) for _ in range(IN_FLIGHT)]

    def request(i: int) -> None:
        rid = f"req-{i:03d}"
        try:
            reservation = leases.reserve(org, rid, C, model="acme/fast", key_id="key_1", now=NOW)
        except BaseException as exc:
            with lock:
                failed.append(exc)
            reserved.wait()
            return
        reserved.wait()
        settle_now.wait()
        usage = metering.Usage("acme/fast", "key_1", 10, 20, costs[i])
        try:
            outcome = leases.settle(org, rid, reservation, usage, NOW)
            assert outcome in (settles.SettleOutcome.SETTLED, settles.SettleOutcome.ALREADY_SETTLED)
        except errors.ServiceBusy:  # as Completion does: kept, and charged by HoldSweeper
            lease_id = reservation.lease.lease_id if reservation.lease else ""
            settles.record_pending(org, rid, C, usage, NOW, lease_id=lease_id)
        with lock:
            served.append(rid)

    # When 500 requests are in flight at once
    threads = [threading.Thread(target=request, args=(i,)) for i in range(IN_FLIGHT)]
    for t in threads:
        t.start()
    reserved.wait(timeout=600)

    # Then none was refused or turned away busy, and every item stays small
    assert failed == []
    items = dynamo.client().query(
        TableName=settings().billing_table,
        KeyConditionExpression="pk = :pk",
        ExpressionAttributeValues={":pk": {"S": schema.org_pk(org)}},
        ConsistentRead=True,
    )["Items"]
    assert max(item_size(i) for i in items) <= 2048
    w = wallets.get_wallet(org)
    assert w.lease_count >= 1 and w.available >= 0
    assert w.held >= (IN_FLIGHT + 8) * C  # every request in flight is covered by a hold or a slice

    # And once they are billed and the leases folded (by their environment, or HoldSweeper
    # once they expire), the wallet is exactly the ledger's replay
    settle_now.set()
    for t in threads:
        t.join()
    assert failed == [] and len(served) == IN_FLIGHT
    # The stand-in meters write units per second: let the burst's second end before the clean-up
    # writes to the org's partition (on a loaded machine its 500 bills land in the same second).
    time.sleep(1.1)
    leases.close_all(NOW)
    for i in range(8):
        holds.release(org, f"seen-{i}", C)
    result = sweeper.sweep(NOW + timedelta(minutes=5))
    assert result["holds_released"] == 0
    w = assert_consistent(org)
    spent = sum(costs)
    assert (w.balance, w.held, w.available, w.lease_count) == (2000 * C - spent, 0, 2000 * C - spent, 0)
    assert len([i for i in ledger_items(org) if i["entry_type"]["S"] == "usage"]) == IN_FLIGHT
    assert ledger_items(org, "LEASE#") == []  # folded (spend records stay as history, with a TTL)
    assert reconcile.reconcile_org(org) == []


def test_holds_that_keep_colliding_make_the_org_hot_in_this_environment(
    org: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a well-funded org whose wallet this environment sees with nothing in flight (each
    # environment's view counts only its own holds), while others' holds keep it busy
    wallet_settings.set_plan(org, plans.get("scale"))
    fund(org, "2000")
    real, tried = holds.reserve, []

    def busy_once(*args: object, **kwargs: object) -> holds.Reservation:
        tried.append(args[1])
        if len(tried) == 1:
            raise errors.ServiceBusy("The billing store is busy; please retry the request.")
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(holds, "reserve", busy_once)
    # When a hold cannot land for contention, the request is served from a lease instead of a 503
    first = leases.reserve(org, "r1", C, model="acme/fast", key_id="key_1", now=NOW)
    assert first.lease is not None and tried == ["r1"]
    # and the org stays hot here: the next request takes no hold at all
    second = leases.reserve(org, "r2", C, model="acme/fast", key_id="key_1", now=NOW)
    assert second.lease is first.lease and tried == ["r1"]
    for rid, reservation in (("r1", first), ("r2", second)):
        usage = metering.Usage("acme/fast", "key_1", 1, 1, C // 2)
        assert leases.settle(org, rid, reservation, usage, NOW) is settles.SettleOutcome.SETTLED
    leases.close_all(NOW)
    w = assert_consistent(org)
    assert (w.balance, w.held, w.lease_count) == (2000 * C - C, 0, 0)
    assert reconcile.reconcile_org(org) == []


def test_an_org_that_may_not_lease_still_gets_the_busy_answer(
    org: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    fund(org, "2000")
    wallet_settings.set_billing_mode(org, "invoice")  # invoiced orgs take per-request holds

    def busy(*args: object, **kwargs: object) -> holds.Reservation:
        raise errors.ServiceBusy("The billing store is busy; please retry the request.")

    monkeypatch.setattr(holds, "reserve", busy)
    with pytest.raises(errors.ServiceBusy):
        leases.reserve(org, "r1", C, model="acme/fast", key_id="key_1", now=NOW)
    assert wallets.get_wallet(org).lease_count == 0


def _hot(org: str) -> None:
    """A well-funded org this environment already knows is hot (a hold collided here)."""
    wallet_settings.set_plan(org, plans.get("scale"))
    fund(org, "2000")
    leases._contended_until[org] = float("inf")


def _counted(org: str, key_id: str, at: datetime) -> int:
    """The key's requests counted in the minute of `at` (its `RPM#<key>@<minute>` item)."""
    return rate_windows.counted(org, key_id, int(at.timestamp()) // 60)


def _serve(org: str, rid: str, at: object, key_id: str = "key_1") -> leases.Reservation:
    reservation = leases.reserve(org, rid, C, model="acme/fast", key_id=key_id, now=at)  # type: ignore[arg-type]
    usage = metering.Usage("acme/fast", key_id, 1, 1, C // 2)
    assert leases.settle(org, rid, reservation, usage, at) is settles.SettleOutcome.SETTLED  # type: ignore[arg-type]
    return reservation


def test_a_keys_block_outlives_the_minute_it_was_taken_in_and_counts_there(org: str) -> None:
    # Given a lease and a block of key_1's requests taken two seconds before the minute turns
    _hot(org)
    late = NOW + timedelta(seconds=58)
    first = _serve(org, "r1", late)
    assert first.lease is not None
    assert _counted(org, "key_1", late) == leases.BLOCK_FIRST  # the block, counted at once
    # When the minute turns, the same block and lease keep serving (no renewal at its edge)
    after = late + timedelta(seconds=10)
    second = _serve(org, "r2", after)
    assert second.lease is first.lease
    assert _counted(org, "key_1", after) == 0  # its requests counted where it was taken
    # And the next block, sized by the last one's rate (2 in 10 s, over 15 s with headroom: 5),
    # counts in the new minute; what it did not use is given back when the environment stops
    third = _serve(org, "r3", after + timedelta(seconds=1))
    assert third.lease is first.lease
    assert _counted(org, "key_1", after) == 5
    leases.close_all(after + timedelta(seconds=2))
    assert _counted(org, "key_1", after) == 1
    assert _counted(org, "key_1", late) == leases.BLOCK_FIRST
    w = assert_consistent(org)
    assert (w.balance, w.held, w.lease_count) == (2000 * C - 3 * (C // 2), 0, 0)
    assert reconcile.reconcile_org(org) == []


def test_one_lease_serves_every_key_of_a_hot_org_and_each_key_counts_its_own_minute(org: str) -> None:
    # Given a hot org whose traffic is spread over 40 keys
    _hot(org)
    served = [_serve(org, f"r{i}", NOW, key_id=f"key_{i % 40}") for i in range(80)]
    # Then one lease serves them all: the wallet is written once, not once a key
    lease = served[0].lease
    assert lease is not None and all(r.lease is lease for r in served[:16])
    assert wallets.get_wallet(org).lease_count == 1
    assert lease.key_id == "" and not lease.budget
    # and each key's block is on an item of that key's minute only
    for k in range(40):
        assert _counted(org, f"key_{k}", NOW) == leases.BLOCK_FIRST
    leases.close_all(NOW)
    w = assert_consistent(org)
    assert (w.balance, w.held, w.lease_count) == (2000 * C - 80 * (C // 2), 0, 0)
    assert reconcile.reconcile_org(org) == []


def test_a_lease_is_sized_by_what_the_environment_served_under_its_last(org: str) -> None:
    _hot(org)
    # The first lease of an org is small
    first = _serve(org, "r0", NOW)
    assert first.lease is not None and first.lease.requests == leases.FIRST_LEASE_REQUESTS
    for i in range(1, leases.FIRST_LEASE_REQUESTS):
        assert _serve(org, f"r{i}", NOW).lease is first.lease
    # one used up at once asks for its rate over a whole lease: 16 in under a second, with
    # headroom, over 30 s
    second = _serve(org, "r-next", NOW)
    assert second.lease is not None and second.lease.requests == 720
    # the slice follows the requests, at most 1/16 of the credit available (2,000 less the first
    # lease's 16 still held: it is folded once the new one is taken)
    assert second.lease.amount == min(720 * C, (2000 - 16) * C // leases.SLICE_FRACTION) == 124 * C
    # and one that served little over its whole time gives the smallest again
    later = NOW + timedelta(seconds=settings().key_cache_seconds + 1)
    third = _serve(org, "r-later", later)
    assert third.lease is not None and third.lease.requests == leases.FIRST_LEASE_REQUESTS
    leases.close_all(later)
    w = assert_consistent(org)
    assert (w.balance, w.held, w.lease_count) == (2000 * C - 18 * (C // 2), 0, 0)
    # The key's blocks were sized the same way, over 15 s, from 2 (2, then 45, then 11 for 15
    # served in 31 s); what they did not use was given back within the minute: it counts the 18
    assert _counted(org, "key_1", NOW) == 18


def test_a_hot_org_whose_lease_cannot_land_is_answered_busy_without_a_hold(
    org: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a hot org whose environment holds a spent lease
    _hot(org)
    spent = _serve(org, "r1", NOW)
    assert spent.lease is not None
    later = NOW + timedelta(seconds=settings().key_cache_seconds + 1)
    holds_tried: list[object] = []
    monkeypatch.setattr(holds, "reserve", lambda *a, **k: holds_tried.append(a))

    def busy(*args: object, **kwargs: object) -> None:
        raise errors.ServiceBusy("The billing store is busy; please retry the request.")

    monkeypatch.setattr(leases, "acquire", busy)
    # When its next lease cannot land for contention, the request is answered busy, and no
    # per-request hold adds to the wallet's contention
    with pytest.raises(errors.ServiceBusy):
        leases.reserve(org, "r2", C, model="acme/fast", key_id="key_1", now=later)
    assert holds_tried == []
    # while the spent lease is still folded back
    w = assert_consistent(org)
    assert (w.balance, w.held, w.lease_count) == (2000 * C - C // 2, 0, 0)


def test_a_block_takes_no_more_of_a_keys_minute_than_the_wallets_own_rate_limit(org: str) -> None:
    # Given a key limited to 32 requests a minute by the wallet (a custom limit: the plan's
    # catalog entry says 60), 30 of them held this minute (the org is hot)
    wallet_settings.set_plan(org, dataclasses.replace(plans.get(plans.FREE), requests_per_minute=32))
    fund(org, "100")
    for i in range(30):
        holds.reserve(org, f"h-{i}", C // 100, model="acme/fast", key_id="key_1", now=NOW)
    assert _counted(org, "key_1", NOW) == 30
    # When requests come through a lease: a block takes 2 of the minute (32 // 16), no more
    first = leases.reserve(org, "r-1", C // 100, model="acme/fast", key_id="key_1", now=NOW)
    assert first.lease is not None and _counted(org, "key_1", NOW) == 32
    second = leases.reserve(org, "r-2", C // 100, model="acme/fast", key_id="key_1", now=NOW)
    assert second.lease is first.lease
    # Then the 33rd request of the minute is refused, as a hold would be
    with pytest.raises(errors.RateLimited):
        leases.reserve(org, "r-3", C // 100, model="acme/fast", key_id="key_1", now=NOW)
    assert _counted(org, "key_1", NOW) == 32
    # while the org's other keys are served from the same lease
    other = leases.reserve(org, "r-4", C // 100, model="acme/fast", key_id="key_2", now=NOW)
    assert other.lease is first.lease


def test_a_block_takes_the_last_of_a_keys_minute_and_a_full_minute_refuses_without_the_wallet(
    org: str,
) -> None:
    # Given a hot org whose key has 31 of its 32 requests this minute counted
    wallet_settings.set_plan(org, dataclasses.replace(plans.get(plans.FREE), requests_per_minute=32))
    fund(org, "100")
    for i in range(31):
        holds.reserve(org, f"h-{i}", C // 100, model="acme/fast", key_id="key_1", now=NOW)
    # When a leased request needs a block of 2: it gets the one left
    first = leases.reserve(org, "r-1", C // 100, model="acme/fast", key_id="key_1", now=NOW)
    assert first.lease is not None and _counted(org, "key_1", NOW) == 32
    # Then the next is refused for the rate, and the wallet is not written for it
    before = wallets.wallet_item(org)
    with pytest.raises(errors.RateLimited):
        leases.reserve(org, "r-2", C // 100, model="acme/fast", key_id="key_1", now=NOW)
    assert wallets.wallet_item(org) == before
    assert _counted(org, "key_1", NOW) == 32


def test_a_key_revoked_while_its_org_holds_a_lease_is_refused_once_the_view_knows(org: str) -> None:
    _hot(org)
    first = _serve(org, "r1", NOW)
    assert first.lease is not None
    wallets.note_revoked_key(org, "key_1", NOW)
    wallets.forget_view(org)  # (a view lives key_cache_seconds, as a cached key does)
    with pytest.raises(errors.Unauthenticated):
        leases.reserve(org, "r2", C, model="acme/fast", key_id="key_1", now=NOW)
    assert _serve(org, "r3", NOW, key_id="key_2").lease is first.lease  # the others still lease
    leases.close_all(NOW)
    w = assert_consistent(org)
    assert (w.balance, w.held, w.lease_count) == (2000 * C - 2 * (C // 2), 0, 0)


A = C // 100  # a request's hold in the lease tests below


def _leased(org: str, requests: int, prefix: str = "r") -> list[leases.Reservation]:
    """`requests` of a hot org (Scale plan, 100 credits) reserved against this environment's
    lease of key_1: others' holds in flight made the org hot, and are released once it is taken."""
    wallet_settings.set_plan(org, plans.get("scale"))
    fund(org, "100")
    for i in range(leases.HOT_IN_FLIGHT):
        holds.reserve(org, f"h-{i}", A, model="acme/fast", key_id="key_1", now=NOW)
    served = [
        leases.reserve(org, f"{prefix}-{i}", A, model="acme/fast", key_id="key_1", now=NOW)
        for i in range(requests)
    ]
    for i in range(leases.HOT_IN_FLIGHT):
        holds.release(org, f"h-{i}", A)
    lease = served[0].lease
    assert lease is not None and all(r.lease is lease for r in served)
    return served


def test_a_lease_spend_refused_after_its_lease_was_folded_is_still_charged_once(org: str) -> None:
    # Given a hot org's request reserved against a lease, and nothing else in flight
    (slow,) = _leased(org, 1, "slow")
    assert slow.lease is not None
    # When the request outlives its lease: HoldSweeper folds the expired lease (the wallet is
    # idle and leaves the sweep index), and the request's spend is refused and kept as a
    # deferred settle, as Completion does
    later = datetime.fromtimestamp(slow.lease.expires_at + lease_folds.FOLD_SKEW_SECONDS, UTC)
    assert sweeper.sweep(later)["leases_folded"] == 1
    usage = metering.Usage("acme/fast", "key_1", 10, 20, C // 200)
    with pytest.raises(errors.Conflict):
        leases.settle(org, "slow", slow, usage, later)
    settles.record_pending(org, "slow", slow.hold_nanos, usage, later, lease_id=slow.lease.lease_id)
    # Then HoldSweeper still finds it, and charges it exactly once
    assert sweeper.sweep(later + timedelta(minutes=1))["pending_settled"] == 1
    assert sweeper.sweep(later + timedelta(minutes=2))["pending_settled"] == 0
    w = assert_consistent(org)
    assert (w.balance, w.held, w.lease_count) == (100 * C - C // 200, 0, 0)
    assert [i["entry_id"]["S"] for i in ledger_items(org) if i["entry_type"]["S"] == "usage"] == [
        "usage:slow"
    ]
    assert reconcile.reconcile_org(org) == []


def test_a_lease_spend_that_cannot_land_is_paid_from_its_slice_and_never_overdraws(
    org: str, moto_server: LockedMotoServer
) -> None:
    # Given a hot org's lease of 16 requests, all reserved (its slice is 16 of their holds)
    a = A
    first = _leased(org, 16)
    lease = first[0].lease
    assert lease is not None and lease.amount == 16 * a
    # When the first request's spend is throttled past every retry (its item over capacity) and
    # is kept as a deferred settle, as Completion does
    usage = metering.Usage("acme/fast", "key_1", 10, 20, a)
    spend = item_key(settings().billing_table, lease_store.spend_key(org, lease.lease_id, "r-0"))
    moto_server.standin.throttle_next(6, [spend])  # as often as `retrying` tries
    try:
        with pytest.raises(errors.ServiceBusy):
            leases.settle(org, "r-0", first[0], usage, NOW)
    finally:
        moto_server.standin.throttle_next(0)
    settles.record_pending(org, "r-0", a, usage, NOW, lease_id=lease.lease_id)
    # Then its share of the slice is not handed to the next request: that one takes a new lease
    after = leases.reserve(org, "r-16", a, model="acme/fast", key_id="key_1", now=NOW)
    assert after.lease is not None and after.lease is not lease
    # and when everything else the org has is held and spent, and the others are billed
    big = wallets.get_wallet(org).available
    holds.reserve(org, "big", big, model="acme/fast", key_id="key_2", now=NOW)
    settles.settle(org, "big", big, metering.Usage("acme/fast", "key_2", 1, 1, big), NOW)
    for i, r in enumerate([*first[1:], after], start=1):
        leases.settle(org, f"r-{i}", r, dataclasses.replace(usage, key_id="key_1"), NOW)
    leases.close_all(NOW)
    # HoldSweeper writes the deferred spend into its lease and folds it: the slice pays for it
    later = datetime.fromtimestamp(lease.expires_at + lease_folds.FOLD_SKEW_SECONDS, UTC)
    with acting_as("HoldSweeperFunction", moto_server):  # under its own IAM policy
        swept = sweeper.sweep(later)
    assert (swept["pending_settled"], swept["leases_folded"], swept["served_unbilled"]) == (1, 1, 0)
    w = assert_consistent(org)
    assert (w.balance, w.available, w.held) == (100 * C - big - 17 * a, 100 * C - big - 17 * a, 0)
    assert w.available >= 0
    usage_entries = [i["entry_id"]["S"] for i in ledger_items(org) if i["entry_type"]["S"] == "usage"]
    assert sorted(usage_entries) == sorted(["usage:big", *(f"usage:r-{i}" for i in range(17))])
    assert reconcile.reconcile_org(org) == []


def test_a_lease_spend_that_outlived_its_lease_is_charged_only_from_credit_nobody_holds(
    org: str, moto_server: LockedMotoServer
) -> None:
    # Given a lease folded without a request's spend (its environment stalled past the expiry)
    a = A
    (slow,) = _leased(org, 1, "slow")
    assert slow.lease is not None
    later = datetime.fromtimestamp(slow.lease.expires_at + lease_folds.FOLD_SKEW_SECONDS, UTC)
    assert sweeper.sweep(later)["leases_folded"] == 1
    usage = metering.Usage("acme/fast", "key_1", 10, 20, a)
    with pytest.raises(errors.Conflict):
        leases.settle(org, "slow", slow, usage, later)
    settles.record_pending(org, "slow", a, usage, later, lease_id=slow.lease.lease_id)
    # When all the org's credit is held by others before HoldSweeper comes
    holds.reserve(org, "all", 100 * C, model="acme/fast", key_id="key_2", now=later)
    # Then the request stays unbilled (an incident), and the wallet is not overdrawn
    with acting_as("HoldSweeperFunction", moto_server):
        swept = sweeper.sweep(later + timedelta(seconds=1))
    assert (swept["pending_settled"], swept["served_unbilled"]) == (0, 1)
    assert settles.pending_settles(org) == []
    w = assert_consistent(org)
    assert (w.balance, w.held, w.available) == (100 * C, 100 * C, 0)
    assert [i for i in ledger_items(org) if i["entry_type"]["S"] == "usage"] == []


def test_a_hot_org_with_a_balance_alert_is_leased_and_alerted_once_after_the_fold(org: str) -> None:
    # Given a hot org with a balance alert at 99.9 credits, from 100
    wallet_settings.set_plan(org, plans.get("scale"))
    fund(org, "100")
    billing.set_alerts(org, parse(bodies.AlertsRequest, {"balance_below": ["99.9"]}))
    a = C // 100
    for i in range(leases.HOT_IN_FLIGHT):
        holds.reserve(org, f"h-{i}", a, model="acme/fast", key_id="key_1", now=NOW)
    # When 16 of its requests are served from one lease and billed, and the lease is folded
    served = [leases.reserve(org, f"r-{i}", a, model="acme/fast", key_id="key_1", now=NOW) for i in range(16)]
    assert all(r.lease is not None and r.lease is served[0].lease for r in served)
    for i in range(leases.HOT_IN_FLIGHT):
        holds.release(org, f"h-{i}", a)
    for i, r in enumerate(served):
        leases.settle(org, f"r-{i}", r, metering.Usage("acme/fast", "key_1", 10, 20, a), NOW)
    leases.close_all(NOW)
    assert wallets.get_wallet(org).balance == 100 * C - 16 * a  # past the threshold now
    assert [n for n in notices.recent(org, 10) if n["type"] == "balance_below"] == []
    # Then HoldSweeper's next run sends the alert, and later runs do not send it again
    sweeper.sweep(NOW + timedelta(minutes=1))
    sweeper.sweep(NOW + timedelta(minutes=2))
    emails = [n for n in notices.recent(org, 10) if n["type"] == "balance_below"]
    assert len(emails) == 1 and "99.9" in str(emails[0]["subject"])
    assert_consistent(org)


def test_a_hot_orgs_key_with_a_spend_limit_leases_from_its_budget_and_never_passes_it(org: str) -> None:
    # Given a hot org whose key has a daily spend limit of 3 credits
    wallet_settings.set_plan(org, plans.get("scale"))
    fund(org, "100")
    a = C // 100
    key_limits.set_key_limit(org, "key_1", 3 * C, "day", 0, NOW)
    for i in range(leases.HOT_IN_FLIGHT):
        holds.reserve(org, f"h-{i}", a, model="acme/fast", key_id="key_2", now=NOW)
    # When its requests come: the first lease's slice (16 holds) is held against the budget too
    first = leases.reserve(org, "r-0", a, model="acme/fast", key_id="key_1", now=NOW)
    lease = first.lease
    assert lease is not None and lease.budget and lease.amount == 16 * a
    budget = key_limits.key_budget(org, "key_1")
    assert budget is not None and (budget.held, budget.room) == (16 * a, 3 * C - 16 * a)
    assert reconcile.reconcile_org(org) == []  # (its held = open holds and leases of the key)
    # and once it is spent and folded, the budget counts what its requests cost
    served = [first] + [
        leases.reserve(org, f"r-{i}", a, model="acme/fast", key_id="key_1", now=NOW) for i in range(1, 16)
    ]
    assert all(r.lease is lease for r in served)
    for i, r in enumerate(served):
        leases.settle(org, f"r-{i}", r, metering.Usage("acme/fast", "key_1", 1, 1, a // 2), NOW)
    leases.close_all(NOW)
    budget = key_limits.key_budget(org, "key_1")
    assert budget is not None and (budget.spent, budget.held, budget.room) == (8 * a, 0, 3 * C - 8 * a)
    # Then, with less room left than 16 of the next slices, requests of 0.1 credit hold against
    # the budget one by one, and the one past the limit is refused exactly
    b = C // 10
    for i in range((3 * C - 8 * a) // b):
        r = leases.reserve(org, f"s-{i}", b, model="acme/fast", key_id="key_1", now=NOW)
        assert r.lease is None and r.budget_key == "key_1"
    with pytest.raises(errors.KeySpendLimitExceeded):
        leases.reserve(org, "over", b, model="acme/fast", key_id="key_1", now=NOW)
    assert_consistent(org)
    assert reconcile.reconcile_org(org) == []


def test_racing_blocks_and_holds_of_one_key_never_count_past_its_minute(org: str) -> None:
    # Given a key of 64 requests a minute, and 12 environments taking blocks of 5 of it while
    # holds of the same key race them
    limit = 64
    minute = int(NOW.timestamp()) // 60
    fund(org, "10")
    wallet_settings.set_plan(org, dataclasses.replace(plans.get(plans.FREE), requests_per_minute=limit))
    granted: list[int] = []
    held: list[str] = []
    lock = threading.Lock()
    start = threading.Barrier(16)

    def block() -> None:
        start.wait()
        for _ in range(3):
            try:
                got = rate_windows.take_block(org, "key_1", minute, 5, limit)
            except errors.ServiceBusy:
                continue
            with lock:
                granted.append(got)

    def hold(i: int) -> None:
        start.wait()
        try:
            holds.reserve(org, f"h-{i}", C // 100, model="acme/fast", key_id="key_1", now=NOW)
        except (errors.RateLimited, errors.ServiceBusy):
            return
        with lock:
            held.append(f"h-{i}")

    threads = [threading.Thread(target=block) for _ in range(12)]
    threads += [threading.Thread(target=hold, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # Then the minute counts exactly what was granted and held: all of it (12 x 3 x 5 were
    # asked, more than it has; the last blocks took what was left), and no more
    counted = _counted(org, "key_1", NOW)
    assert counted == sum(granted) + len(held) == limit
    assert rate_windows.take_block(org, "key_1", minute, 5, limit) == 0
