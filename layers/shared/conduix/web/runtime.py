"""A Lambda Runtime API client that streams responses, for functions behind an API Gateway
integration in ResponseTransferMode STREAM (the Completion function).

The managed Python runtime returns a handler's result whole. This client replaces it (through
AWS_LAMBDA_EXEC_WRAPPER, see functions/completion/stream-runtime) and posts every response in
Lambda's streaming mode, in the format API Gateway reads from InvokeWithResponseStream: the
proxy result's status and headers as JSON, eight NUL bytes, then the body. A body that is an
iterator of str is sent piece by piece as the handler yields it; the iterator is read to its
end even if nobody listens any more, as the Completion function's billing needs. A failure
mid-stream is reported in the Runtime API's error trailers.

The same contract (a proxy result whose body is an iterator) is what the local stack's worker
(local/conduix_local/worker.py) streams to the local front.
"""

from __future__ import annotations

import base64
import http.client
import importlib
import json
import os
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from typing import Any

from conduix.core.config import lambda_function

CONTENT_TYPE = "application/vnd.awslambda.http-integration-response"
DELIMITER = b"\0" * 8
_VERSION = "2018-06-01"


class Context:
    """The attributes and method of the managed runtime's context object."""

    def __init__(self, request_id: str, deadline_ms: int, function_arn: str) -> None:
        function = lambda_function()
        self.function_name = function.name
        self.function_version = function.version
        self.memory_limit_in_mb = function.memory_mb
        self.log_group_name = function.log_group
        self.log_stream_name = function.log_stream
        self.invoked_function_arn = function_arn
        self.aws_request_id = request_id
        self.identity = None
        self.client_context = None
        self._deadline_ms = deadline_ms

    def get_remaining_time_in_millis(self) -> int:
        return max(0, self._deadline_ms - int(time.time() * 1000))


def prelude(result: dict[str, Any]) -> bytes:
    """The metadata API Gateway reads before the body, and the delimiter after it."""
    head = {k: result[k] for k in ("statusCode", "headers", "multiValueHeaders", "cookies") if k in result}
    return json.dumps(head, separators=(",", ":")).encode() + DELIMITER


def body_pieces(result: Any) -> Iterator[bytes]:
    """A proxy result's body as bytes, piece by piece when it is an iterator."""
    body = result.get("body") if isinstance(result, dict) else None
    if body is None:
        return
    if isinstance(body, str):
        yield base64.b64decode(body) if result.get("isBase64Encoded") else body.encode()
        return
    for piece in body:
        yield piece.encode() if isinstance(piece, str) else bytes(piece)


def _error(exc: BaseException) -> dict[str, Any]:
    return {
        "errorType": type(exc).__name__,
        "errorMessage": str(exc),
        "stackTrace": traceback.format_exception(exc),
    }


def _chunk(data: bytes) -> bytes:
    return f"{len(data):X}\r\n".encode() + data + b"\r\n"


def respond(conn: http.client.HTTPConnection, request_id: str, result: Any) -> None:
    """POST one response in streaming mode: the prelude at once, then each piece."""
    path = f"/{_VERSION}/runtime/invocation/{request_id}/response"
    conn.putrequest("POST", path, skip_accept_encoding=True)
    conn.putheader("Lambda-Runtime-Function-Response-Mode", "streaming")
    conn.putheader("Content-Type", CONTENT_TYPE)
    conn.putheader("Transfer-Encoding", "chunked")
    conn.putheader("Trailer", "Lambda-Runtime-Function-Error-Type, Lambda-Runtime-Function-Error-Body")
    conn.endheaders()
    conn.send(_chunk(prelude(result if isinstance(result, dict) else {"statusCode": 200})))
    failure: dict[str, Any] | None = None
    try:
        for piece in body_pieces(result):
            if piece:
                conn.send(_chunk(piece))
    except Exception as exc:
        traceback.print_exc()
        failure = _error(exc)
    if failure is None:
        conn.send(b"0\r\n\r\n")
    else:
        body = base64.b64encode(json.dumps(failure).encode()).decode()
        conn.send(
            b"0\r\nLambda-Runtime-Function-Error-Type: "
            + failure["errorType"].encode()
            + b"\r\nLambda-Runtime-Function-Error-Body: "
            + body.encode()
            + b"\r\n\r\n"
        )
    conn.getresponse().read()


def _post(conn: http.client.HTTPConnection, path: str, payload: dict[str, Any]) -> None:
    conn.request(
        "POST", f"/{_VERSION}/runtime/{path}", json.dumps(payload), {"Content-Type": "application/json"}
    )
    conn.getresponse().read()


def serve_next(conn: http.client.HTTPConnection, handler: Callable[[Any, Context], Any]) -> None:
    """Take the next invocation, run the handler, stream its response."""
    conn.request("GET", f"/{_VERSION}/runtime/invocation/next")
    response = conn.getresponse()
    event = json.loads(response.read())
    request_id = response.getheader("Lambda-Runtime-Aws-Request-Id") or ""
    trace = response.getheader("Lambda-Runtime-Trace-Id")
    if trace:  # (written, for the X-Ray SDK: the one variable this package sets)
        os.environ["_X_AMZN_TRACE_ID"] = trace
    else:
        os.environ.pop("_X_AMZN_TRACE_ID", None)
    context = Context(
        request_id,
        int(response.getheader("Lambda-Runtime-Deadline-Ms") or 0),
        response.getheader("Lambda-Runtime-Invoked-Function-Arn") or "",
    )
    try:
        result = handler(event, context)
    except Exception as exc:
        traceback.print_exc()
        _post(conn, f"invocation/{request_id}/error", _error(exc))
        return
    respond(conn, request_id, result)


def main() -> None:  # pragma: no cover - runs only inside Lambda
    conn = http.client.HTTPConnection(lambda_function().runtime_api)
    function = lambda_function()
    sys.path.insert(0, function.task_root)
    module_name, _, attr = function.handler.rpartition(".")
    try:
        handler = getattr(importlib.import_module(module_name), attr)
    except Exception as exc:
        traceback.print_exc()
        _post(conn, "init/error", _error(exc))
        raise SystemExit(1) from None
    while True:
        serve_next(conn, handler)


if __name__ == "__main__":  # pragma: no cover
    main()
