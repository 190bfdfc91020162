"""The operator's look-ups: the org directory and its search, and stuck holds freed by hand."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from conduix.accounts import orgs
from conduix.api import admin
from conduix.api.queries import OrgsQuery
from conduix.core import clock, errors
from conduix.core.bodies import parse
from conduix.core.money import NANOS_PER_CREDIT as C
from conduix.ledger import holds, leases, metering, settles, statements, upkeep, wallet_settings, wallets
from conduix.pricing import plans

from tests.integration.helpers import NOW, assert_consistent, fund

pytestmark = pytest.mark.integration


def list_orgs(query: dict[str, str]) -> dict[str, object]:
    """The directory for a query string, checked as the API checks it."""
    q = parse(OrgsQuery, query)
    return admin.list_orgs(q.email, q.name, q.limit, q.cursor)


def _all(query: dict[str, str]) -> list[str]:
    """Every page of a listing, followed through its cursors."""
    names, cursor = [], None
    for _ in range(20):
        page = list_orgs({**query, **({"cursor": cursor} if cursor else {})})
        names += [o["name"] for o in page["data"]]
        if not page["has_more"]:
            return names
        cursor = page["next_cursor"]
    raise AssertionError("the listing never ended")


def test_orgs_are_listed_in_email_order_and_searched_by_email_and_name(tables: dict[str, str]) -> None:
    # Given four orgs (and their wallets, keys and ledger lines, which the directory must not list)
    for name, email in [
        ("Acme Corp", "ops@acme.test"),
        ("Acme Labs", "Billing@Acme-Labs.test"),
        ("Globex", "finance@globex.test"),
        ("Initech", "ops@initech.test"),
    ]:
        org = orgs.create_org(name, email, NOW)
        fund(org.org_id, "1")
    # When listed one at a time, every org comes once, in email order
    assert _all({"limit": "1"}) == ["Acme Labs", "Globex", "Acme Corp", "Initech"]
    # The email matches its start, ignoring case; the name any part of it, ignoring case
    assert _all({"email": "BILLING@"}) == ["Acme Labs"]
    assert _all({"email": "ops@"}) == ["Acme Corp", "Initech"]
    assert _all({"name": "acme", "limit": "1"}) == ["Acme Labs", "Acme Corp"]
    assert _all({"name": "ACME", "email": "ops"}) == ["Acme Corp"]
    assert list_orgs({"name": "nobody"}) == {
        "object": "list",
        "data": [],
        "has_more": False,
        "next_cursor": None,
    }
    first = list_orgs({"email": "ops@acme"})["data"][0]
    assert set(first) == {"org_id", "name", "email", "created_at"} and first["email"] == "ops@acme.test"


@pytest.mark.parametrize(
    ("query", "param"),
    [
        ({"cursor": "not-a-cursor"}, "cursor"),
        ({"cursor": "eyJwIjoiT1JHI3giLCJlIjoiYSJ9"}, "cursor"),  # {"p":"ORG#x","e":"a"}
        ({"limit": "0"}, "limit"),
        ({"limit": "x"}, "limit"),
        ({"email": "a" * 201}, "email"),
        ({"name": "\x00"}, "name"),
    ],
)
def test_bad_look_ups_are_a_400_naming_the_field(
    tables: dict[str, str], query: dict[str, str], param: str
) -> None:
    with pytest.raises(errors.InvalidRequest) as refused:
        list_orgs(query)
    assert refused.value.param == param


def test_releasing_a_stuck_hold_frees_it_once_with_an_audit_entry(org: str) -> None:
    # Given an org with a hold whose request died
    fund(org, "10")
    holds.reserve(org, "stuck-1", 3 * C, model="acme/fast", key_id="key_1", now=NOW)
    listed = admin.list_holds(org)["data"]
    assert [(h["request_id"], h["amount"], h["model"], h["key_id"]) for h in listed] == [
        ("stuck-1", "3", "acme/fast", "key_1")
    ]
    assert listed[0]["age_seconds"] >= 0 and listed[0]["expired"] in (True, False)
    # When the operator releases it
    released = admin.release_hold(org, "stuck-1")
    # Then the credits are available again, nothing is billed, and the ledger says who did it
    assert released["released"] == "3"
    assert (released["wallet"]["held"], released["wallet"]["available"]) == ("0", "10")
    assert released["ledger_entry"]["type"] == "hold_release" and released["ledger_entry"]["amount"] == "0"
    audit = statements.ledger_page(org, wanted=statements.LedgerFilter("hold_release"))["data"]
    assert [(e["id"], e["amount"], e["balance_after"]) for e in audit] == [
        ("hold_release:stuck-1", "0", "10")
    ]
    assert "released by the operator" in audit[0]["description"]
    assert_consistent(org)
    # A late settle of that request finds the hold gone and bills nothing; a second release is a 404
    usage = metering.Usage(model="acme/fast", key_id="key_1", prompt_tokens=1, completion_tokens=1, cost=C)
    assert settles.settle(org, "stuck-1", 3 * C, usage, NOW) is settles.SettleOutcome.HOLD_GONE
    with pytest.raises(errors.NotFound):
        admin.release_hold(org, "stuck-1")
    assert wallets.get_wallet(org).balance == 10 * C
    assert admin.list_holds(org)["data"] == []


def test_the_holds_listing_shows_a_hot_orgs_open_leases_with_what_they_billed(org: str) -> None:
    # Given a hot org (8 holds in flight) with a lease (of the org: any key without a spend
    # limit), two requests billed under it
    wallet_settings.set_plan(org, plans.get("scale"))
    fund(org, "100")
    cent = C // 100
    for i in range(leases.HOT_IN_FLIGHT):
        holds.reserve(org, f"h-{i}", cent, model="acme/fast", key_id="key_2", now=NOW)
    served = [
        leases.reserve(org, f"r-{i}", cent, model="acme/fast", key_id="key_1", now=NOW) for i in range(3)
    ]
    lease = served[0].lease
    assert lease is not None
    for i, r in enumerate(served[:2]):
        leases.settle(org, f"r-{i}", r, metering.Usage("acme/fast", "key_1", 1, 1, cent // 2), NOW)
    # Then the operator sees the holds and the lease: together, what the wallet's held counts
    listed = admin.list_holds(org)
    assert len(listed["data"]) == leases.HOT_IN_FLIGHT
    (shown,) = listed["leases"]
    assert (shown["lease_id"], shown["key_id"], shown["slice"], shown["spent"]) == (
        lease.lease_id,
        "",
        "0.16",
        "0.01",
    )
    assert (shown["requests"], shown["billed_requests"]) == (16, 2)
    expires = datetime.fromtimestamp(lease.expires_at, UTC)
    assert (shown["expires_at"], shown["expired"]) == (clock.iso(expires), expires <= clock.now())
    held = sum(h.amount for h in holds.open_holds(org)) + lease.amount
    assert wallets.get_wallet(org).held == held
    # and once it is folded, no lease is left
    leases.release(org, "r-2", served[2], NOW)
    leases.close_all(NOW)
    assert admin.list_holds(org)["leases"] == []


def test_a_settle_that_wins_the_race_leaves_the_release_nothing_to_do(
    org: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a hold the operator has just read...
    fund(org, "10")
    holds.reserve(org, "racing", 3 * C, model="acme/fast", key_id="key_1", now=NOW)
    seen = holds.open_holds(org)
    # ...and that the request settles before the operator's write lands
    usage = metering.Usage(model="acme/fast", key_id="key_1", prompt_tokens=1, completion_tokens=1, cost=C)
    assert settles.settle(org, "racing", 3 * C, usage, NOW) is settles.SettleOutcome.SETTLED
    monkeypatch.setattr(holds, "open_holds", lambda _org: seen)
    # Then the release is refused, and writes neither money nor an audit entry
    with pytest.raises(errors.Conflict) as refused:
        upkeep.release_stuck_hold(org, "racing", NOW)
    assert refused.value.code == "hold_closed"
    assert statements.ledger_page(org, wanted=statements.LedgerFilter("hold_release"))["data"] == []
    assert wallets.get_wallet(org).balance == 9 * C
    assert_consistent(org)


def test_holds_of_an_unknown_org_are_a_404(tables: dict[str, str]) -> None:
    with pytest.raises(errors.NotFound):
        admin.list_holds("org_0000000000000000")
    with pytest.raises(errors.NotFound):
        admin.release_hold("org_0000000000000000", "x")


def test_a_served_hold_with_a_deferred_settle_is_billed_never_released(org: str) -> None:
    # Given a request that was served but whose settle could not land (its usage is recorded)
    fund(org, "10")
    holds.reserve(org, "served-1", 3 * C, model="acme/fast", key_id="key_1", now=NOW)
    usage = metering.Usage(
        model="acme/fast", key_id="key_1", prompt_tokens=2, completion_tokens=5, cost=C // 4
    )
    settles.record_pending(org, "served-1", 3 * C, usage, NOW)
    # When the operator "releases" it
    answer = admin.release_hold(org, "served-1")
    # Then it is settled at its cost, as HoldSweeper would, and nothing is released
    assert (answer["action"], answer["outcome"], answer["cost"]) == ("settled", "settled", "0.25")
    assert (answer["wallet"]["balance"], answer["wallet"]["held"]) == ("9.75", "0")
    assert statements.ledger_page(org, wanted=statements.LedgerFilter("hold_release"))["data"] == []
    assert settles.pending_settles(org) == []
    assert_consistent(org)


def test_a_deferred_settle_recorded_during_the_release_cancels_it(
    org: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a hold the operator read before its request's usage was recorded
    fund(org, "10")
    holds.reserve(org, "late-1", 3 * C, model="acme/fast", key_id="key_1", now=NOW)
    seen = holds.open_holds(org)
    usage = metering.Usage(model="acme/fast", key_id="key_1", prompt_tokens=2, completion_tokens=5, cost=C)
    settles.record_pending(org, "late-1", 3 * C, usage, NOW)
    monkeypatch.setattr(holds, "open_holds", lambda _org: seen)
    # Then the release is refused and changes nothing: the hold waits for its settle
    with pytest.raises(errors.Conflict) as refused:
        upkeep.release_stuck_hold(org, "late-1", NOW)
    assert refused.value.code == "hold_closed" and "settle is pending" in refused.value.message
    wallet = wallets.get_wallet(org)
    assert (wallet.balance, wallet.held) == (10 * C, 3 * C)
    assert statements.ledger_page(org, wanted=statements.LedgerFilter("hold_release"))["data"] == []
