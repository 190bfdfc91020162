"""Emails to an org's billing contact, sent through SES (data access + the texts).

Callers send a notice only on a state change they won (a conditional write that succeeded,
a ledger entry this call created), so each change yields one email, never a flood.
Without CONDUIX_EMAIL_FROM the notices are logged instead of sent.
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING

import boto3
from botocore.exceptions import BotoCoreError, ClientError

if TYPE_CHECKING:
    from mypy_boto3_ses import SESClient

log = logging.getLogger(__name__)
_client: SESClient | None = None


def _ses() -> SESClient:
    global _client
    if _client is None:
        _client = boto3.client("ses")
    return _client


def reset_client() -> None:
    global _client
    _client = None


def send(to: str, subject: str, body: str) -> bool:
    """Send one email; a failure is logged, never raised: a notice must not fail a payment."""
    sender = os.environ.get("CONDUIX_EMAIL_FROM", "").strip()
    if not sender:
        log.info("notice not sent (CONDUIX_EMAIL_FROM unset)", extra={"subject": subject})
        return False
    try:
        _ses().send_email(
            Source=sender,
            Destination={"ToAddresses": [to]},
            Message={"Subject": {"Data": subject}, "Body": {"Text": {"Data": body}}},
        )
    except (ClientError, BotoCoreError):
        log.exception("notice could not be sent", extra={"subject": subject})
        return False
    return True


def _dashboard() -> str:
    return os.environ.get("CONDUIX_PUBLIC_URL", "").rstrip("/") + "/dashboard/billing"


def account_paused(to: str, org_name: str, balance: str) -> bool:
    return send(
        to,
        "Conduix: your API requests are paused",
        f"Hello {org_name},\n\nYour Conduix balance is {balance} credits, too low for the requests your "
        "keys are making, so they are being refused with HTTP 402 insufficient_credits.\n\n"
        f"Top up or turn on auto-reload at {_dashboard()} and requests resume at once.\n",
    )


def top_up_receipt(to: str, org_name: str, credits: str, invoice_url: str | None) -> bool:
    invoice = f"Your invoice: {invoice_url}\n" if invoice_url else ""
    return send(
        to,
        f"Conduix: {credits} credits added",
        f"Hello {org_name},\n\nThank you: {credits} credits are now in your Conduix wallet.\n{invoice}\n"
        f"Balance and invoices: {_dashboard()}\n",
    )


def reload_succeeded(to: str, org_name: str, credits: str) -> bool:
    return send(
        to,
        f"Conduix: auto-reload added {credits} credits",
        f"Hello {org_name},\n\nYour balance fell below your auto-reload threshold, so we charged your saved "
        f"card and added {credits} credits.\n\nSettings: {_dashboard()}\n",
    )


def reload_failed(to: str, org_name: str, reason: str, turned_off: bool) -> bool:
    off = (
        "After three failed attempts in a row, auto-reload is now turned off.\n"
        if turned_off
        else "We will try again the next time your balance is below the threshold.\n"
    )
    return send(
        to,
        "Conduix: auto-reload failed",
        f"Hello {org_name},\n\nWe could not charge your saved card for auto-reload: {reason}\n{off}\n"
        f"Update your card or top up at {_dashboard()}\n",
    )


def auto_reload_turned_off(to: str, org_name: str, reason: str) -> bool:
    return send(
        to,
        "Conduix: auto-reload is turned off",
        f"Hello {org_name},\n\nWe turned auto-reload off. {reason}\n\n"
        f"You can turn it on again at {_dashboard()}\n",
    )


def reload_paused(to: str, org_name: str, charges: int) -> bool:
    return send(
        to,
        "Conduix: auto-reload paused for today",
        f"Hello {org_name},\n\nAuto-reload has charged your saved card {charges} times today (UTC), the "
        "most it does in one day, and your balance is still below your threshold. It resumes "
        f"tomorrow (UTC). To add credits now, top up at {_dashboard()}\n",
    )
