"""Payment lifecycles against the locked moto server and the local Stripe: invoice mode drawing
on credits first, monthly invoicing that resumes after a failure at any step (and reruns much
later without a second invoice), auto-reload episodes and their daily limit, the reversal
rounding rule, and reconciliation against Stripe."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
import stripe
from conduix.accounts import orgs
from conduix.api import admin
from conduix.audit import reconcile
from conduix.core import bodies, errors
from conduix.core.bodies import parse
from conduix.core.money import NANOS_PER_CREDIT as C
from conduix.ledger import entries, holds, metering, settles, wallet_settings, wallets
from conduix.payments import autoreload, invoice_records, invoicing, reloads, stripe_gateway, webhooks
from conduix_local.stripe_local import API_KEY, LocalStripe

from tests.integration.helpers import NOW, assert_consistent, fund, ledger_items

pytestmark = pytest.mark.integration
PERIOD = "2026-10"
IN_PERIOD = NOW.replace(month=10, day=20)


@pytest.fixture
def sent(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    """The notices sent, as (to, subject)."""
    from conduix.accounts import notices

    mail: list[tuple[str, str]] = []
    monkeypatch.setattr(
        notices, "send", lambda org, kind, subject, body: mail.append((org.email, subject)) or True
    )
    return mail


@pytest.fixture(scope="module")
def stripe_server() -> Iterator[LocalStripe]:
    with LocalStripe(webhook_delay=0.05, async_payment_delay=0.2) as server:
        yield server


@pytest.fixture
def local_stripe(stripe_server: LocalStripe, monkeypatch: pytest.MonkeyPatch) -> Iterator[LocalStripe]:
    stripe_server.reset()
    monkeypatch.setenv("STRIPE_API_KEY", API_KEY)
    monkeypatch.setenv("STRIPE_API_BASE", stripe_server.url)
    stripe_gateway.client.cache_clear()
    yield stripe_server
    stripe_gateway.client.cache_clear()


def sdk(server: LocalStripe) -> stripe.StripeClient:
    return stripe.StripeClient(API_KEY, base_addresses={"api": server.url}, max_network_retries=0)


def settle(org: str, rid: str, cost: int, at: Any = NOW, hint: int | None = None) -> None:
    r = holds.reserve(org, rid, cost, model="m/one", key_id="k", now=at)
    usage = metering.Usage(
        "m/one",
        "k",
        10,
        20,
        cost,
        billed_by=r.wallet.billing_mode,
        funds_hint=r.wallet.balance if hint is None else hint,
    )
    assert settles.settle(org, rid, cost, usage, at) is settles.SettleOutcome.SETTLED


# ------------------------------------------------------------------ invoice mode


def test_invoice_mode_draws_on_the_positive_balance_first(org: str) -> None:
    fund(org, "10")
    wallet_settings.set_billing_mode(org, "invoice")
    settle(org, "a", 4 * C)  # all from the balance
    settle(org, "b", 8 * C)  # 6 from the balance, 2 invoiced
    settle(org, "c", 3 * C, hint=10 * C)  # a stale hint: the settle's condition redraws (0 left)
    assert assert_consistent(org).balance == -5 * C
    figures = invoicing.month_figures(org, "2026-11")
    assert (figures.usage_nanos, figures.applied_nanos, figures.due_nanos) == (15 * C, 10 * C, 5 * C)
    assert [(line.key, line.amount_cents) for line in figures.lines] == [
        ("m_one", 1500),
        ("credits_applied", -1000),
    ]
    assert figures.due_cents == 500


def test_invoice_mode_refuses_auto_reload_and_switching_turns_it_off(
    org: str, sent: list[tuple[str, str]]
) -> None:
    orgs.save_card(org, orgs.Card("pm_x", "visa", "4242", 12, 2034))
    reloads.save_settings(org, enabled=True, threshold=5 * C, amount=25 * C)
    switched = admin.set_billing(
        org, parse(bodies.BillingModeRequest, {"mode": "invoice", "po_number": "PO-9"})
    )
    assert switched["auto_reload_turned_off"] is True
    assert wallets.get_wallet(org).reload.enabled is False
    assert sent == [("billing@acme.test", "Conduix: auto-reload is turned off")]
    with pytest.raises(errors.Conflict) as refused:
        autoreload.configure(
            org, parse(bodies.AutoReloadRequest, {"enabled": True, "threshold": "5", "amount": "25"})
        )
    assert refused.value.code == "invoice_billing_mode" and "invoice billing mode" in refused.value.message
    again = admin.set_billing(org, parse(bodies.BillingModeRequest, {"mode": "invoice"}))
    assert again["auto_reload_turned_off"] is False and len(sent) == 1  # nothing left to turn off


# ------------------------------------------------------------------ monthly invoicing


def usage_invoices(server: LocalStripe, org: str) -> list[Any]:
    customer = orgs.get_org(org).stripe_customer_id
    listed = sdk(server).v1.invoices.list(params={"customer": str(customer), "limit": 100}).data
    return [i for i in listed if i.to_dict()["metadata"].get("purpose") == invoicing.PURPOSE]


def invoice_org_once(org: str, server: LocalStripe) -> Any:
    """The month's one invoice, open and sent, billing exactly the invoiced usage."""
    found = usage_invoices(server, org)
    assert len(found) == 1, [i.id for i in found]
    invoice = found[0]
    # 1.234567891 + 2 credits of usage, 1 of them drawn from the balance: 2.234567891 due.
    assert (invoice.status, invoice.total) == ("open", 223)
    assert sorted(line.amount for line in invoice.lines.data) == [-100, 123, 200]
    assert invoice.metadata["credits"] == "2.234567891"
    assert server.events("invoice.sent") and all(
        e["data"]["object"]["id"] == invoice.id for e in server.events("invoice.sent")
    )
    return invoice


