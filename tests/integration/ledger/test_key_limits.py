"""Per-key spend limits: a condition on the hold's own write, so racing requests cannot pass
one; held amounts count; windows are UTC days, weeks from Monday, months, or the key's total."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

import pytest
from conduix.accounts import auth, keys
from conduix.audit import reconcile
from conduix.core import bodies, clock, errors
from conduix.core.bodies import parse
from conduix.core.money import NANOS_PER_CREDIT as C
from conduix.inference import sweeper
from conduix.ledger import holds, key_limits, metering, settles, upkeep, wallet_settings, wallets
from conduix.pricing import plans

from tests.integration.helpers import NOW, assert_consistent, fund

pytestmark = pytest.mark.integration
CENT = C // 100


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def at(monkeypatch: pytest.MonkeyPatch) -> Iterator[Clock]:
    """The time the API's own calls see (NOW is a Friday, 2026-11-27 12:00 UTC)."""
    fake = Clock()
    monkeypatch.setattr(clock, "now", fake)
    yield fake


@pytest.fixture
def two_keys(org: str) -> tuple[str, str]:
    wallet_settings.set_plan(org, plans.get("scale"))
    fund(org, "10")
    return keys.create_api_key(org, parse(bodies.ApiKeyRequest, {}))["key_id"], keys.create_api_key(
        org, parse(bodies.ApiKeyRequest, {})
    )["key_id"]


def limit(org: str, key_id: str, amount: str | None, period: str = "day") -> dict[str, Any]:
    body = {"spend_limit": None if amount is None else {"amount": amount, "period": period}}
    return keys.update_api_key(org, key_id, parse(bodies.ApiKeyUpdate, body))


def hold(org: str, key_id: str, request_id: str, amount: int, now: datetime = NOW) -> holds.Reservation:
    return holds.reserve(org, request_id, amount, model="m", key_id=key_id, now=now)


def bill(
    org: str, key_id: str, request_id: str, held: holds.Reservation, cost: int, now: datetime = NOW
) -> None:
    usage = metering.Usage("m", key_id, 1, 1, cost)
    outcome = settles.settle(org, request_id, held.hold_nanos, usage, now, budget_key=held.budget_key)
    assert outcome is settles.SettleOutcome.SETTLED


def budget(org: str, key_id: str) -> tuple[int, int, int]:
    b = key_limits.key_budget(org, key_id)
    assert b is not None
    assert b.room == b.limit - b.spent - b.held  # the identity the condition relies on
    return b.spent, b.held, b.room


def clean(org: str) -> None:
    assert_consistent(org)
    assert reconcile.reconcile_org(org) == []  # key budgets included


def test_a_key_at_its_daily_limit_is_refused_while_the_org_s_other_keys_go_on(
    org: str, two_keys: tuple[str, str], at: Clock
) -> None:
    capped, free = two_keys
    shown = limit(org, capped, "1")
    assert shown["spend_limit"] == {
        "amount": "1",
        "period": "day",
        "spent": "0",
        "in_flight": "0",
        "remaining": "1",
        "resets_at": "2026-11-28T00:00:00Z",
    }
    first = hold(org, capped, "r1", 60 * CENT)
    assert first.budget_key == capped
    bill(org, capped, "r1", first, 50 * CENT)
    assert budget(org, capped) == (50 * CENT, 0, 50 * CENT)
    # A hold counts while it is open: 0.5 spent + 0.6 asked is above 1.
    with pytest.raises(errors.KeySpendLimitExceeded) as refused:
        hold(org, capped, "r2", 60 * CENT)
    message = refused.value.message
    assert "spend limit of 1 credits per day" in message and "2026-11-28T00:00:00Z" in message
    assert (refused.value.limit_nanos, refused.value.period) == (C, "day")
    assert holds.open_holds(org) == ()  # nothing held for the refused request
    # Exactly up to the limit is allowed; the other key is not limited at all.
    hold(org, capped, "r3", 50 * CENT)
    hold(org, free, "r4", 5 * C)
    assert budget(org, capped) == (50 * CENT, 50 * CENT, 0)
    wallet = assert_consistent(org)
    assert (wallet.balance, wallet.held) == (10 * C - 50 * CENT, 550 * CENT)
    listed = {k["key_id"]: k["spend_limit"] for k in keys.list_keys(org)["data"]}
    assert listed[free] is None
    assert listed[capped] is not None
    assert (listed[capped]["spent"], listed[capped]["in_flight"], listed[capped]["remaining"]) == (
        "0.5",
        "0.5",
        "0",
    )


