"""Reconciliation: replay each org's ledger and compare it with its wallet.

It checks what the money rules promise: the balance equals the sum of the ledger; every
ledger line has its idempotency marker and agrees with it; held equals the open holds;
available, committed and cap_remaining are what their definitions say; the month's spend
equals the month's usage entries; the usage aggregates add up to the usage entries.

And what the holds promise, listing the request ids at fault: no charge above its hold (each
is an incident recorded by the settle), no prepaid wallet taken below zero by usage, and no
month's spend above its cap (beyond what was already committed when the cap was set).

`python -m conduix.audit.reconcile` checks every org (a full table scan: an operator's audit,
not a hot path), prints each discrepancy and exits non-zero if there is any.
"""

from __future__ import annotations

import sys
from typing import Any

from conduix.audit import reconcile_stripe
from conduix.audit.discrepancy import Discrepancy
from conduix.core.money import format_credits
from conduix.ledger import entries, wallets
from conduix.store import schema
from conduix.store.items import Item, as_bool, as_int, as_str


def reconcile_org(org_id: str) -> list[Discrepancy]:
    items = entries.org_items(org_id)
    wallet = wallets.get_wallet(org_id)
    lines = [i for i in items if as_str(i, "sk").startswith(schema.LEDGER)]
    markers = {as_str(i, "entry_id"): i for i in items if as_str(i, "sk").startswith(schema.ENTRY)}
    usage_rows = [i for i in items if as_str(i, "sk").startswith(schema.USAGE)]
    found: list[Discrepancy] = []

    def check(name: str, expected: int, actual: int, credits: bool = True) -> None:
        if expected != actual:
            fmt = format_credits if credits else str
            found.append(Discrepancy(org_id, name, fmt(expected), fmt(actual)))

    # Escrow leases (leases.py): a spend's ledger entry is written when its request is billed,
    # its debit and usage row land when its lease is folded.
    open_ids = {as_str(i, "lease_id") for i in items if as_str(i, "sk").startswith(schema.LEASE)}
    spends = [
        i
        for i in items
        if as_str(i, "sk").startswith(schema.LEASE_SPEND) and as_str(i, "lease_id") in open_ids
    ]
    unfolded = sum(as_int(i, "cost") for i in spends)
    ledger_sum = sum(as_int(i, "amount") for i in lines)
    check("balance = sum of the ledger", ledger_sum + unfolded, wallet.balance)
    holds = [i for i in items if as_str(i, "sk").startswith(schema.HOLD)]
    leases = [i for i in items if as_str(i, "sk").startswith(schema.LEASE)]
    check(
        "held = open holds + open leases",
        sum(as_int(i, "amount") for i in holds + leases),
        wallet.held,
    )
    check("hold_count = open holds", len(holds), wallet.hold_count, credits=False)
    check("lease_count = open leases", len(leases), wallet.lease_count, credits=False)
    check("available = balance - held", wallet.balance - wallet.held, wallet.available)
    check("committed = month spend + held", wallet.month_spent + wallet.held, wallet.committed)
    check("cap_remaining = cap - committed", wallet.cap_limit - wallet.committed, wallet.cap_remaining)
    usage = [i for i in lines if as_str(i, "entry_type") == "usage"]
    month_usage = -sum(
        as_int(i, "amount") for i in usage if as_str(i, "created_at").startswith(wallet.period)
    ) - sum(as_int(i, "cost") for i in spends if as_str(i, "created_at").startswith(wallet.period))
    check(f"month spend = usage entries of {wallet.period}", month_usage, wallet.month_spent)
    check(
        "usage aggregates = usage entries (credits)",
        -sum(as_int(i, "amount") for i in usage) - unfolded,
        sum(as_int(i, "credits") for i in usage_rows),
    )
    check(
        "usage aggregates = usage entries (requests)",
        len(usage) - len(spends),
        sum(as_int(i, "requests") for i in usage_rows),
        credits=False,
    )
    check("ledger lines = idempotency markers", len(markers), len(lines), credits=False)
    for line in lines:
        marker = markers.get(as_str(line, "entry_id"))
        if marker is None or as_int(marker, "amount") != as_int(line, "amount"):
            found.append(
                Discrepancy(
                    org_id,
                    f"marker of {as_str(line, 'entry_id')}",
                    format_credits(as_int(line, "amount")),
                    "missing" if marker is None else format_credits(as_int(marker, "amount")),
                )
            )
    found += _hold_breaches(org_id, items, wallet)
    found += _key_budget_breaches(org_id, items, holds)
    return found


