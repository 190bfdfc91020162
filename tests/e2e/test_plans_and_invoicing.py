"""Plans and enterprise invoicing, end to end: included credits rolled in per paid period,
and an invoice-mode org's month invoiced once, matching its ledger."""

from __future__ import annotations

import json
import urllib.request
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal

import pytest
from conduix.core import bodies
from conduix.core.bodies import parse

from tests.support.stack import Stack, wait_until

pytestmark = pytest.mark.e2e


def balance(stack: Stack, key: str) -> Decimal:
    return Decimal(stack.billing(key)["balance"])


def cycle(stack: Stack, subscription_id: str) -> None:
    request = urllib.request.Request(
        f"{stack.stripe_url}/_local/subscriptions/{subscription_id}/cycle", method="POST"
    )
    urllib.request.urlopen(request, timeout=10).close()


def test_builder_rolls_its_credits_in_once_per_paid_period_and_free_stops_them(stack: Stack) -> None:
    _, key = stack.new_org()
    assert stack.call("POST", "/v1/billing/subscription", {"plan": "gold"}, key=key).status == 400
    chosen = stack.call("POST", "/v1/billing/subscription", {"plan": "builder"}, key=key)
    assert chosen.status == 200 and chosen.body["status"] == "checkout"
    assert stack.pay(chosen.body["checkout_url"]) == 303
    assert wait_until(lambda: balance(stack, key) == 25)
    assert wait_until(lambda: stack.billing(key)["plan"]["id"] == "builder")
    session = stack.stripe().v1.checkout.sessions.retrieve(chosen.body["session_id"])
    subscription_id = str(session.subscription)

    cycle(stack, subscription_id)
    assert wait_until(lambda: balance(stack, key) == 50)
    paid = [
        e
        for e in stack.stripe().v1.events.list(params={"type": "invoice.paid", "limit": 100}).data
        if e.data.object.parent and e.data.object.parent.subscription_details.subscription == subscription_id
    ]
    for event in paid:  # Stripe retrying every invoice.paid: nothing more lands
        payload = json.dumps(event.to_dict(), default=str).encode()  # Stripe sends decimals as strings
        from tests.e2e.test_money_in import deliver, signed

        assert deliver(stack, payload, signed(stack, payload)).status == 200
    assert balance(stack, key) == 50
    grants = [
        e
        for e in stack.call("GET", "/v1/billing/ledger", key=key).body["data"]
        if e["type"] == "plan_credits"
    ]
    assert len(grants) == 2 and all(
        g["description"].startswith("Builder plan: 25 included credits") for g in grants
    )

    downgraded = stack.call("POST", "/v1/billing/subscription", {"plan": "free"}, key=key)
    assert downgraded.body == {"plan": "free", "status": "canceled"}
    assert wait_until(lambda: stack.billing(key)["plan"]["id"] == "free")
    assert stack.stripe().v1.subscriptions.retrieve(subscription_id).status == "canceled"
    assert balance(stack, key) == 50  # credits already granted stay


def test_plan_features_are_enforced(stack: Stack) -> None:
    _, key = stack.new_org("1")
    for name in ("second", "third"):
        created = stack.call("POST", "/v1/billing/api-keys", {"name": name}, key=key)
        if created.status != 201:
            break
    assert (created.status, created.body["error"]["code"]) == (409, "api_key_limit_reached")  # Free: 2 keys


