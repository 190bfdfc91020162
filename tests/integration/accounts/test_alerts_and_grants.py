"""Balance and cap alerts (once per crossing, re-armed), the notice history, and credit grants
that expire, spent first (on the locked moto server and the fake upstream)."""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import pytest
from conduix.accounts import alerts, grants, notices, orgs
from conduix.accounts.auth import Principal
from conduix.api import admin, billing
from conduix.api.queries import NoticesQuery
from conduix.audit import reconcile
from conduix.core import bodies
from conduix.core.bodies import parse
from conduix.core.errors import IdempotencyConflict, InvalidRequest
from conduix.core.money import NANOS_PER_CREDIT as C
from conduix.core.money import format_credits
from conduix.inference import answers, completion
from conduix.ledger import holds, metering, settles, wallet_settings, wallets
from conduix_local.upstream import FakeUpstream

from tests.integration.helpers import NOW, assert_consistent, fund, ledger_items

pytestmark = pytest.mark.integration


def ask(org: str, request_id: str, max_tokens: int = 8) -> answers.Served:
    body = {"model": "t/text", "messages": [{"role": "user", "content": "hi"}], "max_tokens": max_tokens}
    principal = Principal(org_id=org, key_id="key_1", scopes=("inference",))
    return completion.serve(principal, json.dumps(body).encode(), request_id, time.monotonic() + 20)


def sent(org: str, kind: str) -> list[dict[str, object]]:
    return [n for n in notices.recent(org, 100) if n["type"] == kind]


# ------------------------------------------------------------------ alert settings


@pytest.mark.parametrize(
    "body",
    [
        {"balance_below": [20]},
        {"balance_below": ["-5"]},
        {"balance_below": ["1e3"]},
        {"cap_used_percent": [0]},
        {"cap_used_percent": [101]},
        {"cap_used_percent": [True]},
        {"cap_used_percent": ["80"]},
        {"balance_below": [str(i) for i in range(1, 12)]},
        {"balance_below": "20"},
        {"other": []},
    ],
)
def test_bad_alert_settings_are_refused(org: str, body: dict[str, object]) -> None:
    with pytest.raises(InvalidRequest):
        billing.set_alerts(org, parse(bodies.AlertsRequest, body))
    assert wallets.get_wallet(org).balance_alerts == ()


def test_alert_settings_round_trip(org: str) -> None:
    fund(org, "10")
    view = billing.set_alerts(
        org, parse(bodies.AlertsRequest, {"balance_below": ["5", "20", "5"], "cap_used_percent": [95, 80]})
    )
    assert view["balance_below"] == ["20", "5"] and view["cap_used_percent"] == [80, 95]
    # 10 < 20 already when set: counted as fired, silently (nothing crossed)
    assert [f["threshold"] for f in view["fired"]] == ["20"]
    assert sent(org, "balance_below") == []
    assert billing.alerts_view(org)["balance_below"] == ["20", "5"]


def test_a_threshold_no_longer_set_forgets_that_it_fired(org: str) -> None:
    fund(org, "10")
    assert [
        f["threshold"]
        for f in billing.set_alerts(org, parse(bodies.AlertsRequest, {"balance_below": ["20"]}))["fired"]
    ] == ["20"]
    view = billing.set_alerts(org, parse(bodies.AlertsRequest, {"balance_below": ["5"]}))
    assert view["balance_below"] == ["5"] and view["fired"] == []
    assert wallets.get_wallet(org).alerts_fired == frozenset()


# ------------------------------------------------------------------ crossings


def spend_below(org: str, threshold: int, prefix: str) -> None:
    for i in range(40):
        ask(org, f"{prefix}{i}")
        if wallets.get_wallet(org).balance < threshold:
            return
    raise AssertionError("never crossed")


