"""Exact credit amounts.

Every amount is an integer number of nano-credits (1 credit = 10**9 nano-credits). Amounts
enter as plain decimal strings and leave as decimal strings; no binary float ever carries
money. The one rounding rule lives in `cost_nanos`.
"""

from __future__ import annotations

import re

from conduix.core.errors import InvalidRequest

NANOS_PER_CREDIT = 10**9
TOKENS_PER_PRICE_UNIT = 1_000_000  # catalog prices are per million tokens
_MAX_WHOLE_DIGITS = 15  # far above any real amount; keeps numbers in DynamoDB's range
_AMOUNT = re.compile(r"[0-9]+(?:\.[0-9]{1,9})?")  # re's [0-9] is ASCII only, unlike \d


def parse_credits(value: object, *, field: str, allow_zero: bool = False) -> int:
    """Parse a client-supplied credit amount into nano-credits, or raise InvalidRequest naming `field`.

    The one accepted form is a JSON string of plain ASCII decimal digits with at most nine
    after the point (`^[0-9]+(\\.[0-9]{1,9})?$`): "10", "0.5", "3.000000001". No sign, space,
    underscore, exponent or non-ASCII digit, and no JSON number: a number may already have
    been rounded by the client's float before it reached us."""
    example = 'a decimal string such as "10.5"'
    if not isinstance(value, str):
        raise InvalidRequest(f"'{field}' must be {example} (JSON numbers are not accepted).", param=field)
    if not _AMOUNT.fullmatch(value):
        raise InvalidRequest(
            f"'{field}' must be {example}: ASCII digits, optionally a point and up to 9 decimals.",
            param=field,
        )
    whole, _, fraction = value.partition(".")
    if len(whole.lstrip("0")) > _MAX_WHOLE_DIGITS:
        raise InvalidRequest(f"'{field}' is too large.", param=field)
    result = int(whole.lstrip("0") or "0") * NANOS_PER_CREDIT + int(fraction.ljust(9, "0") or "0")
    if result == 0 and not allow_zero:
        raise InvalidRequest(f"'{field}' must be greater than zero.", param=field)
    return result


def format_credits(nanos: int) -> str:
    """Nano-credits as a plain decimal string without trailing zeros: 12, 0.2, 3.50001, -1.5."""
    sign = "-" if nanos < 0 else ""
    whole, frac = divmod(abs(nanos), NANOS_PER_CREDIT)
    if frac == 0:
        return f"{sign}{whole}"
    return f"{sign}{whole}.{frac:09d}".rstrip("0")


def cost_nanos(
    prompt_tokens: int, completion_tokens: int, input_per_million: int, output_per_million: int
) -> int:
    """What a request costs, in nano-credits.

    The rounding rule, applied once per request and nowhere else: the exact rational cost
    (tokens x nano-credits per million tokens / 10**6) is rounded UP to the next whole
    nano-credit, so a request is never billed less than its tokens are worth.
    """
    exact_numerator = prompt_tokens * input_per_million + completion_tokens * output_per_million
    return -(-exact_numerator // TOKENS_PER_PRICE_UNIT)
