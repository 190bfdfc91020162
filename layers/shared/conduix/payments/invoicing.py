"""Monthly NET-terms invoices for invoice-billed usage.

Every org with invoice-billed usage in a calendar month gets one Stripe invoice for it,
whatever its billing mode is now: a line per model with its tokens and credits, a line for
the credits its positive balance covered, collection by send_invoice, due in the org's net
terms, its PO number as a custom field; finalized and sent.

At most one invoice per org and month, however a run fails and however late it is rerun:
1. Before any Stripe call, the intent is recorded under the org (INVOICE#<month>): the
   month's figures, frozen, and the invoice's idempotency key.
2. Each step (create, add lines, finalize, send) starts from Stripe's actual state: the
   invoice is retrieved by its recorded id, or, if the id was lost, found by the key in its
   metadata among the customer's invoices (a strongly consistent list). A create response is
   only ever used for its id, never for its state: a replay says "draft" for good.
3. The record moves forward after each step, so a rerun resumes where the last one stopped.
Stripe's idempotency keys only make concurrent retries harmless; nothing depends on them
once they expire (after 24 hours or more).

Rounding, the one rule: the month's usage and the credits applied are exact sums of ledger
entries in nano-credits (1 credit = 1 USD); the amount due is their difference, rounded half
up to the cent, and the lines are rounded by largest remainder so that they add up to it.
Paying the invoice credits back exactly the nano-credits it billed.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from conduix.accounts import alerts, orgs
from conduix.core import clock
from conduix.core.errors import InvalidRequest
from conduix.core.money import format_credits, parse_credits
from conduix.ledger import entries, wallet_settings
from conduix.payments import customers, invoice_records, stripe_billing, stripe_gateway
from conduix.store import schema
from conduix.store.items import Item, as_int, as_str, n, s

log = logging.getLogger(__name__)
PURPOSE = "usage_invoice"
KEY_FIELD = "conduix_invoice_key"  # the invoice's metadata field that finds it again
LINE_FIELD = "conduix_line"  # an invoice item's metadata field naming its line
NANOS_PER_CENT = 10_000_000
_PERIOD = re.compile(r"^\d{4}-(0[1-9]|1[0-2])$")


@dataclass
class ModelUsage:
    model: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    requests: int = 0
    nanos: int = 0  # what the usage cost
    invoiced: int = 0  # the part the positive balance did not cover


def previous_month(now: datetime) -> str:
    year, month = now.year, now.month - 1
    if month == 0:
        year, month = year - 1, 12
    return f"{year:04d}-{month:02d}"


def month_usage(org_id: str, period: str) -> list[ModelUsage]:
    """The month's invoice-billed usage per model, from the ledger (the source of truth)."""
    by_model: dict[str, ModelUsage] = {}
    for item in entries.query_prefix(org_id, f"{schema.LEDGER}{period}-"):
        if as_str(item, "entry_type") != "usage" or as_str(item, "billed_by") != "invoice":
            continue
        usage = by_model.setdefault(as_str(item, "model"), ModelUsage(as_str(item, "model")))
        cost = -as_int(item, "amount")  # usage entries are debits
        usage.prompt_tokens += as_int(item, "prompt_tokens")
        usage.completion_tokens += as_int(item, "completion_tokens")
        usage.requests += 1
        usage.nanos += cost
        # Entries from before credits were drawn first carry no split: all invoiced.
        usage.invoiced += as_int(item, "invoiced") if "invoiced" in item else cost
    return sorted(by_model.values(), key=lambda u: u.model)


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


@dataclass(frozen=True)
class MonthFigures:
    usage_nanos: int  # the month's invoice-billed usage
    applied_nanos: int  # the part of it the positive balance covered
    due_nanos: int  # usage - applied: what the invoice bills and its payment credits back
    lines: list[stripe_billing.InvoiceLine]

    @property
    def due_cents(self) -> int:
        return sum(line.amount_cents for line in self.lines)

    def as_attributes(self) -> Item:
        """What the invoice record freezes of the month (see invoice_records)."""
        return {
            "usage_credits": n(self.usage_nanos),
            "applied_credits": n(self.applied_nanos),
            "credits": n(self.due_nanos),
            "total_cents": n(self.due_cents),
            "lines": s(json.dumps([line.__dict__ for line in self.lines])),
        }


def month_figures(org_id: str, period: str) -> MonthFigures:
    usage = month_usage(org_id, period)
    usage_nanos = sum(u.nanos for u in usage)
    due_nanos = sum(u.invoiced for u in usage)
    applied = usage_nanos - due_nanos
    cents = cents_by_line([u.nanos for u in usage] + ([-applied] if applied else []))
    lines = [
        stripe_billing.InvoiceLine(
            key=u.model.replace("/", "_"),
            amount_cents=c,
            description=(
                f"{u.model}: {u.requests} requests, {u.prompt_tokens} input + "
                f"{u.completion_tokens} output tokens, {format_credits(u.nanos)} credits"
            ),
        )
        for u, c in zip(usage, cents, strict=False)
    ]
    if applied:
        lines.append(
            stripe_billing.InvoiceLine(
                key="credits_applied",
                amount_cents=cents[-1],
                description=f"Credits applied from the wallet: -{format_credits(applied)} credits",
            )
        )
    return MonthFigures(usage_nanos, applied, due_nanos, [line for line in lines if line.amount_cents])


# ------------------------------------------------------------------ the steps