def test_a_balance_alert_fires_once_per_crossing_and_re_arms_when_credits_land(
    org: str, served_catalog: FakeUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    fund(org, "0.001")
    billing.set_alerts(org, parse(bodies.AlertsRequest, {"balance_below": ["0.0008"]}))
    calls: list[object] = []
    original = alerts.check

    def counted(*args: object, **kwargs: object) -> int:
        calls.append(args)
        return original(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(alerts, "check", counted)
    ask(org, "r1")  # far from the threshold: no request is spent on alerts
    assert calls == [] and sent(org, "balance_below") == []
    spend_below(org, 8 * C // 10000, "a")
    assert len(sent(org, "balance_below")) == 1
    before = len(calls)
    ask(org, "r2")  # below already (and fired): no request on alerts, and no second email
    assert len(calls) == before and len(sent(org, "balance_below")) == 1
    fund(org, "0.001", key="top")
    alerts.after_credit(org)  # what every credit path calls
    assert billing.alerts_view(org)["fired"] == []
    spend_below(org, 8 * C // 10000, "b")
    emails = sent(org, "balance_below")
    assert len(emails) == 2 and "0.0008" in str(emails[0]["subject"])
    assert_consistent(org)
    assert reconcile.reconcile_org(org) == []


def test_a_concurrent_burst_across_a_threshold_sends_one_email(
    org: str, served_catalog: FakeUpstream
) -> None:
    # (Funded well past what the burst spends: a settle deferred by contention keeps its hold
    # until HoldSweeper, and must not starve the burst's last requests.)
    fund(org, "0.003")
    billing.set_alerts(org, parse(bodies.AlertsRequest, {"balance_below": ["0.0025"]}))
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda i: ask(org, f"b{i}"), range(16)))
    assert wallets.get_wallet(org).balance < 25 * C // 10000
    assert len(sent(org, "balance_below")) == 1
    assert_consistent(org)


def test_the_settle_that_crosses_sends_the_alert_whatever_order_requests_held_in(org: str) -> None:
    # Four requests in flight of one credit each, from 8 credits, with an alert below 5: the
    # request that settles last held first, when the wallet still looked far from 5 (the
    # interleaving a burst on the local stack produced, and the old estimate missed).
    fund(org, "8")
    billing.set_alerts(org, parse(bodies.AlertsRequest, {"balance_below": ["5"]}))
    views = [holds.reserve(org, f"h{i}", C, model="m", key_id="k", now=NOW).wallet for i in range(4)]
    tripped = []
    for i in (1, 2, 3, 0):
        guard = alerts.guard(views[i], C)
        assert guard is not None  # armed: each settle carries the guard
        usage = metering.Usage("m", "k", 1, 1, C)
        assert settles.settle(org, f"h{i}", C, usage, NOW, alert_guard=guard) is settles.SettleOutcome.SETTLED
        tripped.append(guard.tripped)
        if guard.tripped:
            assert alerts.check(org, NOW) == 1
    assert tripped == [False, False, False, True]  # only the settle from 5 to 4 crosses
    assert len(sent(org, "balance_below")) == 1
    # Fired: the guard still rides on each settle, and the wallet's mark lets it pass
    holds.reserve(org, "h4", C, model="m", key_id="k", now=NOW)
    guard = alerts.guard(wallets.get_wallet(org), C)
    assert guard is not None
    usage = metering.Usage("m", "k", 1, 1, C)
    assert settles.settle(org, "h4", C, usage, NOW, alert_guard=guard) is settles.SettleOutcome.SETTLED
    assert not guard.tripped and len(sent(org, "balance_below")) == 1
    assert_consistent(org)


def test_a_threshold_re_armed_elsewhere_fires_from_a_view_that_saw_it_fired(org: str) -> None:
    # The view a settle's guard is built from was learned while the alert had fired; another
    # environment's credit re-armed it since (the CI failure of session 2: the crossing after a
    # re-arm went unnoticed until this environment's view expired).
    fund(org, "6")
    billing.set_alerts(org, parse(bodies.AlertsRequest, {"balance_below": ["5"]}))
    usage = metering.Usage("m", "k", 1, 1, C)
    holds.reserve(org, "a0", C, model="m", key_id="k", now=NOW)
    holds.reserve(org, "a1", C, model="m", key_id="k", now=NOW)
    for i in range(2):
        settles.settle(org, f"a{i}", C, usage, NOW, alert_guard=alerts.guard(wallets.get_wallet(org), C))
    assert alerts.check(org, NOW) == 1  # 6 -> 4: fired
    stale = wallets.get_wallet(org)
    assert stale.alerts_fired == {alerts.balance_key(5 * C)}
    fund(org, "2", key="again")
    alerts.after_credit(org)  # elsewhere: re-armed at 6
    assert wallets.get_wallet(org).alerts_fired == frozenset()
    for i in (2, 3):
        holds.reserve(org, f"a{i}", C, model="m", key_id="k", now=NOW)
        guard = alerts.guard(stale, C)
        assert guard is not None
        settles.settle(org, f"a{i}", C, usage, NOW, alert_guard=guard)
        if guard.tripped:
            alerts.check(org, NOW)
    assert wallets.get_wallet(org).balance == 4 * C
    assert len(sent(org, "balance_below")) == 2
    assert_consistent(org)


def test_thresholds_set_elsewhere_refresh_the_view_a_hold_bills_under(org: str) -> None:
    fund(org, "10")
    before = wallets.wallet_item(org)
    billing.set_alerts(
        org, parse(bodies.AlertsRequest, {"balance_below": ["5"]})
    )  # another environment's write...
    wallets.learn(org, before)  # ...which this environment's view has not seen
    assert wallets.known_wallet(org).balance_alerts == ()
    reservation = holds.reserve(org, "v0", C, model="m", key_id="k", now=NOW)
    assert reservation.wallet.balance_alerts == (5 * C,)  # the hold refused the stale view once


def test_a_cap_alert_fires_once_a_month(org: str, served_catalog: FakeUpstream) -> None:
    fund(org, "5")
    wallet_settings.write_spend_cap(org, 2 * C // 1000, NOW)  # 0.002
    billing.set_alerts(org, parse(bodies.AlertsRequest, {"cap_used_percent": [50]}))
    for i in range(16):
        ask(org, f"c{i}")
    assert wallets.get_wallet(org).month_spent >= C // 1000
    assert len(sent(org, "cap_used_percent")) == 1
    assert [f["threshold"] for f in billing.alerts_view(org)["fired"]] == [50]


# ------------------------------------------------------------------ notices


def test_every_notice_is_recorded_newest_first(org: str) -> None:
    o = orgs.get_org(org)
    notices.account_paused(o, "0")
    notices.reload_failed(o, "card declined", False)
    listed = billing.notices_view(org)["data"]
    assert [n["type"] for n in listed] == ["auto_reload_failed", "account_paused"]
    assert listed[0]["recipient"] == "billing@acme.test" and "failed" in listed[0]["subject"]
    with pytest.raises(InvalidRequest):
        parse(NoticesQuery, {"limit": "0"})


# ------------------------------------------------------------------ expiring grants


def grant(org: str, amount: str, key: str, expires: object = None) -> dict[str, object]:
    body: dict[str, object] = {"amount": amount, "reason": "promo", "idempotency_key": key}
    if expires is not None:
        body["expires_at"] = expires
    return admin.grant_credits(org, parse(bodies.GrantRequest, body))[0]


def test_attribution_draws_on_the_earliest_expiry_first() -> None:
    a = grants.Grant("o", "grant:a", 10, "2026-01-01T00", "2026-03-01T00")
    b = grants.Grant("o", "grant:b", 10, "2026-01-01T00", "2026-02-01T00")
    left = grants.attribute([a, b], [("2026-01-05T00", 4), ("2026-01-20T00", 8), ("2026-02-10T00", 3)])
    # b expires first: it pays 4, then 6 of the 8; a pays the other 2, then 3 after b expired
    assert left == {"grant:b": 0, "grant:a": 5}
    assert grants.attribute([a], [("2025-12-31T00", 4)]) == {"grant:a": 10}  # before the grant


@pytest.mark.parametrize(
    "expires", ["2020-01-01T00:00:00Z", "2027-01-01T00:00:00", "tomorrow", 5, "2027-01-01T00:00:00+02:00"]
)
def test_bad_expiries_are_refused(org: str, expires: object) -> None:
    with pytest.raises(InvalidRequest):
        grant(org, "5", "g", expires)
    assert wallets.get_wallet(org).balance == 0


def test_an_expiring_grant_is_spent_first_and_its_remainder_expires_once(
    org: str, served_catalog: FakeUpstream
) -> None:
    from conduix.core import clock

    now = clock.now()
    fund(org, "1")  # never expires
    expiry = (now + timedelta(days=2)).strftime("%Y-%m-%dT%H:%M:%SZ")
    made = grant(org, "0.001", "promo-1", expiry)
    assert made["expires_at"].startswith(expiry[:19])
    assert grant(org, "0.001", "promo-1", expiry) == made  # a replay
    with pytest.raises(IdempotencyConflict):
        grant(org, "0.001", "promo-1", (now + timedelta(days=3)).strftime("%Y-%m-%dT%H:%M:%SZ"))
    with pytest.raises(IdempotencyConflict):
        grant(org, "0.001", "seed", expiry)  # a key already used without expiry
    spent = sum(ask(org, f"g{i}").cost for i in range(3))
    view = billing.billing_view(org)["expiring_credits"]
    assert [(v["grant"], v["granted"], v["remaining"], v["expires_at"]) for v in view] == [
        ("grant:promo-1", "0.001", format_credits(C // 1000 - spent), made["expires_at"])
    ]
    assert grants.expire_due(now) == {"grants_expired": 0, "credits_expired": "0"}  # not yet
    later = now + timedelta(days=3)
    balance = wallets.get_wallet(org).balance
    first = grants.expire_due(later)
    assert first["grants_expired"] == 1
    assert wallets.get_wallet(org).balance == balance - (C // 1000 - spent)
    assert grants.expire_due(later) == {"grants_expired": 0, "credits_expired": "0"}  # rerun
    assert grants.expire(org, "grant:promo-1", later) is None
    expiries = [i for i in ledger_items(org) if i["entry_type"]["S"] == "expiry"]
    assert len(expiries) == 1 and -int(expiries[0]["amount"]["N"]) == C // 1000 - spent
    assert "grant:promo-1" in expiries[0]["description"]["S"]
    assert billing.billing_view(org)["expiring_credits"] == []
    assert_consistent(org)
    assert reconcile.reconcile_org(org) == []
