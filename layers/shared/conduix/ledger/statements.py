"""What an org can read back about its money: the ledger as a statement, and usage (data
access and shaping)."""

from __future__ import annotations

import base64
import csv
import hashlib
import hmac
import io
import json
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any

from conduix.core import clock, config
from conduix.core.config import settings
from conduix.core.errors import InvalidRequest
from conduix.core.money import format_credits
from conduix.ledger import wallets
from conduix.store import schema
from conduix.store.dynamo import client
from conduix.store.items import Item, as_int, as_str, s

MAX_PAGE = 200
MAX_USAGE_DAYS = 366
GROUPS = ("model", "day", "key")
# Every `kind` the product writes to the ledger (a unit test checks the code against this list).
ENTRY_TYPES = (
    "top_up",
    "auto_reload",
    "plan_credits",
    "grant",
    "invoice_payment",
    "usage",
    "refund",
    "dispute",
    "dispute_won",
    "hold_release",
    "expiry",
)
# A CSV export holds the whole range asked for, up to this many rows; beyond, a 400 asks for a
# narrower range (a Lambda answer is at most 6 MB: 10,000 ledger rows are about 1.5 MB).
MAX_EXPORT_ROWS = 10_000
FORMATS = ("json", "csv")


@dataclass(frozen=True)
class Export:
    filename: str
    text: str


def _too_large(what: str) -> InvalidRequest:
    return InvalidRequest(
        f"The export would hold more than {MAX_EXPORT_ROWS:,} {what}; narrow it with 'from' and 'to'.",
        param="from",
        code="export_too_large",
    )


# A cell a spreadsheet would run as a formula starts with one of these (OWASP, "CSV Injection").
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
# Amounts and counts are ours, exact decimals such as "-0.5": a spreadsheet reads them as numbers,
# never as formulas, so they go out untouched. Anything else that could start a formula (a
# description, a model or key name) gets a leading apostrophe, which spreadsheets show as text.
_PLAIN_NUMBER = re.compile(r"^-?[0-9]+(\.[0-9]+)?$")


def csv_cell(value: object) -> str:
    text = "" if value is None else str(value)
    if text.startswith(_FORMULA_START) and not _PLAIN_NUMBER.match(text):
        return "'" + text
    return text


