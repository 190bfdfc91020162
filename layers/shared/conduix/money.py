"""Exact credit amounts.

Every amount is an integer number of nano-credits (1 credit = 10**9 nano-credits). Amounts
enter as decimal strings (or JSON numbers parsed as Decimal) and leave as decimal strings; no
binary float ever carries money. The one rounding rule lives in `cost_nanos`.
"""

from __future__ import annotations

from decimal import Decimal, InvalidOperation

from conduix.errors import InvalidRequest

NANOS_PER_CREDIT = 10**9
TOKENS_PER_PRICE_UNIT = 1_000_000  # catalog prices are per million tokens
_MAX_CREDITS = Decimal(10) ** 15  # far above any real amount; keeps numbers in DynamoDB's range


def parse_credits(
    value: object, *, field: str, allow_zero: bool = False, allow_negative: bool = False
) -> int:
    """Parse a client-supplied credit amount into nano-credits, or raise InvalidRequest naming `field`."""
    if isinstance(value, bool) or not isinstance(value, str | int | Decimal):
        raise InvalidRequest(f"'{field}' must be a decimal string such as \"10.5\".", param=field)
    try:
        amount = Decimal(value.strip()) if isinstance(value, str) else Decimal(value)
    except InvalidOperation:
        raise InvalidRequest(f"'{field}' is not a decimal number: {value!r}.", param=field) from None
    if not amount.is_finite():
        raise InvalidRequest(f"'{field}' must be a finite decimal number.", param=field)
    if abs(amount) >= _MAX_CREDITS:
        raise InvalidRequest(f"'{field}' is too large.", param=field)
    nanos = amount * NANOS_PER_CREDIT
    if nanos != nanos.to_integral_value():
        raise InvalidRequest(f"'{field}' has more than 9 decimal places.", param=field)
    result = int(nanos)
    if result < 0 and not allow_negative:
        raise InvalidRequest(f"'{field}' must not be negative.", param=field)
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
