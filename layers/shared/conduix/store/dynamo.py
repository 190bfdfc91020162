"""The DynamoDB client and the few helpers the data-access modules share.

Only data-access modules (wallets, orgs, cache, ...) import this, an import contract checks
it; nothing above them sees boto3 (conduix.store.items reads and builds the items they return).
The client is created on first use and reused while the function is warm.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import boto3
from botocore.config import Config
from botocore.exceptions import (
    ClientError,
    ConnectionClosedError,
    ConnectTimeoutError,
    EndpointConnectionError,
    ReadTimeoutError,
)

from conduix.core.clock import Seconds
from conduix.core.errors import ConfigurationError, ServiceBusy
from conduix.store.items import Item

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient

T = TypeVar("T")

_client: DynamoDBClient | None = None

# Codes after which a retry (with backoff and jitter) may succeed.
RETRYABLE_REASONS = frozenset(
    {"TransactionConflict", "ThrottlingError", "ProvisionedThroughputExceeded", "RequestLimitExceeded"}
)
_RETRYABLE_ERRORS = frozenset(
    {
        "TransactionConflictException",
        "ThrottlingException",
        "ProvisionedThroughputExceededException",
        "RequestLimitExceeded",
        "TransactionInProgressException",
    }
)


def client() -> DynamoDBClient:
    global _client
    if _client is None:
        _client = boto3.client(
            "dynamodb",
            config=Config(
                connect_timeout=2,
                read_timeout=5,
                # botocore retries throttling itself; cancelled transactions are retried by `retrying`.
                retries={"mode": "standard", "max_attempts": 3},
                # botocore's client-side check walks every attribute value of every request: a
                # fifth of a billed request's CPU (docs/benchmarks.md). DynamoDB validates each
                # request itself (a ValidationException, as from the check), and ours are built
                # by code, not from user input.
                parameter_validation=False,
            ),
        )
        wait_out_transactions(_client)
    return _client


_CONFLICT_ATTEMPTS = 6


def _transaction_in_flight(attempts: int, response: Any = None, **_: Any) -> float | None:
    if response is None or attempts >= _CONFLICT_ATTEMPTS:
        return None  # no answer, or enough: botocore's own policy decides
    if response[1].get("Error", {}).get("Code") != "TransactionConflictException":
        return None
    return random.uniform(0, min(1.0, 0.02 * 2**attempts))


def wait_out_transactions(dynamodb: Any) -> None:
    """DynamoDB refuses a single-item write to an item that a transaction in flight holds
    (TransactionConflictException), and botocore does not retry it. Nothing was written, so
    sending it again after a short, jittered wait is always safe: every plain write (a wallet
    setting beside a top-up's transaction, say) waits the transaction out instead of failing."""
    dynamodb.meta.events.register_first("needs-retry.dynamodb", _transaction_in_flight)


def reset_client() -> None:
    """Forget the client (tests point the functions at a fresh moto server)."""
    global _client
    _client = None


def error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def cancellation_reasons(exc: ClientError) -> list[dict[str, Any]]:
    reasons: list[dict[str, Any]] = exc.response.get("CancellationReasons") or []  # type: ignore[assignment]
    return reasons


@dataclass(frozen=True)
class Refused:
    """A conditional write whose condition did not hold: nothing was written. `old` is the item
    as it stood, when the write asked for it (ReturnValuesOnConditionCheckFailure=ALL_OLD)."""

    old: Item


def write_if(write: Callable[..., object], /, *args: Any, **request: Any) -> Refused | None:
    """Run one conditional single-item write, `write(*args, **request)` (`client().update_item`
    and its request, or `retrying` and a write): None when it landed, Refused when its condition
    failed (a normal outcome: somebody else got there first). Any other error propagates."""
    try:
        write(*args, **request)
    except ClientError as exc:
        if error_code(exc) != "ConditionalCheckFailedException":
            raise
        return Refused(dict(exc.response.get("Item") or {}))  # type: ignore[call-overload]
    return None


@dataclass(frozen=True)
class Cancelled:
    """A transaction one of whose conditions did not hold: nothing was written. `reasons` are
    DynamoDB's, one per action, in order (with the item as it stood where the action asked for
    it, ReturnValuesOnConditionCheckFailure=ALL_OLD)."""

    reasons: list[dict[str, Any]]
    error: ClientError  # to re-raise a refusal the caller did not expect

    def failed(self, index: int) -> bool:
        return self.reasons[index].get("Code") == "ConditionalCheckFailed"

    def old(self, index: int) -> Item:
        return dict(self.reasons[index].get("Item") or {})


def transact_if(actions: list[Any], *, attempts: int = 6, token: str | None = None) -> Cancelled | None:
    """Run one conditional transaction through `retrying`: None when it landed, Cancelled when
    a condition failed (a normal outcome, as with `write_if`). Any other error propagates.
    `token`: the ClientRequestToken that makes a retry within 10 minutes idempotent."""
    request: dict[str, Any] = {"TransactItems": actions}
    if token is not None:
        request["ClientRequestToken"] = token
    try:
        retrying(lambda: client().transact_write_items(**request), attempts=attempts)
    except ClientError as exc:
        reasons = cancellation_reasons(exc)
        if (
            error_code(exc) != "TransactionCanceledException"
            or len(reasons) != len(actions)
            or not any(r.get("Code") == "ConditionalCheckFailed" for r in reasons)
        ):
            raise
        return Cancelled(reasons, exc)
    return None


def is_retryable(exc: ClientError) -> bool:
    code = error_code(exc)
    if code in _RETRYABLE_ERRORS:
        return True
    if code == "TransactionCanceledException":
        codes = {r.get("Code") for r in cancellation_reasons(exc)}
        return bool(codes & RETRYABLE_REASONS) and "ConditionalCheckFailed" not in codes
    return False


# A write may have happened when these are raised: retrying is safe only because every
# write retried here is idempotent by its condition.
_AMBIGUOUS = (ConnectionClosedError, ReadTimeoutError, EndpointConnectionError, ConnectTimeoutError)


def retrying(operation: Callable[[], T], attempts: int = 6, base_delay: Seconds = 0.02) -> T:
    """Run a write, retrying contention, throttling and lost answers with capped exponential
    backoff and full jitter. Every write retried here is idempotent by its conditions, so a
    retry after an ambiguous failure can never move money twice."""
    for attempt in range(attempts):
        try:
            return operation()
        except _AMBIGUOUS:
            if attempt == attempts - 1:
                raise ServiceBusy("The billing store did not answer; please retry the request.") from None
            time.sleep(random.uniform(0, min(1.0, base_delay * 2**attempt)))
            continue
        except ClientError as exc:
            if error_code(exc) == "ResourceNotFoundException":
                raise ConfigurationError(f"DynamoDB table not found: {exc}") from None
            if not is_retryable(exc):
                raise
            if attempt == attempts - 1:
                raise ServiceBusy("The billing store is busy; please retry the request.") from exc
            time.sleep(random.uniform(0, min(1.0, base_delay * 2**attempt)))
    raise AssertionError("unreachable")
