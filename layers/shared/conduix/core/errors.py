"""Domain errors. They say what went wrong in the domain's words and carry no HTTP:
`conduix.web.responses.error_body` is the one place that maps them to status codes and OpenAI-style bodies.
"""

from __future__ import annotations


class ConduixError(Exception):
    """Base of every error the product raises on purpose."""

    code = "internal_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidRequest(ConduixError):
    code = "invalid_request"

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.param = param
        if code:
            self.code = code


class PayloadTooLarge(InvalidRequest):
    code = "payload_too_large"


class NotFound(ConduixError):
    code = "not_found"


class ModelNotFound(NotFound):
    code = "model_not_found"


class MethodNotAllowed(ConduixError):
    code = "method_not_allowed"

    def __init__(self, message: str, allowed: list[str]) -> None:
        super().__init__(message)
        self.allowed = allowed


class Unauthenticated(ConduixError):
    """No credential, or one we don't know (or that was revoked)."""

    code = "invalid_api_key"


class PermissionDenied(ConduixError):
    """A known credential that may not do this (wrong scope, org key on an operator route)."""

    code = "insufficient_permissions"


class Conflict(ConduixError):
    code = "conflict"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        if code:
            self.code = code


class IdempotencyConflict(Conflict):
    """The same idempotency key arrived with a different payload."""

    code = "idempotency_key_reused"


class RequestInProgress(Conflict):
    """The first request with this idempotency key has not answered yet."""

    code = "request_in_progress"

    def __init__(self, message: str, *, retry_after_seconds: int) -> None:
        super().__init__(message)
        self.retry_after_seconds = retry_after_seconds


class InsufficientCredits(ConduixError):
    code = "insufficient_credits"

    def __init__(
        self,
        message: str,
        *,
        available_nanos: int,
        already_paused: bool = False,
        reload_can_start: bool = False,
        balance_nanos: int | None = None,
    ) -> None:
        super().__init__(message)
        self.available_nanos = available_nanos
        self.balance_nanos = balance_nanos  # the settled balance, as every completion reports it
        # What the refused write saw, so the follow-up writes are made only when they can succeed.
        self.already_paused = already_paused
        self.reload_can_start = reload_can_start


class SpendCapExceeded(ConduixError):
    code = "spend_cap_exceeded"

    def __init__(self, message: str, *, limit_nanos: int, committed_nanos: int, period: str) -> None:
        super().__init__(message)
        self.limit_nanos = limit_nanos
        self.committed_nanos = committed_nanos
        self.period = period


class KeySpendLimitExceeded(ConduixError):
    """The API key reached its own spend limit; the org's other keys go on."""

    code = "key_spend_limit_exceeded"

    def __init__(self, message: str, *, limit_nanos: int, period: str, resets_at: str | None) -> None:
        super().__init__(message)
        self.limit_nanos = limit_nanos
        self.period = period
        self.resets_at = resets_at


class RateLimited(ConduixError):
    code = "rate_limit_exceeded"

    def __init__(self, message: str, *, retry_after_seconds: int) -> None:
        super().__init__(message)
        self.retry_after_seconds = retry_after_seconds


class UpstreamError(ConduixError):
    """The model provider failed us; nothing is billed."""

    code = "upstream_error"


class UpstreamUnavailable(UpstreamError):
    code = "upstream_unavailable"


class UpstreamTimeout(UpstreamError):
    code = "upstream_timeout"


class UpstreamRejected(UpstreamError):
    """The provider refused the request itself (4xx): the client's request, not our outage."""

    code = "upstream_rejected_request"


class InvalidSignature(ConduixError):
    """A webhook whose signature is missing, wrong or stale."""

    code = "invalid_signature"


class ServiceBusy(ConduixError):
    """Our own store stayed contended or throttled after retries; safe for the client to retry."""

    code = "service_busy"


class ConfigurationError(ConduixError):
    """The deployment is misconfigured (a missing setting, an invalid catalog)."""

    code = "configuration_error"
