"""Money in, end to end: Checkout top-ups on the local payment page, signed webhooks,
auto-reload, refunds, and the notices around them."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
import uuid
from decimal import Decimal

import pytest

from tests.support.stack import Reply, Stack, wait_until

pytestmark = pytest.mark.e2e

HELLO = [{"role": "user", "content": "Hello there"}]


def top_up(stack: Stack, key: str, amount: str, card: str = "4242424242424242") -> str:
    started = stack.call("POST", "/v1/billing/top-ups", {"amount": amount}, key=key)
    assert started.status == 201, started.body
    assert stack.pay(started.body["checkout_url"], card) == 303
    return str(started.body["session_id"])


def balance(stack: Stack, key: str) -> Decimal:
    return Decimal(stack.billing(key)["balance"])


def signed(stack: Stack, payload: bytes, at: int | None = None, secret: str | None = None) -> dict[str, str]:
    timestamp = at if at is not None else int(time.time())
    mac = hmac.new(
        (secret or stack.webhook_secret).encode(), f"{timestamp}.".encode() + payload, hashlib.sha256
    )
    return {"Stripe-Signature": f"t={timestamp},v1={mac.hexdigest()}", "Content-Type": "application/json"}


def deliver(stack: Stack, payload: bytes, headers: dict[str, str]) -> Reply:
    import urllib.error
    import urllib.request

    request = urllib.request.Request(
        stack.api + "/webhooks/stripe", data=payload, headers=headers, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return Reply(response.status, {}, json.loads(response.read()))
    except urllib.error.HTTPError as exc:
        return Reply(exc.code, {}, json.loads(exc.read()))


def test_a_top_up_lands_credits_an_invoice_and_a_receipt(stack: Stack) -> None:
    email = f"topup-{uuid.uuid4().hex[:8]}@example.com"
    _, key = stack.new_org(email=email)
    refused = stack.call("POST", "/v1/billing/top-ups", {"amount": "42"}, key=key)
    assert refused.status == 400 and "10, 50, 100, 500" in refused.body["error"]["message"]

    top_up(stack, key, "50")
    assert wait_until(lambda: balance(stack, key) == 50)
    invoices = stack.call("GET", "/v1/billing/invoices", key=key).body["data"]
    assert [(i["status"], i["total"]) for i in invoices] == [("paid", "50.00")]
    assert invoices[0]["hosted_invoice_url"] and invoices[0]["invoice_pdf"].endswith(".pdf")
    card = stack.billing(key)["saved_card"]
    assert (card["brand"], card["last4"]) == ("visa", "4242")
    receipts = wait_until(lambda: stack.emails(email))
    assert [m["subject"] for m in receipts] == ["Conduix: 50 credits added"]
    assert invoices[0]["hosted_invoice_url"] in receipts[0]["body"]


def test_a_declined_card_on_the_page_lands_nothing(stack: Stack) -> None:
    _, key = stack.new_org()
    started = stack.call("POST", "/v1/billing/top-ups", {"amount": "10"}, key=key)
    assert stack.pay(started.body["checkout_url"], "4000000000000002") == 402
    time.sleep(1)
    assert balance(stack, key) == 0


def test_replayed_and_concurrent_webhooks_credit_once(stack: Stack) -> None:
    _, key = stack.new_org()
    session_id = top_up(stack, key, "10")
    assert wait_until(lambda: balance(stack, key) == 10)
    events = stack.stripe().v1.events.list(params={"type": "checkout.session.completed", "limit": 100}).data
    event = next(e for e in events if e.data.object.id == session_id)
    payload = json.dumps(event.to_dict()).encode()
    replies: list[Reply] = []
    threads = [
        threading.Thread(target=lambda: replies.append(deliver(stack, payload, signed(stack, payload))))
        for _ in range(4)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(r.status in (200, 503) for r in replies), [r.body for r in replies]
    assert {r.body["outcome"] for r in replies if r.status == 200} <= {"duplicate"}
    assert balance(stack, key) == 10


def test_forged_stale_or_missing_signatures_change_nothing(stack: Stack) -> None:
    _, key = stack.new_org()
    session_id = top_up(stack, key, "10")
    assert wait_until(lambda: balance(stack, key) == 10)
    forged = json.dumps(
        {
            "id": f"evt_forged_{uuid.uuid4().hex}",
            "type": "checkout.session.completed",
            "data": {"object": {"id": session_id}},
        }
    ).encode()
    for headers in (
        {"Content-Type": "application/json"},
        signed(stack, forged, secret="whsec_not_ours"),
        signed(stack, forged, at=int(time.time()) - 3600),
        {**signed(stack, forged), "Stripe-Signature": "t=1,v1=deadbeef"},
    ):
        reply = deliver(stack, forged, headers)
        assert (reply.status, reply.body["error"]["code"]) == (400, "invalid_signature")
    assert balance(stack, key) == 10


def test_auto_reload_charges_once_even_when_fired_twice_at_once(stack: Stack) -> None:
    email = f"reload-{uuid.uuid4().hex[:8]}@example.com"
    _, key = stack.new_org(email=email)
    assert (
        stack.call(
            "PUT", "/v1/billing/auto-reload", {"enabled": True, "threshold": "5", "amount": "25"}, key=key
        ).status
        == 409
    )  # no saved card yet
    top_up(stack, key, "10")
    assert wait_until(lambda: balance(stack, key) == 10)
    # The webhook credits first and saves the card just after: wait for both.
    assert wait_until(lambda: stack.billing(key)["saved_card"] is not None)
    settings = stack.call(
        "PUT", "/v1/billing/auto-reload", {"enabled": True, "threshold": "9.99999", "amount": "25"}, key=key
    )
    assert settings.status == 200 and settings.body["auto_reload"]["enabled"] is True
    assert stack.run_job("AutoReloadFunction").body["result"].get("charged", 0) == 0  # not crossed: nothing
    stack.sdk(key).chat.completions.create(model="test/cheap", messages=HELLO)
    after_request = balance(stack, key)
    assert after_request < Decimal("9.99999")
    runs = [threading.Thread(target=stack.run_job, args=("AutoReloadFunction",)) for _ in range(2)]
    for t in runs:
        t.start()
    for t in runs:
        t.join()
    assert wait_until(lambda: balance(stack, key) == after_request + 25)
    time.sleep(1.5)  # let the payment_intent.succeeded webhook arrive too
    assert balance(stack, key) == after_request + 25
    entries = stack.call("GET", "/v1/billing/ledger", key=key).body["data"]
    assert [e["type"] for e in entries].count("auto_reload") == 1
    assert stack.billing(key)["auto_reload"]["last_result"]["status"] == "succeeded"
    assert [m["subject"] for m in stack.emails(email)].count("Conduix: auto-reload added 25 credits") == 1
    assert stack.run_job("AutoReloadFunction").body["result"].get("charged", 0) == 0  # episode over


def test_a_declining_card_credits_nothing_emails_and_turns_off_after_three(stack: Stack) -> None:
    email = f"decline-{uuid.uuid4().hex[:8]}@example.com"
    _, key = stack.new_org(email=email)
    top_up(stack, key, "10", card="4000000000000341")  # pays now, declines off-session later
    assert wait_until(lambda: balance(stack, key) == 10)
    stack.call(
        "PUT", "/v1/billing/auto-reload", {"enabled": True, "threshold": "10", "amount": "25"}, key=key
    )
    for attempt in range(1, 4):
        stack.sdk(key).chat.completions.create(model="test/cheap", messages=HELLO)  # below the threshold
        before = balance(stack, key)
        assert stack.run_job("AutoReloadFunction").body["result"] == {"orgs": 1, "failed": 1}
        reload = stack.billing(key)["auto_reload"]
        assert (reload["consecutive_failures"], reload["last_result"]["status"]) == (attempt, "failed")
        assert balance(stack, key) == before
    assert stack.billing(key)["auto_reload"]["enabled"] is False
    failures = [m for m in stack.emails(email) if m["subject"] == "Conduix: auto-reload failed"]
    assert len(failures) == 3 and "turned off" in failures[-1]["body"]


def test_a_refund_reverses_the_credits(stack: Stack) -> None:
    _, key = stack.new_org()
    session_id = top_up(stack, key, "50")
    assert wait_until(lambda: balance(stack, key) == 50)
    intent = stack.stripe().v1.checkout.sessions.retrieve(session_id).payment_intent
    stripe = stack.stripe()
    stripe.v1.refunds.create(params={"payment_intent": intent, "amount": 2000})
    assert wait_until(lambda: balance(stack, key) == 30)
    stripe.v1.refunds.create(params={"payment_intent": intent})  # the rest
    assert wait_until(lambda: balance(stack, key) == 0)
    time.sleep(1)
    assert balance(stack, key) == 0
    assert [e["type"] for e in stack.call("GET", "/v1/billing/ledger", key=key).body["data"]][:2] == [
        "refund"
    ] * 2


def test_a_dispute_takes_the_credits_back_and_requests_are_refused(stack: Stack) -> None:
    import urllib.request

    _, key = stack.new_org()
    session_id = top_up(stack, key, "10")
    assert wait_until(lambda: balance(stack, key) == 10)
    stack.sdk(key).chat.completions.create(model="test/cheap", messages=HELLO)
    intent = stack.stripe().v1.checkout.sessions.retrieve(session_id).payment_intent
    request = urllib.request.Request(
        stack.stripe_url + "/_local/disputes",
        data=json.dumps({"payment_intent": intent}).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    urllib.request.urlopen(request, timeout=10).close()
    assert wait_until(lambda: balance(stack, key) < 0)
    refused = stack.call("POST", "/v1/chat/completions", {"model": "test/cheap", "messages": HELLO}, key=key)
    assert (refused.status, refused.body["error"]["code"]) == (402, "insufficient_credits")


def test_the_paused_notice_goes_out_once_per_pause(stack: Stack) -> None:
    email = f"paused-{uuid.uuid4().hex[:8]}@example.com"
    org_id, key = stack.new_org(email=email)
    for _ in range(5):
        assert (
            stack.call(
                "POST", "/v1/chat/completions", {"model": "test/cheap", "messages": HELLO}, key=key
            ).status
            == 402
        )
    assert stack.billing(key)["account_state"] == "paused"
    paused = [m for m in stack.emails(email) if "paused" in m["subject"]]
    assert len(paused) == 1
    stack.operator(
        "POST",
        f"/admin/orgs/{org_id}/credits",
        {"amount": "0.000001", "reason": "r", "idempotency_key": "unpause"},
    )
    assert stack.billing(key)["account_state"] == "active"
    stack.call("POST", "/v1/chat/completions", {"model": "test/cheap", "messages": HELLO}, key=key)
    assert len([m for m in stack.emails(email) if "paused" in m["subject"]]) == 2  # a new pause, a new notice
