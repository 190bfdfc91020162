"""Payment lifecycles end to end, through the local stack and the official SDKs: invoice mode,
monthly invoicing that survives a failure at each step and a rerun much later, refunds and
disputes of every kind of credit purchase, auto-reload episodes and their daily limit, and
reconciliation against Stripe."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.parse
import urllib.request
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import boto3
import pytest
from conduix.core import bodies
from conduix.core.bodies import parse

from tests.e2e.test_money_in import deliver, signed, top_up
from tests.e2e.test_plans_and_invoicing import cycle, store  # noqa: F401 - the store fixture
from tests.support.stack import ROOT, Stack, wait_until

pytestmark = pytest.mark.e2e
C = 10**9


def balance(stack: Stack, key: str) -> Decimal:
    return Decimal(stack.billing(key)["balance"])


def local_hook(stack: Stack, path: str, form: dict[str, Any] | None = None) -> Any:
    data = urllib.parse.urlencode(form or {}).encode()
    with urllib.request.urlopen(urllib.request.Request(stack.stripe_url + path, data=data), timeout=10) as r:
        return json.loads(r.read())


def ledger(stack: Stack, key: str) -> list[dict[str, Any]]:
    reply = stack.call("GET", "/v1/billing/ledger?limit=200", key=key)
    assert reply.status == 200, reply.body
    entries: list[dict[str, Any]] = reply.body["data"]
    return entries


# ------------------------------------------------------------------ invoice mode


def test_an_invoice_mode_org_with_a_saved_card_is_never_charged_by_auto_reload(stack: Stack) -> None:
    email = f"inv-card-{uuid.uuid4().hex[:8]}@example.com"
    org_id, key = stack.new_org(email=email)
    session_id = top_up(stack, key, "10")
    assert wait_until(lambda: balance(stack, key) == 10)
    on = {"enabled": True, "threshold": "5", "amount": "25"}
    assert stack.call("PUT", "/v1/billing/auto-reload", on, key=key).status == 200

    invoice_mode = {"mode": "invoice", "po_number": "PO-1"}
    switched = stack.operator("PUT", f"/admin/orgs/{org_id}/billing", invoice_mode)
    assert switched.status == 200 and switched.body["auto_reload_turned_off"] is True
    reload = stack.billing(key)["auto_reload"]
    assert reload["enabled"] is False and reload["last_result"]["status"] == "turned_off"
    assert "monthly invoice" in reload["last_result"]["message"]
    # (The notices themselves are counted in tests/integration/payments/test_payment_lifecycles.py:
    # moto's data dump, the one way to read sent mail, grows too slow late in a session.)
    refused = stack.call("PUT", "/v1/billing/auto-reload", on, key=key)
    assert (refused.status, refused.body["error"]["code"]) == (409, "invoice_billing_mode")
    assert "invoice billing mode" in refused.body["error"]["message"]

    spend = {"model": "test/per-token", "messages": [{"role": "user", "content": "go"}], "max_tokens": 20}
    for _ in range(2):  # 12 credits each: 10 drawn, the rest invoiced, and the card never charged
        assert stack.call("POST", "/v1/chat/completions", spend, key=key).status == 200
    assert balance(stack, key) < 0
    stack.run_job("AutoReloadFunction")
    customer_id = str(stack.stripe().v1.checkout.sessions.retrieve(session_id).customer)
    intents = stack.stripe().v1.payment_intents.list(params={"customer": customer_id}).data
    assert [i.to_dict()["metadata"].get("purpose") for i in intents] == ["top_up"]  # the top-up alone


@pytest.mark.usefixtures("store")
def test_an_invoice_mode_org_spends_its_plan_credits_before_anything_is_invoiced(stack: Stack) -> None:
    from conduix.core import clock
    from conduix.payments import invoicing

    org_id, key = stack.new_org()
    chosen = stack.call("POST", "/v1/billing/subscription", {"plan": "builder"}, key=key)
    assert stack.pay(chosen.body["checkout_url"]) == 303
    assert wait_until(lambda: balance(stack, key) == 25)
    assert stack.operator("PUT", f"/admin/orgs/{org_id}/billing", {"mode": "invoice"}).status == 200

    spend = {"model": "test/per-token", "messages": [{"role": "user", "content": "go"}], "max_tokens": 20}
    costs = []
    for _ in range(3):  # 12 credits each: 12 and 12 from the plan's 25, then 1 + 11 invoiced
        raw = stack.sdk(key).chat.completions.with_raw_response.create(**spend)
        costs.append(Decimal(raw.headers["x-conduix-cost"]))
    funds, expected = Decimal(25), []
    for cost in costs:
        drawn = min(cost, max(funds, Decimal(0)))
        expected.append(cost - drawn)
        funds -= cost
    usage = [e for e in ledger(stack, key) if e["type"] == "usage"][::-1]  # oldest first
    assert [Decimal(e["invoiced"]) for e in usage] == expected and expected[0] == 0 < expected[-1]
    assert balance(stack, key) == 25 - sum(costs)
    figures = invoicing.month_figures(org_id, clock.period_of(clock.now()))
    assert figures.usage_nanos == int(sum(costs) * C)
    assert figures.applied_nanos == 25 * C  # the plan's credits, all of them, first
    assert figures.due_nanos == int((sum(costs) - 25) * C)
    assert [line.key for line in figures.lines] == ["test_per-token", "credits_applied"]


# ------------------------------------------------------------------ monthly invoicing


def last_month() -> tuple[datetime, str]:
    at = (datetime.now(UTC).replace(day=1) - timedelta(days=1)).replace(day=10, hour=12)
    return at, at.strftime("%Y-%m")


def seed_invoice_month(stack: Stack) -> tuple[str, str]:
    """An invoice-mode org with last month's usage (history the API cannot make today)."""
    from conduix.accounts import keys, orgs
    from conduix.ledger import holds, metering, settles

    at, _ = last_month()
    org = orgs.create_org("Enterprise", f"ap-{uuid.uuid4().hex[:6]}@example.com", at)
    key = keys.create_api_key(org.org_id, parse(bodies.ApiKeyRequest, {"name": "prod"}))["api_key"]
    body = {"mode": "invoice", "po_number": "PO-9", "net_terms_days": 15}
    assert stack.operator("PUT", f"/admin/orgs/{org.org_id}/billing", body).status == 200
    for i, cost in enumerate((1_234_567_891, 765_432_109)):
        rid = f"seed-{i}"
        holds.reserve(org.org_id, rid, cost, model="test/cheap", key_id="k", now=at + timedelta(hours=i))
        usage = metering.Usage("test/cheap", "k", 10, 20, cost, billed_by="invoice")
        settles.settle(org.org_id, rid, cost, usage, at + timedelta(hours=i))
    return org.org_id, key


