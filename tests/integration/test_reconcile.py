"""Reconciliation finds nothing in a healthy store and names every kind of drift."""

from __future__ import annotations

import pytest
from conduix import dynamo, reconcile, wallets
from conduix.money import NANOS_PER_CREDIT as C

from tests.integration.helpers import NOW, fund

pytestmark = pytest.mark.integration


def test_a_healthy_org_reconciles(org: str, capsys: pytest.CaptureFixture[str]) -> None:
    fund(org, "10")
    wallets.reserve(org, "a", 2 * C, model="m", key_id="k", now=NOW)
    wallets.settle(org, "a", 2 * C, wallets.Usage("m", "k", 1, 1, C), NOW)
    wallets.reserve(org, "b", C, model="m", key_id="k", now=NOW)  # still open
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
