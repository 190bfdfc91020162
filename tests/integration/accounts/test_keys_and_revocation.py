"""Revocation counts at once, even where a warm function still remembers the key; a key
grants only the scopes it holds; ledger cursors cannot be edited."""

from __future__ import annotations

import base64
import json
import threading
from datetime import timedelta

import pytest
from conduix.accounts import auth, keys
from conduix.core import bodies, config, errors
from conduix.core.bodies import parse
from conduix.core.money import NANOS_PER_CREDIT as C
from conduix.ledger import holds, metering, settles, statements, wallet_settings, wallets
from conduix.pricing import plans
from conduix.store import dynamo, schema

from tests.integration.helpers import NOW, assert_consistent, fund

pytestmark = pytest.mark.integration


@pytest.fixture(autouse=True)
def many_keys(request: pytest.FixtureRequest) -> None:
    """The Scale plan, whose key limit leaves room for the keys these tests make."""
    if "org" in request.fixturenames:
        wallet_settings.set_plan(request.getfixturevalue("org"), plans.get("scale"))


def bearer(secret: str) -> dict[str, str]:
    return {"authorization": f"Bearer {secret}"}


def marks(org: str) -> dict[str, int]:
    item = dynamo.client().get_item(
        TableName=config.settings().billing_table, Key=wallets.wallet_key(org), ConsistentRead=True
    )["Item"]
    return {k: int(v["N"]) for k, v in item.get("revoked_keys", {}).get("M", {}).items()}


def test_a_revoked_key_is_refused_by_the_hold_although_the_cache_remembers_it(org: str) -> None:
    fund(org, "5")
    doomed, other = (
        keys.create_api_key(org, parse(bodies.ApiKeyRequest, {})),
        keys.create_api_key(org, parse(bodies.ApiKeyRequest, {})),
    )
    principal = auth.authenticate(bearer(doomed["api_key"]), "inference")  # now warm
    keys.revoke_api_key(org, doomed["key_id"])

    # The warm cache still answers for the key (that is what keeps the billed path read-free)...
    assert auth.authenticate(bearer(doomed["api_key"]), "inference") == principal
    # ...but the hold's own conditional write refuses it, and nothing is held.
    with pytest.raises(errors.Unauthenticated, match="revoked"):
        holds.reserve(org, "r1", C, model="m", key_id=principal.key_id, now=NOW)
    wallet = assert_consistent(org)
    assert (wallet.balance, wallet.held, holds.open_holds(org)) == (5 * C, 0, ())
    # The cache-hit path reads the balance for its header; the same read refuses the key.
    with pytest.raises(errors.Unauthenticated):
        wallets.get_balance(org, principal.key_id)
    # Routes that read the key fresh refuse it without any mark.
    with pytest.raises(errors.Unauthenticated):
        auth.authenticate(bearer(doomed["api_key"]), "billing", fresh=True)
    # The org's other keys are untouched.
    holds.reserve(org, "r2", C, model="m", key_id=other["key_id"], now=NOW)
    assert wallets.get_balance(org, other["key_id"]) == 5 * C


def test_marks_outlive_the_key_cache_and_are_then_pruned(org: str) -> None:
    first, second = (
        keys.create_api_key(org, parse(bodies.ApiKeyRequest, {})),
        keys.create_api_key(org, parse(bodies.ApiKeyRequest, {})),
    )
    from conduix.accounts import key_records

    key_records.mark_key_revoked(org, first["key_id"], NOW)
    key_records.mark_key_revoked(org, second["key_id"], NOW + timedelta(seconds=30))
    assert set(marks(org)) == {first["key_id"], second["key_id"]}  # within the cache lifetime
    third = keys.create_api_key(org, parse(bodies.ApiKeyRequest, {}))
    later = NOW + timedelta(seconds=config.settings().key_cache_seconds + 61)
    key_records.mark_key_revoked(org, third["key_id"], later)
    assert set(marks(org)) == {second["key_id"], third["key_id"]}  # the first is no longer needed
    # Revoking again (a retried call) marks again, and changes nothing else.
    assert key_records.mark_key_revoked(org, third["key_id"], later).revoked is True
    assert marks(org)[third["key_id"]] == int(later.timestamp())


