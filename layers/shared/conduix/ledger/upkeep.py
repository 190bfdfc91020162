"""Upkeep of wallets and holds outside a request, for HoldSweeper and the operator.

The sweep index lists the wallets that may hold credits (`sweep_shard`, set by every hold
and lease; a deferred settle carries it too); a wallet leaves it once idle. The operator
frees one stuck hold by hand, on the same condition as HoldSweeper's release, with an audit entry in the
ledger that moves no money.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from botocore.exceptions import ClientError

from conduix.core.config import settings
from conduix.core.errors import Conflict, NotFound
from conduix.core.money import format_credits
from conduix.ledger import entries, holds, key_limits, settles, wallet_settings, wallets
from conduix.store.dynamo import client, error_code, transact_if, write_if
from conduix.store.items import n, s


def wallets_with_holds(shard: str) -> list[str]:
    """Org ids whose wallets may hold credits or which have deferred settles waiting, from the
    sparse sweep index (an org once, though its wallet and its deferred settles are listed)."""
    return list(dict.fromkeys(wallet_settings.orgs_in_index("by_sweep_shard", "sweep_shard", shard)))


def release_stuck_hold(org_id: str, request_id: str, now: datetime) -> tuple[holds.Hold, entries.LedgerEntry]:
    """The operator frees one hold by hand, on the sweeper's condition (the hold still open
    with its amount), so a racing settle or sweep and this call close it exactly once. The same
    transaction appends a ledger entry that moves no money (`hold_release:<request id>`): the
    audit trail of a hand-made change. Raises NotFound if no such hold is open. A hold with a
    deferred settle is settled instead, as HoldSweeper would (see `settle_pending_hold`)."""
    hold = next((h for h in holds.open_holds(org_id) if h.request_id == request_id), None)
    if hold is None:
        raise NotFound(f"No open hold '{request_id}' for org '{org_id}'.")
    marker, line = entries.ledger_items(
        org_id,
        kind="hold_release",
        key=request_id,
        amount=0,
        now=now,
        description=(
            f"Hold of {format_credits(hold.amount)} credits released by the operator "
            f"({hold.model}, key {hold.key_id}); nothing billed"
        ),
        extra={"model": s(hold.model), "key_id": s(hold.key_id), "released_nanos": n(hold.amount)},
    )
    table = settings().billing_table
    items: list[Any] = [
        # the condition of `release`, which HoldSweeper uses: the hold item still there
        holds.hold_delete(org_id, request_id, hold.amount, hold.key_budget),
        {
            "Update": {
                "TableName": table,
                "Key": wallets.wallet_key(org_id),
                "UpdateExpression": (
                    "ADD held :nh, available :h, committed :nh, cap_remaining :h, hold_count :minus"
                ),
                "ExpressionAttributeValues": {":h": n(hold.amount), ":nh": n(-hold.amount), ":minus": n(-1)},
            }
        },
        {"Put": {"TableName": table, "Item": marker, "ConditionExpression": "attribute_not_exists(pk)"}},
        {"Put": {"TableName": table, "Item": line}},
        # A hold whose usage was delivered (a deferred settle waits for it) is never released:
        # one recorded between our read and this write cancels the release.
        {
            "ConditionCheck": {
                "TableName": table,
                "Key": settles.pending_key(org_id, request_id),
                "ConditionExpression": "attribute_not_exists(pk)",
            }
        },
    ]
    if hold.key_budget:
        items.append(key_limits.budget_close(org_id, hold.key_id, hold.amount, 0))
    cancelled = transact_if(items)
    if cancelled is not None:
        if cancelled.failed(4):
            raise Conflict(
                f"Request '{request_id}' was served and its settle is pending: it will be billed, "
                "not released. Retry to settle it now.",
                code="hold_closed",
            ) from None
        raise Conflict(
            f"Hold '{request_id}' closed meanwhile (settled, swept or released); nothing was changed.",
            code="hold_closed",
        ) from None
    wallets.moved(org_id, held=-hold.amount, holds=-1)
    return hold, entries.entry_from_item(marker)


def forget_if_idle(org_id: str) -> None:
    """Drop the wallet from the sweep index once it has no holds (a later hold re-adds it)."""
    try:
        write_if(  # (refused: holds or leases are open again)
            client().update_item,
            TableName=settings().billing_table,
            Key=wallets.wallet_key(org_id),
            UpdateExpression="REMOVE sweep_shard",
            ConditionExpression=(
                "(attribute_not_exists(hold_count) OR hold_count = :zero) "
                "AND (attribute_not_exists(lease_count) OR lease_count = :zero)"
            ),
            ExpressionAttributeValues={":zero": n(0)},
        )
    except ClientError as exc:
        if not _busy(exc):
            raise


# A wallet in a transaction, or throttled: a tidy-up (not a movement of money) waits for the
# next sweep rather than stopping this sweep of every other org.
_BUSY = ("TransactionConflictException", "ProvisionedThroughputExceededException", "ThrottlingException")


def _busy(exc: ClientError) -> bool:
    return error_code(exc) in _BUSY
