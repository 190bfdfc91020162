"""The ledger as a statement and the usage report, read back with exact figures."""

from __future__ import annotations

from datetime import timedelta

import pytest
from conduix import errors, statements, wallets
from conduix.money import NANOS_PER_CREDIT as C

from tests.integration.helpers import NOW, fund

pytestmark = pytest.mark.integration


def spend(org: str, request_id: str, cost: int, model: str = "acme/fast", key: str = "key_1", at=NOW) -> None:
    wallets.reserve(org, request_id, cost, model=model, key_id=key, now=at)
    usage = wallets.Usage(model=model, key_id=key, prompt_tokens=3, completion_tokens=4, cost=cost)
    assert wallets.settle(org, request_id, cost, usage, at) is wallets.SettleOutcome.SETTLED


def test_the_statement_runs_newest_first_with_exact_balances_across_pages(org: str) -> None:
    fund(org, "10")
    for i in range(5):
        spend(org, f"r{i}", (i + 1) * C // 10, at=NOW + timedelta(seconds=i + 1))
    first = statements.ledger_page(org, "4", None)
    assert [e["id"] for e in first["data"]] == ["usage:r4", "usage:r3", "usage:r2", "usage:r1"]
    assert [e["balance_after"] for e in first["data"]] == ["8.5", "9", "9.4", "9.7"]
    assert first["data"][0] == {
        "id": "usage:r4",
        "type": "usage",
        "amount": "-0.5",
        "balance_after": "8.5",
        "description": "acme/fast: 3 prompt + 4 output tokens",
        "reference": "r4",
        "created_at": "2026-11-27T12:00:05.000000Z",
        "model": "acme/fast",
    }
    second = statements.ledger_page(org, "4", first["next_cursor"])
    assert [(e["id"], e["balance_after"]) for e in second["data"]] == [
        ("usage:r0", "9.9"),
        ("grant:seed", "10"),
    ]
    assert second["has_more"] is False


@pytest.mark.parametrize(("limit", "cursor"), [("0", None), ("x", None), ("500", None), (None, "garbage")])
def test_bad_paging_is_refused(org: str, limit: str | None, cursor: str | None) -> None:
    with pytest.raises(errors.InvalidRequest):
        statements.ledger_page(org, limit, cursor)


def test_usage_groups_by_model_day_and_key_with_cache_savings(org: str) -> None:
    fund(org, "10")
    spend(org, "a", 2 * C, model="m/one")
    spend(org, "b", 3 * C, model="m/two", key="key_2")
    spend(org, "c", 1 * C, model="m/one", at=NOW + timedelta(days=1))
    wallets.record_cache_hit(org, "m/one", "key_1", 2 * C, NOW)
    report = statements.usage_report(org, {"from": "2026-11-27", "to": "2026-11-28", "group_by": "model"})
    assert report["data"] == [
        {
            "model": "m/one",
            "requests": 2,
            "prompt_tokens": 6,
            "completion_tokens": 8,
            "cache_hits": 1,
            "credits": "3",
            "saved_credits": "2",
        },
        {
            "model": "m/two",
            "requests": 1,
            "prompt_tokens": 3,
            "completion_tokens": 4,
            "cache_hits": 0,
            "credits": "3",
            "saved_credits": "0",
        },
    ]
    assert report["totals"]["credits"] == "6"
    by_day = statements.usage_report(org, {"from": "2026-11-27", "to": "2026-11-27", "group_by": "model,day"})
    assert [(r["model"], r["day"], r["credits"]) for r in by_day["data"]] == [
        ("m/one", "2026-11-27", "2"),
        ("m/two", "2026-11-27", "3"),
    ]
    by_key = statements.usage_report(org, {"from": "2026-11-01", "to": "2026-11-30", "group_by": "key"})
    assert [(r["key_id"], r["credits"]) for r in by_key["data"]] == [("key_1", "3"), ("key_2", "3")]


@pytest.mark.parametrize(
    "query",
    [
        {"from": "yesterday"},
        {"from": "2026-11-30", "to": "2026-11-01"},
        {"group_by": "colour"},
        {"from": "2024-01-01", "to": "2026-01-01"},
    ],
)
def test_bad_usage_queries_are_refused(org: str, query: dict[str, str]) -> None:
    with pytest.raises(errors.InvalidRequest):
        statements.usage_report(org, query)
