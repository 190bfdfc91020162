"""Idempotent completions: the first answer to an org's `Idempotency-Key`, kept 24 hours.

One item per org and key, outside the org's partition (its answers must not weigh on the
wallet's partition). A request claims the key with one conditional write; its answer is
written in the same transaction that bills it (or records it as pending), so a key is never
left billed without its answer. A claim whose request died before billing lapses after its
lease (at least LEASE_SECONDS, and longer than its request may run), and the key can be used
again.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import logging
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

from conduix.core.config import settings
from conduix.core.errors import Conflict, IdempotencyConflict, InvalidRequest, RequestInProgress
from conduix.store import schema
from conduix.store.dynamo import client, retrying, write_if
from conduix.store.items import Item, as_int, as_str, n, s

KEEP_SECONDS = 24 * 3600
LEASE_SECONDS = 60  # the least; a request that may run longer asks for more
MAX_KEY_LENGTH = 255
# An item holds at most 400 KB; a larger answer is billed once but cannot be replayed.
_MAX_STORED_BYTES = 350_000


@dataclass(frozen=True)
class Claim:
    org_id: str
    key: str
    request_id: str


@dataclass(frozen=True)
class Answer:
    """What the client was told, as replayed to a retry."""

    request_id: str
    body: str
    content_type: str
    cache_status: str
    cost: int  # nano-credits
    balance: int  # nano-credits


def check_key(value: str) -> str:
    if not value or len(value) > MAX_KEY_LENGTH or not all(" " <= c <= "~" for c in value):
        raise InvalidRequest(
            f"The Idempotency-Key header must be 1 to {MAX_KEY_LENGTH} printable ASCII characters.",
            param="Idempotency-Key",
        )
    return value


def fingerprint(body: dict[str, Any]) -> str:
    """The request as parsed, so formatting and key order do not make it another request."""
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canonical.encode()).hexdigest()


def _key(org_id: str, key: str) -> dict[str, Any]:
    digest = hashlib.sha256(key.encode()).hexdigest()
    return schema.idempotent_answer_key(org_id, digest)


def claim(
    org_id: str,
    key: str,
    body: dict[str, Any],
    request_id: str,
    now: datetime,
    lease_seconds: int = LEASE_SECONDS,
) -> Answer | None:
    """Take the key for this request (None), or return the first answer to it.

    Raises IdempotencyConflict when the key came with another body, and RequestInProgress
    while the first request is still running. The lease (how long a request that died keeps
    its key) is at least as long as the request may run."""
    at = int(now.timestamp())
    mark = fingerprint(body)
    refused = write_if(
        lambda: retrying(
            lambda: client().put_item(
                TableName=settings().billing_table,
                Item={
                    **_key(org_id, key),
                    "state": s("claimed"),
                    "fingerprint": s(mark),
                    "request_id": s(request_id),
                    "lease_until": n(at + max(LEASE_SECONDS, lease_seconds)),
                    "expires_at": n(at + KEEP_SECONDS),  # the table's TTL attribute
                },
                ConditionExpression=(
                    "attribute_not_exists(pk) OR expires_at < :now "
                    "OR (#state = :claimed AND lease_until < :now) OR request_id = :rid"
                ),
                ExpressionAttributeNames={"#state": "state"},
                ExpressionAttributeValues={":now": n(at), ":claimed": s("claimed"), ":rid": s(request_id)},
                ReturnValuesOnConditionCheckFailure="ALL_OLD",
            )
        )
    )
    return _first_answer(refused.old, mark, at) if refused else None


def _first_answer(old: Item, mark: str, at: int) -> Answer:
    if as_str(old, "fingerprint") != mark:
        raise IdempotencyConflict(
            "This Idempotency-Key was already used with a different request body. "
            "Use a new key for a new request."
        )
    if as_str(old, "state") == "claimed":
        raise RequestInProgress(
            "A request with this Idempotency-Key is still in progress; retry after it has answered.",
            retry_after_seconds=max(1, min(5, as_int(old, "lease_until") - at)),
        )
    kept = old.get("answer", {}).get("S")
    if kept is None:
        raise Conflict(
            "The request with this Idempotency-Key was served and billed, but its answer was too "
            "large to keep for a replay.",
            code="idempotency_answer_unavailable",
        )
    stored = json.loads(zlib.decompress(base64.b64decode(kept)))
    return Answer(request_id=as_str(old, "request_id"), **stored)


def answer_action(owner: Claim, answer: Answer) -> dict[str, Any]:
    """The write that keeps the answer, as a transaction action (joined to the settle)."""
    kept = {k: v for k, v in dataclasses.asdict(answer).items() if k != "request_id"}
    # Compressed, as text: answers compress well, and a string keeps every tool that dumps the
    # table as JSON working.
    blob = base64.b64encode(zlib.compress(json.dumps(kept).encode())).decode()
    values: dict[str, Any] = {":done": s("done")}
    update = "SET #state = :done"
    if len(blob) <= _MAX_STORED_BYTES:
        update += ", answer = :answer"
        values[":answer"] = s(blob)
    return {
        "Update": {
            "TableName": settings().billing_table,
            "Key": _key(owner.org_id, owner.key),
            "UpdateExpression": update,
            "ExpressionAttributeNames": {"#state": "state"},
            "ExpressionAttributeValues": values,
        }
    }


def keep(owner: Claim, answer: Answer) -> None:
    """Keep an answer that was not billed in a transaction (a free cache hit)."""
    action = answer_action(owner, answer)["Update"]
    retrying(lambda: client().update_item(**action))


def abandon(owner: Claim) -> None:
    """Give the key back after a request that was refused or failed unbilled, so a retry with
    it runs again. An answered key is never given back."""
    write_if(  # (refused: answered meanwhile, or another request's claim)
        lambda: retrying(
            lambda: client().delete_item(
                TableName=settings().billing_table,
                Key=_key(owner.org_id, owner.key),
                ConditionExpression="#state = :claimed AND request_id = :rid",
                ExpressionAttributeNames={"#state": "state"},
                ExpressionAttributeValues={":claimed": s("claimed"), ":rid": s(owner.request_id)},
            )
        )
    )


_T = TypeVar("_T")
_log = logging.getLogger(__name__)


def serve_claimed(claim: Claim, serve: Callable[[], _T]) -> _T:
    """Serve a request that holds `claim`; if it fails, nothing was billed, so the key is given
    back and a retry with it runs again."""
    try:
        return serve()
    except BaseException:
        try:
            abandon(claim)
        except Exception:
            _log.warning("could not give back an idempotency key", exc_info=True)
        raise
