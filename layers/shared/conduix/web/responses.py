"""HTTP at the edge: the one map from domain errors to OpenAI-style responses, and the
small helpers that turn API Gateway (REST, proxy) events into requests and back.

The Completion function uses these directly (its two routes don't justify a resolver's import
cost); the other API functions use Powertools' resolver and call `error_body` from its
exception handler, so every function answers errors the same way.
"""

from __future__ import annotations

import base64
import json
import logging
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from conduix.core import config, errors
from conduix.core.money import format_credits

log = logging.getLogger(__name__)

# (status, OpenAI error type) per domain error; the most specific class wins.
_STATUS: list[tuple[type[errors.ConduixError], int, str]] = [
    (errors.PayloadTooLarge, 413, "invalid_request_error"),
    (errors.InvalidRequest, 400, "invalid_request_error"),
    (errors.ModelNotFound, 404, "invalid_request_error"),
    (errors.NotFound, 404, "invalid_request_error"),
    (errors.MethodNotAllowed, 405, "invalid_request_error"),
    (errors.Unauthenticated, 401, "authentication_error"),
    (errors.PermissionDenied, 403, "permission_error"),
    (errors.Conflict, 409, "invalid_request_error"),
    (errors.InvalidSignature, 400, "invalid_request_error"),
    (errors.InsufficientCredits, 402, "insufficient_quota"),
    (errors.SpendCapExceeded, 402, "insufficient_quota"),
    (errors.KeySpendLimitExceeded, 402, "insufficient_quota"),
    (errors.RateLimited, 429, "requests"),
    (errors.UpstreamRejected, 400, "invalid_request_error"),
    (errors.UpstreamTimeout, 504, "api_error"),
    (errors.UpstreamUnavailable, 503, "api_error"),
    (errors.UpstreamError, 502, "api_error"),
    (errors.ServiceBusy, 503, "api_error"),
    (errors.ConfigurationError, 500, "api_error"),
]


def error_body(exc: errors.ConduixError) -> tuple[int, dict[str, Any], dict[str, str]]:
    """Status, OpenAI-style body and extra headers for a domain error."""
    status, err_type = 500, "api_error"
    for cls, cls_status, cls_type in _STATUS:
        if isinstance(exc, cls):
            status, err_type = cls_status, cls_type
            break
    inner: dict[str, Any] = {"message": exc.message, "type": err_type, "code": exc.code}
    if isinstance(exc, errors.InvalidRequest) and exc.param:
        inner["param"] = exc.param
    headers: dict[str, str] = {}
    if isinstance(exc, errors.MethodNotAllowed):
        headers["Allow"] = ", ".join(exc.allowed)
    if isinstance(exc, errors.RateLimited | errors.RequestInProgress):
        headers["Retry-After"] = str(exc.retry_after_seconds)
    if isinstance(exc, errors.InsufficientCredits) and exc.balance_nanos is not None:
        headers["x-conduix-balance"] = format_credits(exc.balance_nanos)
    if isinstance(exc, errors.SpendCapExceeded):
        inner["limit"] = format_credits(exc.limit_nanos)
        inner["period"] = exc.period
    if isinstance(exc, errors.KeySpendLimitExceeded):
        inner["limit"] = format_credits(exc.limit_nanos)
        inner["period"] = exc.period
        inner["resets_at"] = exc.resets_at
    return status, {"error": inner}, headers


def internal_error_body() -> dict[str, Any]:
    """What a client sees for a bug of ours: no detail, no stack trace."""
    return {
        "error": {
            "message": "Internal error. It has been logged.",
            "type": "api_error",
            "code": "internal_error",
        }
    }


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    headers: Mapping[str, str]  # lower-cased names
    query: Mapping[str, str]
    body: bytes
    request_id: str
    path_params: Mapping[str, str] = field(default_factory=dict)


def parse_event(event: Mapping[str, Any]) -> Request:
    """An API Gateway REST proxy event as a Request (header names lower-cased)."""
    config.learn_public_url(event)
    raw_body = event.get("body") or ""
    body = base64.b64decode(raw_body) if event.get("isBase64Encoded") else raw_body.encode("utf-8")
    context = event.get("requestContext") or {}
    return Request(
        method=(event.get("httpMethod") or "GET").upper(),
        path=event.get("path") or "/",
        headers={k.lower(): v for k, v in (event.get("headers") or {}).items() if v is not None},
        query=dict(event.get("queryStringParameters") or {}),
        body=body,
        request_id=str(context.get("requestId") or uuid.uuid4()),
        path_params=dict(event.get("pathParameters") or {}),
    )


def proxy_result(
    status: int, body: str, headers: Mapping[str, str] | None = None, content_type: str = "application/json"
) -> dict[str, Any]:
    """A Lambda proxy integration result."""
    out_headers = {"Content-Type": content_type, **(headers or {})}
    return {"statusCode": status, "headers": out_headers, "body": body, "isBase64Encoded": False}


def stream_result(
    status: int,
    events: Iterable[str],
    headers: Mapping[str, str] | None = None,
    content_type: str = "text/event-stream",
) -> dict[str, Any]:
    """A streamed proxy result: its body is an iterator, which the runtime (conduix.web.runtime on
    AWS, the local worker) sends piece by piece after the status and headers."""
    out_headers = {"Content-Type": content_type, "Cache-Control": "no-cache", **(headers or {})}
    return {"statusCode": status, "headers": out_headers, "body": events, "isBase64Encoded": False}


def json_result(status: int, payload: Any, headers: Mapping[str, str] | None = None) -> dict[str, Any]:
    return proxy_result(status, json.dumps(payload, separators=(",", ":")), headers)


def error_result(exc: errors.ConduixError, headers: Mapping[str, str] | None = None) -> dict[str, Any]:
    status, body, extra = error_body(exc)
    return json_result(status, body, {**extra, **(headers or {})})


def answer(handler: Callable[[], dict[str, Any]], request_id: str) -> dict[str, Any]:
    """Run a route; map domain errors to their response and anything else to a bare 500.
    Every response carries the request id, so a client can quote it."""
    headers = {"x-request-id": request_id}
    try:
        result = handler()
    except errors.ConduixError as exc:
        log.info("refused", extra={"code": exc.code, "request_id": request_id})
        return error_result(exc, headers)
    except Exception:
        log.exception("unhandled error", extra={"request_id": request_id})
        return json_result(500, internal_error_body(), headers)
    result.setdefault("headers", {}).update(headers)
    return result
