"""Time, in one place, so that periods and expiries are computed the same way everywhere."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta

from conduix.core.config import local_clock_file

# Durations and monotonic deadlines (time, never money) are plain float seconds.
Seconds = float

# The local stack's test clock (POST /_local/clock) writes how far the stack's time is ahead of
# the real one, in whole microseconds, to this file. Unset in AWS: now() is then datetime.now.
_OFFSET_FILE = local_clock_file()
_offset: tuple[tuple[int, int], timedelta] = ((-1, -1), timedelta(0))  # ((inode, mtime), offset)


def now() -> datetime:
    if _OFFSET_FILE is None:
        return datetime.now(UTC)
    return datetime.now(UTC) + _stack_offset(_OFFSET_FILE)


def _stack_offset(path: str) -> timedelta:
    global _offset
    try:
        st = os.stat(path)  # the front replaces the file whole: a new inode per move
        if (st.st_ino, st.st_mtime_ns) != _offset[0]:
            with open(path, encoding="ascii") as fh:
                _offset = ((st.st_ino, st.st_mtime_ns), timedelta(microseconds=int(fh.read().strip() or 0)))
    except (OSError, ValueError):
        return timedelta(0)  # no move yet (or mid-replace): real time
    return _offset[1]


def period_of(moment: datetime) -> str:
    """The UTC calendar month a moment belongs to: spend caps and invoices use it."""
    return moment.strftime("%Y-%m")


# Per-key spend limits count spend over one of these UTC periods; "total" never resets.
LIMIT_PERIODS = ("day", "week", "month", "total")


def limit_window(period: str, moment: datetime) -> str:
    """The window of a key's spend limit that `moment` falls in. Windows of one period compare
    as strings in time order: the day, the Monday that starts the (ISO) week, the month."""
    moment = moment.astimezone(UTC)
    if period == "day":
        return moment.strftime("%Y-%m-%d")
    if period == "week":
        return (moment - timedelta(days=moment.weekday())).strftime("%Y-%m-%d")
    if period == "month":
        return moment.strftime("%Y-%m")
    return "total"


def limit_resets_at(period: str, window: str) -> datetime | None:
    """When the window ends (the next one starts), or None for "total"."""
    if period == "day":
        return datetime.strptime(window, "%Y-%m-%d").replace(tzinfo=UTC) + timedelta(days=1)
    if period == "week":
        return datetime.strptime(window, "%Y-%m-%d").replace(tzinfo=UTC) + timedelta(days=7)
    if period == "month":
        start = datetime.strptime(window, "%Y-%m").replace(tzinfo=UTC)
        return (start + timedelta(days=32)).replace(day=1)
    return None


def iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def iso_seconds(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")
