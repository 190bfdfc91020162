"""Request bodies of BillingApi and Admin: one set of pydantic models that both the resolver
validates requests with (Powertools' `enable_validation`, see `conduix.api`) and
/openapi.json is generated from. The answers' shapes are in `conduix.api.views`.

Money never passes through a float: an amount is a decimal string, parsed by
`money.parse_credits` into integer nano-credits inside the field's own validator. The models
are strict (no "true" for true, no "5" for 5), and a field whose old hand-written message
users rely on keeps it (`explained`, `refuse`). Validation errors become our
`invalid_request` in `validation.invalid_request_from`, naming the field.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, ClassVar, Literal, TypeVar

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    WithJsonSchema,
    WrapValidator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from conduix.core import validation
from conduix.core.errors import InvalidRequest
from conduix.core.money import parse_credits

M = TypeVar("M", bound=BaseModel)
CREDITS_PATTERN = r"^[0-9]{1,15}(\.[0-9]{1,9})?$"
_CREDITS_SCHEMA = {
    "type": "string",
    "pattern": CREDITS_PATTERN,
    "examples": ["10", "0.5"],
    "description": "Credits, as an exact decimal string (never a JSON number).",
}


def refuse(message: str, *, param: str | None = None, code: str | None = None) -> PydanticCustomError:
    """A validation error that reaches the client with this very message (and `param`, when
    the error's location alone would not name the field)."""
    return PydanticCustomError("conduix", "{message}", {"message": message, "param": param, "code": code})


def _checked(check: Callable[[Any, str], Any]) -> BeforeValidator:
    """Run one of the shared hand checks (they raise InvalidRequest) as a field validator."""

    def run(value: Any, info: ValidationInfo) -> Any:
        try:
            return check(value, str(info.field_name))
        except InvalidRequest as exc:
            raise refuse(exc.message, code=exc.code if exc.code != InvalidRequest.code else None) from None

    return BeforeValidator(run)


def explained(message: str) -> WrapValidator:
    """Any failure of the field's own validation is reported with `message`."""

    def run(value: Any, handler: Callable[[Any], Any]) -> Any:
        try:
            return handler(value)
        except ValidationError:
            raise refuse(message) from None

    return WrapValidator(run)


def _credits(value: Any, field: str) -> int:
    return parse_credits(value, field=field)


def _credits_or_zero(value: Any, field: str) -> int:
    return parse_credits(value, field=field, allow_zero=True)


def _text(value: Any, field: str) -> str:
    text = validation.text_field({field: value}, field, required=True)
    assert text is not None
    return text


# Integer nano-credits in Python, a decimal string on the wire (and in the document).
Credits = Annotated[int, _checked(_credits), WithJsonSchema(_CREDITS_SCHEMA)]
CreditsOrZero = Annotated[int, _checked(_credits_or_zero), WithJsonSchema(_CREDITS_SCHEMA)]
# Left out: None (keep what is saved); sent as null: refused like any non-amount.
OmittableCredits = Annotated[int | None, _checked(_credits), WithJsonSchema(_CREDITS_SCHEMA)]
Text = Annotated[
    str,
    _checked(_text),
    WithJsonSchema({"type": "string", "minLength": 1, "maxLength": validation.MAX_TEXT}),
]
Scope = Literal["inference", "billing"]
Period = Literal["day", "week", "month", "total"]


class Request(BaseModel):
    """A request body: strict types; fields it does not know are ignored unless it is `Closed`."""

    model_config = ConfigDict(strict=True, extra="ignore")


class Closed(Request):
    """A body that refuses fields it does not know, saying which ones it takes."""

    model_config = ConfigDict(strict=True, extra="forbid")
    unknown_hint: ClassVar[str] = ""

    @model_validator(mode="before")
    @classmethod
    def _known_fields(cls, data: Any) -> Any:
        if isinstance(data, dict):
            unknown = sorted(set(data) - set(cls.model_fields))
            if unknown:
                raise refuse(f"Unknown field '{unknown[0]}': {cls.unknown_hint}", param=unknown[0])
        return data


def parse(model: type[M], data: Any) -> M:
    """`data` as `model`, or the same InvalidRequest the API answers (for callers without a
    resolver, and the tests)."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise validation.invalid_request_from(exc.errors()) from None


# ------------------------------------------------------------------ BillingApi


class AlertsRequest(Closed):
    """The whole set of alert thresholds (a PUT): each one emails once per crossing."""

    unknown_hint: ClassVar[str] = "send balance_below and cap_used_percent."
    balance_below: Annotated[
        list[CreditsOrZero],
        Field(max_length=10, description="Email when the balance falls below each amount."),
    ] = []
    cap_used_percent: Annotated[
        list[Annotated[int, Field(ge=1, le=100)]],
        Field(max_length=10, description="Email when the month's spend reaches each percent of the cap."),
        explained("'cap_used_percent' holds whole percents from 1 to 100 (at most 10)."),
    ] = []


class TopUpRequest(Request):
    amount: Annotated[Credits, Field(description="One of the operator's top-up tiers (see /v1/pricing).")]


class SpendCapRequest(Request):
    monthly_limit: Annotated[
        int | None,
        _checked(lambda v, f: None if v is None else _credits_or_zero(v, f)),
        WithJsonSchema({"anyOf": [_CREDITS_SCHEMA, {"type": "null"}]}),
        Field(description="The monthly cap; null removes it."),
    ]

    @model_validator(mode="before")
    @classmethod
    def _required(cls, data: Any) -> Any:
        if isinstance(data, dict) and "monthly_limit" not in data:
            raise refuse(
                'Send {"monthly_limit": "100"} to set the monthly cap, or null to remove it.',
                param="monthly_limit",
            )
        return data


class AutoReloadRequest(Request):
    """Turn auto-reload on or off; a field left out keeps its saved value."""

    enabled: Annotated[bool, explained("'enabled' must be true or false.")]
    threshold: Annotated[OmittableCredits, Field(description="Reload when the balance falls below.")] = None
    amount: Annotated[OmittableCredits, Field(description="A top-up tier, or within the reload range.")] = (
        None
    )


class SubscriptionRequest(Request):
    plan: Annotated[str, Field(examples=["builder"], description="A plan id from /v1/pricing; free cancels.")]


class ApiKeyRequest(Request):
    name: Annotated[Text | None, Field(description='Defaults to "default".')] = None
    scopes: Annotated[
        list[Scope] | None,
        Field(min_length=1, description="Defaults to every scope of the key (or operator) asking."),
        explained("'scopes' must be a non-empty list of inference, billing."),
    ] = None


class SpendLimit(Request):
    amount: Credits
    period: Annotated[
        Period,
        Field(description="UTC; weeks start on Monday."),
        explained("'spend_limit.period' must be one of day, week, month, total."),
    ]

    @model_validator(mode="before")
    @classmethod
    def _shape(cls, data: Any) -> Any:
        if not isinstance(data, dict) or set(data) - {"amount", "period"}:
            raise refuse('\'spend_limit\' must be {"amount": "5", "period": "day"} or null.')
        return data


class ApiKeyUpdate(Closed):
    unknown_hint: ClassVar[str] = "only 'spend_limit' can be changed."
    spend_limit: Annotated[
        SpendLimit | None, Field(description="The key's own spend limit; null removes it.")
    ]

    @model_validator(mode="before")
    @classmethod
    def _required(cls, data: Any) -> Any:
        if isinstance(data, dict) and set(data) <= {"spend_limit"} and "spend_limit" not in data:
            raise refuse("'spend_limit' is required (an object, or null to remove it).", param="spend_limit")
        return data


# ------------------------------------------------------------------ Admin


class OrgRequest(Request):
    name: Text
    email: Annotated[Text, Field(examples=["billing@acme.test"])]


class GrantRequest(Request):
    amount: Credits
    reason: Annotated[Text, Field(description="Shown on the org's ledger entry.")]
    idempotency_key: Annotated[Text, Field(description="A retry with the same key grants once.")]
    expires_at: Annotated[
        str | None,
        Field(
            max_length=40,
            examples=["2027-01-31T00:00:00Z"],
            description="ISO 8601 in UTC, in the future; unspent credits of the grant expire then.",
        ),
        explained("'expires_at' must be an ISO 8601 time in UTC, such as \"2027-01-31T00:00:00Z\"."),
    ] = None


class BillingModeRequest(Request):
    mode: Annotated[Literal["prepaid", "invoice"], explained("'mode' must be one of prepaid, invoice.")]
    po_number: Text | None = None
    net_terms_days: Annotated[
        int,
        Field(ge=1, le=120),
        explained("'net_terms_days' must be a whole number of days from 1 to 120."),
    ] = 30
