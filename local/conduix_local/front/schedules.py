"""EventBridge schedules: rate and cron expressions, when they fire, and the event they send."""

from __future__ import annotations

import calendar
import re
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from conduix_local.front.base import ACCOUNT_ID

_MONTHS = {m.upper(): i for i, m in enumerate(calendar.month_abbr) if m}
_DAYS = {d: i for i, d in enumerate(("SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"), start=1)}
_RATE_RE = re.compile(r"^rate\(\s*(\d+)\s+(minute|minutes|hour|hours|day|days)\s*\)$")
_UNIT_S = {"minute": 60, "hour": 3600, "day": 86400}


def parse_rate(expression: str) -> timedelta:
    """`rate(N unit)`; like EventBridge, 1 takes the singular unit and N > 1 the plural."""
    m = _RATE_RE.match(expression.strip())
    if not m:
        raise ValueError(f"not a rate expression: {expression!r}")
    n, unit = int(m.group(1)), m.group(2)
    if n < 1 or (n == 1) == unit.endswith("s"):
        raise ValueError(f"invalid rate expression: {expression!r}")
    return timedelta(seconds=n * _UNIT_S[unit.rstrip("s")])


def _cron_field(text: str, lo: int, hi: int, names: dict[str, int] | None = None) -> frozenset[int]:
    def num(token: str) -> int:
        if names and token.upper() in names:
            return names[token.upper()]
        if not token.isdigit():
            raise ValueError(f"unsupported cron token {token!r}")
        return int(token)

    values: set[int] = set()
    for part in text.split(","):
        base, _, step_s = part.partition("/")
        step = int(step_s) if step_s.isdigit() else 0 if step_s else 1
        if step < 1:
            raise ValueError(f"bad step in cron field {text!r}")
        if base == "*":
            start, end = lo, hi
        elif "-" in base:
            a, b = base.split("-", 1)
            start, end = num(a), num(b)
        else:
            start = num(base)
            end = hi if step_s else start  # "5/15" runs from 5 to the end of the range
        if not lo <= start <= end <= hi:
            raise ValueError(f"cron field {text!r} out of range {lo}-{hi}")
        values.update(range(start, end + 1, step))
    return frozenset(values)


@dataclass(frozen=True)
class CronExpr:
    """AWS 6-field cron (minutes hours day-of-month month day-of-week year), in UTC."""

    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int] | None  # None: "?"
    months: frozenset[int]
    weekdays: frozenset[int] | None  # 1 = SUN ... 7 = SAT, as in AWS
    years: frozenset[int]

    @classmethod
    def parse(cls, expression: str) -> CronExpr:
        m = re.match(r"^cron\((.*)\)$", expression.strip())
        fields = m.group(1).split() if m else []
        if len(fields) != 6:
            raise ValueError(f"not a 6-field cron expression: {expression!r}")
        mi, h, dom, mon, dow, yr = fields
        if (dom == "?") == (dow == "?"):  # EventBridge wants exactly one of them to be "?"
            raise ValueError(f"cron needs '?' in exactly one of day-of-month/day-of-week: {expression!r}")
        return cls(
            _cron_field(mi, 0, 59),
            _cron_field(h, 0, 23),
            None if dom == "?" else _cron_field(dom, 1, 31),
            _cron_field(mon, 1, 12, _MONTHS),
            None if dow == "?" else _cron_field(dow, 1, 7, _DAYS),
            _cron_field(yr, 1970, 2199),
        )

    def _day_ok(self, t: datetime) -> bool:
        if self.days is not None:
            return t.day in self.days
        assert self.weekdays is not None
        return (t.weekday() + 1) % 7 + 1 in self.weekdays

    def next_after(self, after: datetime) -> datetime | None:
        """The first matching minute strictly after `after`; None when the years run out."""
        t = _utc(after).replace(second=0, microsecond=0) + timedelta(minutes=1)
        while t.year <= 2199:
            # Jump by the coarsest field that fails, so a search spans at most a few thousand steps.
            if t.year not in self.years:
                t = datetime(t.year + 1, 1, 1, tzinfo=UTC)
            elif t.month not in self.months:
                t = datetime(t.year + (t.month == 12), t.month % 12 + 1, 1, tzinfo=UTC)
            elif not self._day_ok(t):
                t = t.replace(hour=0, minute=0) + timedelta(days=1)
            elif t.hour not in self.hours:
                t = t.replace(minute=0) + timedelta(hours=1)
            elif t.minute not in self.minutes:
                t += timedelta(minutes=1)
            else:
                return t
        return None


def _utc(t: datetime) -> datetime:
    return t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC)


def next_fire(expression: str, after: datetime, anchor: datetime | None = None) -> datetime | None:
    """When a schedule fires next, strictly after `after`.

    A rate counts from `anchor` (when the rule was created; defaults to `after`), a cron from
    the clock.
    """
    if expression.strip().startswith("rate("):
        period = parse_rate(expression)
        start = _utc(anchor or after)
        after = _utc(after)
        if after < start:
            return start + period
        return start + period * ((after - start) // period + 1)
    return CronExpr.parse(expression).next_after(after)


def last_fire(expression: str, after: datetime, until: datetime, anchor: datetime) -> datetime | None:
    """The latest time in (after, until] a schedule fires at; None when it does not fire."""
    if expression.strip().startswith("rate("):
        period = parse_rate(expression)
        until, anchor = _utc(until), _utc(anchor)
        if until < anchor + period:
            return None
        last = anchor + period * ((until - anchor) // period)
        return last if last > _utc(after) else None
    cron = CronExpr.parse(expression)
    found, t = None, _utc(after)
    for _ in range(100_000):  # a year of minutes is more than any test clock move needs
        t_next = cron.next_after(t)
        if t_next is None or t_next > _utc(until):
            return found
        found = t = t_next
    return found


def scheduled_event(rule_arn: str, region: str, at: datetime) -> dict[str, Any]:
    """The event EventBridge sends a scheduled rule's target."""
    return {
        "version": "0",
        "id": str(uuid.uuid4()),
        "detail-type": "Scheduled Event",
        "source": "aws.events",
        "account": ACCOUNT_ID,
        "time": _utc(at).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "region": region,
        "resources": [rule_arn],
        "detail": {},
    }
