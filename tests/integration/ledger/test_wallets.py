"""Hold, settle, release and sweep against the locked moto server, with exact amounts."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from botocore.exceptions import ClientError
from conduix.core import clock, errors
from conduix.core.config import settings
from conduix.core.money import NANOS_PER_CREDIT as C
from conduix.inference import sweeper
from conduix.ledger import entries, holds, metering, settles, upkeep, wallet_settings, wallets
from conduix.store import dynamo, schema

from tests.integration.helpers import NOW, assert_consistent, fund, ledger_items

pytestmark = pytest.mark.integration


def usage(cost: int, model: str = "acme/fast") -> metering.Usage:
    return metering.Usage(model=model, key_id="key_1", prompt_tokens=10, completion_tokens=20, cost=cost)


def test_hold_then_settle_debits_the_actual_cost(org: str) -> None:
    fund(org, "10")
    r = holds.reserve(org, "req-1", 3 * C, model="acme/fast", key_id="key_1", now=NOW)
    assert (r.balance, r.wallet.available) == (10 * C, 7 * C)
    w = assert_consistent(org)
    assert (w.held, w.available) == (3 * C, 7 * C)

    assert settles.settle(org, "req-1", 3 * C, usage(1_234_567_891), NOW) is settles.SettleOutcome.SETTLED

    w = assert_consistent(org)
    assert w.balance == 10 * C - 1_234_567_891
    assert (w.held, holds.open_holds(org), w.month_spent) == (0, (), 1_234_567_891)
    entry = next(i for i in ledger_items(org) if i["entry_type"]["S"] == "usage")
    assert entry["sk"]["S"] == f"LEDGER#{clock.iso(NOW)}#usage:req-1"
    assert (entry["entry_id"]["S"], entry["amount"]["N"]) == ("usage:req-1", "-1234567891")


def test_a_settle_retried_after_it_committed_bills_once(org: str) -> None:
    fund(org, "10")
    holds.reserve(org, "req-1", 2 * C, model="acme/fast", key_id="key_1", now=NOW)
    assert settles.settle(org, "req-1", 2 * C, usage(C), NOW) is settles.SettleOutcome.SETTLED
    assert settles.settle(org, "req-1", 2 * C, usage(C), NOW) is settles.SettleOutcome.ALREADY_SETTLED
    assert assert_consistent(org).balance == 9 * C


def test_short_balance_is_refused_with_the_exact_balance_and_holds_nothing(org: str) -> None:
    fund(org, "3.50001")
    with pytest.raises(errors.InsufficientCredits) as refused:
        holds.reserve(org, "req-1", 4 * C, model="acme/fast", key_id="key_1", now=NOW)
    assert refused.value.message == "Insufficient credits. Current balance: 3.50001 credits."
    w = assert_consistent(org)
    assert (w.held, w.available) == (0, 3_500_010_000)


def test_holds_count_against_the_balance(org: str) -> None:
    fund(org, "5")
    holds.reserve(org, "a", 3 * C, model="m", key_id="k", now=NOW)
    with pytest.raises(errors.InsufficientCredits, match="Current balance: 2 credits"):
        holds.reserve(org, "b", 3 * C, model="m", key_id="k", now=NOW)


def test_release_returns_the_hold_and_bills_nothing(org: str) -> None:
    fund(org, "5")
    holds.reserve(org, "a", 3 * C, model="m", key_id="k", now=NOW)
    assert holds.release(org, "a", 3 * C) is True
    assert holds.release(org, "a", 3 * C) is False
    w = assert_consistent(org)
    assert (w.balance, w.available, w.held) == (5 * C, 5 * C, 0)
    assert [i["entry_type"]["S"] for i in ledger_items(org)] == ["grant"]


def test_spend_cap_counts_spent_plus_held_and_refuses_beyond_it(org: str) -> None:
    fund(org, "100")
    wallet_settings.write_spend_cap(org, 10 * C, NOW)
    holds.reserve(org, "a", 6 * C, model="m", key_id="k", now=NOW)
    settles.settle(org, "a", 6 * C, usage(4 * C), NOW)  # spent 4
    holds.reserve(org, "b", 5 * C, model="m", key_id="k", now=NOW)  # held 5: committed 9
    with pytest.raises(errors.SpendCapExceeded) as refused:
        holds.reserve(org, "c", 2 * C, model="m", key_id="k", now=NOW)
    assert refused.value.period == "2026-11"
    assert "Monthly spend cap of 10 credits reached for 2026-11" in refused.value.message
    w = assert_consistent(org)
    assert (w.committed, w.cap_remaining) == (9 * C, 1 * C)
    wallet_settings.write_spend_cap(org, None, NOW)
    holds.reserve(org, "c", 2 * C, model="m", key_id="k", now=NOW)
    assert_consistent(org)


def test_a_new_month_resets_the_cap_but_keeps_open_holds(org: str) -> None:
    fund(org, "100")
    wallet_settings.write_spend_cap(org, 10 * C, NOW)
    holds.reserve(org, "a", 6 * C, model="m", key_id="k", now=NOW)
    settles.settle(org, "a", 6 * C, usage(5 * C), NOW)
    holds.reserve(org, "b", 3 * C, model="m", key_id="k", now=NOW)  # open across midnight
    december = NOW + timedelta(days=5)
    holds.reserve(org, "c", 6 * C, model="m", key_id="k", now=december)  # 3 held + 6 <= 10
    w = wallets.get_wallet(org)
    assert (w.period, w.month_spent, w.committed) == ("2026-12", 0, 9 * C)
    settles.settle(org, "b", 3 * C, usage(2 * C), december)
    w = wallets.get_wallet(org)
    assert (w.month_spent, w.committed, w.cap_remaining) == (2 * C, 8 * C, 2 * C)


def test_invoice_mode_is_not_gated_by_balance_but_still_by_the_cap(org: str) -> None:
    from conduix.store import dynamo

    dynamo.client().update_item(
        TableName="BillingTable",
        Key={"pk": {"S": f"ORG#{org}"}, "sk": {"S": "WALLET"}},
        UpdateExpression="SET billing_mode = :m",
        ExpressionAttributeValues={":m": {"S": "invoice"}},
    )
    holds.reserve(org, "a", 5 * C, model="m", key_id="k", now=NOW)
    wallet_settings.write_spend_cap(org, 6 * C, NOW)
    with pytest.raises(errors.SpendCapExceeded):
        holds.reserve(org, "b", 2 * C, model="m", key_id="k", now=NOW)


def test_grants_are_idempotent_and_a_changed_amount_is_a_conflict(org: str) -> None:
    entry, created = entries.post_entry(org, kind="grant", key="k1", amount=C, description="x", now=NOW)
    again, created_again = entries.post_entry(org, kind="grant", key="k1", amount=C, description="x", now=NOW)
    assert (created, created_again, again.entry_id) == (True, False, entry.entry_id)
    with pytest.raises(errors.IdempotencyConflict):
        entries.post_entry(org, kind="grant", key="k1", amount=2 * C, description="x", now=NOW)
    assert assert_consistent(org).balance == C


def test_concurrent_holds_never_overdraw(org: str) -> None:
    fund(org, "5")
    wins: list[str] = []
    refusals: list[Exception] = []

    def request(i: int) -> None:
        try:
            holds.reserve(org, f"r{i}", C, model="m", key_id="k", now=NOW)
            wins.append(f"r{i}")
        except errors.InsufficientCredits as exc:
            refusals.append(exc)

    threads = [threading.Thread(target=request, args=(i,)) for i in range(30)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert (len(wins), len(refusals)) == (5, 25)
    for rid in wins:
        settles.settle(org, rid, C, usage(C), NOW)
    w = assert_consistent(org)
    assert (w.balance, w.available) == (0, 0)


def test_sweeper_releases_only_expired_holds(org: str) -> None:
    fund(org, "10")
    holds.reserve(org, "old", 2 * C, model="m", key_id="k", now=NOW - timedelta(hours=1))
    holds.reserve(org, "new", 3 * C, model="m", key_id="k", now=NOW)
    result = sweeper.sweep(NOW)
    assert result["holds_released"] == 1 and result["credits_released"] == "2"
    assert_consistent(org)
    assert [h.request_id for h in holds.open_holds(org)] == ["new"]
    assert upkeep.wallets_with_holds(wallets.sweep_shard(org)) == [org]
    settles.settle(org, "new", 3 * C, usage(C), NOW)
    sweeper.sweep(NOW)
    assert upkeep.wallets_with_holds(wallets.sweep_shard(org)) == []


def test_the_hold_of_a_long_answer_outlives_it(org: str) -> None:
    # A 15-minute stream (a model with a long timeout) must not lose its hold to the sweeper.
    fund(org, "10")
    holds.reserve(org, "long", 2 * C, model="m", key_id="k", now=NOW, runs_for=900)
    holds.reserve(org, "short", 2 * C, model="m", key_id="k", now=NOW, runs_for=20)
    assert sweeper.sweep(NOW + timedelta(minutes=10))["holds_released"] == 1  # the short one
    assert_consistent(org)
    assert [h.request_id for h in holds.open_holds(org)] == ["long"]
    assert sweeper.sweep(NOW + timedelta(minutes=17))["holds_released"] == 1


def test_settle_and_sweep_race_and_exactly_one_wins(org: str) -> None:
    fund(org, "100")
    rounds = 12
    for i in range(rounds):
        holds.reserve(org, f"r{i}", 2 * C, model="m", key_id="k", now=NOW - timedelta(hours=1))
    outcomes: list[settles.SettleOutcome] = []

    def settle_all() -> None:
        for i in range(rounds):
            for _ in range(50):
                try:
                    outcomes.append(settles.settle(org, f"r{i}", 2 * C, usage(C), NOW))
                    break
                except errors.ServiceBusy:  # the sweeps kept the wallet busy past the retries
                    continue  # (Completion would defer it; nothing was written: settle again)

    settler = threading.Thread(target=settle_all)
    sweeps = [threading.Thread(target=sweeper.sweep, args=(NOW,)) for _ in range(3)]
    settler.start()
    for t in sweeps:
        t.start()
    settler.join()
    for t in sweeps:
        t.join()
    settled = outcomes.count(settles.SettleOutcome.SETTLED)
    assert settled + outcomes.count(settles.SettleOutcome.HOLD_GONE) == rounds
    w = assert_consistent(org)
    assert (w.held, w.balance) == (0, 100 * C - settled * C)


def test_a_conditional_write_reports_what_refused_it_and_raises_anything_else(org: str) -> None:
    # dynamo.write_if: the one place the "condition failed is an answer, not an error" idiom lives
    def set_note(condition: str, **extra: object) -> dynamo.Refused | None:
        return dynamo.write_if(
            dynamo.client().update_item,
            TableName=settings().billing_table,
            Key=wallets.wallet_key(org),
            UpdateExpression="SET note = :v",
            ConditionExpression=condition,
            ExpressionAttributeValues={":v": {"S": "x"}},
            **extra,
        )

    assert set_note("attribute_exists(pk)") is None
    refused = set_note("attribute_not_exists(pk)", ReturnValuesOnConditionCheckFailure="ALL_OLD")
    assert refused is not None and refused.old["note"] == {"S": "x"} and refused.old["org_id"] == {"S": org}
    assert set_note("attribute_not_exists(pk)") == dynamo.Refused({})  # the old item not asked for
    with pytest.raises(ClientError):  # not a refusal: a malformed request
        set_note("no_such_function(pk)")


def test_a_conditional_transaction_reports_which_action_refused_it_and_raises_anything_else(org: str) -> None:
    # dynamo.transact_if: the same idiom for transactions (one reason per action, in order)
    table = settings().billing_table
    marker = {"pk": {"S": schema.org_pk(org)}, "sk": {"S": "NOTE#once"}}

    def note_once(condition: str, one: object = None) -> dynamo.Cancelled | None:
        return dynamo.transact_if(
            [
                {
                    "Put": {
                        "TableName": table,
                        "Item": marker,
                        "ConditionExpression": "attribute_not_exists(pk)",
                    }
                },
                {
                    "Update": {
                        "TableName": table,
                        "Key": wallets.wallet_key(org),
                        "UpdateExpression": "ADD notes :one",
                        "ConditionExpression": condition,
                        "ExpressionAttributeValues": {":one": one or {"N": "1"}},
                        "ReturnValuesOnConditionCheckFailure": "ALL_OLD",
                    }
                },
            ]
        )

    assert note_once("attribute_exists(pk)") is None
    cancelled = note_once("attribute_exists(pk)")  # the marker is there now
    assert cancelled is not None and cancelled.failed(0) and not cancelled.failed(1)
    assert cancelled.old(1) == {}  # the action that passed brings nothing back
    dynamo.client().delete_item(TableName=table, Key=marker)
    cancelled = note_once("attribute_not_exists(pk)")  # the wallet refuses, and says how it stood
    assert cancelled is not None and cancelled.failed(1) and not cancelled.failed(0)
    assert cancelled.old(1)["notes"] == {"N": "1"} and cancelled.old(1)["org_id"] == {"S": org}
    dynamo.client().delete_item(TableName=table, Key=marker)
    with pytest.raises(ClientError):  # not a refusal: a malformed request (ADD of a string)
        note_once("attribute_exists(pk)", {"S": "x"})
