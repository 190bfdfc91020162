"""The test clock driving a month end on a stack of its own (the clock only moves forward, so
the shared session stack keeps real time): caps reset, a Builder plan renews and rolls its
credits in, an invoice-mode month is invoiced once. Then `make run` stops on SIGTERM."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest

from tests.support.stack import Launched, Stack, launch, wait_until

pytestmark = pytest.mark.e2e

HELLO = [{"role": "user", "content": "Hello"}]


@pytest.fixture(scope="module")
def launched(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Launched]:
    # Schedules only through the clock, so the month end is the one thing that fires them.
    with launch(tmp_path_factory.mktemp("clock"), "clock-stack", CONDUIX_LOCAL_SCHEDULES="off") as it:
        yield it


def _now(stack: Stack) -> datetime:
    reply = stack.operator("GET", "/_local/clock")
    assert reply.status == 200, reply.body
    return datetime.fromisoformat(reply.body["now"].replace("Z", "+00:00"))


def _ledger_types(stack: Stack, key: str) -> list[str]:
    return [e["type"] for e in stack.call("GET", "/v1/billing/ledger", key=key).body["data"]]


def test_a_month_end_on_the_test_clock(launched: Launched) -> None:
    stack = launched.stack
    start = _now(stack)
    assert abs(start - datetime.now(UTC)) < timedelta(minutes=1)
    month = start.strftime("%Y-%m")
    first_of_next = (
        start.replace(day=1, hour=0, minute=0, second=0, microsecond=0) + timedelta(days=32)
    ).replace(day=1)
    next_month = first_of_next.strftime("%Y-%m")

    # Given a Builder org, paid through Checkout: its plan's credits are in.
    _, builder = stack.new_org()
    chosen = stack.call("POST", "/v1/billing/subscription", {"plan": "builder"}, key=builder)
    assert stack.pay(chosen.body["checkout_url"]) == 303
    assert wait_until(lambda: stack.billing(builder)["balance"] == "25")
    # A capped org that spent this month, and an invoice-mode org with usage this month.
    _, capped = stack.new_org("10")
    assert stack.call("PUT", "/v1/billing/spend-cap", {"monthly_limit": "5"}, key=capped).status == 200
    stack.sdk(capped).chat.completions.create(model="test/cheap", messages=HELLO, max_tokens=50)
    spent = stack.billing(capped)["month"]
    assert spent["period"] == month and Decimal(spent["spent"]) > 0
    invoiced_org, invoiced = stack.new_org()
    mode = stack.operator(
        "PUT", f"/admin/orgs/{invoiced_org}/billing", {"mode": "invoice", "net_terms_days": 30}
    )
    assert mode.status == 200, mode.body
    long_prompt = [{"role": "user", "content": "hello " * 20_000}]  # worth a few cents
    stack.sdk(invoiced).chat.completions.create(model="test/cheap", messages=long_prompt, max_tokens=50)

    # When the stack's time crosses 00:15 UTC on the 1st:
    target = first_of_next + timedelta(minutes=20)
    moved = stack.operator("POST", "/_local/clock", {"now": target.isoformat()})
    assert moved.status == 200, moved.body
    assert _now(stack) >= target
    fired = {f["function"]: f for f in moved.body["fired"]}
    assert set(fired) == {"MonthlyInvoicingFunction", "AutoReloadFunction", "HoldSweeperFunction"}
    monthly = fired["MonthlyInvoicingFunction"]
    assert monthly["at"] == first_of_next.replace(minute=15).strftime("%Y-%m-%dT%H:%M:%S.000Z")
    assert monthly["result"]["period"] == month, monthly
    invoice_id = monthly["result"]["orgs"][invoiced_org].removeprefix("invoiced: ")

    # Then the cap's month starts over, and the invoice-mode month was invoiced.
    assert stack.billing(capped)["month"] == {"period": next_month, "spent": "0"}
    assert stack.billing(invoiced)["month"]["period"] == next_month

    # When the stack's time passes the end of the Builder's first paid period (a month after it
    # started, as Stripe anchors it), its plan renews in the local Stripe and rolls its credits in.
    renewal = max(start + timedelta(days=31, hours=1), target + timedelta(hours=1))
    later = stack.operator("POST", "/_local/clock", {"now": renewal.isoformat()})
    assert later.status == 200, later.body
    assert wait_until(lambda: stack.billing(builder)["balance"] == "50"), stack.billing(builder)
    assert _ledger_types(stack, builder).count("plan_credits") == 2
    # The month was invoiced once: a later run (any later first of the month fires it for its
    # own month) and a rerun for that month find it done.
    for f in later.body["fired"]:
        if f["function"] == "MonthlyInvoicingFunction":
            assert f["result"]["period"] != month
    rerun = stack.run_job("MonthlyInvoicing", {"period": month})  # the short name works too
    assert rerun.body["result"]["orgs"][invoiced_org] == f"already invoiced: {invoice_id}"
    assert stack.billing(builder)["balance"] == "50"

    # Time only moves forward.
    back = stack.operator("POST", "/_local/clock", {"now": start.isoformat()})
    assert back.status == 409 and back.body["error"]["code"] == "clock_conflict"
    assert stack.operator("POST", "/_local/clock", {"now": "tomorrow"}).status == 400
    assert stack.call("GET", "/_local/clock").status == 401


def test_make_run_stops_on_sigterm_within_10_seconds(launched: Launched) -> None:
    state_dirs = sorted(Path(launched.env["CONDUIX_LOCAL_STATE_FILE"]).parent.glob("*"))
    assert state_dirs and (state_dirs[0].stat().st_mode & 0o777) == 0o600  # it holds the operator key
    took = launched.stop(signal.SIGTERM)
    assert took < 10, launched.stack.log.read_text()[-3000:]  # the stack names a slow part
    assert launched.process.returncode is not None
    assert not Path(launched.env["CONDUIX_LOCAL_STATE_FILE"]).exists()