def _key_budget_breaches(org_id: str, items: list[Item], holds: list[Item]) -> list[Discrepancy]:
    """Each key budget's figures: held = its key's open holds and leases that count against it, and
    room = limit - spent - held (what the hold's condition compares)."""
    found = []
    for item in items:
        sk = as_str(item, "sk")
        if not sk.startswith(schema.KEY_BUDGET):
            continue
        key_id = sk.removeprefix(schema.KEY_BUDGET)
        counted = sum(
            as_int(h, "amount") for h in holds if as_str(h, "key_id") == key_id and as_bool(h, "key_budget")
        ) + sum(  # and its escrow leases' slices, taken from the budget too
            as_int(i, "amount")
            for i in items
            if as_str(i, "sk").startswith(schema.LEASE) and as_str(i, "budget_key") == key_id
        )
        held, room = as_int(item, "held"), as_int(item, "room")
        if held != counted:
            found.append(
                Discrepancy(
                    org_id,
                    f"key {key_id} held = its open holds",
                    format_credits(counted),
                    format_credits(held),
                )
            )
        expected = as_int(item, "lim") - as_int(item, "spent") - held
        if room != expected:
            found.append(
                Discrepancy(
                    org_id,
                    f"key {key_id} room = limit - spent - held",
                    format_credits(expected),
                    format_credits(room),
                )
            )
    return found


def _hold_breaches(org_id: str, items: list[Item], wallet: wallets.Wallet) -> list[Discrepancy]:
    """What holds exist to prevent: charges above them, overdrafts and cap overshoots."""
    found = [
        Discrepancy(
            org_id,
            "charge within its hold",
            f"at most {format_credits(as_int(i, 'hold'))}",
            format_credits(as_int(i, "cost")),
            (as_str(i, "request_id"),),
        )
        for i in items
        if as_str(i, "sk").startswith(schema.OVER_HOLD)
    ]
    lines = sorted(
        (i for i in items if as_str(i, "sk").startswith(schema.LEDGER)), key=lambda i: as_str(i, "sk")
    )
    balance, lowest, overdrawn = 0, 0, []
    month_spent, over_cap = 0, []
    wallet_item = next(i for i in items if as_str(i, "sk") == schema.WALLET)
    # A cap set below what was already spent or held lets the month finish those, and no more.
    allowed = max(wallet.cap_limit, as_int(wallet_item, "cap_floor"))
    for line in lines:
        balance += as_int(line, "amount")
        if as_str(line, "entry_type") != "usage":
            continue  # money taken back (refunds, disputes) may leave a balance negative
        request_id = as_str(line, "entry_id").removeprefix("usage:")
        if balance < 0 and as_str(line, "billed_by", "prepaid") == "prepaid":
            overdrawn.append(request_id)
            lowest = min(lowest, balance)
        if as_str(line, "created_at").startswith(wallet.period):
            month_spent -= as_int(line, "amount")
            if wallet.capped and month_spent > allowed:
                over_cap.append(request_id)
    if overdrawn:
        found.append(
            Discrepancy(
                org_id,
                "prepaid wallet never below zero by usage",
                "0 or more",
                format_credits(lowest),
                tuple(overdrawn),
            )
        )
    if over_cap:
        found.append(
            Discrepancy(
                org_id,
                f"spend of {wallet.period} within its cap",
                f"at most {format_credits(allowed)}",
                format_credits(wallet.month_spent),
                tuple(over_cap),
            )
        )
    return found


def report(org_id: str) -> dict[str, Any]:
    """GET /admin/orgs/{org_id}/reconcile."""
    discrepancies = reconcile_org(org_id) + reconcile_stripe.check_org(org_id)
    return {"org_id": org_id, "ok": not discrepancies, "discrepancies": [d.__dict__ for d in discrepancies]}


def main() -> int:
    org_ids = entries.all_org_ids()
    problems = [d for org_id in org_ids for d in reconcile_org(org_id) + reconcile_stripe.check_org(org_id)]
    for problem in problems:
        print(problem)
    print(f"reconciled {len(org_ids)} org(s): {len(problems)} discrepancy(ies)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