def to_csv(columns: tuple[str, ...], rows: list[dict[str, Any]]) -> str:
    """RFC 4180 text: a header row, CRLF line ends, quotes only where a cell needs them."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([csv_cell(row.get(c)) for c in columns])
    return out.getvalue()


# A cursor carries the running balance where the page ends, so the next page needs no read of
# everything newer. It is signed (HMAC-SHA256, bound to the org), so a client cannot make the
# API print a balance of its choosing.
_BAD_CURSOR = "'cursor' is not one this API gave out."


def _cursor_mac(org_id: str, payload: bytes) -> bytes:
    return hmac.new(config.cursor_key(), org_id.encode() + b"\n" + payload, hashlib.sha256).digest()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _cursor_out(org_id: str, sk: str, balance: int) -> str:
    payload = json.dumps({"sk": sk, "b": balance}, separators=(",", ":")).encode()
    return f"{_b64(payload)}.{_b64(_cursor_mac(org_id, payload))}"


def _cursor_in(org_id: str, cursor: str) -> tuple[str, int]:
    try:
        payload_text, _, mac_text = cursor.partition(".")
        payload, mac = _unb64(payload_text), _unb64(mac_text)
    except (ValueError, UnicodeEncodeError):  # binascii.Error is a ValueError
        raise InvalidRequest(_BAD_CURSOR, param="cursor") from None
    if not hmac.compare_digest(mac, _cursor_mac(org_id, payload)):
        raise InvalidRequest(_BAD_CURSOR, param="cursor")
    try:
        data = json.loads(payload)
        sk, balance = data["sk"], data["b"]
    except (ValueError, KeyError, TypeError):
        raise InvalidRequest(_BAD_CURSOR, param="cursor") from None
    if not isinstance(sk, str) or not sk.startswith(schema.LEDGER) or type(balance) is not int:
        raise InvalidRequest(_BAD_CURSOR, param="cursor")
    return sk, balance


def _query_lines(org_id: str, limit: int, after_sk: str | None) -> tuple[list[Item], bool]:
    kwargs: dict[str, Any] = {
        "TableName": settings().billing_table,
        "KeyConditionExpression": "pk = :pk AND begins_with(sk, :prefix)",
        "ExpressionAttributeValues": {":pk": s(schema.org_pk(org_id)), ":prefix": s(schema.LEDGER)},
        "ScanIndexForward": False,
        "ConsistentRead": True,
        "Limit": limit,
    }
    if after_sk:
        kwargs["ExclusiveStartKey"] = {"pk": s(schema.org_pk(org_id)), "sk": s(after_sk)}
    page = client().query(**kwargs)
    return page.get("Items", []), "LastEvaluatedKey" in page


@dataclass(frozen=True)
class LedgerFilter:
    """Which entries a ledger read returns. Every entry is still read, newest first, because each
    row's balance is the wallet's balance minus every newer entry, shown or not."""

    entry_type: str | None = None
    first: date | None = None  # UTC days, inclusive
    last: date | None = None

    def matches(self, item: Item) -> bool:
        day = as_str(item, "created_at")[:10]
        return (self.entry_type is None or as_str(item, "entry_type") == self.entry_type) and (
            self.last is None or day <= self.last.isoformat()
        )

    def ended(self, item: Item) -> bool:
        """Newest first: once an entry is older than `from`, so is every one after it."""
        return self.first is not None and as_str(item, "created_at")[:10] < self.first.isoformat()

    @property
    def narrows(self) -> bool:
        return self.entry_type is not None or self.last is not None


def _walk(org_id: str, cursor: str | None, chunk: int) -> Iterator[tuple[Item, int]]:
    """Every ledger line from the newest (or from the cursor) back, each with the balance right
    after it. Without a cursor the running balance starts from the wallet's balance, read before
    and after the first chunk; if a movement landed in between, the chunk is read again, so the
    figures are exact. Older chunks cannot change: new entries only ever sort first."""
    if cursor:
        after_sk, running = _cursor_in(org_id, cursor)
        items, more = _query_lines(org_id, chunk, after_sk)
    else:
        for _ in range(5):
            before = wallets.get_wallet(org_id).balance
            items, more = _query_lines(org_id, chunk, None)
            if wallets.get_wallet(org_id).balance == before:
                break
        running = before
    while True:
        for item in items:
            yield item, running
            running -= as_int(item, "amount")
        if not more or not items:
            return
        items, more = _query_lines(org_id, chunk, as_str(items[-1], "sk"))


def _entry(item: Item, balance_after: int) -> dict[str, Any]:
    entry_id = as_str(item, "entry_id")
    return {
        "id": entry_id,
        "type": as_str(item, "entry_type"),
        "amount": format_credits(as_int(item, "amount")),
        "balance_after": format_credits(balance_after),
        "description": as_str(item, "description"),
        "reference": entry_id.split(":", 1)[1] if ":" in entry_id else entry_id,
        "created_at": as_str(item, "created_at"),
        **({"model": as_str(item, "model")} if "model" in item else {}),
        # Invoice mode: the part of a usage entry the month's invoice bills.
        **({"invoiced": format_credits(as_int(item, "invoiced"))} if "invoiced" in item else {}),
    }


def ledger_page(
    org_id: str, limit: int = 50, cursor: str | None = None, wanted: LedgerFilter = LedgerFilter()
) -> dict[str, Any]:
    """Newest first, each entry with the balance right after it; `wanted` narrows the rows
    (never the balances). The API checked `limit` (1 to MAX_PAGE); the cursor is checked here,
    against the org it was signed for."""
    entries: list[dict[str, Any]] = []
    next_cursor = None
    last: tuple[str, int] | None = None  # where the page ends: the last row's key and the balance before it
    for item, balance_after in _walk(org_id, cursor, MAX_PAGE if wanted.narrows else limit + 1):
        if wanted.ended(item):
            break
        if not wanted.matches(item):
            continue
        if len(entries) == limit:  # one more row exists: the page has a next one
            assert last is not None
            next_cursor = _cursor_out(org_id, *last)
            break
        entries.append(_entry(item, balance_after))
        last = (as_str(item, "sk"), balance_after - as_int(item, "amount"))
    return {
        "object": "list",
        "data": entries,
        "has_more": next_cursor is not None,
        "next_cursor": next_cursor,
    }


LEDGER_COLUMNS = (
    "created_at",
    "id",
    "type",
    "description",
    "model",
    "amount",
    "invoiced",
    "balance_after",
    "reference",
)


def ledger_export(org_id: str, wanted: LedgerFilter = LedgerFilter()) -> Export:
    """GET /v1/billing/ledger?format=csv: every entry the filters select (not one page), the
    same rows and figures as the JSON, newest first."""
    rows: list[dict[str, Any]] = []
    for item, balance_after in _walk(org_id, None, MAX_PAGE):
        if wanted.ended(item):
            break
        if wanted.matches(item):
            if len(rows) == MAX_EXPORT_ROWS:
                raise _too_large("ledger entries")
            rows.append(_entry(item, balance_after))
    span = f"{wanted.first or 'start'}_{wanted.last or clock.now().date()}"
    kind = f"-{wanted.entry_type}" if wanted.entry_type else ""
    return Export(f"conduix-ledger{kind}-{org_id}-{span}.csv", to_csv(LEDGER_COLUMNS, rows))


def usage_report(
    org_id: str, first: date | None = None, last: date | None = None, group_by: Sequence[str] = ("model",)
) -> dict[str, Any]:
    """GET /v1/usage?from=&to=&group_by=model|day|key (or a combination such as model,day):
    from the first of this month to today unless told. The range is checked here, where its
    defaults are known; `group_by` holds distinct GROUPS (the API checked them)."""
    today = clock.now().date()
    first = first or today.replace(day=1)
    last = last or today
    if last < first:
        raise InvalidRequest("'to' must not be before 'from'.", param="to")
    if (last - first).days >= MAX_USAGE_DAYS:
        raise InvalidRequest(f"A usage range spans at most {MAX_USAGE_DAYS} days.", param="to")
    group_by = list(group_by)

    groups: dict[tuple[str, ...], dict[str, int]] = {}
    totals = dict.fromkeys(
        ("requests", "prompt_tokens", "completion_tokens", "credits", "cache_hits", "saved_credits"), 0
    )
    kwargs: dict[str, Any] = {
        "TableName": settings().billing_table,
        "KeyConditionExpression": "pk = :pk AND sk BETWEEN :lo AND :hi",
        "ExpressionAttributeValues": {
            ":pk": s(schema.org_pk(org_id)),
            ":lo": s(f"{schema.USAGE}{first.isoformat()}"),
            ":hi": s(f"{schema.USAGE}{(last + timedelta(days=1)).isoformat()}"),
        },
    }
    while True:
        page = client().query(**kwargs)
        for item in page.get("Items", []):
            if as_str(item, "day") > last.isoformat():
                continue  # the upper bound is the next day's first key
            dims = {"model": as_str(item, "model"), "day": as_str(item, "day"), "key": as_str(item, "key_id")}
            bucket = groups.setdefault(tuple(dims[g] for g in group_by), dict.fromkeys(totals, 0))
            for name in totals:
                value = as_int(item, name)
                bucket[name] += value
                totals[name] += value
        if "LastEvaluatedKey" not in page:
            break
        kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]

    def shaped(counts: dict[str, int]) -> dict[str, Any]:
        return {
            **{k: counts[k] for k in ("requests", "prompt_tokens", "completion_tokens", "cache_hits")},
            "credits": format_credits(counts["credits"]),
            "saved_credits": format_credits(counts["saved_credits"]),
        }

    rows = [
        {
            **{("key_id" if g == "key" else g): value for g, value in zip(group_by, key, strict=True)},
            **shaped(counts),
        }
        for key, counts in sorted(groups.items())
    ]
    return {
        "from": first.isoformat(),
        "to": last.isoformat(),
        "group_by": group_by,
        "data": rows,
        "totals": shaped(totals),
        "unit": "credits",
    }


USAGE_COUNTS = ("requests", "cache_hits", "prompt_tokens", "completion_tokens", "credits", "saved_credits")


def usage_export(
    org_id: str, first: date | None = None, last: date | None = None, group_by: Sequence[str] = ("model",)
) -> Export:
    """GET /v1/usage?format=csv: the JSON's `data` rows (not its totals), one per group."""
    report = usage_report(org_id, first, last, group_by)
    dims = tuple("key_id" if g == "key" else g for g in report["group_by"])
    if len(report["data"]) > MAX_EXPORT_ROWS:
        raise _too_large("rows")
    name = f"conduix-usage-{org_id}-{report['from']}_{report['to']}.csv"
    return Export(name, to_csv(dims + USAGE_COUNTS, report["data"]))
