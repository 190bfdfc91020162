"""Balance alerts sent once per crossing, credit grants that expire (spent first, expired once
on the test clock), and embeddings billed exactly, end to end on the shared stack."""

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from decimal import Decimal

import openai
import pytest

from tests.support.stack import Stack, wait_until

pytestmark = pytest.mark.e2e

ONE_TOKEN = {"model": "test/per-token", "max_tokens": 1}  # exactly 1 credit per request


def _spend(stack: Stack, key: str, count: int, workers: int = 1) -> None:
    client = stack.sdk(key)

    def one(i: int) -> None:
        client.chat.completions.create(messages=[{"role": "user", "content": f"n{i}"}], **ONE_TOKEN)  # type: ignore[call-overload]

    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(one, range(count)))


def _alert_emails(stack: Stack, email: str) -> list[str]:
    return [m["subject"] for m in stack.emails(email) if "balance fell below" in str(m.get("subject", ""))]


def test_a_balance_alert_is_sent_once_per_crossing_even_in_a_burst(stack: Stack) -> None:
    # Given an org with 10 credits and alerts below 5 and below 1
    email = f"alerts-{uuid.uuid4().hex[:8]}@example.com"
    org_id, key = stack.new_org("10", email=email)
    put = stack.call("PUT", "/v1/billing/alerts", {"balance_below": ["5", "1"]}, key=key)
    assert put.status == 200, put.body
    assert stack.call("GET", "/v1/billing/alerts", key=key).body["balance_below"] == ["5", "1"]
    bad = stack.call("PUT", "/v1/billing/alerts", {"cap_used_percent": [150]}, key=key)
    assert bad.status == 400 and bad.body["error"]["param"] == "cap_used_percent"
    # When 8 requests of 1 credit each race across the threshold
    _spend(stack, key, 8, workers=8)
    assert stack.billing(key)["balance"] == "2"
    # Then exactly one email says so, and the notice history lists it
    assert wait_until(lambda: len(_alert_emails(stack, email)) == 1)
    assert _alert_emails(stack, email) == ["Conduix: your balance fell below 5 credits"]
    notices = stack.call("GET", "/v1/billing/notices", key=key).body["data"]
    assert [(n["type"], n["recipient"]) for n in notices] == [("balance_below", email)]
    # When credits bring the balance back above 5, the alert re-arms, and fires on the next crossing
    grant = stack.operator(
        "POST",
        f"/admin/orgs/{org_id}/credits",
        {"amount": "6", "reason": "top up", "idempotency_key": f"again-{email}"},
    )
    assert grant.status == 201, grant.body
    assert stack.call("GET", "/v1/billing/alerts", key=key).body["fired"] == []
    _spend(stack, key, 4, workers=4)
    assert stack.billing(key)["balance"] == "4"
    assert wait_until(lambda: len(_alert_emails(stack, email)) == 2)
    time_sent = [n["sent_at"] for n in stack.call("GET", "/v1/billing/notices", key=key).body["data"]]
    assert time_sent == sorted(time_sent, reverse=True) and len(time_sent) == 2


def _clock(stack: Stack) -> datetime:
    return datetime.fromisoformat(stack.operator("GET", "/_local/clock").body["now"].replace("Z", "+00:00"))


def test_an_expiring_grant_is_spent_first_and_its_remainder_expires_once(stack: Stack) -> None:
    # Given 5 credits that never expire and a grant of 3 that expires in ten minutes
    org_id, key = stack.new_org("5")
    expires = (_clock(stack) + timedelta(minutes=10)).strftime("%Y-%m-%dT%H:%M:%SZ")
    body = {
        "amount": "3",
        "reason": "launch promo",
        "idempotency_key": f"promo-{org_id}",
        "expires_at": expires,
    }
    made = stack.operator("POST", f"/admin/orgs/{org_id}/credits", body)
    assert made.status == 201 and made.body["expires_at"].startswith(expires[:19]), made.body
    past = stack.operator(
        "POST", f"/admin/orgs/{org_id}/credits", {**body, "expires_at": "2020-01-01T00:00:00Z"}
    )
    assert past.status == 400 and past.body["error"]["param"] == "expires_at"
    # When 2 credits are spent
    _spend(stack, key, 2)
    # Then they came out of the grant first
    view = stack.billing(key)
    assert view["balance"] == "6"
    assert [(c["granted"], c["remaining"]) for c in view["expiring_credits"]] == [("3", "1")]
    # When the stack's time passes the expiry (HoldSweeper fires on the way)
    target = datetime.fromisoformat(expires.replace("Z", "+00:00")) + timedelta(minutes=1)
    moved = stack.operator("POST", "/_local/clock", {"now": target.isoformat()})
    assert moved.status == 200, moved.body
    sweeper = next(f for f in moved.body["fired"] if f["function"] == "HoldSweeperFunction")
    assert sweeper["result"]["grants_expired"] == 1, sweeper
    # Then the remainder left once, through an expiry entry naming the grant
    assert stack.run_job("HoldSweeperFunction").status == 200  # a rerun moves nothing
    view = stack.billing(key)
    assert view["balance"] == "5" and view["expiring_credits"] == []
    expiries = stack.call("GET", "/v1/billing/ledger?type=expiry", key=key).body["data"]
    assert [(e["amount"], e["type"]) for e in expiries] == [("-1", "expiry")]
    assert f"grant:promo-{org_id}" in expiries[0]["description"]
    assert sorted(stack.ledger_amounts(org_id)) == sorted(Decimal(a) for a in ["5", "3", "-1", "-1", "-1"])
    reconciled = stack.operator("GET", f"/admin/orgs/{org_id}/reconcile")
    assert reconciled.status == 200 and reconciled.body["ok"] is True, reconciled.body


