from __future__ import annotations

from decimal import Decimal

import pytest
from conduix.core.errors import InvalidRequest
from conduix.core.money import cost_nanos, format_credits, parse_credits


@pytest.mark.parametrize(
    ("nanos", "text"),
    [
        (12_000_000_000, "12"),
        (200_000_000, "0.2"),
        (3_500_010_000, "3.50001"),
        (1, "0.000000001"),
        (0, "0"),
        (-1_500_000_000, "-1.5"),
    ],
)
def test_format_credits_has_no_trailing_zeros(nanos: int, text: str) -> None:
    assert format_credits(nanos) == text


@pytest.mark.parametrize(
    ("value", "nanos"),
    [
        ("10.5", 10_500_000_000),
        ("0.000000001", 1),
        ("7", 7_000_000_000),
        ("007.10", 7_100_000_000),
        ("999999999999999.999999999", 999_999_999_999_999_999_999_999),
    ],
)
def test_parse_credits_is_exact(value: object, nanos: int) -> None:
    assert parse_credits(value, field="amount") == nanos


@pytest.mark.parametrize(
    "value",
    [
        "abc",
        "1e400",
        "5E1",
        "5e1",
        "NaN",
        "Infinity",
        "0.0000000001",
        "-1",
        "+50",
        " 50 ",
        "50\n",
        "5_0",
        "\uff15\uff10",  # fullwidth 50
        "\u0665",  # Arabic-Indic 5
        "50.",
        ".5",
        "0",
        "0.000000000",
        "1" * 16,
        "1" * 5000,
        "",
        3,
        Decimal("0.1"),
        True,
        1.5,
        None,
        [],
    ],
)
def test_parse_credits_refuses_what_is_not_a_plain_positive_decimal_string(value: object) -> None:
    with pytest.raises(InvalidRequest) as refused:
        parse_credits(value, field="amount")
    assert refused.value.param == "amount"


def test_zero_only_where_allowed() -> None:
    assert parse_credits("0", field="cap", allow_zero=True) == 0
    assert parse_credits("0.0", field="cap", allow_zero=True) == 0


def test_round_trip_of_every_format() -> None:
    for nanos in (1, 10, 999_999_999, 1_000_000_001, 123_456_789_012):
        assert parse_credits(format_credits(nanos), field="x") == nanos


def test_cost_rounds_up_once_per_request() -> None:
    # 0.15 and 0.60 credits per million tokens = 150,000,000 and 600,000,000 nano-credits.
    assert cost_nanos(1_000_000, 1_000_000, 150_000_000, 600_000_000) == 750_000_000
    assert cost_nanos(7, 11, 150_000_000, 600_000_000) == 1050 + 6600  # exact, nothing to round
    assert cost_nanos(1, 0, 1, 0) == 1  # 1/1e6 of a nano-credit rounds up to one
    assert cost_nanos(0, 0, 150_000_000, 600_000_000) == 0
    # rounding applies to the sum, not per part: 0.5 + 0.5 nano-credits = 1, not 2
    assert cost_nanos(1, 1, 500_000, 500_000) == 1