def test_concurrent_revocations_on_a_wallet_without_marks_all_land(org: str) -> None:
    # A wallet written before revocation marks existed has no map yet.
    dynamo.client().update_item(
        TableName=config.settings().billing_table,
        Key=wallets.wallet_key(org),
        UpdateExpression="REMOVE revoked_keys",
    )
    fund(org, "1")
    created = [
        keys.create_api_key(org, parse(bodies.ApiKeyRequest, {"name": f"k{i}"}))["key_id"] for i in range(6)
    ]
    threads = [threading.Thread(target=keys.revoke_api_key, args=(org, key_id)) for key_id in created]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert set(marks(org)) == set(created)
    for i, key_id in enumerate(created):
        with pytest.raises(errors.Unauthenticated):
            holds.reserve(org, f"r{i}", 1, model="m", key_id=key_id, now=NOW)
    assert_consistent(org)


def test_a_key_grants_only_the_scopes_it_holds(org: str) -> None:
    billing_only = ("billing",)
    with pytest.raises(errors.PermissionDenied, match="'inference'"):
        keys.create_api_key(org, parse(bodies.ApiKeyRequest, {"scopes": ["inference"]}), billing_only)
    with pytest.raises(errors.PermissionDenied):
        keys.create_api_key(
            org, parse(bodies.ApiKeyRequest, {"scopes": ["billing", "inference"]}), billing_only
        )
    assert keys.create_api_key(org, parse(bodies.ApiKeyRequest, {}), billing_only)["scopes"] == [
        "billing"
    ]  # the default: its own
    assert keys.create_api_key(org, parse(bodies.ApiKeyRequest, {"scopes": ["billing"]}), billing_only)[
        "scopes"
    ] == ["billing"]
    # A key holding both, and the operator, may grant either.
    assert keys.create_api_key(
        org, parse(bodies.ApiKeyRequest, {"scopes": ["inference"]}), ("billing", "inference")
    )["scopes"] == ["inference"]
    assert keys.create_api_key(org, parse(bodies.ApiKeyRequest, {}))["scopes"] == ["billing", "inference"]
    assert len(keys.list_keys(org)["data"]) == 4  # the refused ones were never created


def _two_pages(org: str) -> dict[str, object]:
    fund(org, "10")
    for i in range(3):
        holds.reserve(org, f"r{i}", C, model="m", key_id="k", now=NOW + timedelta(seconds=i + 1))
        usage = metering.Usage(model="m", key_id="k", prompt_tokens=1, completion_tokens=1, cost=C)
        settles.settle(org, f"r{i}", C, usage, NOW + timedelta(seconds=i + 1))
    return statements.ledger_page(org, 2, None)


def test_a_tampered_cursor_is_refused(org: str) -> None:
    first = _two_pages(org)
    cursor = str(first["next_cursor"])
    assert [e["balance_after"] for e in statements.ledger_page(org, 2, cursor)["data"]] == ["9", "10"]

    payload, _, mac = cursor.partition(".")
    data = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    forged = base64.urlsafe_b64encode(json.dumps({**data, "b": 1_000_000 * C}).encode()).decode().rstrip("=")
    other_org = schema.org_pk("x")  # any other org: the signature is bound to the org
    from conduix.accounts import orgs

    stranger = orgs.create_org("Other", "o@example.com", NOW).org_id
    for bad in (f"{forged}.{mac}", payload, f"{payload}.", f"{payload}.{mac[:-2]}", "\ud800", other_org):
        with pytest.raises(errors.InvalidRequest) as refused:
            statements.ledger_page(org, 2, bad)
        assert refused.value.param == "cursor"
    with pytest.raises(errors.InvalidRequest):
        statements.ledger_page(stranger, 2, cursor)


def test_cursors_need_a_signing_key(org: str, monkeypatch: pytest.MonkeyPatch) -> None:
    first = _two_pages(org)
    monkeypatch.setenv("CONDUIX_CURSOR_KEY", "short")
    config.cursor_key.cache_clear()
    try:
        with pytest.raises(errors.ConfigurationError):
            statements.ledger_page(org, 2, str(first["next_cursor"]))
    finally:
        monkeypatch.undo()
        config.cursor_key.cache_clear()
