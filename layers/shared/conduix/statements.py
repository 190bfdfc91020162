"""What an org can read back about its money: the ledger as a statement, and usage (data
access and shaping)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
from datetime import date, timedelta
from typing import Any

from conduix import clock, config, wallets
from conduix.config import settings
from conduix.dynamo import Item, as_int, as_str, client, s
from conduix.errors import InvalidRequest
from conduix.money import format_credits

MAX_PAGE = 200
MAX_USAGE_DAYS = 366
GROUPS = ("model", "day", "key")


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
    if not isinstance(sk, str) or not sk.startswith("LEDGER#") or type(balance) is not int:
        raise InvalidRequest(_BAD_CURSOR, param="cursor")
    return sk, balance


def _query_lines(org_id: str, limit: int, after_sk: str | None) -> tuple[list[Item], bool]:
    kwargs: dict[str, Any] = {
        "TableName": settings().billing_table,
        "KeyConditionExpression": "pk = :pk AND begins_with(sk, :prefix)",
        "ExpressionAttributeValues": {":pk": s(wallets.org_pk(org_id)), ":prefix": s("LEDGER#")},
        "ScanIndexForward": False,
        "ConsistentRead": True,
        "Limit": limit,
    }
    if after_sk:
        kwargs["ExclusiveStartKey"] = {"pk": s(wallets.org_pk(org_id)), "sk": s(after_sk)}
    page = client().query(**kwargs)
    return page.get("Items", []), "LastEvaluatedKey" in page


def ledger_page(org_id: str, limit_text: str | None, cursor: str | None) -> dict[str, Any]:
    """Newest first, each entry with the balance right after it.

    The running balance starts from the wallet's balance, read before and after the page;
    if a movement landed in between, the page is read again, so the figures are exact."""
    try:
        limit = int(limit_text) if limit_text else 50
    except ValueError:
        raise InvalidRequest("'limit' must be an integer.", param="limit") from None
    if not 1 <= limit <= MAX_PAGE:
        raise InvalidRequest(f"'limit' must be between 1 and {MAX_PAGE}.", param="limit")
    if cursor:
        after_sk, running = _cursor_in(org_id, cursor)
        items, more = _query_lines(org_id, limit, after_sk)
    else:
        for _ in range(5):
            before = wallets.get_wallet(org_id).balance
            items, more = _query_lines(org_id, limit, None)
            if wallets.get_wallet(org_id).balance == before:
                break
        running = before
    entries = []
    for item in items:
        amount = as_int(item, "amount")
        entry_id = as_str(item, "entry_id")
        entries.append(
            {
                "id": entry_id,
                "type": as_str(item, "entry_type"),
                "amount": format_credits(amount),
                "balance_after": format_credits(running),
                "description": as_str(item, "description"),
                "reference": entry_id.split(":", 1)[1] if ":" in entry_id else entry_id,
                "created_at": as_str(item, "created_at"),
                **({"model": as_str(item, "model")} if "model" in item else {}),
                # Invoice mode: the part of a usage entry the month's invoice bills.
                **({"invoiced": format_credits(as_int(item, "invoiced"))} if "invoiced" in item else {}),
            }
        )
        running -= amount
    next_cursor = _cursor_out(org_id, as_str(items[-1], "sk"), running) if more and items else None
    return {
        "object": "list",
        "data": entries,
        "has_more": next_cursor is not None,
        "next_cursor": next_cursor,
    }


_DAY = re.compile(r"^\d{4}-\d{2}-\d{2}$")


def _day(value: str | None, name: str, default: date) -> date:
    if not value:
        return default
    try:
        if not _DAY.match(value):
            raise ValueError
        return date.fromisoformat(value)
    except ValueError:
        raise InvalidRequest(f"'{name}' must be a date such as 2026-11-01.", param=name) from None


def usage_report(org_id: str, query: dict[str, str]) -> dict[str, Any]:
    """GET /v1/usage?from=&to=&group_by=model|day|key (or a combination such as model,day)."""
    today = clock.now().date()
    first = _day(query.get("from"), "from", today.replace(day=1))
    last = _day(query.get("to"), "to", today)
    if last < first:
        raise InvalidRequest("'to' must not be before 'from'.", param="to")
    if (last - first).days >= MAX_USAGE_DAYS:
        raise InvalidRequest(f"A usage range spans at most {MAX_USAGE_DAYS} days.", param="to")
    group_by = [g.strip() for g in (query.get("group_by") or "model").split(",") if g.strip()]
    if not group_by or any(g not in GROUPS for g in group_by) or len(set(group_by)) != len(group_by):
        raise InvalidRequest(
            "'group_by' must be model, day or key, or a comma-separated mix.", param="group_by"
        )

    groups: dict[tuple[str, ...], dict[str, int]] = {}
    totals = dict.fromkeys(
        ("requests", "prompt_tokens", "completion_tokens", "credits", "cache_hits", "saved_credits"), 0
    )
    kwargs: dict[str, Any] = {
        "TableName": settings().billing_table,
        "KeyConditionExpression": "pk = :pk AND sk BETWEEN :lo AND :hi",
        "ExpressionAttributeValues": {
            ":pk": s(wallets.org_pk(org_id)),
            ":lo": s(f"USAGE#{first.isoformat()}"),
            ":hi": s(f"USAGE#{(last + timedelta(days=1)).isoformat()}"),
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
