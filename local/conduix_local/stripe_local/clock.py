"""The stand-in's test clock: move its time forward and let happen what Stripe would have done
meanwhile, in the order it would have happened, each at its own time (Stripe's test clocks).

What moves with time here:
- a subscription whose period ended renews: customer.subscription.updated and a draft
  renewal invoice (invoice.created), or it ends if it was set to cancel at period end;
- an incomplete subscription whose first payment never came expires after 23 hours;
- a draft invoice set to auto-advance is finalized an hour after it was made, then charged
  to the saved card (invoice.paid, or invoice.payment_failed and the subscription past_due,
  per the test card) or, for send_invoice, sent;
- an open send_invoice invoice past its due date is announced once (invoice.overdue);
- an open Checkout Session past expires_at expires.
Runs on the server's event loop thread, like every other change to the store.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from . import billing, checkout
from .core import HUB, bad, emit, now, of_kind

FINALIZE_AFTER = 3600  # Stripe finalizes an auto-advancing draft about an hour after creation
INCOMPLETE_EXPIRES_AFTER = 23 * 3600


def _due() -> list[tuple[int, int, Callable[[], object]]]:
    """(when, order, action) for everything that falls due at some time."""
    found: list[tuple[int, int, Callable[[], object]]] = []
    for sub in of_kind("subscription"):
        if sub.status in ("active", "trialing", "past_due"):
            found.append((sub.current_period_end, 0, lambda sub=sub: billing.cycle(sub, draft=True)))
        elif sub.status == "incomplete":
            found.append((sub.created + INCOMPLETE_EXPIRES_AFTER, 1, lambda sub=sub: _expire(sub)))
    for inv in of_kind("invoice"):
        if inv.status == "draft" and inv.auto_advance:
            found.append((inv.created + FINALIZE_AFTER, 2, lambda inv=inv: billing.advance(inv)))
        elif (
            inv.status == "open"
            and inv.collection_method == "send_invoice"
            and inv.due_date is not None
            and not getattr(inv, "_overdue", False)
        ):
            found.append((inv.due_date, 3, lambda inv=inv: _overdue(inv)))
    for cs in of_kind("checkout.session"):
        if cs.status == "open":
            found.append((cs.expires_at, 4, lambda cs=cs: checkout.expire(cs)))
    return found


def _expire(sub: billing.Subscription) -> None:
    billing.set_status(sub, "incomplete_expired")


def _overdue(inv: billing.Invoice) -> None:
    inv._overdue = True
    emit("invoice.overdue", inv)


def advance_to(when: int) -> list[dict[str, Any]]:
    """Move the clock to `when` (epoch seconds, never backwards) and return the events made
    on the way, oldest first."""
    start = now()
    if when < start:
        raise bad(f"The clock can only move forward: it is {start}, {when} is earlier.", "frozen_time")
    before = len(HUB.events())
    for _ in range(100_000):  # every action retires what it did; the bound only guards a bug
        pending = [d for d in _due() if d[0] <= when]
        if not pending:
            break
        at, _, action = min(pending, key=lambda d: (d[0], d[1]))
        _set(max(at, now()))  # each change happens at its own time, never before the last one
        action()
    else:
        raise RuntimeError("the local Stripe's clock did not settle")
    _set(when)
    return HUB.events()[before:]


def _set(when: int) -> None:
    HUB.offset += when - now()
