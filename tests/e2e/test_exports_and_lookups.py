"""CSV exports and the ledger filter, the 402 that names max_tokens, and the operator's
look-ups (org search, open holds, releasing a stuck hold), end to end."""

from __future__ import annotations

import csv
import io
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import boto3
import openai
import pytest

from tests.support.stack import Stack

pytestmark = pytest.mark.e2e

HELLO = [{"role": "user", "content": "Hello, exports"}]
NANOS = 10**9


def _rows(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


def test_csv_exports_hold_the_json_rows_with_exact_amounts(stack: Stack) -> None:
    # Given an org with a grant and a few billed requests, one of them answered from the cache
    _, key = stack.new_org("3.5")
    client = stack.sdk(key)
    for i in range(3):
        client.chat.completions.create(model="test/cheap", messages=[{"role": "user", "content": f"n{i}"}])
    for _ in range(2):
        client.chat.completions.create(model="test/backup", messages=HELLO, temperature=0)
    # When the ledger is read page by page as JSON, and exported as CSV
    pages, cursor = [], None
    while True:
        page = stack.call(
            "GET", "/v1/billing/ledger?limit=2" + (f"&cursor={cursor}" if cursor else ""), key=key
        )
        pages += page.body["data"]
        if not page.body["has_more"]:
            break
        cursor = page.body["next_cursor"]
    export = stack.call("GET", "/v1/billing/ledger?format=csv", key=key)
    # Then the CSV is every page's rows, with the same exact figures
    assert export.status == 200
    assert export.headers["content-type"].startswith("text/csv")
    assert export.headers["content-disposition"].startswith('attachment; filename="conduix-ledger-')
    header = "created_at,id,type,description,model,amount,invoiced,balance_after,reference"
    assert export.body.splitlines()[0] == header
    fields = ("id", "type", "amount", "balance_after", "created_at", "description")
    assert [{f: r[f] for f in fields} for r in _rows(export.body)] == [
        {f: e[f] for f in fields} for e in pages
    ]
    assert len(pages) == 5 and pages[-1]["amount"] == "3.5"

    usage = stack.call("GET", "/v1/usage?group_by=model,day", key=key).body
    usage_csv = stack.call("GET", "/v1/usage?group_by=model,day&format=csv", key=key)
    assert usage_csv.status == 200 and "conduix-usage-" in usage_csv.headers["content-disposition"]
    rows = _rows(usage_csv.body)
    assert [
        (r["model"], r["day"], int(r["requests"]), int(r["cache_hits"]), r["credits"], r["saved_credits"])
        for r in rows
    ] == [
        (d["model"], d["day"], d["requests"], d["cache_hits"], d["credits"], d["saved_credits"])
        for d in usage["data"]
    ]
    backup = next(r for r in rows if r["model"] == "test/backup")
    assert (backup["requests"], backup["cache_hits"]) == ("1", "1")  # the hit is its own column

    # A CSV is the whole range: a page's knobs are refused, as is an unknown format
    assert (
        stack.call("GET", "/v1/billing/ledger?format=csv&limit=2", key=key).body["error"]["param"] == "limit"
    )
    assert stack.call("GET", "/v1/usage?format=xml", key=key).body["error"]["param"] == "format"


def test_the_ledger_filters_by_type_and_refuses_an_unknown_one(stack: Stack) -> None:
    _, key = stack.new_org("2")
    client = stack.sdk(key)
    for i in range(2):
        client.chat.completions.create(model="test/cheap", messages=[{"role": "user", "content": f"t{i}"}])
    usage = stack.call("GET", "/v1/billing/ledger?type=usage", key=key)
    grants = stack.call("GET", "/v1/billing/ledger?type=grant", key=key)
    everything = stack.call("GET", "/v1/billing/ledger", key=key).body["data"]
    assert [e["type"] for e in usage.body["data"]] == ["usage", "usage"]
    assert usage.body["data"] == [e for e in everything if e["type"] == "usage"]  # same balances
    assert [(e["amount"], e["balance_after"]) for e in grants.body["data"]] == [("2", "2")]
    csv_grants = _rows(stack.call("GET", "/v1/billing/ledger?type=grant&format=csv", key=key).body)
    assert [(r["type"], r["amount"]) for r in csv_grants] == [("grant", "2")]
    unknown = stack.call("GET", "/v1/billing/ledger?type=bonus", key=key)
    assert unknown.status == 400
    error = unknown.body["error"]
    assert (error["code"], error["param"]) == ("invalid_entry_type", "type")
    assert "usage" in error["message"] and "top_up" in error["message"]


def test_a_402_names_the_hold_its_max_tokens_and_the_largest_that_fits(stack: Stack) -> None:
    # test/per-token: prompts are free and each output token costs exactly 1 credit
    _, key = stack.new_org("10")
    before = stack.upstream_calls()
    with pytest.raises(openai.APIStatusError) as refused:
        stack.sdk(key).chat.completions.with_raw_response.create(
            model="test/per-token", messages=HELLO, max_tokens=50
        )
    assert refused.value.status_code == 402
    assert refused.value.response.headers["x-conduix-balance"] == "10"
    error = refused.value.response.json()["error"]
    assert error["code"] == "insufficient_credits"
    assert error["message"] == (
        "Insufficient credits. Current balance: 10 credits. This request holds 50 credits: its prompt "
        "plus max_tokens=50, at test/per-token's price. Set 'max_tokens' to 10 or less to fit the balance."
    )
    assert stack.upstream_calls() == before
    # Following the advice works
    served = stack.sdk(key).chat.completions.create(model="test/per-token", messages=HELLO, max_tokens=10)
    assert served.usage is not None and served.usage.completion_tokens <= 10
    # Without max_tokens, the hold came from the model's limit, and the message says so
    _, poor = stack.new_org("3")
    with pytest.raises(openai.APIStatusError) as unset:
        stack.sdk(poor).chat.completions.create(model="test/per-token", messages=HELLO)
    message = unset.value.response.json()["error"]["message"]
    assert message.startswith(
        "Insufficient credits. Current balance: 3 credits. This request holds 64 credits"
    )
    assert "64 output tokens (test/per-token's limit, because 'max_tokens' was not set)" in message
    assert message.endswith("Set 'max_tokens' to 3 or less to fit the balance.")


def test_the_operator_searches_orgs_page_by_page(stack: Stack) -> None:
    tag = uuid.uuid4().hex[:10]
    made = {}
    for name in ("Zeta Widgets", "Alpha Widgets", "Gamma Tools"):
        org = stack.operator(
            "POST", "/admin/orgs", {"name": f"{name} {tag}", "email": f"{tag}.{name[0]}@ex.test"}
        )
        made[name] = org.body["org_id"]
    found, cursor = [], None
    for _ in range(10):
        page = stack.operator(
            "GET", f"/admin/orgs?email={tag}&limit=1" + (f"&cursor={cursor}" if cursor else "")
        )
        assert page.status == 200, page.body
        found += [o["org_id"] for o in page.body["data"]]
        if not page.body["has_more"]:
            break
        cursor = page.body["next_cursor"]
    # email order: <tag>.a…, <tag>.g…, <tag>.z…
    assert found == [made["Alpha Widgets"], made["Gamma Tools"], made["Zeta Widgets"]]
    widgets = stack.operator("GET", f"/admin/orgs?name=WIDGETS%20{tag}").body["data"]
    assert [o["org_id"] for o in widgets] == [made["Alpha Widgets"], made["Zeta Widgets"]]
    assert stack.operator("GET", "/admin/orgs?cursor=forged").status == 400
    assert stack.call("GET", "/admin/orgs", key="cdx_not-the-operator").status == 403


def test_a_stuck_hold_is_listed_with_its_age_and_released_once(stack: Stack) -> None:
    org_id, key = stack.new_org("10")
    # Given a request that died after its hold: the hold exactly as Completion's reserve writes it
    dynamodb = boto3.client(
        "dynamodb",
        endpoint_url=stack.moto,
        region_name="us-east-1",
        aws_access_key_id="local",
        aws_secret_access_key="local",
    )
    amount = 4 * NANOS
    dynamodb.update_item(
        TableName="BillingTable",
        Key={"pk": {"S": f"ORG#{org_id}"}, "sk": {"S": "WALLET"}},
        UpdateExpression=(
            "SET holds.#rid = :hold ADD held :h, available :nh, committed :h, cap_remaining :nh"
        ),
        ExpressionAttributeNames={"#rid": "died-request-1"},
        ExpressionAttributeValues={
            ":hold": {
                "M": {
                    "a": {"N": str(amount)},
                    "x": {"N": str(int(time.time()) + 3600)},  # far from the sweeper's reach
                    "m": {"S": "test/cheap"},
                    "k": {"S": "key_died"},
                }
            },
            ":h": {"N": str(amount)},
            ":nh": {"N": str(-amount)},
        },
    )
    assert stack.billing(key)["available"] == "6"
    holds = stack.operator("GET", f"/admin/orgs/{org_id}/holds").body["data"]
    assert [(h["request_id"], h["amount"], h["key_id"], h["expired"]) for h in holds] == [
        ("died-request-1", "4", "key_died", False)
    ]
    assert isinstance(holds[0]["age_seconds"], int)

    # When several operators release it at once
    with ThreadPoolExecutor(5) as pool:
        replies = list(
            pool.map(
                lambda _: stack.operator("DELETE", f"/admin/orgs/{org_id}/holds/died-request-1"), range(5)
            )
        )
    # Then exactly one release lands, with one audit entry that moves no money
    assert sorted(r.status for r in replies).count(200) == 1, [(r.status, r.body) for r in replies]
    assert all(r.status in (200, 404, 409) for r in replies)
    billing = stack.billing(key)
    assert (billing["balance"], billing["held"], billing["available"], billing["open_holds"]) == (
        "10",
        "0",
        "10",
        0,
    )
    audit = stack.call("GET", "/v1/billing/ledger?type=hold_release", key=key).body["data"]
    assert [(e["id"], e["amount"], e["balance_after"]) for e in audit] == [
        ("hold_release:died-request-1", "0", "10")
    ]
    assert stack.operator("GET", f"/admin/orgs/{org_id}/holds").body["data"] == []
    assert stack.operator("GET", f"/admin/orgs/{org_id}/reconcile").body["ok"] is True
