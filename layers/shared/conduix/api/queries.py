"""Query parameters of BillingApi and Admin: one small pydantic model per route, which the
handler names as `Annotated[Model, Query()]`. The resolver validates the query string with it
(`enable_validation`) and /openapi.json lists its fields as the operation's parameters, each
with the field's own schema (see `conduix.api.openapi`).

Like the bodies (`conduix.core.bodies`), a failed check is our 400 `invalid_request` naming
the parameter, with the message users already know. An empty value (`?limit=`) counts as left
out. What needs more than the query to check (a ledger cursor is signed for its org; a usage
range's defaults depend on today) stays with the domain function, which takes typed values.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import date
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    WithJsonSchema,
    WrapValidator,
    model_validator,
)

from conduix.core.bodies import refuse
from conduix.ledger import statements

_DAY = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_DATE_SCHEMA = {"type": "string", "format": "date", "examples": ["2026-11-01"]}


def _page_size(maximum: int) -> WrapValidator:
    """The messages of `limit`, a whole number from 1 to `maximum` (50 when left out)."""

    def run(value: Any, handler: Callable[[Any], Any]) -> Any:
        try:
            return handler(value)
        except ValidationError as exc:
            if str(exc.errors()[0]["type"]).startswith("int_"):
                raise refuse("'limit' must be an integer.") from None
            raise refuse(f"'limit' must be between 1 and {maximum}.") from None

    return WrapValidator(run)


def _day(name: str) -> BeforeValidator:
    """A UTC day written exactly as YYYY-MM-DD (no times, no week dates, no timestamps)."""

    def run(value: Any) -> date:
        if isinstance(value, str) and _DAY.match(value):
            try:
                return date.fromisoformat(value)
            except ValueError:
                pass
        raise refuse(f"'{name}' must be a date such as 2026-11-01.")

    return BeforeValidator(run)


def _group_by(value: Any) -> tuple[str, ...]:
    text = ",".join(value) if isinstance(value, list) else value  # a repeated parameter
    groups = tuple(g.strip() for g in text.split(",") if g.strip()) if isinstance(text, str) else ()
    if not groups or any(g not in statements.GROUPS for g in groups) or len(set(groups)) != len(groups):
        raise refuse("'group_by' must be model, day or key, or a comma-separated mix.")
    return groups


def _printable(name: str) -> BeforeValidator:
    def run(value: Any) -> str:
        if not isinstance(value, str) or len(value) > 200 or not value.isprintable():
            raise refuse(f"'{name}' must be up to 200 printable characters.")
        return value

    return BeforeValidator(run)


def _format(value: Any) -> str:
    if value not in statements.FORMATS:
        raise refuse("'format' must be json or csv.")
    return str(value)


def _entry_type(value: Any) -> str:
    if value not in statements.ENTRY_TYPES:
        raise refuse(
            f"'type' must be one of: {', '.join(statements.ENTRY_TYPES)}.", code="invalid_entry_type"
        )
    return str(value)


Format = Annotated[
    Literal["json", "csv"],
    BeforeValidator(_format),
    Field(description="json (the default), or csv for a download of the whole range."),
]
Cursor = Annotated[
    str | None, WithJsonSchema({"type": "string"}), Field(description="The next_cursor of the page before.")
]


class _Query(BaseModel):
    """Parameters it does not know are ignored, as a query string's usually are."""

    model_config = ConfigDict(extra="ignore")

    @model_validator(mode="before")
    @classmethod
    def _empty_is_absent(cls, data: Any) -> Any:
        if isinstance(data, dict):  # a list field gets its values as a list: [""] for `?group_by=`
            return {k: v for k, v in data.items() if v not in ("", None, [""])}
        return data


First = Annotated[
    date | None,
    _day("from"),
    WithJsonSchema(_DATE_SCHEMA),
    Field(alias="from", description="The first UTC day, inclusive."),
]
Last = Annotated[
    date | None,
    _day("to"),
    WithJsonSchema(_DATE_SCHEMA),
    Field(alias="to", description="The last UTC day, inclusive."),
]


def _check_order(first: date | None, last: date | None) -> None:
    if first and last and last < first:
        raise refuse("'to' must not be before 'from'.", param="to")


class LedgerQuery(_Query):
    """GET /v1/billing/ledger: a page of the statement, or (format=csv) all of the range."""

    PAGE_ONLY: ClassVar[tuple[str, ...]] = ("limit", "cursor")

    # In the order the checks are told: the first problem found is the one reported.
    format: Format = "json"
    limit: Annotated[
        int,
        Field(ge=1, le=statements.MAX_PAGE, description="Rows per page."),
        _page_size(statements.MAX_PAGE),
    ] = 50
    cursor: Cursor = None
    entry_type: Annotated[
        str | None,
        BeforeValidator(_entry_type),
        WithJsonSchema({"type": "string", "enum": list(statements.ENTRY_TYPES)}),
        Field(alias="type", description="Only entries of this type (every balance still counts them all)."),
    ] = None
    first: First = None
    last: Last = None

    @model_validator(mode="before")
    @classmethod
    def _whole_range_only(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("format") == "csv":
            for name in cls.PAGE_ONLY:
                if data.get(name):
                    raise refuse(
                        f"A CSV export holds the whole range, not a page: drop '{name}' and narrow it "
                        "with 'from', 'to' or 'type' instead.",
                        param=name,
                    )
        return data

    @model_validator(mode="after")
    def _in_order(self) -> Any:
        _check_order(self.first, self.last)
        return self

    @property
    def filter(self) -> statements.LedgerFilter:
        return statements.LedgerFilter(self.entry_type, self.first, self.last)


class UsageQuery(_Query):
    """GET /v1/usage: totals over a range of days (this month by default), grouped."""

    format: Format = "json"
    first: First = None
    last: Last = None
    group_by: Annotated[
        tuple[str, ...],
        BeforeValidator(_group_by),
        WithJsonSchema({"type": "string", "examples": ["model", "model,day"]}),
        Field(
            description="model, day, key, or a comma-separated mix.", json_schema_extra={"default": "model"}
        ),
    ] = ("model",)

    @model_validator(mode="after")
    def _in_order(self) -> Any:
        _check_order(self.first, self.last)
        return self


class NoticesQuery(_Query):
    """GET /v1/billing/notices: the latest emails sent to the org."""

    limit: Annotated[int, Field(ge=1, le=100, description="Rows per page."), _page_size(100)] = 50


class OrgsQuery(_Query):
    """GET /admin/orgs: the org directory, in email order."""

    email: Annotated[
        str | None,
        _printable("email"),
        WithJsonSchema({"type": "string", "maxLength": 200}),
        Field(description="The start of the address, ignoring case."),
    ] = None
    name: Annotated[
        str | None,
        _printable("name"),
        WithJsonSchema({"type": "string", "maxLength": 200}),
        Field(description="Any part of the name, ignoring case."),
    ] = None
    limit: Annotated[int, Field(ge=1, le=200, description="Rows per page."), _page_size(200)] = 50
    cursor: Cursor = None
