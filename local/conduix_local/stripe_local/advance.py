"""The local Stripe's clock hook: `advance_to(stripe, now)` does what Stripe's test clocks do
when advanced, for what Conduix uses: each live subscription whose period has ended by `now`
renews (a new period, its invoice finalized and charged, the events sent), once per period.

Called by the local stack's POST /_local/clock. A `LocalStripe.advance_to(now)` method, when
present, takes precedence over this function (see conduix_local.stack)."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING

from . import billing
from .core import of_kind

if TYPE_CHECKING:
    from .server import LocalStripe

_LIVE = ("active", "trialing", "past_due")
_MAX_PERIODS = 120  # ten years of monthly renewals is more than any clock move needs


def advance_to(stripe: LocalStripe, now: datetime) -> None:
    moment = int(now.timestamp())

    async def renew() -> None:
        for sub in of_kind("subscription"):
            for _ in range(_MAX_PERIODS):
                if sub.status not in _LIVE or sub.current_period_end > moment:
                    break
                if billing.cycle(sub) is None:  # cancelled at the period's end
                    break

    stripe._call(renew)
