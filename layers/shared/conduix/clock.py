"""Time, in one place, so that periods and expiries are computed the same way everywhere."""

from __future__ import annotations

from datetime import UTC, datetime

# Durations and monotonic deadlines (time, never money) are plain float seconds.
Seconds = float


def now() -> datetime:
    return datetime.now(UTC)


def period_of(moment: datetime) -> str:
    """The UTC calendar month a moment belongs to: spend caps and invoices use it."""
    return moment.strftime("%Y-%m")


def iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
