"""Auto-reload settings and charge results on the wallet item (data access).

The due flag itself (`wallets.mark_reload_due` / `end_reload_episode`) lives with the money
writes that raise and clear it.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from conduix import clock
from conduix.config import settings
from conduix.dynamo import client, n, s
from conduix.wallets import conditional_update, orgs_in_index, wallet_key

MAX_FAILURES = 3
# Only the first run to report on an episode notes it (and sends its email).
_FIRST_NOTE_OF_EPISODE = (
    "reload_episode = :ep AND (attribute_not_exists(reload_noted_episode) OR reload_noted_episode <> :ep)"
)


def configure(org_id: str, *, enabled: bool, threshold: int, amount: int) -> None:
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
    """Note a successful charge for `episode`; False if another run noted it first."""
    return conditional_update(
        org_id,
        UpdateExpression=(
            "SET reload_failures = :zero, reload_last_status = :ok, reload_last_message = :msg, "
            "reload_last_at = :at, reload_noted_episode = :ep"
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
