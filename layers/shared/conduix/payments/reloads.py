"""Auto-reload settings and charge results on the wallet item (data access).

The due flag itself (`wallet_settings.mark_reload_due` / `end_reload_episode`) lives with the money
writes that raise and clear it.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from conduix.core import clock
from conduix.core.config import settings
from conduix.ledger.wallet_settings import orgs_in_index
from conduix.ledger.wallets import conditional_update, wallet_key
from conduix.store.dynamo import client, write_if
from conduix.store.items import as_int, as_str, n, s

MAX_FAILURES = 3
# Only the first run to report on an episode notes it (and sends its email).
_FIRST_NOTE_OF_EPISODE = (
    "reload_episode = :ep AND (attribute_not_exists(reload_noted_episode) OR reload_noted_episode <> :ep)"
)


def save_settings(org_id: str, *, enabled: bool, threshold: int, amount: int) -> None:
    """Save the settings; turning it on (again) forgets past failures."""
    update = "SET reload_enabled = :enabled, reload_threshold = :threshold, reload_amount = :amount"
    values: dict[str, Any] = {":enabled": {"BOOL": enabled}, ":threshold": n(threshold), ":amount": n(amount)}
    if enabled:
        update += ", reload_failures = :zero"
        values[":zero"] = n(0)
    else:
        update += " REMOVE reload_due_shard"
    client().update_item(
        TableName=settings().billing_table,
        Key=wallet_key(org_id),
        UpdateExpression=update,
        ConditionExpression="attribute_exists(pk)",
        ExpressionAttributeValues=values,
    )


def due_orgs(shard: str) -> list[str]:
    """Orgs with an auto-reload episode waiting for a charge (a sparse index)."""
    return orgs_in_index("by_reload_due", "reload_due_shard", shard)


def record_success(org_id: str, episode: int, message: str, now: datetime) -> bool:
    """Note a successful charge for `episode` and end the episode, whatever the balance is
    now; False if another run noted it first. (If the balance is still below the threshold,
    the caller starts a new episode, with a new idempotency key.)"""
    return conditional_update(
        org_id,
        UpdateExpression=(
            "SET reload_failures = :zero, reload_last_status = :ok, reload_last_message = :msg, "
            "reload_last_at = :at, reload_noted_episode = :ep REMOVE reload_due_shard"
        ),
        ConditionExpression=_FIRST_NOTE_OF_EPISODE,
        ExpressionAttributeValues={
            ":zero": n(0),
            ":ok": s("succeeded"),
            ":msg": s(message),
            ":at": s(clock.iso(now)),
            ":ep": n(episode),
        },
    )


def record_failure(org_id: str, episode: int, message: str, now: datetime) -> tuple[bool, bool]:
    """Note a failed charge for `episode` and close the episode, so the next one retries
    with a fresh idempotency key. Returns (noted by this call, auto-reload now turned off).
    After MAX_FAILURES failures in a row auto-reload turns itself off."""
    noted = conditional_update(
        org_id,
        UpdateExpression=(
            "SET reload_last_status = :failed, reload_last_message = :msg, reload_last_at = :at, "
            "reload_noted_episode = :ep ADD reload_failures :one REMOVE reload_due_shard"
        ),
        ConditionExpression=_FIRST_NOTE_OF_EPISODE,
        ExpressionAttributeValues={
            ":failed": s("failed"),
            ":msg": s(message),
            ":at": s(clock.iso(now)),
            ":ep": n(episode),
            ":one": n(1),
        },
    )
    if not noted:
        return False, False
    disabled = conditional_update(
        org_id,
        UpdateExpression="SET reload_enabled = :false",
        ConditionExpression="reload_enabled = :true AND reload_failures >= :max",
        ExpressionAttributeValues={
            ":false": {"BOOL": False},
            ":true": {"BOOL": True},
            ":max": n(MAX_FAILURES),
        },
    )
    return True, disabled


CLAIMED, ALREADY_CLAIMED, STALE, LIMIT_REACHED = "claimed", "already_claimed", "stale", "limit_reached"


def claim_charge(org_id: str, episode: int, day: str, limit: int) -> str:
    """Count the charge of `episode` against the org's charges of this UTC `day`, once per
    episode, refusing it past `limit`. CLAIMED or ALREADY_CLAIMED (a rerun of this episode)
    mean: charge; STALE: the episode is over; LIMIT_REACHED: not today."""
    same_day = (
        "SET reload_charge_episode = :ep ADD reload_day_charges :one",
        "reload_day = :day AND reload_day_charges < :max",
    )
    new_day = (
        "SET reload_charge_episode = :ep, reload_day = :day, reload_day_charges = :one",
        "(attribute_not_exists(reload_day) OR reload_day <> :day)",
    )
    for update, condition in (same_day, new_day, same_day):
        refused = write_if(
            client().update_item,
            TableName=settings().billing_table,
            Key=wallet_key(org_id),
            UpdateExpression=update,
            ConditionExpression=(
                "reload_episode = :ep AND (attribute_not_exists(reload_charge_episode) "
                f"OR reload_charge_episode <> :ep) AND {condition}"
            ),
            ExpressionAttributeValues={
                ":ep": n(episode),
                ":day": s(day),
                ":one": n(1),
                **({":max": n(limit)} if ":max" in condition else {}),
            },
            ReturnValuesOnConditionCheckFailure="ALL_OLD",
        )
        if refused:
            old = refused.old
            if as_int(old, "reload_episode") != episode:
                return STALE
            if "reload_charge_episode" in old and as_int(old, "reload_charge_episode") == episode:
                return ALREADY_CLAIMED
            if as_str(old, "reload_day") == day and as_int(old, "reload_day_charges") >= limit:
                return LIMIT_REACHED
            continue  # the day turned, or another episode's claim raced: try the other form
        return CLAIMED
    return STALE


def note_paused(org_id: str, day: str, message: str, now: datetime) -> bool:
    """Auto-reload reached its daily limit: shown on the billing view; True only for the first
    note of the day, so the notice goes out once."""
    return conditional_update(
        org_id,
        UpdateExpression=(
            "SET reload_paused_day = :day, reload_last_status = :paused, reload_last_message = :msg, "
            "reload_last_at = :at"
        ),
        ConditionExpression="attribute_not_exists(reload_paused_day) OR reload_paused_day <> :day",
        ExpressionAttributeValues={
            ":day": s(day),
            ":paused": s("paused"),
            ":msg": s(message),
            ":at": s(clock.iso(now)),
        },
    )


def turn_off(org_id: str, message: str, now: datetime) -> bool:
    """Turn auto-reload off (after a dispute, or for invoice mode: the card must not be charged
    until the customer acts), noting why for the billing view. True if it was on."""
    return conditional_update(
        org_id,
        UpdateExpression=(
            "SET reload_enabled = :false, reload_last_status = :off, reload_last_message = :msg, "
            "reload_last_at = :at REMOVE reload_due_shard"
        ),
        ConditionExpression="reload_enabled = :true",
        ExpressionAttributeValues={
            ":false": {"BOOL": False},
            ":true": {"BOOL": True},
            ":off": s("turned_off"),
            ":msg": s(message),
            ":at": s(clock.iso(now)),
        },
    )