def month_invoices(stack: Stack, key: str) -> list[dict[str, Any]]:
    listed = stack.call("GET", "/v1/billing/invoices", key=key).body["data"]
    return [i for i in listed if i["description"] and i["description"].startswith("Conduix usage")]


STEPS = {
    "create": ("POST", "/v1/invoices"),
    "add lines": ("POST", "/v1/invoiceitems"),
    "finalize": ("POST", "/v1/invoices/*/finalize"),
    "send": ("POST", "/v1/invoices/*/send"),
}


@pytest.mark.parametrize("step", list(STEPS))
@pytest.mark.usefixtures("store")
def test_a_month_is_invoiced_once_after_a_failure_at_a_step_and_again_much_later(
    stack: Stack, step: str
) -> None:
    org_id, key = seed_invoice_month(stack)
    _, period = last_month()
    method, path = STEPS[step]
    local_hook(stack, "/_local/faults", {"method": method, "path": path, "mode": "lose_answer"})
    failed = stack.run_job("MonthlyInvoicingFunction", {"period": period})
    assert failed.status != 200 and org_id in failed.body["error"]["errorMessage"]
    local_hook(stack, "/_local/idempotency_keys/expire")  # the retry comes after Stripe forgot

    retried = stack.run_job("MonthlyInvoicingFunction", {"period": period})
    assert retried.status == 200, retried.body
    invoices = month_invoices(stack, key)
    assert [(i["status"], i["total"]) for i in invoices] == [("open", "2.00")]  # 2 credits, once
    assert retried.body["result"]["orgs"][org_id] == f"invoiced: {invoices[0]['id']}"
    sent = stack.stripe().v1.events.list(params={"type": "invoice.sent", "limit": 100}).data
    assert invoices[0]["id"] in {e.data.object.id for e in sent}

    local_hook(stack, "/_local/idempotency_keys/expire")  # much later: a rerun or backfill
    rerun = stack.run_job("MonthlyInvoicingFunction", {"period": period})
    assert rerun.body["result"]["orgs"][org_id] == f"already invoiced: {invoices[0]['id']}"
    assert len(month_invoices(stack, key)) == 1


