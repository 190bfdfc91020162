"""The ledger as a statement and the usage report, read back with exact figures."""

from __future__ import annotations

from datetime import date, timedelta

import pytest
from conduix.api.queries import LedgerQuery, UsageQuery
from conduix.core import errors
from conduix.core.bodies import parse
from conduix.core.money import NANOS_PER_CREDIT as C
from conduix.ledger import entries, holds, metering, settles, statements

from tests.integration.helpers import NOW, fund

pytestmark = pytest.mark.integration


def page(org: str, query: dict[str, str], cursor: str | None = None) -> dict[str, object]:
    """A ledger page for a query string, checked as the API checks it."""
    q = parse(LedgerQuery, {**query, **({"cursor": cursor} if cursor else {})})
    return statements.ledger_page(org, q.limit, q.cursor, q.filter)


def ledger_csv(org: str, query: dict[str, str]) -> statements.Export:
    return statements.ledger_export(org, parse(LedgerQuery, query).filter)


def usage(org: str, query: dict[str, str]) -> dict[str, object]:
    q = parse(UsageQuery, query)
    return statements.usage_report(org, q.first, q.last, q.group_by)


def spend(org: str, request_id: str, cost: int, model: str = "acme/fast", key: str = "key_1", at=NOW) -> None:
    holds.reserve(org, request_id, cost, model=model, key_id=key, now=at)
    usage = metering.Usage(model=model, key_id=key, prompt_tokens=3, completion_tokens=4, cost=cost)
    assert settles.settle(org, request_id, cost, usage, at) is settles.SettleOutcome.SETTLED