def test_racing_requests_of_one_key_cannot_pass_its_limit(
    org: str, two_keys: tuple[str, str], at: Clock
) -> None:
    capped, _ = two_keys
    limit(org, capped, "1")
    results: list[str] = []
    lock = threading.Lock()

    def one(i: int) -> None:
        try:
            hold(org, capped, f"race-{i}", 30 * CENT)
            outcome = "held"
        except errors.KeySpendLimitExceeded:
            outcome = "refused"
        except errors.ServiceBusy:
            outcome = "busy"  # contention that never cleared: nothing held either
        with lock:
            results.append(outcome)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    org_holds = holds.open_holds(org)
    assert results.count("held") == len(org_holds) == 3  # 3 x 0.3 fits in 1; a fourth would not
    assert results.count("refused") + results.count("busy") == 9 and results.count("refused") >= 1
    assert budget(org, capped) == (0, 90 * CENT, 10 * CENT)
    assert all(h.key_budget for h in org_holds)
    clean(org)


def test_failed_and_swept_requests_give_their_room_back_and_deferred_settles_count(
    org: str, two_keys: tuple[str, str], at: Clock
) -> None:
    capped, _ = two_keys
    limit(org, capped, "1")
    failed = hold(org, capped, "failed", 40 * CENT)
    assert holds.release(org, "failed", failed.hold_nanos, budget_key=failed.budget_key)
    hold(org, capped, "dead", 40 * CENT)  # its environment dies: HoldSweeper releases it
    deferred = hold(org, capped, "deferred", 40 * CENT)
    usage = metering.Usage("m", capped, 1, 1, 30 * CENT)
    settles.record_pending(org, "deferred", deferred.hold_nanos, usage, NOW, budget_key=deferred.budget_key)
    assert budget(org, capped) == (0, 80 * CENT, 20 * CENT)
    result = sweeper.sweep(NOW + timedelta(hours=1))
    assert (result["pending_settled"], result["holds_released"]) == (1, 1)
    assert budget(org, capped) == (30 * CENT, 0, 70 * CENT)
    clean(org)


def test_an_operator_release_of_a_stuck_hold_gives_its_room_back(
    org: str, two_keys: tuple[str, str], at: Clock
) -> None:
    capped, _ = two_keys
    limit(org, capped, "1")
    hold(org, capped, "stuck", 70 * CENT)
    upkeep.release_stuck_hold(org, "stuck", NOW)
    assert budget(org, capped) == (0, 0, C)
    clean(org)


def test_windows_turn_at_utc_midnight_and_on_monday_and_holds_carry_over(
    org: str, two_keys: tuple[str, str], at: Clock
) -> None:
    daily, weekly = two_keys
    limit(org, daily, "1")
    limit(org, weekly, "1", "week")
    for key in (daily, weekly):
        bill(org, key, f"{key}-fri", hold(org, key, f"{key}-fri", 90 * CENT), 90 * CENT)
    late = NOW.replace(hour=23, minute=59, second=59)
    open_late = hold(org, daily, "late", 10 * CENT, late)
    saturday = NOW + timedelta(days=1)
    # The day turned: the daily key spent nothing today, but its open hold still counts.
    hold(org, daily, "sat", 90 * CENT, saturday)
    assert budget(org, daily) == (0, C, 0)
    with pytest.raises(errors.KeySpendLimitExceeded, match="2026-11-30T00:00:00Z"):
        hold(org, weekly, "sat-w", 20 * CENT, saturday)  # the week (from Monday 23rd) has 0.1 left
    monday = NOW + timedelta(days=3)
    bill(org, daily, "late", open_late, 10 * CENT, monday)
    hold(org, weekly, "mon-w", C, monday)  # a new week
    assert budget(org, weekly) == (0, C, 0)
    clean(org)


def test_a_limit_set_while_a_warm_environment_remembers_the_wallet_counts_at_once(
    org: str, two_keys: tuple[str, str], at: Clock
) -> None:
    capped, _ = two_keys
    bill(org, capped, "before", hold(org, capped, "before", C), 80 * CENT)  # spent before any limit
    assert capped not in wallets.known_wallet(org).limited_keys  # the view is warm
    wallets._views[org].wallet = wallets.known_wallet(org)  # (and stays so: no refresh on its own)
    other_env = dict(wallets._views)
    shown = limit(org, capped, "1")
    assert shown["spend_limit"]["spent"] == "0.8"  # today's spend counts at once, from usage
    wallets._views.update(other_env)  # another environment's stale view, which knows no limit
    with pytest.raises(errors.KeySpendLimitExceeded):
        hold(org, capped, "after", 30 * CENT)
    hold(org, capped, "fits", 20 * CENT)
    # Removing the limit: the open hold still closes against its budget item.
    limit(org, capped, None)
    hold(org, capped, "unlimited", 5 * C)
    assert key_limits.key_budget(org, capped) is not None
    assert keys.list_keys(org)["data"][0]["spend_limit"] is None
    held = {h.request_id: h for h in holds.open_holds(org)}
    assert held["fits"].key_budget and not held["unlimited"].key_budget
    assert holds.release(org, "fits", 20 * CENT, budget_key=capped)
    assert budget(org, capped)[1] == 0
    clean(org)