def invoice_mode_month(org: str) -> None:
    fund(org, "1")
    wallet_settings.set_billing_mode(org, "invoice")
    orgs.set_invoice_terms(org, "PO-7", 30)
    settle(org, "a", 1_234_567_891, at=IN_PERIOD)  # 1 from the balance, the rest invoiced
    r = holds.reserve(org, "b", 2 * C, model="m/two", key_id="k", now=IN_PERIOD)
    usage = metering.Usage("m/two", "k", 1, 2, 2 * C, billed_by="invoice", funds_hint=r.wallet.balance)
    settles.settle(org, "b", 2 * C, usage, IN_PERIOD)


STEPS = {
    "create": ("POST", "/v1/invoices"),
    "add lines": ("POST", "/v1/invoiceitems"),
    "finalize": ("POST", "/v1/invoices/*/finalize"),
    "send": ("POST", "/v1/invoices/*/send"),
}


@pytest.mark.parametrize("much_later", [False, True], ids=["soon", "keys-expired"])
@pytest.mark.parametrize("mode", ["lose_answer", "down"])
@pytest.mark.parametrize("step", list(STEPS))
def test_a_failure_at_any_step_resumes_into_one_invoice(
    org: str, local_stripe: LocalStripe, step: str, mode: str, much_later: bool
) -> None:
    invoice_mode_month(org)
    method, path = STEPS[step]
    local_stripe.arm_fault(method, path, mode)
    with pytest.raises(Exception):
        invoicing.invoice_org(org, PERIOD, NOW)
    if much_later:  # Stripe has forgotten every idempotency key: a replay cannot save us
        local_stripe.expire_idempotency_keys()
    outcome = invoicing.invoice_org(org, PERIOD, NOW + timedelta(days=3))
    invoice = invoice_org_once(org, local_stripe)
    assert outcome == f"invoiced: {invoice.id}"
    local_stripe.expire_idempotency_keys()
    assert invoicing.invoice_org(org, PERIOD, NOW + timedelta(days=40)) == f"already invoiced: {invoice.id}"
    invoice_org_once(org, local_stripe)


