"""The Powertools REST resolver, set up the same way for every JSON API function: domain
errors through the one map in `conduix.web`, JSON 404 and 405, no stack traces out.

Request bodies and query strings are validated by the resolver itself (`enable_validation`)
against the pydantic models the handlers' parameters name (`conduix.core.bodies`, after our
hostile-input-safe JSON parser, and `conduix.api.queries`); its errors become our 400
`invalid_request`, never Powertools' 422."""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Callable
from typing import Any

from aws_lambda_powertools.event_handler import APIGatewayRestResolver, Response, content_types
from aws_lambda_powertools.event_handler.exceptions import NotFoundError
from aws_lambda_powertools.event_handler.openapi.exceptions import RequestValidationError

from conduix.core import errors, validation
from conduix.web import responses

log = logging.getLogger(__name__)


def _response(status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> Response[str]:
    return Response(
        status_code=status,
        content_type=content_types.APPLICATION_JSON,
        body=json.dumps(body),
        headers=headers,
    )


def _json_object(text: str) -> dict[str, Any]:
    return validation.parse_json_object(text)


def _domain_error(exc: errors.ConduixError) -> Response[str]:
    status, body, extra = responses.error_body(exc)
    return _response(status, body, extra)


def _bug(exc: Exception) -> Response[str]:
    log.exception("unhandled error")
    return _response(500, responses.internal_error_body())


def _field_of_query_model(problem: dict[str, Any]) -> dict[str, Any]:
    """A query model's errors (`conduix.api.queries`) are located under the handler's argument
    (query, <argument>, limit): the client named only the parameter (query, limit)."""
    loc = tuple(problem.get("loc") or ())
    if len(loc) > 2 and loc[0] == "query" and isinstance(loc[2], str):
        return {**problem, "loc": (loc[0], *loc[2:])}
    return problem


def _invalid(exc: RequestValidationError) -> Response[str]:
    problems = [_field_of_query_model(p) for p in exc.errors()]
    return _domain_error(validation.invalid_request_from(problems))


def resolver() -> APIGatewayRestResolver:
    app = APIGatewayRestResolver(enable_validation=True, json_body_deserializer=_json_object)

    def not_found(_: NotFoundError) -> Response[str]:
        method, path = app.current_event.http_method.upper(), app.current_event.path
        # Powertools has no 405 of its own; find the methods that this path does answer to.
        allowed = sorted(
            {route.method for route in app._static_routes + app._dynamic_routes if route.rule.match(path)}
        )
        if allowed:
            return _domain_error(errors.MethodNotAllowed(f"{method} is not allowed on {path}.", allowed))
        return _domain_error(errors.NotFound(f"Unknown route: {method} {path}"))

    app.exception_handler(errors.ConduixError)(_domain_error)
    app.exception_handler(RequestValidationError)(_invalid)  # its content-type refusal included
    app.exception_handler(Exception)(_bug)
    app.not_found(not_found)
    return app


def headers(app: APIGatewayRestResolver) -> dict[str, str]:
    """The current request's headers, names lower-cased."""
    return {k.lower(): v for k, v in (app.current_event.headers or {}).items() if v is not None}


def idempotency_key(app: APIGatewayRestResolver) -> str | None:
    """The request's Idempotency-Key header, checked (see validation.idempotency_key)."""
    return validation.idempotency_key(headers(app).get("idempotency-key"))


def answers(model: type[Any], status: int = 200, description: str = "OK") -> dict[int, Any]:
    """A route's `responses`: its JSON answer is `model` (a pydantic model, so the document
    shows the real shape)."""
    return {status: {"description": description, "content": {"application/json": {"model": model}}}}


def resolve(app: APIGatewayRestResolver, event: dict[str, Any], context: Any) -> dict[str, Any]:
    """Resolve the event; an empty body is the empty object (so a body whose fields are all
    optional may be left out), and a base64 body is text first (what is not UTF-8 is no JSON)."""
    body = event.get("body")
    if event.get("isBase64Encoded") and body:
        try:
            body = base64.b64decode(body).decode("utf-8")
        except (ValueError, UnicodeDecodeError):
            return responses.error_result(
                errors.InvalidRequest("The request body is not valid JSON.", code="invalid_json")
            )
    event = {**event, "body": body or "{}", "isBase64Encoded": False}
    return app.resolve(event, context)


def guarded(
    app: APIGatewayRestResolver, event: dict[str, Any], context: Any, check: Callable[[dict[str, str]], None]
) -> dict[str, Any]:
    """Resolve the event only once `check` accepts its headers (for whole-function guards)."""
    request_headers = {k.lower(): v for k, v in (event.get("headers") or {}).items() if v is not None}
    try:
        check(request_headers)
    except errors.ConduixError as exc:
        return responses.error_result(exc)
    return resolve(app, event, context)
