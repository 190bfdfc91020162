"""Emails to an org's billing contact, sent through SES (data access + the texts).

Callers send a notice only on a state change they won (a conditional write that succeeded,
a ledger entry this call created), so each change yields one email, never a flood.
Without CONDUIX_EMAIL_FROM the notices are logged instead of sent.

Every notice is also recorded under its org (`NOTICE#<time>#<id>`, kept a year by the table's
TTL), delivered or not, so `GET /v1/billing/notices` can show what the org was told and when.
"""

from __future__ import annotations

import logging
import uuid
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import boto3
from botocore.exceptions import BotoCoreError, ClientError

from conduix.core import clock, config
from conduix.core.config import settings
from conduix.store import schema
from conduix.store.dynamo import client
from conduix.store.items import as_bool, as_str, s

if TYPE_CHECKING:
    from mypy_boto3_ses import SESClient

    from conduix.accounts.orgs import Org

log = logging.getLogger(__name__)
_client: SESClient | None = None
KEEP_DAYS = 365


def _ses() -> SESClient:
    global _client
    if _client is None:
        _client = boto3.client("ses")
    return _client


def reset_client() -> None:
    global _client
    _client = None


def send(org: Org, kind: str, subject: str, body: str) -> bool:
    """Send one email to the org's billing contact and record it; a failure is logged, never
    raised: a notice must not fail a payment."""
    to = org.email
    sender = config.email_sender()
    delivered = False
    if not sender:
        log.info("notice not sent (CONDUIX_EMAIL_FROM unset)", extra={"subject": subject})
    else:
        try:
            _ses().send_email(
                Source=sender,
                Destination={"ToAddresses": [to]},
                Message={"Subject": {"Data": subject}, "Body": {"Text": {"Data": body}}},
            )
            delivered = True
        except (ClientError, BotoCoreError):
            log.exception("notice could not be sent", extra={"subject": subject})
    try:
        _record(org.org_id, kind, to, subject, delivered)
    except Exception:  # the record is for the org's history; the email already went (or not)
        log.exception("notice could not be recorded", extra={"subject": subject})
    return delivered


def _record(org_id: str, kind: str, to: str, subject: str, delivered: bool) -> None:
    now = clock.now()
    sent_at = clock.iso(now)
    client().put_item(
        TableName=settings().billing_table,
        Item={
            "pk": s(schema.org_pk(org_id)),
            "sk": s(f"{schema.NOTICE}{sent_at}#{uuid.uuid4().hex[:12]}"),
            "notice_type": s(kind),
            "recipient": s(to),
            "subject": s(subject),
            "sent_at": s(sent_at),
            "delivered": {"BOOL": delivered},
            "expires_at": {"N": str(int((now + timedelta(days=KEEP_DAYS)).timestamp()))},
        },
    )


def recent(org_id: str, limit: int) -> list[dict[str, Any]]:
    """The org's notices, newest first."""
    items = (
        client()
        .query(
            TableName=settings().billing_table,
            KeyConditionExpression="pk = :pk AND begins_with(sk, :notice)",
            ExpressionAttributeValues={":pk": s(schema.org_pk(org_id)), ":notice": s(schema.NOTICE)},
            ScanIndexForward=False,
            Limit=limit,
        )
        .get("Items", [])
    )
    return [
        {
            "type": as_str(item, "notice_type"),
            "sent_at": as_str(item, "sent_at"),
            "recipient": as_str(item, "recipient"),
            "subject": as_str(item, "subject"),
            "delivered": as_bool(item, "delivered"),
        }
        for item in items
    ]


def _dashboard() -> str:
    return config.public_url() + "/dashboard/billing"


def account_paused(org: Org, balance: str) -> bool:
    return send(
        org,
        "account_paused",
        "Conduix: your API requests are paused",
        f"Hello {org.name},\n\nYour Conduix balance is {balance} credits, too low for the requests your "
        "keys are making, so they are being refused with HTTP 402 insufficient_credits.\n\n"
        f"Top up or turn on auto-reload at {_dashboard()} and requests resume at once.\n",
    )


def top_up_receipt(org: Org, credits: str, invoice_url: str | None) -> bool:
    invoice = f"Your invoice: {invoice_url}\n" if invoice_url else ""
    return send(
        org,
        "top_up_receipt",
        f"Conduix: {credits} credits added",
        f"Hello {org.name},\n\nThank you: {credits} credits are now in your Conduix wallet.\n{invoice}\n"
        f"Balance and invoices: {_dashboard()}\n",
    )


def reload_succeeded(org: Org, credits: str) -> bool:
    return send(
        org,
        "auto_reload_succeeded",
        f"Conduix: auto-reload added {credits} credits",
        f"Hello {org.name},\n\nYour balance fell below your auto-reload threshold, so we charged your saved "
        f"card and added {credits} credits.\n\nSettings: {_dashboard()}\n",
    )


def reload_failed(org: Org, reason: str, turned_off: bool) -> bool:
    off = (
        "After three failed attempts in a row, auto-reload is now turned off.\n"
        if turned_off
        else "We will try again the next time your balance is below the threshold.\n"
    )
    return send(
        org,
        "auto_reload_failed",
        "Conduix: auto-reload failed",
        f"Hello {org.name},\n\nWe could not charge your saved card for auto-reload: {reason}\n{off}\n"
        f"Update your card or top up at {_dashboard()}\n",
    )


def auto_reload_turned_off(org: Org, reason: str) -> bool:
    return send(
        org,
        "auto_reload_turned_off",
        "Conduix: auto-reload is turned off",
        f"Hello {org.name},\n\nWe turned auto-reload off. {reason}\n\n"
        f"You can turn it on again at {_dashboard()}\n",
    )


def reload_paused(org: Org, charges: int) -> bool:
    return send(
        org,
        "auto_reload_paused",
        "Conduix: auto-reload paused for today",
        f"Hello {org.name},\n\nAuto-reload has charged your saved card {charges} times today (UTC), the "
        "most it does in one day, and your balance is still below your threshold. It resumes "
        f"tomorrow (UTC). To add credits now, top up at {_dashboard()}\n",
    )


def balance_below(org: Org, threshold: str, balance: str) -> bool:
    return send(
        org,
        "balance_below",
        f"Conduix: your balance fell below {threshold} credits",
        f"Hello {org.name},\n\nYour Conduix balance is now {balance} credits, below the alert you set at "
        f"{threshold} credits. We tell you once; the alert re-arms when the balance is back above it.\n\n"
        f"Top up or turn on auto-reload at {_dashboard()}\n",
    )


def cap_used(org: Org, percent: int, spent: str, limit: str, period: str) -> bool:
    return send(
        org,
        "cap_used_percent",
        f"Conduix: {percent}% of your monthly spend cap used",
        f"Hello {org.name},\n\nYour spend in {period} has reached {spent} of your {limit}-credit monthly "
        f"cap ({percent}% or more). Requests are refused once the cap is reached.\n\n"
        f"Raise the cap at {_dashboard().rsplit('/', 1)[0]}/settings\n",
    )