@pytest.mark.usefixtures("store")
def test_an_org_switched_back_to_prepaid_mid_month_is_still_invoiced(stack: Stack) -> None:
    from conduix.ledger import wallet_settings

    org_id, key = seed_invoice_month(stack)
    _, period = last_month()
    back = stack.operator("PUT", f"/admin/orgs/{org_id}/billing", {"mode": "prepaid"})
    assert back.status == 200 and back.body["wallet"]["billing_mode"] == "prepaid"
    result = stack.run_job("MonthlyInvoicingFunction", {"period": period})
    assert result.status == 200, result.body
    invoices = month_invoices(stack, key)
    assert [(i["status"], i["total"]) for i in invoices] == [("open", "2.00")]
    assert result.body["result"]["orgs"][org_id] == f"invoiced: {invoices[0]['id']}"
    assert org_id in wallet_settings.invoice_mode_orgs()  # this month's invoice-billed usage is next


# ------------------------------------------------------------------ reversals


def test_refunds_of_a_plan_renewal_and_a_top_up_take_back_exactly_their_credits(stack: Stack) -> None:
    _, key = stack.new_org()
    chosen = stack.call("POST", "/v1/billing/subscription", {"plan": "builder"}, key=key)
    assert stack.pay(chosen.body["checkout_url"]) == 303
    assert wait_until(lambda: balance(stack, key) == 25)
    stripe = stack.stripe()
    subscription_id = str(stripe.v1.checkout.sessions.retrieve(chosen.body["session_id"]).subscription)
    cycle(stack, subscription_id)
    assert wait_until(lambda: balance(stack, key) == 50)
    renewal = stripe.v1.subscriptions.retrieve(subscription_id).latest_invoice
    paid_by = stripe.v1.invoice_payments.list(params={"invoice": str(renewal)}).data[0].payment.payment_intent

    # $10 of the $29 renewal back: floor(25 x 1000 / 2900) nano-credits go with it.
    stripe.v1.refunds.create(params={"payment_intent": paid_by, "amount": 1000})
    assert wait_until(lambda: balance(stack, key) == Decimal("41.379310345"))
    stripe.v1.refunds.create(params={"payment_intent": paid_by})  # the rest: exactly 25 in all
    assert wait_until(lambda: balance(stack, key) == 25)

    session_id = top_up(stack, key, "10")
    assert wait_until(lambda: balance(stack, key) == 35)
    top_up_intent = stripe.v1.checkout.sessions.retrieve(session_id).payment_intent
    stripe.v1.refunds.create(params={"payment_intent": top_up_intent})
    assert wait_until(lambda: balance(stack, key) == 25)
    refunds = [e for e in ledger(stack, key) if e["type"] == "refund"]
    assert sorted(Decimal(e["amount"]) for e in refunds) == [
        Decimal("-16.379310345"),
        Decimal("-10"),
        Decimal("-8.620689655"),
    ]
    for event in stripe.v1.events.list(params={"type": "charge.refunded", "limit": 100}).data:
        if event.data.object.payment_intent in (paid_by, top_up_intent):  # Stripe retrying: nothing more
            payload = json.dumps(event.to_dict(), default=str).encode()
            assert deliver(stack, payload, signed(stack, payload)).status == 200
    assert balance(stack, key) == 25