def test_a_limited_key_leases_from_its_budget_only_while_its_room_is_16_slices(
    org: str, two_keys: tuple[str, str], at: Clock
) -> None:
    from conduix.ledger import leases

    roomy, tight = two_keys
    limit(org, roomy, "5", "month")  # 16 slices of 16 cents fit
    limit(org, tight, "1", "month")  # they do not
    for i in range(leases.HOT_IN_FLIGHT):  # the org is hot: holds in flight
        hold(org, tight, f"hot-{i}", CENT)
    leased = leases.reserve(org, "l-roomy", CENT, model="m", key_id=roomy, now=NOW)
    held = leases.reserve(org, "l-tight", CENT, model="m", key_id=tight, now=NOW)
    assert leased.lease is not None and leased.lease.budget and leased.budget_key == ""
    budget = key_limits.key_budget(org, roomy)
    assert budget is not None and (budget.held, budget.room) == (16 * CENT, 5 * C - 16 * CENT)
    assert held.lease is None and held.budget_key == tight
    leases.release(org, "l-roomy", leased, NOW)
    leases.close_all(NOW)
    budget = key_limits.key_budget(org, roomy)
    assert budget is not None and (budget.spent, budget.held, budget.room) == (0, 0, 5 * C)


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({}, "spend_limit"),
        ({"spend_limit": {"amount": "5"}}, "spend_limit.period"),
        ({"spend_limit": {"amount": "5", "period": "year"}}, "spend_limit.period"),
        ({"spend_limit": {"amount": 5, "period": "day"}}, "spend_limit.amount"),
        ({"spend_limit": {"amount": "0", "period": "day"}}, "spend_limit.amount"),
        ({"spend_limit": {"amount": "-1", "period": "day"}}, "spend_limit.amount"),
        ({"spend_limit": "5"}, "spend_limit"),
        ({"spend_limit": {"amount": "5", "period": "day", "x": 1}}, "spend_limit"),
        ({"name": "x"}, "name"),
    ],
)
def test_a_bad_limit_is_refused_and_changes_nothing(
    org: str, two_keys: tuple[str, str], at: Clock, body: dict[str, Any], param: str
) -> None:
    with pytest.raises(errors.InvalidRequest) as refused:
        keys.update_api_key(org, two_keys[0], parse(bodies.ApiKeyUpdate, body))
    assert refused.value.param == param
    assert key_limits.key_budget(org, two_keys[0]) is None
    assert not wallets.get_wallet(org).limited_keys


def test_limits_on_unknown_or_revoked_keys_are_refused(
    org: str, two_keys: tuple[str, str], at: Clock
) -> None:
    with pytest.raises(errors.NotFound):
        limit(org, "key_doesnotexist", "1")
    keys.revoke_api_key(org, two_keys[1])
    with pytest.raises(errors.Conflict):
        limit(org, two_keys[1], "1")
    auth.clear_cache()


def test_a_period_changed_while_a_warm_environment_knows_the_old_one_is_used_at_once(
    org: str, two_keys: tuple[str, str], at: Clock
) -> None:
    capped, _ = two_keys
    limit(org, capped, "1")
    bill(org, capped, "fri", hold(org, capped, "fri", 90 * CENT), 90 * CENT)
    stale = dict(wallets._views)  # an environment that knows the daily limit
    limit(org, capped, "5", "month")  # the month so far: the 0.9 spent counts
    wallets._views.update(stale)
    saturday = NOW + timedelta(days=1)
    held = hold(org, capped, "sat", 4 * C, saturday)  # a new day, but the month has 4.1 left
    assert held.budget_key == capped
    with pytest.raises(errors.KeySpendLimitExceeded, match="per month"):
        hold(org, capped, "sat-2", 20 * CENT, saturday)
    assert budget(org, capped) == (90 * CENT, 4 * C, 10 * CENT)
    clean(org)


def test_a_limit_set_again_after_removal_counts_the_spend_made_meanwhile(
    org: str, two_keys: tuple[str, str], at: Clock
) -> None:
    capped, _ = two_keys
    limit(org, capped, "1")
    bill(org, capped, "limited", hold(org, capped, "limited", 30 * CENT), 30 * CENT)
    limit(org, capped, None)
    bill(org, capped, "free", hold(org, capped, "free", 50 * CENT), 50 * CENT)  # counted by no budget
    shown = limit(org, capped, "1")
    assert shown["spend_limit"]["spent"] == "0.8"  # from the usage counters, not the stale budget
    with pytest.raises(errors.KeySpendLimitExceeded):
        hold(org, capped, "over", 30 * CENT)
    clean(org)
