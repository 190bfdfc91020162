"""The local Stripe, driven as product code drives Stripe: the official SDK for the API, plain
HTTP for the hosted pages, and a webhook receiver that checks every signature."""

from __future__ import annotations

import json
import os
import re
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import stripe
from conduix_local.stripe_local import API_KEY, LocalStripe, advance_to

SECRET = "whsec_test_local"
PICKLE = "/tmp/localstripe.pickle"
Event = dict[str, Any]


class Receiver:
    """A webhook endpoint on loopback that keeps each verified event (in arrival order)."""

    def __init__(self) -> None:
        self.failures_left = 0  # answer 500 to this many deliveries first
        self._events: list[Event] = []
        self._cond = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                payload = self.rfile.read(int(self.headers["Content-Length"]))
                with receiver._cond:
                    failing = receiver.failures_left > 0
                    receiver.failures_left -= failing
                if not failing:
                    # Raises SignatureVerificationError (a 500 here, then a test failure) if wrong.
                    stripe.Webhook.construct_event(payload.decode(), self.headers["Stripe-Signature"], SECRET)
                    with receiver._cond:
                        receiver._events.append(json.loads(payload))
                        receiver._cond.notify_all()
                self.send_response(500 if failing else 200)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05})
        self._thread.start()
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/webhooks/stripe"

    def stop(self) -> None:
        self._server.shutdown()
        self._thread.join()
        self._server.server_close()

    def clear(self) -> None:
        with self._cond:
            self._events.clear()
            self.failures_left = 0

    def events(self) -> list[Event]:
        with self._cond:
            return list(self._events)

    def types(self) -> list[str]:
        return [e["type"] for e in self.events()]

    def wait(self, type_: str, predicate: Callable[[Event], bool] | None = None, timeout: float = 5) -> Event:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for event in self._events:
                    if event["type"] == type_ and (predicate is None or predicate(event)):
                        return event
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"no delivered {type_}; got {[e['type'] for e in self._events]}")
                self._cond.wait(left)


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def server(receiver: Receiver) -> Iterator[LocalStripe]:
    pickle_before = os.stat(PICKLE).st_mtime if os.path.exists(PICKLE) else None
    with LocalStripe(webhook_delay=0.05, async_payment_delay=0.3, webhook_retries=(0.1,)) as local:
        local.register_webhook(receiver.url, SECRET)
        yield local
    # No pickle was written to /tmp: two stacks can run side by side.
    assert (os.stat(PICKLE).st_mtime if os.path.exists(PICKLE) else None) == pickle_before


@pytest.fixture
def local(server: LocalStripe, receiver: Receiver) -> LocalStripe:
    server.reset()
    receiver.clear()
    return server


@pytest.fixture
def client(local: LocalStripe) -> stripe.StripeClient:
    return stripe.StripeClient(API_KEY, base_addresses={"api": local.url}, max_network_retries=0)


# ------------------------------------------------------------------ helpers


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


_opener = urllib.request.build_opener(_NoRedirect)


