"""Balance and spend-cap alerts: one email per crossing (data access + the rules).

The thresholds live on the wallet item (`alert_balance_below`, `alert_cap_percent`), and so
does whether each has fired: the map `alert_fired`, keyed `b<nanos>` for a balance alert and
`c<YYYY-MM>-<percent>` for a month's cap alert (a new month is a new key: it re-arms by itself).
The environment's view of the wallet therefore knows, with no request, which thresholds are
set: a change of them bumps `alert_rev`, which every hold compares (holds.same_settings), so
a stale view is refused once and refreshed. Whether each is armed, the settle's write reads.

Which settle crosses a threshold is decided by the settle's own write, not by arithmetic on a
view that concurrent requests (or other environments) make stale: a settle of an org with
thresholds carries a guard in its condition (per threshold: the balance stays at or above it,
or the month's spend below the cap percent, unless the wallet marks it fired), and the one
settle whose guard fails is the crossing (see settles.AlertGuard). It then claims the
threshold with a conditional update that sets its key only if absent, and only if the wallet
is past it, so however many requests see the same crossing at once, one wins and one email
goes out. A credit re-arms what the balance rose back above. A request that crosses nothing
spends no request on alerts.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from conduix.core import clock
from conduix.core.errors import NotFound
from conduix.core.money import format_credits
from conduix.ledger import settles, wallets
from conduix.store.items import Item, as_str, n, s

log = logging.getLogger(__name__)

MAX_THRESHOLDS = 10  # of each kind: a few levels are useful, more is noise


# ------------------------------------------------------------------ settings


def save_settings(org_id: str, balances: tuple[int, ...], percents: tuple[int, ...], now: datetime) -> None:
    """Store the thresholds. A threshold already crossed when it is set counts as fired (no
    email now: nothing crossed); it re-arms, and then fires, like any other."""
    before = wallets.get_wallet(org_id)
    removed = [balance_key(t) for t in set(before.balance_alerts) - set(balances)]
    removed += [
        k for k in before.alerts_fired if k.startswith("c") and int(k.rsplit("-", 1)[1]) not in percents
    ]
    names = {f"#r{i}": k for i, k in enumerate(removed)}
    extra: dict[str, Any] = {"ExpressionAttributeNames": names} if names else {}
    # One expression may not touch a map and its members both (DynamoDB refuses overlapping
    # paths): forget the marks of thresholds no longer set, or else make sure the map exists.
    fired = (
        " REMOVE " + ", ".join(f"alert_fired.{name}" for name in names)
        if names
        else ", alert_fired = if_not_exists(alert_fired, :empty)"
    )
    saved = wallets.conditional_update(
        org_id,
        UpdateExpression="SET alert_balance_below = :b, alert_cap_percent = :c"
        + fired
        + " ADD alert_rev :one",  # holds compare it: other environments' views refresh
        ConditionExpression="attribute_exists(pk)",
        ExpressionAttributeValues={
            ":b": {"L": [n(v) for v in balances]},
            ":c": {"L": [n(v) for v in percents]},
            ":one": n(1),
            **({} if names else {":empty": {"M": {}}}),
        },
        **extra,
    )
    if not saved:
        raise NotFound(f"No wallet for org '{org_id}'.")
    check(org_id, now, silent=True)


def view(org_id: str) -> dict[str, Any]:
    wallet_item = wallets.wallet_item(org_id)
    wallet = wallets.wallet_from_item(org_id, wallet_item)
    period = clock.period_of(clock.now())
    fired: list[dict[str, Any]] = []
    for key, value in sorted(wallet_item.get("alert_fired", {}).get("M", {}).items()):
        fired_at = as_str(value.get("M", {}), "at")
        if key.startswith("b"):
            fired.append(
                {"kind": "balance_below", "fired_at": fired_at, "threshold": format_credits(int(key[1:]))}
            )
        elif key.startswith(f"c{period}-"):  # this month's only
            fired.append(
                {"kind": "cap_used_percent", "fired_at": fired_at, "threshold": int(key.rsplit("-", 1)[1])}
            )
    return {
        "balance_below": [format_credits(v) for v in wallet.balance_alerts],
        "cap_used_percent": list(wallet.cap_alerts),
        "fired": fired,
    }


# ------------------------------------------------------------------ keys and guards


def balance_key(threshold: int) -> str:
    return f"b{threshold}"


def cap_key(period: str, percent: int) -> str:
    return f"c{period}-{percent}"


def _cap_amount(limit: int, percent: int) -> int:
    """The month's spend at which `percent` of the cap is reached (rounded up to a nano-credit)."""
    return -(-limit * percent // 100)


def _cap_reached(spent: int, limit: int, percent: int) -> bool:
    return limit > 0 and spent >= _cap_amount(limit, percent)


def guard(wallet: wallets.Wallet, cost: int) -> settles.AlertGuard | None:
    """What a settle of `cost` must keep true to cross no armed threshold (None: no thresholds,
    so no condition). Every threshold set is guarded, fired or not: whether one is armed is
    read by the settle's own write from the wallet's marks, never from this view, which
    another environment's re-arm or claim makes stale."""
    floors = tuple((balance_key(t), t + cost) for t in wallet.balance_alerts)
    ceilings: tuple[tuple[str, int], ...] = ()
    if wallet.capped:
        ceilings = tuple(
            (cap_key(wallet.period, p), _cap_amount(wallet.cap_limit, p) - cost) for p in wallet.cap_alerts
        )
    if not (floors or ceilings):
        return None
    return settles.AlertGuard(balance_floors=floors, spent_ceilings=ceilings, period=wallet.period)


def check(org_id: str, now: datetime, *, silent: bool = False) -> int:
    """Claim (and, unless `silent`, send) every armed threshold the wallet is past now: after a
    settle whose guard failed, after a deferred settle, and when thresholds are set."""
    wallet = wallets.get_wallet(org_id)
    sent = 0
    for threshold in wallet.balance_alerts:
        key = balance_key(threshold)
        armed_and_past = wallet.balance < threshold and key not in wallet.alerts_fired
        if armed_and_past and _claim(org_id, key, now, silent, "balance < :t", threshold) and not silent:
            sent += _send_balance(org_id, threshold, wallet.balance)
    if wallet.capped and wallet.period == clock.period_of(now):
        for percent in wallet.cap_alerts:
            key, amount = cap_key(wallet.period, percent), _cap_amount(wallet.cap_limit, percent)
            if wallet.month_spent >= amount and key not in wallet.alerts_fired:
                old = [
                    k
                    for k in wallet.alerts_fired
                    if k.startswith("c") and not k.startswith(f"c{wallet.period}-")
                ]
                claimed = _claim(
                    org_id, key, now, silent, "#period = :p AND month_spent >= :t", amount, wallet.period, old
                )
                if claimed and not silent:
                    sent += _send_cap(org_id, percent, wallet)
    return sent


# ------------------------------------------------------------------ after credits move


def after_credit(org_id: str, now: datetime | None = None) -> None:
    """After credits landed (or were taken back): re-arm each balance alert the balance is
    back at or above, and fire one a reversal took it below. Never raises: the credit stands."""
    try:
        wallet = wallets.get_wallet(org_id)
        if not wallet.balance_alerts:
            return
        for threshold in wallet.balance_alerts:
            if wallet.balance >= threshold and balance_key(threshold) in wallet.alerts_fired:
                _rearm(org_id, balance_key(threshold), threshold)
        check(org_id, now or clock.now())
    except Exception:
        log.exception("could not check balance alerts after a credit", extra={"org_id": org_id})


# ------------------------------------------------------------------ data access


def _claim(
    org_id: str,
    key: str,
    now: datetime,
    silent: bool,
    past: str,
    threshold: int,
    period: str = "",
    forget: list[str] | None = None,
) -> bool:
    """Mark a threshold fired on the wallet; True only for the one call whose update set the
    mark, and only while the wallet is `past` the threshold. A cap claim drops the marks of
    months that are over."""
    names = {"#k": key, **({"#period": "period"} if period else {})}
    names.update({f"#o{i}": k for i, k in enumerate(forget or [])})
    values: Item = {
        ":v": {"M": {"at": s(clock.iso(now)), "silent": {"BOOL": silent}}},
        ":t": n(threshold),
        **({":p": s(period)} if period else {}),
    }
    update = "SET alert_fired.#k = :v"
    if forget:
        update += " REMOVE " + ", ".join(f"alert_fired.#o{i}" for i in range(len(forget)))
    for _ in range(2):
        refused = wallets.update_if(
            org_id,
            UpdateExpression=update,
            ConditionExpression=f"attribute_not_exists(alert_fired.#k) AND {past}",
            ExpressionAttributeNames=names,
            ExpressionAttributeValues=values,
            ReturnValuesOnConditionCheckFailure="ALL_OLD",
        )
        if not refused:
            return True
        if "alert_fired" in refused.old or not refused.old:
            return False
        _start_fired_map(org_id)  # a wallet from before the map: start it, then claim
    return False


def _start_fired_map(org_id: str) -> None:
    wallets.conditional_update(
        org_id,
        UpdateExpression="SET alert_fired = :empty",
        ConditionExpression="attribute_exists(pk) AND attribute_not_exists(alert_fired)",
        ExpressionAttributeValues={":empty": {"M": {}}},
    )


def _rearm(org_id: str, key: str, threshold: int) -> bool:
    return wallets.conditional_update(
        org_id,
        UpdateExpression="REMOVE alert_fired.#k",
        ConditionExpression="attribute_exists(alert_fired.#k) AND balance >= :t",
        ExpressionAttributeNames={"#k": key},
        ExpressionAttributeValues={":t": n(threshold)},
    )


def _send_balance(org_id: str, threshold: int, balance: int) -> int:
    from conduix.accounts import notices, orgs  # only a crossing sends: SES stays off the billed path

    notices.balance_below(orgs.get_org(org_id), format_credits(threshold), format_credits(balance))
    return 1


def _send_cap(org_id: str, percent: int, wallet: wallets.Wallet) -> int:
    from conduix.accounts import notices, orgs  # only a crossing sends: SES stays off the billed path

    notices.cap_used(
        orgs.get_org(org_id),
        percent,
        format_credits(wallet.month_spent),
        format_credits(wallet.cap_limit),
        wallet.period,
    )
    return 1
