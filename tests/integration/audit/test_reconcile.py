"""Reconciliation finds nothing in a healthy store and names every kind of drift."""

from __future__ import annotations

from datetime import timedelta

import pytest
from conduix.audit import reconcile
from conduix.core.money import NANOS_PER_CREDIT as C
from conduix.ledger import entries, holds, metering, settles, wallet_settings, wallets
from conduix.store import dynamo

from tests.integration.helpers import NOW, fund

pytestmark = pytest.mark.integration


def test_a_healthy_org_reconciles(org: str, capsys: pytest.CaptureFixture[str]) -> None:
    fund(org, "10")
    holds.reserve(org, "a", 2 * C, model="m", key_id="k", now=NOW)
    settles.settle(org, "a", 2 * C, metering.Usage("m", "k", 1, 1, C), NOW)
    holds.reserve(org, "b", C, model="m", key_id="k", now=NOW)  # still open
    assert reconcile.reconcile_org(org) == []
    assert reconcile.report(org) == {"org_id": org, "ok": True, "discrepancies": []}
    assert reconcile.main() == 0
    assert "reconciled 1 org(s): 0 discrepancy(ies)" in capsys.readouterr().out


def test_drift_is_named_and_fails_the_run(org: str, capsys: pytest.CaptureFixture[str]) -> None:
    fund(org, "10")
    dynamo.client().update_item(  # a write that bypasses the ledger: exactly what must never happen
        TableName="BillingTable",
        Key={"pk": {"S": f"ORG#{org}"}, "sk": {"S": "WALLET"}},
        UpdateExpression="ADD balance :one",
        ExpressionAttributeValues={":one": {"N": "1"}},
    )
    checks = {d.check for d in reconcile.reconcile_org(org)}
    assert checks == {"balance = sum of the ledger", "available = balance - held"}
    assert reconcile.main() == 1
    assert f"{org}: balance = sum of the ledger: expected 10, found 10.000000001" in capsys.readouterr().out


def test_a_charge_above_its_hold_is_billed_exactly_and_reported_with_its_request(
    org: str, capsys: pytest.CaptureFixture[str]
) -> None:
    fund(org, "2")
    holds.reserve(org, "over", 2 * C, model="m", key_id="k", now=NOW)
    assert settles.settle(org, "over", 2 * C, metering.Usage("m", "k", 1, 1, 3 * C), NOW) is (
        settles.SettleOutcome.SETTLED
    )
    assert wallets.get_wallet(org).balance == -C  # billed exactly: the service was delivered
    found = {d.check: d for d in reconcile.reconcile_org(org)}
    assert set(found) == {"charge within its hold", "prepaid wallet never below zero by usage"}
    assert found["charge within its hold"].request_ids == ("over",)
    assert (found["charge within its hold"].expected, found["charge within its hold"].found) == (
        "at most 2",
        "3",
    )
    assert found["prepaid wallet never below zero by usage"].request_ids == ("over",)
    assert found["prepaid wallet never below zero by usage"].found == "-1"
    assert reconcile.main() == 1
    assert "(requests: over)" in capsys.readouterr().out


def test_a_month_past_its_cap_is_reported_with_the_requests_that_passed_it(org: str) -> None:
    fund(org, "100")
    wallet_settings.write_spend_cap(org, 2 * C, NOW)
    holds.reserve(org, "fits", C, model="m", key_id="k", now=NOW)
    settles.settle(org, "fits", C, metering.Usage("m", "k", 1, 1, C), NOW)
    holds.reserve(org, "over", C, model="m", key_id="k", now=NOW)
    settles.settle(org, "over", C, metering.Usage("m", "k", 1, 1, 4 * C), NOW)
    found = {d.check: d for d in reconcile.reconcile_org(org)}
    cap = found[f"spend of {NOW:%Y-%m} within its cap"]
    assert (cap.expected, cap.found, cap.request_ids) == ("at most 2", "5", ("over",))
    assert found["charge within its hold"].request_ids == ("over",)
    assert "prepaid wallet never below zero by usage" not in found


def test_a_cap_set_below_the_spend_or_a_refund_below_zero_is_no_breach(org: str) -> None:
    fund(org, "10")
    holds.reserve(org, "a", 5 * C, model="m", key_id="k", now=NOW)
    settles.settle(org, "a", 5 * C, metering.Usage("m", "k", 1, 1, 4 * C), NOW)
    holds.reserve(org, "b", C, model="m", key_id="k", now=NOW)
    wallet_settings.write_spend_cap(org, C, NOW)  # below the 4 spent and 1 held: the hold may still settle
    settles.settle(org, "b", C, metering.Usage("m", "k", 1, 1, C), NOW)
    later = NOW + timedelta(seconds=1)
    entries.post_entry(org, kind="reversal", key="r", amount=-8 * C, description="refund", now=later)
    assert wallets.get_wallet(org).balance == -3 * C
    assert reconcile.reconcile_org(org) == []