def test_the_statement_runs_newest_first_with_exact_balances_across_pages(org: str) -> None:
    fund(org, "10")
    for i in range(5):
        spend(org, f"r{i}", (i + 1) * C // 10, at=NOW + timedelta(seconds=i + 1))
    first = page(org, {"limit": "4"})
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
    second = page(org, {"limit": "4"}, first["next_cursor"])
    assert [(e["id"], e["balance_after"]) for e in second["data"]] == [
        ("usage:r0", "9.9"),
        ("grant:seed", "10"),
    ]
    assert second["has_more"] is False


@pytest.mark.parametrize(("limit", "cursor"), [("0", None), ("x", None), ("500", None), (None, "garbage")])
def test_bad_paging_is_refused(org: str, limit: str | None, cursor: str | None) -> None:
    with pytest.raises(errors.InvalidRequest):
        page(org, {"limit": limit} if limit else {}, cursor)


def test_usage_groups_by_model_day_and_key_with_cache_savings(org: str) -> None:
    fund(org, "10")
    spend(org, "a", 2 * C, model="m/one")
    spend(org, "b", 3 * C, model="m/two", key="key_2")
    spend(org, "c", 1 * C, model="m/one", at=NOW + timedelta(days=1))
    metering.record_cache_hit(org, "m/one", "key_1", 2 * C, NOW)
    report = usage(org, {"from": "2026-11-27", "to": "2026-11-28", "group_by": "model"})
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
    by_day = usage(org, {"from": "2026-11-27", "to": "2026-11-27", "group_by": "model,day"})
    assert [(r["model"], r["day"], r["credits"]) for r in by_day["data"]] == [
        ("m/one", "2026-11-27", "2"),
        ("m/two", "2026-11-27", "3"),
    ]
    by_key = usage(org, {"from": "2026-11-01", "to": "2026-11-30", "group_by": "key"})
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
        usage(org, query)


def _asked(query: dict[str, str]) -> tuple[date | None, date | None, tuple[str, ...]]:
    q = parse(UsageQuery, query)
    assert q.format == "csv"
    return q.first, q.last, q.group_by


def _csv_rows(text: str) -> list[dict[str, str]]:
    import csv
    import io

    assert text.endswith("\r\n")
    return list(csv.DictReader(io.StringIO(text)))


def test_the_type_filter_keeps_every_balance_exact_across_pages(org: str) -> None:
    # Given a grant, three usages and a second grant between them
    fund(org, "10")
    spend(org, "r0", C // 10, at=NOW + timedelta(seconds=1))
    entries.post_entry(
        org, kind="grant", key="g2", amount=2 * C, description="more", now=NOW + timedelta(seconds=2)
    )
    spend(org, "r1", C // 5, at=NOW + timedelta(seconds=3))
    spend(org, "r2", C // 2, at=NOW + timedelta(seconds=4))
    # When only usage is asked for, two at a time
    first = page(org, {"limit": "2", "type": "usage"})
    second = page(org, {"limit": "2", "type": "usage"}, first["next_cursor"])
    # Then the rows are the usage entries, and each balance counts the grants they skip
    assert [(e["id"], e["balance_after"]) for e in first["data"]] == [
        ("usage:r2", "11.2"),
        ("usage:r1", "11.7"),
    ]
    assert [(e["id"], e["balance_after"]) for e in second["data"]] == [("usage:r0", "9.9")]
    assert first["has_more"] is True and second["has_more"] is False
    grants = page(org, {"limit": "50", "type": "grant"})["data"]
    assert [(e["id"], e["balance_after"]) for e in grants] == [("grant:g2", "11.9"), ("grant:seed", "10")]
    # has_more is exact: true only when another matching row exists
    only = page(org, {"limit": "1", "type": "grant", "to": "2026-11-27"})
    assert only["has_more"] is True
    assert page(org, {"limit": "5", "type": "refund"}) == {
        "object": "list",
        "data": [],
        "has_more": False,
        "next_cursor": None,
    }


def test_an_unknown_type_is_refused_naming_the_valid_ones(org: str) -> None:
    with pytest.raises(errors.InvalidRequest) as refused:
        page(org, {"type": "bonus"})
    assert refused.value.param == "type" and refused.value.code == "invalid_entry_type"
    assert all(t in refused.value.message for t in statements.ENTRY_TYPES)


def test_the_ledger_csv_holds_every_page_with_the_same_figures(org: str) -> None:
    fund(org, "10")
    for i in range(7):
        spend(org, f"r{i}", (i + 1) * C // 100, at=NOW + timedelta(days=i % 3, seconds=i))
    pages, cursor = [], None
    while True:
        one = page(org, {"limit": "3"}, cursor)
        pages += one["data"]
        if not one["has_more"]:
            break
        cursor = one["next_cursor"]
    export = ledger_csv(org, {"format": "csv"})
    rows = _csv_rows(export.text)
    assert len(rows) == 8
    assert [{k: r[k] for k in ("id", "type", "amount", "balance_after", "created_at")} for r in rows] == [
        {k: e[k] for k in ("id", "type", "amount", "balance_after", "created_at")} for e in pages
    ]
    assert export.filename.startswith(f"conduix-ledger-{org}-") and export.filename.endswith(".csv")
    # A range: only the second day, still with the balances of the whole ledger
    day = ledger_csv(org, {"from": "2026-11-28", "to": "2026-11-28"})
    expected = [e for e in pages if e["created_at"].startswith("2026-11-28")]
    assert [(r["id"], r["balance_after"]) for r in _csv_rows(day.text)] == [
        (e["id"], e["balance_after"]) for e in expected
    ]
    assert "2026-11-28_2026-11-28" in day.filename


@pytest.mark.parametrize("param", ["limit", "cursor"])
def test_a_csv_export_is_the_whole_range_not_a_page(org: str, param: str) -> None:
    with pytest.raises(errors.InvalidRequest) as refused:
        ledger_csv(org, {"format": "csv", param: "2"})
    assert refused.value.param == param


def test_an_export_beyond_the_maximum_is_a_clear_400(org: str, monkeypatch: pytest.MonkeyPatch) -> None:
    fund(org, "10")
    spend(org, "r0", C // 10, at=NOW + timedelta(seconds=1))
    monkeypatch.setattr(statements, "MAX_EXPORT_ROWS", 1)
    with pytest.raises(errors.InvalidRequest) as refused:
        ledger_csv(org, {})
    assert refused.value.code == "export_too_large" and "narrow it" in refused.value.message
    assert len(_csv_rows(ledger_csv(org, {"type": "usage"}).text)) == 1


def test_the_usage_csv_has_the_json_rows_with_cache_hits_in_their_own_column(org: str) -> None:
    fund(org, "10")
    spend(org, "a", 2 * C, model="m/one")
    spend(org, "b", 3 * C // 7, model="=cmd|' /C calc'!A0")
    metering.record_cache_hit(org, "m/one", "key_1", 2 * C, NOW)
    query = {"from": "2026-11-27", "to": "2026-11-27", "group_by": "model,day"}
    report = usage(org, query)
    export = statements.usage_export(org, *_asked({**query, "format": "csv"}))
    assert export.text.splitlines()[0] == (
        "model,day,requests,cache_hits,prompt_tokens,completion_tokens,credits,saved_credits"
    )
    rows = _csv_rows(export.text)
    assert rows[0] == {
        "model": "'=cmd|' /C calc'!A0",  # a formula is written as text
        "day": "2026-11-27",
        "requests": "1",
        "cache_hits": "0",
        "prompt_tokens": "3",
        "completion_tokens": "4",
        "credits": "0.428571428",
        "saved_credits": "0",
    }
    assert [(r["model"].lstrip("'"), r["credits"], r["cache_hits"]) for r in rows] == [
        (d["model"], d["credits"], str(d["cache_hits"])) for d in report["data"]
    ]


@pytest.mark.parametrize(
    ("value", "written"),
    [
        ("-5", "-5"),
        ("-0.000000001", "-0.000000001"),
        ("12", "12"),
        ("-5+3", "'-5+3"),
        ("=1+1", "'=1+1"),
        ("+1", "'+1"),
        ("@SUM(A1)", "'@SUM(A1)"),
        ("\tx", "'\tx"),
        ("-", "'-"),
        ("plain, text", "plain, text"),
        (None, ""),
    ],
)
def test_csv_cells_never_start_a_formula_and_amounts_stay_exact(value: str | None, written: str) -> None:
    assert statements.csv_cell(value) == written