def test_a_lost_record_write_after_create_still_makes_one_invoice(
    org: str, local_stripe: LocalStripe, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The issue's reproduction: the invoice exists at Stripe, our write of its id failed (a
    throttled write), and the rerun comes after Stripe forgot the idempotency key."""
    invoice_mode_month(org)
    real = invoice_records.advance

    def throttled(org_id: str, period: str, status: str, invoice_id: str, now: Any) -> None:
        raise RuntimeError("ProvisionedThroughputExceededException")

    monkeypatch.setattr(invoice_records, "advance", throttled)
    with pytest.raises(RuntimeError):
        invoicing.invoice_org(org, PERIOD, NOW)
    monkeypatch.setattr(invoice_records, "advance", real)
    local_stripe.expire_idempotency_keys()
    record = invoice_records.get(org, PERIOD)
    assert record is not None and record["status"]["S"] == "intent" and "stripe_invoice_id" not in record
    invoicing.invoice_org(org, PERIOD, NOW + timedelta(days=2))
    invoice_org_once(org, local_stripe)


def test_a_replayed_create_still_says_draft(local_stripe: LocalStripe, org: str) -> None:
    """The stand-in replays a create as Stripe does: the first response, as it was."""
    client = sdk(local_stripe)
    customer = client.v1.customers.create(params={"name": "x"}).id
    params: dict[str, Any] = {"customer": customer, "collection_method": "send_invoice", "days_until_due": 30}
    first = client.v1.invoices.create(params=params, options={"idempotency_key": "k1"})
    client.v1.invoice_items.create(
        params={"customer": customer, "invoice": first.id, "amount": 500, "currency": "usd"}
    )
    client.v1.invoices.finalize_invoice(first.id)
    replay = client.v1.invoices.create(params=params, options={"idempotency_key": "k1"})
    assert (replay.id, replay.status, client.v1.invoices.retrieve(first.id).status) == (
        first.id,
        "draft",
        "open",
    )
    local_stripe.expire_idempotency_keys()
    later = client.v1.invoices.create(params=params, options={"idempotency_key": "k1"})
    assert later.id != first.id  # past 24 hours the same key is a new request


def test_an_org_back_in_prepaid_is_invoiced_for_its_invoice_month(
    org: str, local_stripe: LocalStripe
) -> None:
    invoice_mode_month(org)
    wallet_settings.set_billing_mode(org, "prepaid", IN_PERIOD + timedelta(days=1))
    result = invoicing.invoice_month({"period": PERIOD}, NOW)
    invoice = invoice_org_once(org, local_stripe)
    assert result["orgs"][org] == f"invoiced: {invoice.id}"
    assert wallet_settings.invoice_mode_orgs() == []  # and then no longer listed


# ------------------------------------------------------------------ auto-reload episodes


@pytest.fixture
def card_org(org: str, local_stripe: LocalStripe) -> str:
    client = sdk(local_stripe)
    customer = client.v1.customers.create(params={"name": "Acme", "metadata": {"org_id": org}}).id
    pm = client.v1.payment_methods.create(
        params={"type": "card", "card": {"number": "4242424242424242", "exp_month": 12, "exp_year": 2034}}
    )
    client.v1.payment_methods.attach(pm.id, params={"customer": customer})
    orgs.attach_stripe_customer(org, customer)
    orgs.save_card(org, orgs.Card(pm.id, "visa", "4242", 12, 2034))
    return org


def test_a_charge_that_does_not_reach_the_threshold_ends_its_episode(
    card_org: str, local_stripe: LocalStripe
) -> None:
    org = card_org
    entries.post_entry(org, kind="refund", key="re_x", amount=-40 * C, description="t", now=NOW)
    reloads.save_settings(org, enabled=True, threshold=5 * C, amount=25 * C)
    assert wallet_settings.mark_reload_due(org)
    assert autoreload.charge_due(NOW) == {"orgs": 1, "charged": 1}  # -40 + 25 = -15: still below
    w = assert_consistent(org)
    assert (w.balance, w.reload.episode, w.reload.due) == (-15 * C, 2, True)  # a new episode
    assert autoreload.charge_due(NOW) == {"orgs": 1, "charged": 1}  # -15 + 25 = 10: above
    w = assert_consistent(org)
    assert (w.balance, w.reload.due) == (10 * C, False)
    assert autoreload.charge_due(NOW) == {"orgs": 0}
    keys = {e["request"]["idempotency_key"] for e in local_stripe.events("payment_intent.created")}
    assert keys == {f"auto-reload-{org}-1", f"auto-reload-{org}-2"}


def test_auto_reload_pauses_after_the_daily_limit(
    card_org: str, local_stripe: LocalStripe, monkeypatch: pytest.MonkeyPatch, sent: list[tuple[str, str]]
) -> None:
    from conduix.core import config

    monkeypatch.setenv("CONDUIX_RELOAD_DAILY_LIMIT", "3")
    config.reload_daily_limit.cache_clear()
    org = card_org
    reloads.save_settings(org, enabled=True, threshold=1000 * C, amount=5 * C)
    assert wallet_settings.mark_reload_due(org)
    try:
        outcomes = [autoreload.charge_due(NOW) for _ in range(5)]
    finally:
        config.reload_daily_limit.cache_clear()
    assert outcomes == [{"orgs": 1, "charged": 1}] * 3 + [{"orgs": 1, "paused": 1}] * 2
    w = assert_consistent(org)
    assert (w.balance, w.reload.due, w.reload.last_status) == (15 * C, True, "paused")
    assert len(local_stripe.events("payment_intent.succeeded")) == 3
    subjects = [subject for _, subject in sent]
    assert subjects.count("Conduix: auto-reload paused for today") == 1  # two paused runs, one notice
    assert subjects.count("Conduix: auto-reload added 5 credits") == 3
    assert autoreload.charge_due(NOW + timedelta(days=1)) == {"orgs": 1, "charged": 1}  # a new UTC day


# ------------------------------------------------------------------ reversals


@pytest.mark.parametrize(
    ("credits", "paid", "refunds"),
    [
        (50 * C, 5000, [2000, 3000]),
        (25 * C, 2900, [1000, 1000, 900]),
        (7, 3, [1, 1, 1]),
        (10 * C, 1000, [333]),
    ],
)
def test_partial_reversals_round_down_on_the_running_total(
    credits: int, paid: int, refunds: list[int]
) -> None:
    purchase = webhooks.Purchase("org", "x", credits, paid)
    shares, before = [], 0
    for cents in refunds:
        shares.append(webhooks.reversal_share(purchase, before, cents))
        before += cents
    assert sum(shares) == credits * before // paid
    if before == paid:
        assert sum(shares) == credits  # a full refund, however split, takes back exactly what it bought


# ------------------------------------------------------------------ reconciliation against Stripe


def test_reconcile_names_a_payment_without_entry_and_an_entry_without_payment(
    card_org: str, local_stripe: LocalStripe, capsys: pytest.CaptureFixture[str]
) -> None:
    org = card_org
    reloads.save_settings(org, enabled=True, threshold=5 * C, amount=25 * C)
    assert wallet_settings.mark_reload_due(org)
    assert autoreload.charge_due(NOW) == {"orgs": 1, "charged": 1}
    assert reconcile.report(org)["ok"] is True

    customer = orgs.get_org(org).stripe_customer_id
    card = orgs.get_org(org).card
    assert customer and card
    charge = stripe_gateway.charge_off_session(  # paid at Stripe, never credited
        customer_id=customer,
        payment_method_id=card.payment_method_id,
        amount_cents=1000,
        description="x",
        metadata={"org_id": org, "credits": "10", "purpose": "auto_reload", "episode": "99"},
        idempotency_key="stray",
    )
    entries.post_entry(org, kind="top_up", key="cs_test_nothing", amount=5 * C, description="t", now=NOW)
    report = reconcile.report(org)
    checks = [d["check"] for d in report["discrepancies"]]
    assert report["ok"] is False
    assert (
        f"PaymentIntent {charge.payment_intent_id} has no ledger entry auto_reload:{charge.payment_intent_id}"
        in checks
    )
    assert "ledger entry top_up:cs_test_nothing has no Stripe payment" in checks
    assert reconcile.main() == 1
    printed = capsys.readouterr().out
    assert charge.payment_intent_id and charge.payment_intent_id in printed and "cs_test_nothing" in printed


def test_a_prepaid_wallet_below_zero_must_name_its_reversal(org: str) -> None:
    from conduix.audit import reconcile_stripe

    entries.post_entry(org, kind="refund", key="re_1", amount=-3 * C, description="t", now=NOW)
    assert reconcile_stripe.check_org(org) == []
    entries.post_entry(org, kind="grant", key="g", amount=-2 * C, description="t", now=NOW)  # unnamed
    found = reconcile_stripe.check_org(org)
    assert len(found) == 1 and "refund:re_1" in found[0].check and found[0].found == "-5"


def test_a_refunded_usage_invoice_takes_back_what_its_payment_credited(
    org: str, local_stripe: LocalStripe
) -> None:
    import urllib.parse
    import urllib.request

    invoice_mode_month(org)
    invoice_id = invoicing.invoice_org(org, PERIOD, NOW).removeprefix("invoiced: ")
    client = sdk(local_stripe)
    url = str(client.v1.invoices.retrieve(invoice_id).hosted_invoice_url)
    form = urllib.parse.urlencode({"card": "4242424242424242"}).encode()
    try:
        urllib.request.urlopen(urllib.request.Request(url, data=form), timeout=10).close()
    except urllib.error.HTTPError as redirect:  # the page answers 303 to its own view
        assert redirect.code == 303
    before = wallets.get_wallet(org).balance
    paid = {"type": "invoice.paid", "data": {"object": client.v1.invoices.retrieve(invoice_id).to_dict()}}
    assert webhooks.handle_event(paid, NOW) == "credited"
    assert wallets.get_wallet(org).balance == before + 2_234_567_891  # exactly what it billed
    intent = client.v1.invoice_payments.list(params={"invoice": invoice_id}).data[0].payment.payment_intent
    refund = client.v1.refunds.create(params={"payment_intent": intent, "amount": 100})  # $1 of $2.23
    charge = client.v1.charges.retrieve(refund.charge).to_dict()
    event = {"type": "charge.refunded", "data": {"object": charge}}
    assert webhooks.handle_event(event, NOW) == "reversed"
    assert webhooks.handle_event(event, NOW) == "already reversed"  # keyed by the refund
    after = wallets.get_wallet(org).balance
    assert after == before + 2_234_567_891 - 2_234_567_891 * 100 // 223
    assert after == sum(int(i["amount"]["N"]) for i in ledger_items(org))


def test_a_refund_keeps_its_share_when_a_later_one_comes_in_the_same_second(
    card_org: str, local_stripe: LocalStripe
) -> None:
    org = orgs.get_org(card_org)
    assert org.stripe_customer_id and org.card
    charge = stripe_gateway.charge_off_session(
        customer_id=org.stripe_customer_id,
        payment_method_id=org.card.payment_method_id,
        amount_cents=2900,
        description="x",
        metadata={"org_id": card_org, "credits": "25", "purpose": "auto_reload", "episode": "1"},
        idempotency_key="k",
    )
    assert charge.payment_intent_id
    purchase = webhooks.purchase_of(charge.payment_intent_id)
    assert purchase == webhooks.Purchase(card_org, f"auto_reload:{charge.payment_intent_id}", 25 * C, 2900)
    client = sdk(local_stripe)
    ch = client.v1.charges.retrieve(
        client.v1.payment_intents.retrieve(charge.payment_intent_id).latest_charge
    )
    shares_then: list[tuple[str, int]] = []
    for _ in range(10):  # ids are random: whatever they are, the first share stays
        first = client.v1.refunds.create(params={"charge": ch.id, "amount": 10})
        shares_then.append((first.id, dict(webhooks.refund_reversals(ch.to_dict(), purchase))[first.id]))
    client.v1.refunds.create(params={"charge": ch.id})  # the rest, within the same second or so
    now_shares = dict(webhooks.refund_reversals(ch.to_dict(), purchase))
    assert all(now_shares[rid] == share for rid, share in shares_then)
    assert sum(now_shares.values()) == 25 * C


def test_a_dispute_reverses_turns_auto_reload_off_once_and_a_win_restores(
    card_org: str, local_stripe: LocalStripe, sent: list[tuple[str, str]]
) -> None:
    import urllib.parse
    import urllib.request

    org = card_org
    reloads.save_settings(org, enabled=True, threshold=5 * C, amount=25 * C)
    assert wallet_settings.mark_reload_due(org)
    assert autoreload.charge_due(NOW) == {"orgs": 1, "charged": 1}
    client = sdk(local_stripe)
    intent = local_stripe.events("payment_intent.succeeded")[0]["data"]["object"]["id"]
    form = urllib.parse.urlencode({"payment_intent": intent}).encode()
    hook = urllib.request.Request(f"{local_stripe.url}/_local/disputes", data=form)
    urllib.request.urlopen(hook, timeout=10).close()
    opened = client.v1.disputes.list(params={"payment_intent": intent}).data[0]
    created = {"type": "charge.dispute.created", "data": {"object": opened.to_dict()}}
    assert webhooks.handle_event(created, NOW) == "reversed"
    assert webhooks.handle_event(created, NOW) == "already reversed"  # keyed by the dispute
    w = assert_consistent(org)
    assert (w.balance, w.reload.enabled, w.reload.last_status) == (0, False, "turned_off")
    assert [s for _, s in sent].count("Conduix: auto-reload is turned off") == 1
    evidence = {"evidence": {"uncategorized_text": "winning_evidence"}, "submit": True}
    client.v1.disputes.update(opened.id, params=evidence)
    closed = local_stripe.wait_for_event("charge.dispute.closed", timeout=3)
    event = {"type": "charge.dispute.closed", "data": {"object": closed["data"]["object"]}}
    assert webhooks.handle_event(event, NOW) == "restored"
    assert webhooks.handle_event(event, NOW) == "already restored"
    assert assert_consistent(org).balance == 25 * C
