"""Completion: POST /v1/chat/completions, POST /v1/embeddings and GET /v1/models (wiring only).

No Powertools here (neither resolver nor Logger): three routes don't need a resolver, and
the standard library's logging with a JSON formatter (conduix.core.telemetry) writes the same
structured lines. The import time saved is cold-start time on the hottest function, and the
CPU saved is on every billed request (docs/benchmarks.md).
"""

from __future__ import annotations

import gc

# Cold start: the import makes objects that live as long as the process, so collecting
# garbage during it is wasted work (about 10 ms here); they are frozen out of later
# collections at the end of this module. Measured in docs/benchmarks.md.
gc.disable()

import time  # noqa: E402
from collections.abc import Iterator  # noqa: E402
from typing import Any  # noqa: E402

# The data-access client module first: measured, the whole import is about 25 ms faster when
# boto3 loads before the rest of the package than when it loads midway through it.
import conduix.store.dynamo  # noqa: E402, F401
from conduix.accounts.auth import authenticate  # noqa: E402
from conduix.core import telemetry  # noqa: E402
from conduix.core.errors import MethodNotAllowed, NotFound  # noqa: E402
from conduix.inference import answers, completion  # noqa: E402
from conduix.web import responses  # noqa: E402

# The shared package logs through the standard library: one JSON line per record on stdout.
telemetry.json_logging("conduix")

# The function's own timeout bounds a request (the integration streams, so API Gateway's 29 s
# limit does not apply); keep time to settle or release after the provider answers.
_SETTLE_MARGIN_SECONDS = 2.0
# /v1/embeddings stays a buffered integration, which API Gateway gives up on after 29 s.
_BUFFERED_SECONDS = 29.0
_BILLED = ("/v1/chat/completions", "/v1/embeddings")


def _route(request: responses.Request, context: Any) -> dict[str, Any]:
    if request.path == "/v1/models":
        if request.method != "GET":
            raise MethodNotAllowed(f"{request.method} is not allowed on /v1/models.", ["GET"])
        return responses.json_result(200, completion.list_models())
    if request.path not in _BILLED:
        raise NotFound(f"Unknown route: {request.method} {request.path}")
    if request.method != "POST":
        raise MethodNotAllowed(f"{request.method} is not allowed on {request.path}.", ["POST"])
    principal = None
    try:
        principal = authenticate(request.headers, "inference")
        remaining = context.get_remaining_time_in_millis() / 1000
        deadline = time.monotonic() + remaining - _SETTLE_MARGIN_SECONDS
        if request.path == "/v1/embeddings":
            from conduix.inference import embeddings  # only the embeddings route pays for the import

            serve = embeddings.serve
            deadline = min(deadline, time.monotonic() + _BUFFERED_SECONDS - _SETTLE_MARGIN_SECONDS)
        else:
            serve = completion.serve
        served = serve(
            principal, request.body, request.request_id, deadline, request.headers.get("idempotency-key")
        )
    except Exception as exc:  # one log line and outcome per completion, refused ones included
        who = {"org_id": principal.org_id, "key_id": principal.key_id} if principal else {}
        telemetry.completion_refused(exc, request_id=request.request_id, **who)
        raise
    if served.live is not None:
        events = _logged(served.live, request.request_id, principal.org_id, principal.key_id)
        return responses.stream_result(200, events, served.headers(), content_type=served.content_type)
    telemetry.completion_served(
        request_id=request.request_id, org_id=principal.org_id, key_id=principal.key_id, served=served
    )
    headers = served.headers()
    if served.replay_of is not None:
        headers["Idempotent-Replayed"] = "true"
    return responses.proxy_result(200, served.body, headers, content_type=served.content_type)


def _logged(live: answers.LiveStream, request_id: str, org_id: str, key_id: str) -> Iterator[str]:
    """A live stream's events; its log line and metrics once it has ended, billed or not."""
    try:
        yield from live
    finally:
        who = {"request_id": request_id, "org_id": org_id, "key_id": key_id}
        if live.served is not None:
            telemetry.completion_served(served=live.served, **who)
        else:
            telemetry.completion_refused(live.failure or RuntimeError("stream abandoned"), **who)


def lambda_handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    request = responses.parse_event(event)
    telemetry.invocation(context, request_id=request.request_id)
    return responses.answer(lambda: _route(request, context), request.request_id)


gc.enable()
gc.freeze()