def test_a_lost_dispute_then_a_won_dispute(stack: Stack) -> None:
    email = f"dispute-{uuid.uuid4().hex[:8]}@example.com"
    _, key = stack.new_org(email=email)
    stripe = stack.stripe()
    first = top_up(stack, key, "10")
    assert wait_until(lambda: balance(stack, key) == 10)
    on = {"enabled": True, "threshold": "1", "amount": "25"}
    assert stack.call("PUT", "/v1/billing/auto-reload", on, key=key).status == 200

    first_intent = stripe.v1.checkout.sessions.retrieve(first).payment_intent
    lost = local_hook(stack, "/_local/disputes", {"payment_intent": first_intent})
    assert wait_until(lambda: balance(stack, key) == 0)
    assert wait_until(lambda: stack.billing(key)["auto_reload"]["enabled"] is False)  # the card rests
    assert "disputed" in stack.billing(key)["auto_reload"]["last_result"]["message"]
    assert stripe.v1.disputes.close(lost["id"]).status == "lost"
    assert wait_until(lambda: closed_events(stack, lost["id"]))
    second = top_up(stack, key, "50")
    assert wait_until(lambda: balance(stack, key) == 50)  # the lost dispute's 10 stay reversed
    second_intent = stripe.v1.checkout.sessions.retrieve(second).payment_intent
    won = local_hook(stack, "/_local/disputes", {"payment_intent": second_intent})
    assert wait_until(lambda: balance(stack, key) == 0)
    evidence = {"evidence": {"uncategorized_text": "winning_evidence"}, "submit": True}
    stripe.v1.disputes.update(won["id"], params=evidence)
    assert wait_until(lambda: balance(stack, key) == 50)  # won: restored, once
    entries = {(e["type"], e["reference"]): Decimal(e["amount"]) for e in ledger(stack, key)}
    assert entries[("dispute", lost["id"])] == -10 and entries[("dispute", won["id"])] == -50
    assert entries[("dispute_won", won["id"])] == 50 and ("dispute_won", lost["id"]) not in entries
    event = wait_until(lambda: closed_events(stack, won["id"]))[0].to_dict()
    payload = json.dumps(event, default=str).encode()
    assert deliver(stack, payload, signed(stack, payload)).body["outcome"] == "duplicate"
    # The same dispute in another event (Stripe also sends funds_reinstated, and retries):
    # the restore is keyed by the dispute, so it happens once.
    payload = json.dumps({**event, "id": f"evt_again_{uuid.uuid4().hex}"}, default=str).encode()
    assert deliver(stack, payload, signed(stack, payload)).body["outcome"] == "already restored"
    assert balance(stack, key) == 50


def closed_events(stack: Stack, dispute_id: str) -> list[Any]:
    listed = stack.stripe().v1.events.list(params={"type": "charge.dispute.closed", "limit": 100}).data
    return [e for e in listed if e.data.object.id == dispute_id]


# ------------------------------------------------------------------ auto-reload episodes


def test_an_auto_reload_below_the_threshold_ends_each_episode_and_stops_at_the_daily_limit(
    stack: Stack,
) -> None:
    email = f"episodes-{uuid.uuid4().hex[:8]}@example.com"
    since = int(datetime.now(UTC).timestamp()) - 5
    org_id, key = stack.new_org(email=email)
    top_up(stack, key, "10")
    assert wait_until(lambda: balance(stack, key) == 10)
    on = {"enabled": True, "threshold": "500", "amount": "5"}  # 5 credits a charge never reach 500
    assert stack.call("PUT", "/v1/billing/auto-reload", on, key=key).status == 200
    stack.sdk(key).chat.completions.create(model="test/cheap", messages=[{"role": "user", "content": "hi"}])
    start = balance(stack, key)
    for charge in range(1, 6):
        assert stack.run_job("AutoReloadFunction").status == 200
        assert wait_until(lambda: balance(stack, key) == start + 5 * charge)  # noqa: B023
    stack.run_job("AutoReloadFunction")  # the sixth of the UTC day: paused, with a notice
    reload = stack.billing(key)["auto_reload"]
    assert reload["last_result"]["status"] == "paused" and reload["enabled"] is True
    assert balance(stack, key) == start + 25
    stack.run_job("AutoReloadFunction")
    assert balance(stack, key) == start + 25
    assert stack.billing(key)["auto_reload"]["last_result"]["status"] == "paused"
    listed = (
        stack.stripe()
        .v1.events.list(params={"type": "payment_intent.created", "created": {"gte": since}, "limit": 100})
        .data
    )
    keys = {
        e.request.idempotency_key for e in listed if e.data.object.metadata.to_dict().get("org_id") == org_id
    }
    assert keys >= {f"auto-reload-{org_id}-{episode}" for episode in range(1, 6)}
    assert len([k for k in keys if k and k.startswith("auto-reload-")]) == 5  # a new key per episode


# ------------------------------------------------------------------ reconciliation against Stripe


