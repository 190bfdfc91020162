"""Monthly NET-terms invoices for orgs in invoice billing mode.

For each such org, one Stripe invoice per calendar month: a line per model with its tokens
and credits, collection by send_invoice, due in the org's net terms, its PO number as a
custom field; finalized and sent. A record under the org (INVOICE#<month>) and Stripe
idempotency keys derived from org and month make reruns and retried Lambdas harmless.

Rounding, the one rule: the month's charge is the exact sum of its ledger entries in
nano-credits (1 credit = 1 USD); the invoice total is that sum rounded half up to the cent,
and the model lines are rounded by largest remainder so that they add up to the total.
Paying the invoice credits back exactly what the ledger charged.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from conduix import clock, orgs, stripe_gateway, wallets
from conduix.config import settings
from conduix.dynamo import as_int, as_str, client, n, s
from conduix.errors import InvalidRequest
from conduix.money import format_credits, parse_credits

log = logging.getLogger(__name__)
PURPOSE = "usage_invoice"
NANOS_PER_CENT = 10_000_000
_PERIOD = re.compile(r"^\d{4}-(0[1-9]|1[0-2])$")


@dataclass
class ModelUsage:
    model: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    requests: int = 0
    nanos: int = 0


def previous_month(now: datetime) -> str:
    year, month = now.year, now.month - 1
    if month == 0:
        year, month = year - 1, 12
    return f"{year:04d}-{month:02d}"


def month_usage(org_id: str, period: str) -> list[ModelUsage]:
    """The month's invoiced usage per model, from the ledger (the source of truth)."""
    by_model: dict[str, ModelUsage] = {}
    kwargs: dict[str, Any] = {
        "TableName": settings().billing_table,
        "KeyConditionExpression": "pk = :pk AND begins_with(sk, :prefix)",
        "FilterExpression": "entry_type = :usage AND billed_by = :invoice",
        "ExpressionAttributeValues": {
            ":pk": s(wallets.org_pk(org_id)),
            ":prefix": s(f"LEDGER#{period}-"),
            ":usage": s("usage"),
            ":invoice": s("invoice"),
        },
        "ConsistentRead": True,
    }
    while True:
        page = client().query(**kwargs)
        for item in page.get("Items", []):
            usage = by_model.setdefault(as_str(item, "model"), ModelUsage(as_str(item, "model")))
            usage.prompt_tokens += as_int(item, "prompt_tokens")
            usage.completion_tokens += as_int(item, "completion_tokens")
            usage.requests += 1
            usage.nanos -= as_int(item, "amount")  # usage entries are debits
        if "LastEvaluatedKey" not in page:
            return sorted(by_model.values(), key=lambda u: u.model)
        kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]


def cents_by_line(nanos: list[int]) -> list[int]:
    """Half-up rounding of the total to the cent, spread over the lines by largest remainder."""
    total = sum(nanos)
    total_cents = (total + NANOS_PER_CENT // 2) // NANOS_PER_CENT
    floors = [v // NANOS_PER_CENT for v in nanos]
    short = total_cents - sum(floors)
    order = sorted(range(len(nanos)), key=lambda i: (-(nanos[i] % NANOS_PER_CENT), i))
    for i in order[: max(short, 0)]:
        floors[i] += 1
    return floors


def _record_key(org_id: str, period: str) -> dict[str, Any]:
    return {"pk": s(wallets.org_pk(org_id)), "sk": s(f"INVOICE#{period}")}


def _recorded(org_id: str, period: str) -> dict[str, Any] | None:
    item = client().get_item(
        TableName=settings().billing_table, Key=_record_key(org_id, period), ConsistentRead=True
    )
    return item.get("Item")


def invoice_org(org_id: str, period: str, now: datetime) -> str:
    record = _recorded(org_id, period)
    if record and as_str(record, "status") == "sent":
        return f"already invoiced: {as_str(record, 'stripe_invoice_id')}"
    usage = month_usage(org_id, period)
    total_nanos = sum(u.nanos for u in usage)
    cents = cents_by_line([u.nanos for u in usage])
    if not usage or sum(cents) == 0:
        return "no usage"
    from conduix import payments

    org = orgs.get_org(org_id)
    lines = [
        stripe_gateway.InvoiceLine(
            key=u.model.replace("/", "_"),
            amount_cents=c,
            description=(
                f"{u.model}: {u.requests} requests, {u.prompt_tokens} input + "
                f"{u.completion_tokens} output tokens, {format_credits(u.nanos)} credits"
            ),
        )
        for u, c in zip(usage, cents, strict=True)
        if c > 0
    ]
    invoice = stripe_gateway.send_usage_invoice(
        customer_id=payments.customer_of(org),
        idempotency_prefix=f"usage-invoice-{org_id}-{period}",
        lines=lines,
        days_until_due=org.net_terms_days,
        po_number=org.po_number,
        description=f"Conduix usage for {period}",
        metadata={
            "org_id": org_id,
            "period": period,
            "purpose": PURPOSE,
            "credits": format_credits(total_nanos),
        },
    )
    client().put_item(
        TableName=settings().billing_table,
        Item={
            **_record_key(org_id, period),
            "status": s("sent"),
            "stripe_invoice_id": s(str(invoice["id"])),
            "total_cents": n(sum(cents)),
            "credits": n(total_nanos),
            "sent_at": s(clock.iso(now)),
        },
    )
    return f"invoiced: {invoice['id']}"


def run(event: dict[str, Any], now: datetime) -> dict[str, Any]:
    """MonthlyInvoicing: the month before `now`, or the event's `period` (reruns, backfills)."""
    period = event.get("period") or previous_month(now)
    if not isinstance(period, str) or not _PERIOD.match(period):
        raise InvalidRequest("'period' must be a month such as 2026-11.", param="period")
    if period >= clock.period_of(now):
        raise InvalidRequest(f"The month {period} has not ended yet.", param="period")
    results: dict[str, str] = {}
    for org_id in wallets.invoice_mode_orgs():
        try:
            results[org_id] = invoice_org(org_id, period, now)
        except Exception as exc:  # one org's trouble must not stop the others' invoices
            log.exception("invoicing failed for an org", extra={"org_id": org_id, "period": period})
            results[org_id] = f"failed: {type(exc).__name__}"
    failed = [org for org, outcome in results.items() if outcome.startswith("failed")]
    if failed:  # the scheduled run fails, so its retries and the failure queue see it
        raise RuntimeError(f"invoicing {period} failed for {len(failed)} org(s): {', '.join(failed)}")
    return {"period": period, "orgs": results}


def invoice_paid(obj: dict[str, Any], now: datetime) -> str:
    """A paid usage invoice credits back exactly the ledger charges it billed."""
    invoice = stripe_gateway.retrieve_invoice(str(obj["id"]))
    metadata = invoice.get("metadata") or {}
    if invoice.get("status") != "paid":
        return "waiting: not paid"
    amount = parse_credits(str(metadata["credits"]), field="credits")
    _, created = wallets.credit(
        str(metadata["org_id"]),
        kind="invoice_payment",
        key=str(invoice["id"]),
        amount=amount,
        description=f"Payment of the usage invoice for {metadata.get('period')}",
        now=now,
    )
    return "credited" if created else "already credited"