def _invoice_of(record: Item, customer_id: str, org: orgs.Org, period: str, now: datetime) -> dict[str, Any]:
    """Step 1: the month's invoice as Stripe has it now, created only if Stripe has none."""
    org_id = org.org_id
    invoice_id = as_str(record, "stripe_invoice_id")
    if invoice_id:
        return stripe_gateway.retrieve_invoice(invoice_id)
    key = as_str(record, "idempotency_key")
    since = as_int(record, "intent_epoch") - 3600  # clocks differ; the key is what matches
    found = stripe_billing.find_invoice(customer_id, KEY_FIELD, key, created_gte=since)
    if found is None:
        created_id = stripe_billing.create_draft_invoice(
            customer_id=customer_id,
            idempotency_key=key,
            days_until_due=org.net_terms_days,
            po_number=org.po_number,
            description=f"Conduix usage for {period}",
            metadata={
                "org_id": org_id,
                "period": period,
                "purpose": PURPOSE,
                KEY_FIELD: key,
                "credits": format_credits(as_int(record, "credits")),
                "usage_credits": format_credits(as_int(record, "usage_credits")),
                "credits_applied": format_credits(as_int(record, "applied_credits")),
            },
        )
        found = stripe_gateway.retrieve_invoice(created_id)  # its state now, not the replay's
    invoice_records.advance(org_id, period, "created", str(found["id"]), now)
    return found


def invoice_org(org_id: str, period: str, now: datetime) -> str:
    record = invoice_records.get(org_id, period)
    if record is None:
        figures = month_figures(org_id, period)
        if figures.usage_nanos == 0:
            return "no usage"
        if figures.due_cents <= 0:
            return f"nothing due: {format_credits(figures.usage_nanos)} credits of usage covered by credits"
        record = invoice_records.record_intent(org_id, period, figures.as_attributes(), now)
    if as_str(record, "status") == "sent":
        return f"already invoiced: {as_str(record, 'stripe_invoice_id')}"
    org = orgs.get_org(org_id)
    customer_id = customers.customer_of(org)
    invoice = _invoice_of(record, customer_id, org, period, now)
    invoice_id = str(invoice["id"])
    key = as_str(record, "idempotency_key")
    if invoice.get("status") == "draft":  # step 2: the lines Stripe does not have yet
        have = stripe_billing.invoice_line_keys(invoice_id, LINE_FIELD)
        for raw in json.loads(as_str(record, "lines")):
            line = stripe_billing.InvoiceLine(**raw)
            if line.key not in have:
                stripe_billing.add_invoice_line(
                    customer_id=customer_id,
                    invoice_id=invoice_id,
                    line=line,
                    metadata={LINE_FIELD: line.key},
                    idempotency_key=f"{key}-{line.key}",
                )
        invoice = stripe_billing.finalize_invoice(invoice_id)  # step 3
    if invoice.get("status") == "draft":
        raise RuntimeError(f"invoice {invoice_id} is still a draft after finalizing")
    invoice_records.advance(org_id, period, "finalized", invoice_id, now)
    if invoice.get("status") == "open":  # step 4 (a paid or voided invoice is not sent)
        stripe_billing.send_invoice(invoice_id, idempotency_key=f"{key}-send")
    invoice_records.advance(org_id, period, "sent", invoice_id, now)
    return f"invoiced: {invoice_id}"


def invoice_month(event: dict[str, Any], now: datetime) -> dict[str, Any]:
    """MonthlyInvoicing: the month before `now`, or the event's `period` (reruns, backfills)."""
    period = event.get("period") or previous_month(now)
    if not isinstance(period, str) or not _PERIOD.match(period):
        raise InvalidRequest("'period' must be a month such as 2026-11.", param="period")
    if period >= clock.period_of(now):
        raise InvalidRequest(f"The month {period} has not ended yet.", param="period")
    results: dict[str, str] = {}
    for org_id in wallet_settings.invoice_mode_orgs():
        try:
            results[org_id] = invoice_org(org_id, period, now)
            wallet_settings.forget_invoiced_org(org_id, period)  # back in prepaid and invoiced up to date
        except Exception as exc:  # one org's trouble must not stop the others' invoices
            log.exception("invoicing failed for an org", extra={"org_id": org_id, "period": period})
            results[org_id] = f"failed: {type(exc).__name__}"
    failed = [org for org, outcome in results.items() if outcome.startswith("failed")]
    if failed:  # the scheduled run fails, so its retries and the failure queue see it
        raise RuntimeError(f"invoicing {period} failed for {len(failed)} org(s): {', '.join(failed)}")
    return {"period": period, "orgs": results}


def usage_invoice_paid(obj: dict[str, Any], now: datetime) -> str:
    """A paid usage invoice credits back exactly the nano-credits it billed."""
    invoice = stripe_gateway.retrieve_invoice(str(obj["id"]))
    metadata = invoice.get("metadata") or {}
    if invoice.get("status") != "paid":
        return "waiting: not paid"
    amount = parse_credits(str(metadata["credits"]), field="credits")
    _, created = entries.post_entry(
        str(metadata["org_id"]),
        kind="invoice_payment",
        key=str(invoice["id"]),
        amount=amount,
        description=f"Payment of the usage invoice for {metadata.get('period')}",
        now=now,
    )
    if created:
        alerts.after_credit(str(metadata["org_id"]), now)
    return "credited" if created else "already credited"