def _dynamodb(stack: Stack) -> Any:
    return boto3.client(
        "dynamodb",
        endpoint_url=stack.moto,
        region_name="us-east-1",
        aws_access_key_id="local",
        aws_secret_access_key="local",
    )


def _take_out(stack: Stack, org_id: str, entry_id: str) -> list[dict[str, Any]]:
    """Tamper with the ledger as a bug would (test only): remove one entry and its amount."""
    db = _dynamodb(stack)
    key = {"pk": {"S": f"ORG#{org_id}"}, "sk": {"S": f"ENTRY#{entry_id}"}}
    marker = db.get_item(TableName="BillingTable", Key=key)["Item"]
    line_key = {"pk": marker["pk"], "sk": marker["line_sk"]}
    line = db.get_item(TableName="BillingTable", Key=line_key)["Item"]
    for item in (marker, line):
        db.delete_item(TableName="BillingTable", Key={"pk": item["pk"], "sk": item["sk"]})
    _add_to_wallet(stack, org_id, -int(marker["amount"]["N"]))
    return [marker, line]


def _put_back(stack: Stack, org_id: str, items: list[dict[str, Any]]) -> None:
    db = _dynamodb(stack)
    for item in items:
        db.put_item(TableName="BillingTable", Item=item)
    _add_to_wallet(stack, org_id, int(items[0]["amount"]["N"]))


def _add_to_wallet(stack: Stack, org_id: str, nanos: int) -> None:
    _dynamodb(stack).update_item(
        TableName="BillingTable",
        Key={"pk": {"S": f"ORG#{org_id}"}, "sk": {"S": "WALLET"}},
        UpdateExpression="ADD balance :a, available :a",
        ExpressionAttributeValues={":a": {"N": str(nanos)}},
    )


def _make_reconcile(stack: Stack) -> subprocess.CompletedProcess[str]:
    """`make reconcile` against this stack (whose state file the test does not know)."""
    env = {
        **os.environ,
        "BILLING_TABLE": "BillingTable",
        "AWS_ENDPOINT_URL": stack.moto,
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ACCESS_KEY_ID": "local",
        "AWS_SECRET_ACCESS_KEY": "local",
        "STRIPE_API_KEY": "sk_test_conduix_local",
        "STRIPE_API_BASE": stack.stripe_url,
    }
    command = [sys.executable, "-m", "conduix_local.reconcile"]
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.usefixtures("store")
def test_reconcile_fails_on_a_payment_without_entry_and_an_entry_without_payment(stack: Stack) -> None:
    from conduix.core import clock
    from conduix.ledger import entries

    org_id, key = stack.new_org()
    session_id = top_up(stack, key, "10")
    assert wait_until(lambda: balance(stack, key) == 10)
    clean = stack.operator("GET", f"/admin/orgs/{org_id}/reconcile")
    assert clean.status == 200 and clean.body["ok"] is True, clean.body

    taken = _take_out(stack, org_id, f"top_up:{session_id}")  # a paid session, no ledger entry
    try:
        report = stack.operator("GET", f"/admin/orgs/{org_id}/reconcile").body
        assert report["ok"] is False
        assert [d["check"] for d in report["discrepancies"]] == [
            f"Checkout Session {session_id} has no ledger entry top_up:{session_id}"
        ]
        audit = _make_reconcile(stack)
        assert audit.returncode == 1 and session_id in audit.stdout
    finally:
        _put_back(stack, org_id, taken)
    assert stack.operator("GET", f"/admin/orgs/{org_id}/reconcile").body["ok"] is True

    forged = f"cs_test_forged_{uuid.uuid4().hex[:8]}"  # a ledger entry no payment explains
    entries.post_entry(
        org_id, kind="top_up", key=forged, amount=10 * C, description="forged", now=clock.now()
    )
    try:
        report = stack.operator("GET", f"/admin/orgs/{org_id}/reconcile").body
        checks = [d["check"] for d in report["discrepancies"]]
        assert checks == [f"ledger entry top_up:{forged} has no Stripe payment"]
        audit = _make_reconcile(stack)
        assert audit.returncode == 1 and forged in audit.stdout, audit.stdout + audit.stderr
    finally:
        _take_out(stack, org_id, f"top_up:{forged}")
    assert forged not in _make_reconcile(stack).stdout