def http(
    url: str, form: dict[str, str] | None = None, method: str | None = None
) -> tuple[int, dict[str, str], bytes]:
    """(status, headers, body) of a plain HTTP request; redirects are not followed."""
    data = urllib.parse.urlencode(form).encode() if form is not None else None
    request = urllib.request.Request(url, data=data, method=method)
    try:
        with _opener.open(request, timeout=10) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def api_post(local: LocalStripe, path: str, form: dict[str, str], key: str, api_key: str = API_KEY) -> Any:
    request = urllib.request.Request(
        local.url + path,
        data=urllib.parse.urlencode(form).encode(),
        headers={"Authorization": f"Bearer {api_key}", "Idempotency-Key": key},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def new_customer(client: stripe.StripeClient, org: str = "org_1") -> str:
    customer = client.v1.customers.create(
        params={"email": f"{org}@example.com", "name": f"Org {org}", "metadata": {"org_id": org}}
    )
    return str(customer.id)


def top_up_session(client: stripe.StripeClient, customer: str, cents: int = 5000, **extra: Any) -> Any:
    """The Checkout Session product code makes for a credit top-up."""
    metadata = {"org_id": "org_1", "credits": str(cents // 100), "purpose": "top_up"}
    params: dict[str, Any] = {
        "mode": "payment",
        "customer": customer,
        "client_reference_id": "org_1",
        "line_items": [
            {
                "price_data": {
                    "currency": "usd",
                    "unit_amount": cents,
                    "product_data": {"name": f"{cents // 100} Conduix credits"},
                },
                "quantity": 1,
            }
        ],
        "invoice_creation": {
            "enabled": True,
            "invoice_data": {"description": f"{cents // 100} Conduix credits", "metadata": metadata},
        },
        "payment_intent_data": {"setup_future_usage": "off_session", "metadata": metadata},
        "metadata": metadata,
        "success_url": "https://app.example/billing?session={CHECKOUT_SESSION_ID}",
        "cancel_url": "https://app.example/billing",
        **extra,
    }
    return client.v1.checkout.sessions.create(params=params)


def pay(url: str, card: str) -> tuple[int, dict[str, str], str]:
    status, headers, body = http(url, {"card": card})
    return status, headers, body.decode()


def saved_card(client: stripe.StripeClient, customer: str, card: str) -> str:
    """A card saved without the page: a PaymentMethod made from a number, attached."""
    pm = client.v1.payment_methods.create(
        params={"type": "card", "card": {"number": card, "exp_month": 12, "exp_year": 2034, "cvc": "123"}}
    )
    client.v1.payment_methods.attach(pm.id, params={"customer": customer})
    return str(pm.id)


def is_subsequence(wanted: list[str], seen: list[str]) -> bool:
    it = iter(seen)
    return all(any(s == w for s in it) for w in wanted)


def assert_pdf(data: bytes) -> None:
    assert data.startswith(b"%PDF-1.4") and data.rstrip().endswith(b"%%EOF")
    xref = int(data.rsplit(b"startxref", 1)[1].split()[0])
    assert data[xref:].startswith(b"xref")
    table = data[xref:].split(b"\n")
    count = int(table[1].split()[1])
    for number, row in enumerate(table[3 : 2 + count], start=1):
        assert data[int(row[:10]) :].startswith(b"%d 0 obj" % number)


# ------------------------------------------------------------------ customers and idempotency


def test_customer_create_is_idempotent_and_conflicts_on_other_params(client: stripe.StripeClient) -> None:
    params = {"email": "a@example.com", "name": "Acme", "metadata": {"org_id": "org_1"}}
    first = client.v1.customers.create(params=params, options={"idempotency_key": "customer-org_1"})
    again = client.v1.customers.create(params=params, options={"idempotency_key": "customer-org_1"})
    assert again.id == first.id and first.id.startswith("cus_")
    assert first.metadata.to_dict() == {"org_id": "org_1"} and first.email == "a@example.com"
    assert len(client.v1.customers.list().data) == 1
    with pytest.raises(stripe.IdempotencyError) as caught:
        client.v1.customers.create(
            params={**params, "name": "Other"}, options={"idempotency_key": "customer-org_1"}
        )
    assert caught.value.http_status == 400 and "same parameters" in str(caught.value)
    assert client.v1.customers.retrieve(first.id).name == "Acme"
    with pytest.raises(stripe.IdempotencyError):  # a key belongs to one endpoint and its parameters
        client.v1.products.create(params={"name": "x"}, options={"idempotency_key": "customer-org_1"})


def test_replay_is_byte_identical_and_scoped_by_api_key(local: LocalStripe) -> None:
    form = {"email": "b@example.com", "metadata[org_id]": "org_2"}
    status, headers, body = api_post(local, "/v1/customers", form, "k1")
    status2, headers2, body2 = api_post(local, "/v1/customers", form, "k1")
    assert (status, body) == (status2, body2) == (200, body)
    assert headers2["Idempotent-Replayed"] == "true" and "Idempotent-Replayed" not in headers
    _, _, other = api_post(local, "/v1/customers", form, "k1", api_key="sk_test_someone_else")
    assert json.loads(other)["id"] != json.loads(body)["id"]


def test_customer_update_default_payment_method(client: stripe.StripeClient) -> None:
    customer = new_customer(client)
    pm = saved_card(client, customer, "4242424242424242")
    updated = client.v1.customers.update(
        customer, params={"invoice_settings": {"default_payment_method": pm}}
    )
    assert updated.invoice_settings.default_payment_method == pm
    stranger = client.v1.payment_methods.create(params={"type": "card", "card": {"token": "tok_visa"}})
    with pytest.raises(stripe.InvalidRequestError) as caught:
        client.v1.customers.update(
            customer, params={"invoice_settings": {"default_payment_method": stranger.id}}
        )
    assert caught.value.param == "invoice_settings[default_payment_method]"


# ------------------------------------------------------------------ Checkout, payment mode


def test_checkout_payment_through_the_page(
    client: stripe.StripeClient, local: LocalStripe, receiver: Receiver
) -> None:
    customer = new_customer(client)
    session = top_up_session(client, customer)
    assert session.id.startswith("cs_test_") and session.object == "checkout.session"
    assert (session.status, session.payment_status, session.mode) == ("open", "unpaid", "payment")
    assert (session.amount_total, session.currency, session.customer) == (5000, "usd", customer)
    assert session.payment_intent is None and session.invoice is None and session.subscription is None
    assert session.expires_at > session.created and session.url == f"{local.url}/pay/{session.id}"

    status, _, page = http(session.url)
    html = page.decode()
    assert status == 200 and '<html lang="en">' in html and "$50.00" in html and "50 Conduix credits" in html
    assert '<label for="card">' in html and 'name="card"' in html and 'value="4242424242424242"' in html
    assert "local stand-in of Stripe Checkout" in html

    status, headers, _ = pay(session.url, "4242424242424242")
    assert status == 303 and headers["Location"] == f"https://app.example/billing?session={session.id}"

    done = client.v1.checkout.sessions.retrieve(
        session.id, params={"expand": ["payment_intent", "payment_intent.payment_method", "invoice"]}
    )
    assert (done.status, done.payment_status) == ("complete", "paid")
    intent, invoice = done.payment_intent, done.invoice
    assert intent.status == "succeeded" and intent.amount_received == 5000 and intent.customer == customer
    assert intent.metadata.to_dict() == {"org_id": "org_1", "credits": "50", "purpose": "top_up"}
    card = intent.payment_method.card
    assert (card.brand, card.last4, card.exp_month, card.exp_year) == ("visa", "4242", 12, 2034)
    assert intent.payment_method.customer == customer
    assert (
        client.v1.customers.retrieve(customer).invoice_settings.default_payment_method
        == intent.payment_method.id
    )
    charge = client.v1.charges.retrieve(intent.latest_charge)
    assert (
        charge.paid
        and charge.metadata.to_dict() == intent.metadata.to_dict()
        and charge.payment_intent == intent.id
    )
    assert (invoice.status, invoice.amount_paid, invoice.total, invoice.customer) == (
        "paid",
        5000,
        5000,
        customer,
    )
    assert re.fullmatch(r"[0-9A-F]{8}-0001", invoice.number)
    assert invoice.metadata.to_dict()["purpose"] == "top_up" and invoice.description == "50 Conduix credits"

    wanted = [
        "payment_intent.succeeded",
        "charge.succeeded",
        "checkout.session.completed",
        "invoice.paid",
        "invoice.payment_succeeded",
    ]
    receiver.wait("invoice.payment_succeeded")
    assert is_subsequence(wanted, receiver.types()), receiver.types()
    completed = receiver.wait("checkout.session.completed")
    assert (
        completed["data"]["object"]["id"] == session.id
        and completed["data"]["object"]["invoice"] == invoice.id
    )
    assert completed["object"] == "event" and completed["livemode"] is False and completed["api_version"]

    # The same session cannot take a second payment.
    status, _, page_text = pay(session.url, "4242424242424242")
    assert status == 409 and "already complete" in page_text
    assert len(client.v1.charges.list(params={"customer": customer}).data) == 1


@pytest.mark.parametrize(
    ("card", "message"),
    [
        ("4000000000000002", "Your card was declined."),
        ("4000000000009995", "Your card has insufficient funds."),
        ("4242424242424241", "Your card number is incorrect."),
    ],
)
def test_checkout_decline_keeps_the_session_open(
    client: stripe.StripeClient, local: LocalStripe, card: str, message: str
) -> None:
    session = top_up_session(client, new_customer(client))
    status, _, page = pay(session.url, card)
    assert status == 402 and message in page and 'role="alert"' in page and 'aria-invalid="true"' in page
    assert client.v1.checkout.sessions.retrieve(session.id).status == "open"
    assert not local.events("checkout.session.completed") and not local.events("charge.succeeded")
    # A good card afterwards completes the same session.
    assert pay(session.url, "4242 4242 4242 4242")[0] == 303
    assert client.v1.checkout.sessions.retrieve(session.id).payment_status == "paid"


@pytest.mark.parametrize(("card", "paid"), [("async_success", True), ("async_failure", False)])
def test_checkout_delayed_payment(
    client: stripe.StripeClient, local: LocalStripe, receiver: Receiver, card: str, paid: bool
) -> None:
    session = top_up_session(client, new_customer(client))
    assert pay(session.url, card)[0] == 303
    now = client.v1.checkout.sessions.retrieve(session.id, params={"expand": ["payment_intent"]})
    assert (now.status, now.payment_status, now.payment_intent.status) == ("complete", "unpaid", "processing")
    completed = receiver.wait("checkout.session.completed")
    assert completed["data"]["object"]["payment_status"] == "unpaid"
    outcome = "succeeded" if paid else "failed"
    event = receiver.wait(f"checkout.session.async_payment_{outcome}")
    assert event["data"]["object"]["payment_status"] == ("paid" if paid else "unpaid")
    after = client.v1.checkout.sessions.retrieve(session.id, params={"expand": ["payment_intent", "invoice"]})
    assert after.payment_intent.status == ("succeeded" if paid else "requires_payment_method")
    assert (after.invoice is not None and after.invoice.status == "paid") if paid else after.invoice is None


def test_card_0341_pays_at_checkout_then_fails_off_session(client: stripe.StripeClient) -> None:
    customer = new_customer(client)
    session = top_up_session(client, customer)
    assert pay(session.url, "4000000000000341")[0] == 303
    pm = client.v1.customers.retrieve(customer).invoice_settings.default_payment_method
    with pytest.raises(stripe.CardError) as caught:
        client.v1.payment_intents.create(
            params={
                "amount": 2500,
                "currency": "usd",
                "customer": customer,
                "payment_method": pm,
                "off_session": True,
                "confirm": True,
            },
        )
    assert caught.value.code == "card_declined"


def test_session_expire_and_list(client: stripe.StripeClient, receiver: Receiver) -> None:
    customer = new_customer(client)
    session = top_up_session(client, customer)
    expired = client.v1.checkout.sessions.expire(session.id)
    assert expired.status == "expired" and expired.url is None
    assert receiver.wait("checkout.session.expired")["data"]["object"]["id"] == session.id
    assert http(session.url)[0] == 410
    listed = client.v1.checkout.sessions.list(params={"customer": customer})
    assert [s.id for s in listed.data] == [session.id]


# ------------------------------------------------------------------ payment methods and off-session charges


def test_payment_methods_create_attach_list(client: stripe.StripeClient) -> None:
    customer = new_customer(client)
    token_pm = client.v1.payment_methods.create(params={"type": "card", "card": {"token": "tok_mastercard"}})
    assert token_pm.card.brand == "mastercard" and token_pm.card.last4 == "4444" and token_pm.customer is None
    client.v1.payment_methods.attach(token_pm.id, params={"customer": customer})
    number_pm = saved_card(client, customer, "4242424242424242")
    listed = client.v1.payment_methods.list(params={"customer": customer, "type": "card"})
    assert {pm.id for pm in listed.data} == {token_pm.id, number_pm}
    assert client.v1.payment_methods.retrieve(number_pm).customer == customer
    declining = client.v1.payment_methods.create(
        params={"type": "card", "card": {"token": "tok_chargeDeclined"}}
    )
    with pytest.raises(stripe.CardError) as caught:
        client.v1.payment_methods.attach(declining.id, params={"customer": customer})
    assert caught.value.code == "card_declined"


def test_off_session_charge_and_replay_without_double_charge(
    client: stripe.StripeClient, receiver: Receiver
) -> None:
    customer = new_customer(client)
    pm = saved_card(client, customer, "4242424242424242")
    params = {
        "amount": 2500,
        "currency": "usd",
        "customer": customer,
        "payment_method": pm,
        "off_session": True,
        "confirm": True,
        "description": "Auto-reload",
        "metadata": {"purpose": "auto_reload", "episode": "1"},
    }
    intent = client.v1.payment_intents.create(params=params, options={"idempotency_key": "reload-org_1-1"})
    again = client.v1.payment_intents.create(params=params, options={"idempotency_key": "reload-org_1-1"})
    assert intent.status == "succeeded" and again.id == intent.id and intent.latest_charge.startswith("ch_")
    assert len(client.v1.charges.list(params={"customer": customer}).data) == 1
    expanded = client.v1.payment_intents.retrieve(intent.id, params={"expand": ["latest_charge"]})
    assert expanded.latest_charge.amount == 2500 and expanded.latest_charge.metadata.episode == "1"
    receiver.wait("charge.succeeded")
    assert receiver.wait("payment_intent.succeeded")["data"]["object"]["id"] == intent.id


@pytest.mark.parametrize(
    ("card", "code", "decline_code"),
    [
        ("4000000000000341", "card_declined", "generic_decline"),
        ("4000000000000002", "card_declined", "generic_decline"),
        ("4000000000009995", "card_declined", "insufficient_funds"),
        ("4000002500003155", "authentication_required", "authentication_required"),
    ],
)
def test_off_session_failures(
    client: stripe.StripeClient, receiver: Receiver, card: str, code: str, decline_code: str
) -> None:
    customer = new_customer(client)
    pm = client.v1.payment_methods.create(
        params={"type": "card", "card": {"number": card, "exp_month": 1, "exp_year": 2031, "cvc": "123"}}
    )
    params = {
        "amount": 2500,
        "currency": "usd",
        "customer": customer,
        "payment_method": pm.id,
        "off_session": True,
        "confirm": True,
        "metadata": {"purpose": "auto_reload"},
    }
    for _ in range(2):  # the replay answers the same decline and charges nothing more
        with pytest.raises(stripe.CardError) as caught:
            client.v1.payment_intents.create(params=params, options={"idempotency_key": f"reload-{card}"})
        assert (caught.value.code, caught.value.error.decline_code) == (code, decline_code)
        intent = caught.value.error.payment_intent
        assert intent.status == "requires_payment_method" and intent.last_payment_error.code == code
    assert len(client.v1.payment_intents.list(params={"customer": customer}).data) == 1
    failed = receiver.wait("payment_intent.payment_failed")
    assert failed["data"]["object"]["id"] == intent.id
    assert failed["data"]["object"]["last_payment_error"]["message"]


def test_card_3155_set_up_through_checkout_pays_off_session(client: stripe.StripeClient) -> None:
    customer = new_customer(client)
    assert pay(top_up_session(client, customer).url, "4000002500003155")[0] == 303
    pm = client.v1.customers.retrieve(customer).invoice_settings.default_payment_method
    intent = client.v1.payment_intents.create(
        params={
            "amount": 2500,
            "currency": "usd",
            "customer": customer,
            "payment_method": pm,
            "off_session": True,
            "confirm": True,
        },
    )
    assert intent.status == "succeeded"


# ------------------------------------------------------------------ refunds, disputes, invoices, events


def test_refunds_and_disputes(client: stripe.StripeClient, local: LocalStripe, receiver: Receiver) -> None:
    customer = new_customer(client)
    pm = saved_card(client, customer, "4242424242424242")
    intents = [
        client.v1.payment_intents.create(
            params={
                "amount": 3000,
                "currency": "usd",
                "customer": customer,
                "payment_method": pm,
                "off_session": True,
                "confirm": True,
            },
        )
        for _ in range(2)
    ]
    part = client.v1.refunds.create(params={"payment_intent": intents[0].id, "amount": 1000})
    assert (part.amount, part.status, part.payment_intent) == (1000, "succeeded", intents[0].id)
    client.v1.refunds.create(params={"charge": intents[0].latest_charge})
    charge = client.v1.charges.retrieve(intents[0].latest_charge)
    assert charge.refunded and charge.amount_refunded == 3000
    with pytest.raises(stripe.InvalidRequestError):
        client.v1.refunds.create(params={"payment_intent": intents[0].id})
    receiver.wait("charge.refunded", lambda e: e["data"]["object"]["refunded"])
    refunded = [e["data"]["object"] for e in receiver.events() if e["type"] == "charge.refunded"]
    assert [c["amount_refunded"] for c in refunded] == [1000, 3000]
    assert {c["payment_intent"] for c in refunded} == {intents[0].id}

    status, _, body = http(f"{local.url}/_local/disputes", {"charge": intents[1].latest_charge})
    dispute = json.loads(body)
    assert status == 200 and dispute["id"].startswith("dp_") and dispute["object"] == "dispute"
    assert (dispute["status"], dispute["reason"], dispute["amount"]) == ("needs_response", "fraudulent", 3000)
    assert (dispute["charge"], dispute["payment_intent"], dispute["currency"]) == (
        intents[1].latest_charge,
        intents[1].id,
        "usd",
    )
    event = receiver.wait("charge.dispute.created")
    assert event["data"]["object"]["id"] == dispute["id"]
    assert client.v1.disputes.retrieve(dispute["id"]).charge == intents[1].latest_charge


def test_card_0259_is_disputed_after_paying(client: stripe.StripeClient, local: LocalStripe) -> None:
    session = top_up_session(client, new_customer(client))
    assert pay(session.url, "4000000000000259")[0] == 303
    intent = client.v1.checkout.sessions.retrieve(session.id).payment_intent
    dispute = local.wait_for_event("charge.dispute.created", timeout=3)["data"]["object"]
    assert dispute["payment_intent"] == intent and dispute["reason"] == "fraudulent"
    with pytest.raises(stripe.InvalidRequestError) as caught:
        client.v1.refunds.create(params={"payment_intent": intent})
    assert caught.value.code == "charge_disputed"


def test_dispute_hook_takes_json(client: stripe.StripeClient, local: LocalStripe) -> None:
    customer = new_customer(client)
    intent = client.v1.payment_intents.create(
        params={
            "amount": 900,
            "currency": "usd",
            "customer": customer,
            "confirm": True,
            "off_session": True,
            "payment_method": saved_card(client, customer, "4242424242424242"),
        },
    )
    request = urllib.request.Request(
        f"{local.url}/_local/disputes",
        data=json.dumps({"charge": intent.latest_charge}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        assert json.loads(response.read())["amount"] == 900
    assert local.wait_for_event("charge.dispute.created")["data"]["object"]["payment_intent"] == intent.id


def test_invoices_list_with_working_links(client: stripe.StripeClient) -> None:
    customer = new_customer(client)
    for cents in (5000, 2000):
        assert pay(top_up_session(client, customer, cents).url, "4242424242424242")[0] == 303
    invoices = client.v1.invoices.list(params={"customer": customer, "limit": 100}).data
    assert [i.total for i in invoices] == [2000, 5000]  # newest first
    for inv in invoices:
        assert (
            inv.status == "paid" and inv.amount_paid == inv.amount_due == inv.total and inv.currency == "usd"
        )
        assert inv.lines.data[0].amount == inv.total and inv.created and inv.metadata.purpose == "top_up"
        status, headers, page = http(inv.hosted_invoice_url)
        assert (
            status == 200 and headers["Content-Type"].startswith("text/html") and inv.number in page.decode()
        )
        status, headers, pdf = http(inv.invoice_pdf)
        assert status == 200 and headers["Content-Type"] == "application/pdf"
        assert_pdf(pdf)
    assert invoices[0].number.endswith("-0002") and invoices[1].number.endswith("-0001")


def test_events_api(client: stripe.StripeClient, local: LocalStripe) -> None:
    customer = new_customer(client)
    created = local.wait_for_event("customer.created", lambda e: e["data"]["object"]["id"] == customer)
    fetched = client.v1.events.retrieve(created["id"])
    assert fetched.type == "customer.created" and fetched.data.object.id == customer
    assert (
        fetched.id.startswith("evt_")
        and fetched.livemode is False
        and fetched.api_version == stripe.api_version
    )
    listed = client.v1.events.list(params={"type": "customer.created"})
    assert [e.id for e in listed.data] == [created["id"]]


def test_webhook_delivery_is_retried(
    client: stripe.StripeClient, local: LocalStripe, receiver: Receiver
) -> None:
    receiver.failures_left = 1
    customer = new_customer(client)
    assert receiver.wait("customer.created")["data"]["object"]["id"] == customer
    deadline = time.monotonic() + 5
    while len(attempts := [d for d in local.deliveries() if d["type"] == "customer.created"]) < 2:
        assert time.monotonic() < deadline, attempts
        time.sleep(0.02)
    assert [(d["attempt"], d["status"]) for d in attempts] == [(1, 500), (2, 200)]


def test_errors_look_like_stripe(client: stripe.StripeClient, local: LocalStripe) -> None:
    with pytest.raises(stripe.InvalidRequestError) as caught:
        client.v1.payment_intents.create(params={"amount": 2500, "currency": "usd", "colour": "red"})
    assert caught.value.param == "colour"
    with pytest.raises(stripe.InvalidRequestError) as caught:
        client.v1.customers.retrieve("cus_missing")
    assert caught.value.http_status == 404 and caught.value.code == "resource_missing"
    with pytest.raises(stripe.InvalidRequestError) as caught:
        client.v1.payment_intents.create(params={"amount": 20, "currency": "usd"})
    assert caught.value.code == "amount_too_small"
    anonymous = stripe.StripeClient("pk_test_nope", base_addresses={"api": local.url}, max_network_retries=0)
    with pytest.raises(stripe.AuthenticationError):
        anonymous.v1.customers.list()
    with pytest.raises(RuntimeError):
        LocalStripe().start()  # localstripe's state is per process: one server at a time


# ------------------------------------------------------------------ phase 2: prices and subscriptions


def builder_price(client: stripe.StripeClient, amount: int = 2900, key: str = "builder_monthly") -> str:
    product = client.v1.products.create(params={"name": "Builder plan", "metadata": {"plan": "builder"}})
    price = client.v1.prices.create(
        params={
            "unit_amount": amount,
            "currency": "usd",
            "recurring": {"interval": "month"},
            "product": product.id,
            "lookup_key": key,
            "metadata": {"plan": "builder"},
        },
    )
    return str(price.id)


def test_prices(client: stripe.StripeClient) -> None:
    price_id = builder_price(client)
    price = client.v1.prices.retrieve(price_id)
    assert (price.unit_amount, price.currency, price.type, price.recurring.interval) == (
        2900,
        "usd",
        "recurring",
        "month",
    )
    assert price.lookup_key == "builder_monthly" and price.metadata.plan == "builder" and price.active
    found = client.v1.prices.list(params={"lookup_keys": ["builder_monthly", "nope"]})
    assert [p.id for p in found.data] == [price_id]
    with pytest.raises(stripe.InvalidRequestError):
        builder_price(client, 3900)
    moved = client.v1.prices.create(
        params={
            "unit_amount": 3900,
            "currency": "usd",
            "recurring": {"interval": "month"},
            "product": price.product,
            "lookup_key": "builder_monthly",
            "transfer_lookup_key": True,
        },
    )
    assert [p.id for p in client.v1.prices.list(params={"lookup_keys": ["builder_monthly"]}).data] == [
        moved.id
    ]


def subscribe(client: stripe.StripeClient, customer: str, price: str, card: str = "4242424242424242") -> Any:
    session = client.v1.checkout.sessions.create(
        params={
            "mode": "subscription",
            "customer": customer,
            "line_items": [{"price": price, "quantity": 1}],
            "subscription_data": {"metadata": {"org_id": "org_1", "plan": "builder"}},
            "metadata": {"org_id": "org_1", "purpose": "plan"},
            "success_url": "https://app.example/plans?session={CHECKOUT_SESSION_ID}",
            "cancel_url": "https://app.example/plans",
        }
    )
    assert pay(session.url, card)[0] == 303
    return client.v1.checkout.sessions.retrieve(session.id, params={"expand": ["subscription", "invoice"]})


def test_subscription_checkout_cycle_update_cancel(
    client: stripe.StripeClient, local: LocalStripe, receiver: Receiver
) -> None:
    customer = new_customer(client)
    price = builder_price(client)
    session = subscribe(client, customer, price)
    sub, first = session.subscription, session.invoice
    assert (session.status, session.payment_status, sub.status, sub.customer) == (
        "complete",
        "paid",
        "active",
        customer,
    )
    assert sub.id.startswith("sub_") and sub.metadata.to_dict() == {"org_id": "org_1", "plan": "builder"}
    item = sub["items"].data[0]
    assert item.price.id == price and item.quantity == 1
    start, end = item.current_period_start, item.current_period_end  # periods live on items
    assert 28 * 86400 <= end - start <= 31 * 86400 and sub.latest_invoice == first.id
    assert (first.status, first.billing_reason, first.amount_paid) == ("paid", "subscription_create", 2900)
    assert first.parent.subscription_details.subscription == sub.id
    line = first.lines.data[0]
    assert line.pricing.price_details.price == price and (line.period.start, line.period.end) == (start, end)
    completed = receiver.wait("checkout.session.completed")
    assert completed["data"]["object"]["subscription"] == sub.id
    assert {"customer.subscription.created", "invoice.paid"} <= set(receiver.types())

    status, _, body = http(f"{local.url}/_local/subscriptions/{sub.id}/cycle", {})
    renewal = json.loads(body)["invoice"]
    assert status == 200 and renewal["billing_reason"] == "subscription_cycle" and renewal["status"] == "paid"
    assert renewal["amount_paid"] == 2900 and renewal["lines"]["data"][0]["period"]["start"] == end
    receiver.wait("invoice.paid", lambda e: e["data"]["object"]["id"] == renewal["id"])
    renewed = client.v1.subscriptions.retrieve(sub.id)
    assert renewed["items"].data[0].current_period_start == end and renewed.latest_invoice == renewal["id"]
    updated = receiver.wait(
        "customer.subscription.updated",
        lambda e: e["data"]["object"]["items"]["data"][0]["current_period_start"] == end,
    )
    assert updated["data"]["previous_attributes"]["items"]["data"][0]["current_period_start"] == start

    yearly = client.v1.prices.create(
        params={
            "unit_amount": 29000,
            "currency": "usd",
            "recurring": {"interval": "year"},
            "product": item.price.product,
        }
    )
    with pytest.raises(stripe.InvalidRequestError):  # one interval per subscription; nothing changes
        client.v1.subscriptions.update(sub.id, params={"items": [{"price": yearly.id}]})
    assert len(client.v1.subscriptions.retrieve(sub.id)["items"].data) == 1
    team = builder_price(client, 9900, "team_monthly")
    changed = client.v1.subscriptions.update(
        sub.id, params={"items": [{"id": item.id, "price": team}], "proration_behavior": "none"}
    )
    assert changed["items"].data[0].price.id == team and changed["items"].data[0].id == item.id
    receiver.wait(
        "customer.subscription.updated",
        lambda e: e["data"]["object"]["items"]["data"][0]["price"]["id"] == team,
    )
    assert [s.id for s in client.v1.subscriptions.list(params={"customer": customer}).data] == [sub.id]

    canceled = client.v1.subscriptions.cancel(sub.id)
    assert canceled.status == "canceled" and canceled.canceled_at
    assert receiver.wait("customer.subscription.deleted")["data"]["object"]["id"] == sub.id
    assert client.v1.subscriptions.list(params={"customer": customer}).data == []


def test_subscription_created_through_the_api(client: stripe.StripeClient, receiver: Receiver) -> None:
    customer = new_customer(client)
    price = builder_price(client)
    card = saved_card(client, customer, "4242424242424242")
    client.v1.customers.update(customer, params={"invoice_settings": {"default_payment_method": card}})
    sub = client.v1.subscriptions.create(params={"customer": customer, "items": [{"price": price}]})
    assert sub.status == "active" and sub.default_payment_method is None
    assert client.v1.invoices.retrieve(sub.latest_invoice).status == "paid"
    declined = new_customer(client, "org_2")
    client.v1.customers.update(
        declined,
        params={
            "invoice_settings": {"default_payment_method": saved_card(client, declined, "4000000000000341")}
        },
    )
    stuck = client.v1.subscriptions.create(params={"customer": declined, "items": [{"price": price}]})
    assert stuck.status == "incomplete"
    assert client.v1.invoices.retrieve(stuck.latest_invoice).status == "open"
    with pytest.raises(stripe.CardError):
        client.v1.subscriptions.create(
            params={
                "customer": declined,
                "items": [{"price": price}],
                "payment_behavior": "error_if_incomplete",
            }
        )


def test_subscription_renewal_failure_goes_past_due(
    client: stripe.StripeClient, local: LocalStripe, receiver: Receiver
) -> None:
    customer = new_customer(client)
    sub = subscribe(client, customer, builder_price(client)).subscription
    failing = saved_card(client, customer, "4000000000000341")
    client.v1.subscriptions.update(sub.id, params={"default_payment_method": failing})
    cycled = json.loads(http(f"{local.url}/_local/subscriptions/{sub.id}/cycle", {})[2])
    invoice = client.v1.invoices.retrieve(cycled["invoice"]["id"])
    assert (invoice.status, invoice.amount_due, invoice.amount_paid, invoice.attempt_count) == (
        "open",
        2900,
        0,
        1,
    )
    assert client.v1.subscriptions.retrieve(sub.id).status == "past_due"
    receiver.wait("invoice.payment_failed", lambda e: e["data"]["object"]["id"] == invoice.id)
    receiver.wait("customer.subscription.updated", lambda e: e["data"]["object"]["status"] == "past_due")
    # A new card and a retry bring it back.
    good = saved_card(client, customer, "4242424242424242")
    paid = client.v1.invoices.pay(invoice.id, params={"payment_method": good})
    assert paid.status == "paid" and client.v1.subscriptions.retrieve(sub.id).status == "active"


# ------------------------------------------------------------------ phase 2: send_invoice (NET-30)


def test_send_invoice_net30(client: stripe.StripeClient, local: LocalStripe, receiver: Receiver) -> None:
    customer = new_customer(client, "org_ent")
    params = {
        "customer": customer,
        "collection_method": "send_invoice",
        "days_until_due": 30,
        "custom_fields": [{"name": "PO number", "value": "PO-123"}],
        "description": "Conduix usage, March",
        "metadata": {"org_id": "org_ent", "period": "2026-03"},
        "auto_advance": False,
        "pending_invoice_items_behavior": "exclude",
    }
    draft = client.v1.invoices.create(params=params, options={"idempotency_key": "invoice-org_ent-2026-03"})
    assert (
        client.v1.invoices.create(params=params, options={"idempotency_key": "invoice-org_ent-2026-03"}).id
        == draft.id
    )
    assert (draft.status, draft.number, draft.hosted_invoice_url, draft.total) == ("draft", None, None, 0)
    for amount, what in ((1234, "Usage: 1,234 credits"), (10000, "Support plan")):
        client.v1.invoice_items.create(
            params={
                "customer": customer,
                "invoice": draft.id,
                "amount": amount,
                "currency": "usd",
                "description": what,
            }
        )
    final = client.v1.invoices.finalize_invoice(draft.id)
    assert (final.status, final.total, final.amount_due, final.amount_paid) == ("open", 11234, 11234, 0)
    assert final.number and final.collection_method == "send_invoice"
    assert final.due_date == final.status_transitions.finalized_at + 30 * 86400
    assert final.custom_fields[0].to_dict() == {"name": "PO number", "value": "PO-123"}
    assert [line.amount for line in final.lines.data] == [1234, 10000]
    sent = client.v1.invoices.send_invoice(draft.id)
    assert sent.status == "open"
    for event_type in ("invoice.created", "invoice.finalized", "invoice.sent"):
        assert receiver.wait(event_type)["data"]["object"]["id"] == draft.id
    opened = client.v1.invoices.list(params={"customer": customer, "status": "open"}).data
    assert [i.id for i in opened] == [draft.id]
    page = http(final.hosted_invoice_url)[2].decode()
    assert "PO-123" in page and "$112.34" in page
    assert_pdf(http(final.invoice_pdf)[2])
    # The customer pays on the hosted page.
    assert http(final.hosted_invoice_url, {"card": "4242424242424242"})[0] == 303
    assert client.v1.invoices.retrieve(draft.id).status == "paid"
    receiver.wait("invoice.paid", lambda e: e["data"]["object"]["id"] == draft.id)
    assert http(final.hosted_invoice_url, {"card": "4242424242424242"})[0] == 409  # paid once only


# ------------------------------------------------------------------ the test clock


def _types_for(events: list[Event], ids: set[str]) -> list[str]:
    return [e["type"] for e in events if e["data"]["object"]["id"] in ids]


def test_clock_renews_a_subscription_at_its_period_end(
    client: stripe.StripeClient, local: LocalStripe, receiver: Receiver
) -> None:
    customer = new_customer(client)
    sub = subscribe(client, customer, builder_price(client)).subscription
    end = sub["items"].data[0].current_period_end
    # Just past the period end: the renewal invoice is a draft, as Stripe's are for an hour.
    made = local.advance_to(datetime.fromtimestamp(end + 60, UTC))
    renewal = client.v1.subscriptions.retrieve(sub.id).latest_invoice
    draft = client.v1.invoices.retrieve(renewal)
    assert (draft.status, draft.billing_reason, draft.created) == ("draft", "subscription_cycle", end)
    assert [e["type"] for e in made] == ["customer.subscription.updated", "invoice.created"]
    # The clock stands where it was moved, then runs on in real time (seconds, on a loaded machine)
    assert end + 60 <= int(local.now().timestamp()) <= end + 60 + 10
    # An hour later it is finalized and charged to the saved card.
    made = local.advance_to(datetime.fromtimestamp(end + 2 * 3600, UTC))
    assert _types_for(made, {renewal}) == ["invoice.finalized", "invoice.paid", "invoice.payment_succeeded"]
    paid = client.v1.invoices.retrieve(renewal, params={"expand": ["payments"]})
    assert (paid.status, paid.amount_paid, paid.status_transitions.paid_at) == ("paid", 2900, end + 3600)
    assert paid.parent.subscription_details.subscription == sub.id
    assert paid.payments.data[0].payment.payment_intent and paid.payments.data[0].status == "paid"
    item = client.v1.subscriptions.retrieve(sub.id)["items"].data[0]
    assert item.current_period_start == end and item.current_period_end > end + 27 * 86400
    receiver.wait("invoice.paid", lambda e: e["data"]["object"]["id"] == renewal)
    # Three more months at once: three more renewals, each at its own time, in order.
    ends = [item.current_period_end]
    made = local.advance_to(datetime.fromtimestamp(ends[0] + 62 * 86400 + 7200, UTC))
    paid_invoices = [e["data"]["object"] for e in made if e["type"] == "invoice.paid"]
    assert len(paid_invoices) == 3
    assert [i["created"] for i in paid_invoices] == sorted(i["created"] for i in paid_invoices)
    assert paid_invoices[0]["created"] == ends[0]


def test_clock_renewal_with_a_failing_card_goes_past_due(
    client: stripe.StripeClient, local: LocalStripe, receiver: Receiver
) -> None:
    customer = new_customer(client)
    sub = subscribe(client, customer, builder_price(client)).subscription
    client.v1.subscriptions.update(
        sub.id, params={"default_payment_method": saved_card(client, customer, "4000000000000341")}
    )
    end = sub["items"].data[0].current_period_end
    made = local.advance_to(datetime.fromtimestamp(end + 2 * 3600, UTC))
    renewal = client.v1.subscriptions.retrieve(sub.id)
    invoice = client.v1.invoices.retrieve(renewal.latest_invoice)
    assert (renewal.status, invoice.status, invoice.attempt_count, invoice.amount_paid) == (
        "past_due",
        "open",
        1,
        0,
    )
    assert is_subsequence(
        ["invoice.created", "invoice.finalized", "invoice.payment_failed", "customer.subscription.updated"],
        [e["type"] for e in made],
    )
    receiver.wait("customer.subscription.updated", lambda e: e["data"]["object"]["status"] == "past_due")


def test_clock_ends_subscriptions_expires_sessions_and_announces_overdue_invoices(
    client: stripe.StripeClient, local: LocalStripe
) -> None:
    customer = new_customer(client)
    sub = subscribe(client, customer, builder_price(client)).subscription
    client.v1.subscriptions.update(sub.id, params={"cancel_at_period_end": True})
    session = top_up_session(client, customer)
    draft = client.v1.invoices.create(
        params={"customer": customer, "collection_method": "send_invoice", "days_until_due": 30}
    )
    client.v1.invoice_items.create(
        params={"customer": customer, "invoice": draft.id, "amount": 500, "currency": "usd"}
    )
    due = client.v1.invoices.finalize_invoice(draft.id).due_date
    made = local.advance_to(datetime.fromtimestamp(due + 86400, UTC))
    assert client.v1.subscriptions.retrieve(sub.id).status == "canceled"
    assert client.v1.checkout.sessions.retrieve(session.id).status == "expired"
    assert _types_for(made, {draft.id}) == ["invoice.overdue"]
    assert [e["type"] for e in made if e["type"].startswith("invoice.")] == ["invoice.overdue"]  # no renewal
    local.advance_to(datetime.fromtimestamp(due + 2 * 86400, UTC))
    assert len(local.events("invoice.overdue")) == 1  # once


def test_clock_only_moves_forward_and_speaks_http(client: stripe.StripeClient, local: LocalStripe) -> None:
    start = local.now()
    with pytest.raises(ValueError):
        local.advance_to(start - timedelta(seconds=5))
    status, _, body = http(f"{local.url}/_local/clock")
    assert status == 200 and abs(datetime.fromisoformat(json.loads(body)["now"]) - start) < timedelta(
        seconds=5
    )
    later = (start + timedelta(days=3)).replace(microsecond=0)
    status, _, body = http(f"{local.url}/_local/clock", {"now": later.isoformat().replace("+00:00", "Z")})
    assert status == 200 and json.loads(body)["now"] == later.isoformat().replace("+00:00", "Z")
    assert http(f"{local.url}/_local/clock", {"now": start.isoformat()})[0] == 409
    assert http(f"{local.url}/_local/clock", {"now": "tomorrow"})[0] == 400
    # Objects made now carry the stand-in's time.
    assert abs(client.v1.customers.create(params={"email": "a@example.com"}).created - later.timestamp()) < 5
    assert advance_to(later + timedelta(hours=1)) == []  # the module-level hook, same server


# ------------------------------------------------------------ dispute outcomes, invoice payments, faults


def _disputed_intent(client: stripe.StripeClient, local: LocalStripe) -> Any:
    customer = new_customer(client)
    intent = client.v1.payment_intents.create(
        params={
            "amount": 2500,
            "currency": "usd",
            "customer": customer,
            "confirm": True,
            "off_session": True,
            "payment_method": saved_card(client, customer, "4242424242424242"),
        },
    )
    assert http(f"{local.url}/_local/disputes", {"payment_intent": intent.id})[0] == 200
    return intent


def test_disputes_are_won_by_winning_evidence_and_lost_by_closing(
    client: stripe.StripeClient, local: LocalStripe
) -> None:
    won_intent = _disputed_intent(client, local)
    won = client.v1.disputes.list(params={"payment_intent": won_intent.id}).data[0]
    submitted = client.v1.disputes.update(
        won.id, params={"evidence": {"uncategorized_text": "winning_evidence"}, "submit": True}
    )
    assert submitted.status == "under_review"
    closed = local.wait_for_event("charge.dispute.closed", lambda e: e["data"]["object"]["id"] == won.id, 3)
    assert closed["data"]["object"]["status"] == "won" and client.v1.disputes.retrieve(won.id).status == "won"
    assert (
        local.wait_for_event("charge.dispute.funds_reinstated", timeout=1)["data"]["object"]["id"] == won.id
    )

    lost_intent = _disputed_intent(client, local)
    lost = client.v1.disputes.list(params={"payment_intent": lost_intent.id}).data[0]
    assert client.v1.disputes.close(lost.id).status == "lost"
    with pytest.raises(stripe.InvalidRequestError):  # a closed dispute stays closed
        client.v1.disputes.close(lost.id)
    events = [e["data"]["object"] for e in local.events("charge.dispute.closed")]
    assert [(d["id"], d["status"]) for d in events] == [(won.id, "won"), (lost.id, "lost")]


def test_invoice_payments_name_the_payment_intent_that_paid_an_invoice(client: stripe.StripeClient) -> None:
    customer = new_customer(client)
    draft = client.v1.invoices.create(
        params={"customer": customer, "collection_method": "send_invoice", "days_until_due": 7}
    )
    client.v1.invoice_items.create(
        params={"customer": customer, "invoice": draft.id, "amount": 4200, "currency": "usd"}
    )
    final = client.v1.invoices.finalize_invoice(draft.id)
    assert http(final.hosted_invoice_url, {"card": "4242424242424242"})[0] == 303
    payments = client.v1.invoice_payments.list(params={"invoice": draft.id}).data
    assert len(payments) == 1 and payments[0].status == "paid" and payments[0].amount_paid == 4200
    intent_id = payments[0].payment.payment_intent
    by_intent = client.v1.invoice_payments.list(
        params={"payment": {"type": "payment_intent", "payment_intent": intent_id}}
    ).data
    assert [p.invoice for p in by_intent] == [draft.id]
    assert client.v1.payment_intents.retrieve(intent_id).status == "succeeded"


def test_injected_faults_and_idempotency_keys_that_expire(
    client: stripe.StripeClient, local: LocalStripe
) -> None:
    params = {"name": "Acme", "metadata": {"org_id": "org_f"}}
    local.arm_fault("POST", "/v1/customers", "lose_answer")
    with pytest.raises(stripe.APIError):
        client.v1.customers.create(params=params, options={"idempotency_key": "c1"})
    assert len(client.v1.customers.list().data) == 1  # it was made; only the answer was lost
    replay = client.v1.customers.create(params=params, options={"idempotency_key": "c1"})
    assert replay.id == client.v1.customers.list().data[0].id
    local.arm_fault("POST", "/v1/customers", "down")
    with pytest.raises(stripe.APIError):
        client.v1.customers.create(params={"name": "Other"})
    assert len(client.v1.customers.list().data) == 1  # down: nothing was made
    assert local.expire_idempotency_keys() >= 1
    again = client.v1.customers.create(params=params, options={"idempotency_key": "c1"})
    assert again.id != replay.id and len(client.v1.customers.list().data) == 2  # a new request
    status, _, _ = http(f"{local.url}/_local/faults", {"method": "POST", "path": "/v1/x", "mode": "nope"})
    assert status == 400