@pytest.fixture
def store(stack: Stack, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The product's own data access, pointed at the stack's DynamoDB stand-in, for seeding
    history the API cannot create today: last month's usage."""
    from conduix.core import config
    from conduix.store import dynamo

    for name, value in {
        "AWS_ENDPOINT_URL": stack.moto,
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ACCESS_KEY_ID": "local",
        "AWS_SECRET_ACCESS_KEY": "local",
        "BILLING_TABLE": "BillingTable",
        "CACHE_TABLE": "CacheTable",
    }.items():
        monkeypatch.setenv(name, value)
    config.settings.cache_clear()
    dynamo.reset_client()
    yield
    config.settings.cache_clear()
    dynamo.reset_client()


def test_an_invoice_mode_month_is_invoiced_once_and_matches_the_ledger(stack: Stack, store: None) -> None:
    from conduix.accounts import keys, orgs
    from conduix.ledger import holds, metering, settles
    from conduix.payments import invoicing

    now = datetime.now(UTC)
    last_month = (now.replace(day=1) - timedelta(days=1)).replace(day=15, hour=12)
    period = last_month.strftime("%Y-%m")
    org = orgs.create_org("Enterprise Co", f"ap-{uuid.uuid4().hex[:6]}@example.com", last_month)
    key = keys.create_api_key(org.org_id, parse(bodies.ApiKeyRequest, {"name": "prod"}))["api_key"]
    mode = stack.operator(
        "PUT",
        f"/admin/orgs/{org.org_id}/billing",
        {"mode": "invoice", "po_number": "PO-123", "net_terms_days": 30},
    )
    assert mode.status == 200 and mode.body["wallet"]["billing_mode"] == "invoice"

    charges = {"acme/fast": [1_234_567_891, 5_000_001], "acme/smart": [2_345_678_912]}
    for model, costs in charges.items():
        for i, cost in enumerate(costs):
            request_id = f"seed-{model}-{i}"
            at = last_month + timedelta(hours=i)
            holds.reserve(org.org_id, request_id, cost, model=model, key_id="k", now=at)
            usage = metering.Usage(model, "k", 100 + i, 200 + i, cost, billed_by="invoice")
            assert settles.settle(org.org_id, request_id, cost, usage, at) is settles.SettleOutcome.SETTLED

    first = stack.run_job("MonthlyInvoicingFunction", {"period": period})
    second = stack.run_job("MonthlyInvoicingFunction", {"period": period})
    assert first.status == 200, first.body
    invoice_id = first.body["result"]["orgs"][org.org_id].removeprefix("invoiced: ")
    assert second.body["result"]["orgs"][org.org_id] == f"already invoiced: {invoice_id}"

    invoice = stack.stripe().v1.invoices.retrieve(invoice_id)
    total_nanos = sum(sum(c) for c in charges.values())
    expected_cents = int((Decimal(total_nanos) / 10**7).quantize(Decimal(1), rounding=ROUND_HALF_UP))
    assert (invoice.status, invoice.collection_method, invoice.total) == (
        "open",
        "send_invoice",
        expected_cents,
    )
    assert invoice.custom_fields[0].value == "PO-123"
    assert invoice.due_date - invoice.status_transitions.finalized_at == 30 * 86400
    lines = {line.description.split(":")[0]: line.amount for line in invoice.lines.data}
    assert lines == {"acme/fast": 124, "acme/smart": 235}  # 1.239567892 and 2.345678912, largest remainder
    assert sum(lines.values()) == expected_cents
    assert [i["id"] for i in stack.call("GET", "/v1/billing/invoices", key=key).body["data"]] == [invoice_id]
    assert invoicing.month_usage(org.org_id, period)[0].nanos == sum(charges["acme/fast"])

    # The customer pays on the hosted page: exactly the ledger's charges come back.
    assert stack.pay(invoice.hosted_invoice_url) in (200, 303)
    assert wait_until(lambda: balance(stack, key) == 0)

    # Invoice mode: no balance needed, but the cap still refuses before the provider runs.
    hello = [{"role": "user", "content": "hi"}]
    stack.sdk(key).chat.completions.create(model="test/cheap", messages=hello)
    stack.call("PUT", "/v1/billing/spend-cap", {"monthly_limit": "0.0001"}, key=key)
    before = stack.upstream_calls()
    refused = stack.call(
        "POST", "/v1/chat/completions", {"model": "test/cheap", "messages": hello, "max_tokens": 200}, key=key
    )
    assert (refused.status, refused.body["error"]["code"]) == (402, "spend_cap_exceeded")
    assert stack.upstream_calls() == before
