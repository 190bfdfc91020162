"""Balance and spend-cap alerts: one email per crossing (data access + the rules).

The thresholds live on the wallet item (`alert_balance_below`, `alert_cap_percent`), so the
hold's own answer brings them to Completion at no extra request. Whether a threshold has
fired lives in an item of its own under the org:

    ALERT#balance#<nanos>          carries `fired_at` while the balance alert is fired
    ALERT#cap#<YYYY-MM>#<percent>  carries `fired_at` once the month's cap alert fired (a new
                                   month is a new item: it re-arms by itself)

The send is claimed by a conditional update that sets `fired_at` only if it is absent, so however
many requests see the same crossing at once, one wins and one email goes out; re-arming removes
it, conditionally too: only UpdateItem, which every function that moves credits may call.

Completion spends no request on alerts unless the settle it just made may have crossed a
threshold (`may_cross`); a credit landing re-arms what the balance rose back above.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from botocore.exceptions import ClientError

from conduix import clock, wallets
from conduix.config import settings
from conduix.dynamo import Item, as_str, client, error_code, n, s
from conduix.errors import InvalidRequest, NotFound
from conduix.money import format_credits, parse_credits

log = logging.getLogger(__name__)

MAX_THRESHOLDS = 10  # of each kind: a few levels are useful, more is noise


# ------------------------------------------------------------------ settings


def parse_settings(body: dict[str, Any]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """`{"balance_below": ["20", "5"], "cap_used_percent": [80, 95]}`: the whole set (a PUT)."""
    unknown = sorted(set(body) - {"balance_below", "cap_used_percent"})
    if unknown:
        raise InvalidRequest(
            f"Unknown field '{unknown[0]}': send balance_below and cap_used_percent.", param=unknown[0]
        )
    balances, percents = body.get("balance_below", []), body.get("cap_used_percent", [])
    for name, value in (("balance_below", balances), ("cap_used_percent", percents)):
        if not isinstance(value, list):
            raise InvalidRequest(f"'{name}' must be a list.", param=name)
        if len(value) > MAX_THRESHOLDS:
            raise InvalidRequest(f"'{name}' takes at most {MAX_THRESHOLDS} thresholds.", param=name)
    amounts = {parse_credits(v, field="balance_below", allow_zero=True) for v in balances}
    for p in percents:
        if isinstance(p, bool) or not isinstance(p, int) or not 1 <= p <= 100:
            raise InvalidRequest(
                "'cap_used_percent' holds whole percents from 1 to 100.", param="cap_used_percent"
            )
    return tuple(sorted(amounts, reverse=True)), tuple(sorted(set(percents)))


def save_settings(org_id: str, balances: tuple[int, ...], percents: tuple[int, ...], now: datetime) -> None:
    """Store the thresholds. A threshold already crossed when it is set counts as fired (no
    email now: nothing crossed); it re-arms, and then fires, like any other."""
    before = wallets.get_wallet(org_id)
    saved = wallets.conditional_update(
        org_id,
        UpdateExpression="SET alert_balance_below = :b, alert_cap_percent = :c",
        ConditionExpression="attribute_exists(pk)",
        ExpressionAttributeValues={
            ":b": {"L": [n(v) for v in balances]},
            ":c": {"L": [n(v) for v in percents]},
        },
    )
    if not saved:
        raise NotFound(f"No wallet for org '{org_id}'.")
    for threshold in set(before.balance_alerts) - set(balances):  # forget what is no longer set
        _rearm(org_id, _balance_sk(threshold))
    wallet = wallets.get_wallet(org_id)
    period = clock.period_of(now)
    for threshold in balances:
        if wallet.balance < threshold:
            _claim(org_id, _balance_sk(threshold), now, silent=True)
    if wallet.capped and wallet.period == period:
        for percent in percents:
            if _cap_reached(wallet.month_spent, wallet.cap_limit, percent):
                _claim(org_id, _cap_sk(period, percent), now, silent=True)


def view(org_id: str) -> dict[str, Any]:
    wallet = wallets.get_wallet(org_id)
    period = clock.period_of(clock.now())
    fired: list[dict[str, Any]] = []
    for item in _state_items(org_id):
        if "fired_at" not in item:
            continue
        kind, threshold = as_str(item, "kind"), int(item["threshold"]["N"])
        entry = {"kind": kind, "fired_at": as_str(item, "fired_at")}
        if kind == "balance_below":
            fired.append({**entry, "threshold": format_credits(threshold)})
        elif as_str(item, "sk").startswith(f"ALERT#cap#{period}#"):  # this month's only
            fired.append({**entry, "threshold": threshold})
    return {
        "balance_below": [format_credits(v) for v in wallet.balance_alerts],
        "cap_used_percent": list(wallet.cap_alerts),
        "fired": fired,
    }


# ------------------------------------------------------------------ after a settle (Completion)


@dataclass(frozen=True)
class Candidates:
    balances: tuple[int, ...]
    percents: tuple[int, ...]
    period: str

    def __bool__(self) -> bool:
        return bool(self.balances or self.percents)


def _cap_reached(spent: int, limit: int, percent: int) -> bool:
    return limit > 0 and spent * 100 >= limit * percent


def may_cross(wallet: wallets.Wallet, hold: int, cost: int) -> Candidates:
    """The thresholds a settle of `cost` against `hold` may have crossed, from the wallet as
    the hold left it, with no request. Concurrent requests move the figures between the hold
    and the settle, so each side is bounded: before the settle the balance was at most what
    the hold saw, and after it at least that minus every open hold (ours replaced by its
    cost). The request whose settle really crossed always lands in that range; others that
    do are turned away by the claim, after a read."""
    high = wallet.balance
    low = wallet.available + hold - cost
    balances = tuple(t for t in wallet.balance_alerts if low < t <= high)
    percents: tuple[int, ...] = ()
    if wallet.capped and wallet.cap_alerts:
        before, after = wallet.month_spent, wallet.committed - hold + cost
        percents = tuple(
            p
            for p in wallet.cap_alerts
            if not _cap_reached(before, wallet.cap_limit, p) and _cap_reached(after, wallet.cap_limit, p)
        )
    return Candidates(balances, percents, wallet.period)


def after_settle(org_id: str, candidates: Candidates, now: datetime) -> int:
    """Check the candidates against the wallet as it is, and send what this call claims."""
    wallet = wallets.get_wallet(org_id)
    sent = 0
    for threshold in candidates.balances:
        if wallet.balance < threshold and _claim(org_id, _balance_sk(threshold), now):
            sent += _send_balance(org_id, threshold, wallet.balance)
    if wallet.period == candidates.period:
        for percent in candidates.percents:
            if _cap_reached(wallet.month_spent, wallet.cap_limit, percent) and _claim(
                org_id, _cap_sk(wallet.period, percent), now
            ):
                sent += _send_cap(org_id, percent, wallet)
    return sent


# ------------------------------------------------------------------ after credits move


def after_credit(org_id: str, now: datetime | None = None) -> None:
    """After credits landed (or were taken back): re-arm each balance alert the balance is
    back at or above, and fire one a reversal took it below. Never raises: the credit stands."""
    try:
        wallet = wallets.get_wallet(org_id)
        now = now or clock.now()
        for threshold in wallet.balance_alerts:  # a conditional update each: no read of the states
            if wallet.balance >= threshold:
                _rearm(org_id, _balance_sk(threshold))
            elif _claim(org_id, _balance_sk(threshold), now):
                _send_balance(org_id, threshold, wallet.balance)
    except Exception:
        log.exception("could not check balance alerts after a credit", extra={"org_id": org_id})


# ------------------------------------------------------------------ data access


def _balance_sk(threshold: int) -> str:
    return f"ALERT#balance#{threshold:020d}"


def _cap_sk(period: str, percent: int) -> str:
    return f"ALERT#cap#{period}#{percent:03d}"


def _claim(org_id: str, sk: str, now: datetime, *, silent: bool = False) -> bool:
    """Mark a threshold fired; True only for the one call whose update set the mark."""
    kind = "balance_below" if "#balance#" in sk else "cap_used_percent"
    threshold = int(sk.rsplit("#", 1)[1])
    values: Item = {
        ":kind": s(kind),
        ":t": n(threshold),
        ":at": s(clock.iso(now)),
        ":silent": {"BOOL": silent},
    }
    update = "SET #kind = :kind, #threshold = :t, fired_at = :at, #silent = :silent"
    if kind == "cap_used_percent":  # a month's mark is useless once the month is over
        update += ", expires_at = :x"
        values[":x"] = n(int((now + timedelta(days=70)).timestamp()))
    return _conditional(org_id, sk, update, "attribute_not_exists(fired_at)", values)


def _rearm(org_id: str, sk: str) -> bool:
    return _conditional(org_id, sk, "REMOVE fired_at, #silent", "attribute_exists(fired_at)", None)


def _conditional(org_id: str, sk: str, update: str, condition: str, values: Item | None) -> bool:
    kwargs: dict[str, Any] = {"ExpressionAttributeValues": values} if values else {}
    names = {"#kind": "kind", "#threshold": "threshold", "#silent": "silent"}
    kwargs["ExpressionAttributeNames"] = {k: v for k, v in names.items() if k in update}
    try:
        client().update_item(
            TableName=settings().billing_table,
            Key={"pk": s(wallets.org_pk(org_id)), "sk": s(sk)},
            UpdateExpression=update,
            ConditionExpression=condition,
            **kwargs,
        )
    except ClientError as exc:
        if error_code(exc) == "ConditionalCheckFailedException":
            return False
        raise
    return True


def _query(org_id: str, prefix: str) -> list[Item]:
    items: list[Item] = []
    kwargs: dict[str, Any] = {
        "TableName": settings().billing_table,
        "KeyConditionExpression": "pk = :pk AND begins_with(sk, :p)",
        "ExpressionAttributeValues": {":pk": s(wallets.org_pk(org_id)), ":p": s(prefix)},
        "ConsistentRead": True,
    }
    while True:
        page = client().query(**kwargs)
        items.extend(page.get("Items", []))
        if "LastEvaluatedKey" not in page:
            return items
        kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]


def _state_items(org_id: str) -> list[Item]:
    return _query(org_id, "ALERT#")


def _send_balance(org_id: str, threshold: int, balance: int) -> int:
    from conduix import notices, orgs

    notices.balance_below(orgs.get_org(org_id), format_credits(threshold), format_credits(balance))
    return 1


def _send_cap(org_id: str, percent: int, wallet: wallets.Wallet) -> int:
    from conduix import notices, orgs

    notices.cap_used(
        orgs.get_org(org_id),
        percent,
        format_credits(wallet.month_spent),
        format_credits(wallet.cap_limit),
        wallet.period,
    )
    return 1