def test_embeddings_are_billed_exactly_per_input_token(stack: Stack) -> None:
    org_id, key = stack.new_org("1")
    client = stack.sdk(key)
    inputs = ["The quick brown fox", "jumps over the lazy dog"]
    # The SDK asks for base64 by default and decodes it to floats
    raw = client.embeddings.with_raw_response.create(model="test/embed", input=inputs)
    result = raw.parse()
    assert [len(d.embedding) for d in result.data] == [16, 16]
    tokens = result.usage.prompt_tokens
    assert tokens == 4 + 5
    cost = Decimal(tokens) * Decimal("7") / 1_000_000  # test/embed: 7 credits per million tokens
    assert Decimal(raw.headers["x-conduix-cost"]) == cost
    assert Decimal(raw.headers["x-conduix-balance"]) == 1 - cost
    assert sorted(stack.ledger_amounts(org_id)) == [-cost, Decimal(1)]
    assert Decimal(stack.billing(key)["balance"]) == 1 - cost
    # Floats are another answer (billed once more); asked again, the cache answers it free
    for expected in ("MISS", "HIT"):
        again = client.embeddings.with_raw_response.create(
            model="test/embed", input=inputs, encoding_format="float"
        )
        assert again.headers["x-conduix-cache"] == expected
        vectors = [v for d in again.parse().data for v in d.embedding]
        assert vectors == pytest.approx([v for d in result.data for v in d.embedding], abs=1e-6)
    assert Decimal(stack.billing(key)["balance"]) == 1 - 2 * cost
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(model="test/embed", messages=[{"role": "user", "content": "hi"}])
    assert "/v1/embeddings" in str(refused.value)
    with pytest.raises(openai.BadRequestError):
        client.embeddings.create(model="test/cheap", input="hi")


def test_a_key_stops_at_its_daily_limit_under_a_burst_while_another_key_is_served(stack: Stack) -> None:
    # Given an org with 20 credits, and a second key limited to 3 credits a day
    org_id, admin = stack.new_org("20")
    made = stack.call(
        "POST", "/v1/billing/api-keys", {"name": "batch job", "scopes": ["inference"]}, key=admin
    )
    assert made.status == 201, made.body
    limited, limited_id = made.body["api_key"], made.body["key_id"]
    path = f"/v1/billing/api-keys/{limited_id}"
    bad = stack.call("PATCH", path, {"spend_limit": {"amount": "3", "period": "fortnight"}}, key=admin)
    assert bad.status == 400 and bad.body["error"]["param"] == "spend_limit.period"
    set_ = stack.call("PATCH", path, {"spend_limit": {"amount": "3", "period": "day"}}, key=admin)
    assert set_.status == 200, set_.body
    assert set_.body["spend_limit"]["amount"] == "3" and set_.body["spend_limit"]["period"] == "day"
    calls = stack.upstream_calls()
    # When 8 requests of exactly 1 credit race on the limited key
    outcomes: list[int | str] = []

    def one(i: int) -> None:
        try:
            stack.sdk(limited).chat.completions.create(  # type: ignore[call-overload]
                messages=[{"role": "user", "content": f"burst {i}"}], **ONE_TOKEN
            )
            outcomes.append(200)
        except openai.APIStatusError as exc:
            body = exc.body if isinstance(exc.body, dict) else {}
            outcomes.append(f"{exc.status_code} {body.get('code')}")

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(one, range(8)))
    # Then exactly 3 are served and billed, 5 refused before the provider is called
    assert sorted(outcomes, key=str) == [200] * 3 + ["402 key_spend_limit_exceeded"] * 5
    assert stack.upstream_calls() == calls + 3
    refused = stack.call(
        "POST",
        "/v1/chat/completions",
        {"messages": [{"role": "user", "content": "x"}], **ONE_TOKEN},
        key=limited,
    )
    assert refused.status == 402 and refused.body["error"]["code"] == "key_spend_limit_exceeded"
    assert refused.body["error"]["limit"] == "3" and refused.body["error"]["period"] == "day"
    tomorrow = (_clock(stack) + timedelta(days=1)).strftime("%Y-%m-%dT00:00:00Z")
    assert refused.body["error"]["resets_at"] == tomorrow and tomorrow in refused.body["error"]["message"]
    # And the org's other key goes on
    _spend(stack, admin, 2)
    assert Decimal(stack.billing(admin)["balance"]) == Decimal(20 - 3 - 2)
    listed = {
        k["key_id"]: k["spend_limit"]
        for k in stack.call("GET", "/v1/billing/api-keys", key=admin).body["data"]
    }
    assert listed[limited_id] == {
        "amount": "3",
        "period": "day",
        "spent": "3",
        "in_flight": "0",
        "remaining": "0",
        "resets_at": tomorrow,
    }
    assert [v for k, v in listed.items() if k != limited_id] == [None]
    # Removing the limit lets the key spend again
    assert stack.call("PATCH", path, {"spend_limit": None}, key=admin).body["spend_limit"] is None
    _spend(stack, limited, 1)
    assert Decimal(stack.billing(admin)["balance"]) == Decimal(14)
    assert org_id
