"""The REST API (v1) Lambda proxy event built from an HTTP request, and the proxy response
turned back into HTTP."""

from __future__ import annotations

import base64
import binascii
import uuid
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from conduix_local.front.base import ACCOUNT_ID, STAGE
from conduix_local.front.routing import RouteMatch


def build_proxy_event(
    *,
    method: str,
    target: str,
    headers: list[tuple[str, str]],
    body: bytes,
    match: RouteMatch,
    source_ip: str,
    request_id: str | None = None,
) -> dict[str, Any]:
    """An API Gateway REST (payload 1.0) Lambda proxy event, as the real service builds it."""
    split = urlsplit(target)
    now = datetime.now(UTC)
    request_id = request_id or str(uuid.uuid4())
    single: dict[str, str] = {}
    multi: dict[str, list[str]] = {}
    for name, value in headers:
        single[name] = value  # the last value wins in `headers`
        multi.setdefault(name, []).append(value)
    query = parse_qsl(split.query, keep_blank_values=True)
    mquery: dict[str, list[str]] = {}
    for name, value in query:
        mquery.setdefault(name, []).append(value)
    try:
        text: str | None = body.decode("utf-8") if body else None
        is_b64 = False
    except UnicodeDecodeError:
        text, is_b64 = base64.b64encode(body).decode("ascii"), True
    lower = {k.lower(): v for k, v in single.items()}
    return {
        "resource": match.route.path_template,
        "path": split.path,  # REST APIs pass the path still percent-encoded
        "httpMethod": method,
        "headers": single,
        "multiValueHeaders": multi,
        "queryStringParameters": {k: v[-1] for k, v in mquery.items()} or None,
        "multiValueQueryStringParameters": mquery or None,
        "pathParameters": dict(match.path_parameters) or None,
        "stageVariables": None,
        "requestContext": {
            "resourceId": "local",
            "resourcePath": match.route.path_template,
            "httpMethod": method,
            "extendedRequestId": request_id,
            "requestTime": now.strftime("%d/%b/%Y:%H:%M:%S +0000"),
            "path": split.path,
            "accountId": ACCOUNT_ID,
            "protocol": "HTTP/1.1",
            "stage": STAGE,
            "domainPrefix": "local",
            "requestTimeEpoch": int(now.timestamp() * 1000),
            "requestId": request_id,
            "identity": {
                "cognitoIdentityPoolId": None,
                "accountId": None,
                "cognitoIdentityId": None,
                "caller": None,
                "sourceIp": source_ip,
                "principalOrgId": None,
                "accessKey": None,
                "cognitoAuthenticationType": None,
                "cognitoAuthenticationProvider": None,
                "userArn": None,
                "userAgent": lower.get("user-agent"),
                "user": None,
            },
            "domainName": lower.get("host", "127.0.0.1"),
            "apiId": "local",
        },
        "body": text,
        "isBase64Encoded": is_b64,
    }


class MalformedResponse(ValueError):
    """The function's result is not a Lambda proxy response (API Gateway answers 502)."""


_HOP_HEADERS = {"content-length", "transfer-encoding", "connection"}


def proxy_response_to_http(result: Any) -> tuple[int, list[tuple[str, str]], bytes]:
    """(status, headers, body) from a proxy result; headers + multiValueHeaders merge as in AWS."""
    if not isinstance(result, dict):
        raise MalformedResponse(f"result is a {type(result).__name__}, not an object")
    status = result.get("statusCode")
    if not isinstance(status, int) or isinstance(status, bool) or not 100 <= status <= 599:
        raise MalformedResponse(f"statusCode must be an integer HTTP status, got {status!r}")
    single = result.get("headers") or {}
    multi = result.get("multiValueHeaders") or {}
    if not isinstance(single, dict) or not isinstance(multi, dict):
        raise MalformedResponse("headers and multiValueHeaders must be objects")
    merged: dict[str, list[str]] = {}
    for name, values in multi.items():
        if not isinstance(values, list):
            raise MalformedResponse(f"multiValueHeaders[{name!r}] must be a list")
        merged[name] = [_header_value(name, v) for v in values]
    for name, value in single.items():
        value = _header_value(name, value)
        if value not in merged.setdefault(name, []):  # a pair present in both appears once
            merged[name].append(value)
    body = result.get("body")
    if body is not None and not isinstance(body, str):
        raise MalformedResponse(f"body must be a string, got {type(body).__name__}")
    is_b64 = result.get("isBase64Encoded", False)
    if not isinstance(is_b64, bool):
        raise MalformedResponse("isBase64Encoded must be a boolean")
    try:
        payload = base64.b64decode(body or "", validate=True) if is_b64 else (body or "").encode()
    except binascii.Error as exc:
        raise MalformedResponse(f"body is not valid base64: {exc}") from exc
    headers = [(n, v) for n, vs in merged.items() if n.lower() not in _HOP_HEADERS for v in vs]
    if not any(n.lower() == "content-type" for n, _ in headers):
        headers.append(("Content-Type", "application/json"))  # API Gateway's default
    return status, headers, payload


def _header_value(name: str, value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str | int | float):
        return str(value)
    raise MalformedResponse(f"header {name!r} has a non-scalar value")


def _error_json(status: int, message: str, code: str) -> dict[str, Any]:
    kind = "api_error" if status >= 500 else "invalid_request_error"
    return {"error": {"message": message, "type": kind, "code": code}}
