"""Plan features the store enforces, and invoice billing mode, against the locked moto server."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

import pytest
from conduix.accounts import keys, orgs
from conduix.core import bodies, errors
from conduix.core.bodies import parse
from conduix.core.money import NANOS_PER_CREDIT as C
from conduix.ledger import holds, metering, settles, wallet_settings
from conduix.payments import invoicing
from conduix.pricing import plans

from tests.integration.helpers import NOW, assert_consistent, fund

pytestmark = pytest.mark.integration


def test_requests_per_minute_are_counted_per_key_on_the_hold(org: str) -> None:
    fund(org, "100")
    wallet_settings.set_plan(org, replace(plans.get("free"), requests_per_minute=2))
    holds.reserve(org, "a", C, model="m", key_id="k1", now=NOW)
    holds.reserve(org, "b", C, model="m", key_id="k1", now=NOW)
    with pytest.raises(errors.RateLimited) as limited:
        holds.reserve(org, "c", C, model="m", key_id="k1", now=NOW)
    assert limited.value.retry_after_seconds == 60
    holds.reserve(org, "d", C, model="m", key_id="k2", now=NOW)  # another key has its own budget
    holds.reserve(org, "e", C, model="m", key_id="k1", now=NOW + timedelta(minutes=1))
    w = assert_consistent(org)
    assert w.held == 4 * C  # the refused request held nothing


def test_live_keys_are_limited_by_the_plan(org: str) -> None:
    assert plans.get("free").max_api_keys == 2
    first = keys.create_api_key(org, parse(bodies.ApiKeyRequest, {"name": "one"}))
    keys.create_api_key(org, parse(bodies.ApiKeyRequest, {"name": "two"}))
    with pytest.raises(errors.Conflict) as refused:
        keys.create_api_key(org, parse(bodies.ApiKeyRequest, {"name": "three"}))
    assert refused.value.code == "api_key_limit_reached"
    keys.revoke_api_key(org, first["key_id"])
    keys.revoke_api_key(org, first["key_id"])  # twice frees one slot only
    keys.create_api_key(org, parse(bodies.ApiKeyRequest, {"name": "three"}))
    with pytest.raises(errors.Conflict):
        keys.create_api_key(org, parse(bodies.ApiKeyRequest, {"name": "four"}))


def test_invoice_mode_usage_is_what_the_month_invoices(org: str) -> None:
    wallet_settings.set_billing_mode(org, "invoice")
    orgs.set_invoice_terms(org, "PO-123", 30)
    assert wallet_settings.invoice_mode_orgs() == [org]
    r = holds.reserve(org, "a", 3 * C, model="m/one", key_id="k", now=NOW)
    settles.settle(
        org, "a", 3 * C, metering.Usage("m/one", "k", 10, 20, 1_234_567_891, r.wallet.billing_mode), NOW
    )
    usage = invoicing.month_usage(org, "2026-11")
    assert [(u.model, u.requests, u.prompt_tokens, u.completion_tokens, u.nanos) for u in usage] == [
        ("m/one", 1, 10, 20, 1_234_567_891)
    ]
    assert assert_consistent(org).balance == -1_234_567_891  # usage accrues until the invoice is paid
    wallet_settings.set_billing_mode(org, "prepaid", NOW)
    # Back in prepaid, the org stays listed until the month it left invoice mode is invoiced.
    assert wallet_settings.invoice_mode_orgs() == [org]
    assert not wallet_settings.forget_invoiced_org(org, "2026-10")
    assert wallet_settings.forget_invoiced_org(org, "2026-11")
    assert wallet_settings.invoice_mode_orgs() == []
    assert orgs.get_org(org).po_number == "PO-123"
