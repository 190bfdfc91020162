from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from conduix.core.errors import ConfigurationError
from conduix.payments.invoicing import cents_by_line, previous_month
from conduix.pricing import plans


@pytest.mark.parametrize(
    ("nanos", "cents"),
    [
        ([12_345_678_901], [1235]),  # 12.345678901 credits -> 12.35 USD, half up
        ([5_000_000, 5_000_000], [1, 0]),  # 0.5 + 0.5 cent: the total is 1 cent, given to one line
        ([4_999_999, 0], [0, 0]),  # below half a cent in total
        ([1_004_000_000, 2_003_000_000, 3_003_000_000], [101, 200, 300]),  # 6.010 -> 601 cents
        ([7_000_000_000], [700]),
    ],
)
def test_lines_add_up_to_the_half_up_total(nanos: list[int], cents: list[int]) -> None:
    assert cents_by_line(nanos) == cents
    assert sum(cents) == (sum(nanos) + 5_000_000) // 10_000_000


def test_previous_month_crosses_the_year() -> None:
    assert previous_month(datetime(2027, 1, 1, 0, 15, tzinfo=UTC)) == "2026-12"
    assert previous_month(datetime(2026, 12, 1, tzinfo=UTC)) == "2026-11"


def test_default_plans_and_their_features() -> None:
    plans.all_plans.cache_clear()
    builder = plans.get("builder")
    assert (builder.monthly_price_cents, builder.included_credits) == (2900, 25_000_000_000)
    assert plans.get("nonsense").id == "free"
    assert plans.by_price_lookup_key(builder.price_lookup_key) == builder


def test_a_plans_file_needs_a_free_plan(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "plans.json"
    path.write_text(
        json.dumps(
            {
                "plans": [
                    {
                        "id": "pro",
                        "name": "Pro",
                        "monthly_price": "10",
                        "included_credits": "5",
                        "features": {"cache_ttl_seconds": 1, "requests_per_minute": 1, "max_api_keys": 1},
                    }
                ]
            }
        )
    )
    monkeypatch.setenv("CONDUIX_PLANS_FILE", str(path))
    plans.all_plans.cache_clear()
    try:
        with pytest.raises(ConfigurationError, match="a free plan with id 'free'"):
            plans.all_plans()
    finally:
        monkeypatch.delenv("CONDUIX_PLANS_FILE")
        plans.all_plans.cache_clear()
