"""Releasing holds whose request died before it could settle or release them."""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from conduix import telemetry, wallets
from conduix.money import format_credits

log = logging.getLogger(__name__)


def sweep(now: datetime) -> dict[str, Any]:
    """Release every expired hold. Safe to run concurrently with settles and with itself:
    closing a hold is conditional on it still being open, so exactly one closer wins."""
    cutoff = int(now.timestamp())
    checked = released = 0
    released_nanos = 0
    for shard in range(wallets.SWEEP_SHARDS):
        for org_id in wallets.wallets_with_holds(str(shard)):
            checked += 1
            holds = wallets.open_holds(org_id)
            for hold in holds:
                if hold.expires_at <= cutoff and wallets.release(org_id, hold.request_id, hold.amount):
                    released += 1
                    released_nanos += hold.amount
                    log.warning(
                        "released an expired hold",
                        extra={
                            "org_id": org_id,
                            "request_id": hold.request_id,
                            "amount": format_credits(hold.amount),
                        },
                    )
            wallets.prune_rate_windows(org_id, now)
            if all(h.expires_at <= cutoff for h in holds):
                wallets.forget_if_idle(org_id)
    telemetry.holds_released(released)
    return {
        "wallets_checked": checked,
        "holds_released": released,
        "credits_released": format_credits(released_nanos),
    }
