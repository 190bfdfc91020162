"""One Lambda execution environment: imports a handler once, then serves invocations one at a time.

Run as `python -m conduix_local.worker <code_dir> <handler> <function_name> <timeout_s> <memory_mb>`
with the function's environment already set by the parent (conduix_local.front).

Protocol: newline-delimited JSON (json.dumps never emits a raw newline) on private copies of
the original stdin/stdout. fd 1 is pointed at stderr, because function code (Powertools
Logger, Metrics, print) writes to stdout and must not corrupt the protocol.
  worker -> parent, once:  {"type": "ready"} | {"type": "init_error", "errorType", "errorMessage"}
  parent -> worker:        {"requestId": str, "deadlineMs": epoch ms, "event": any}
  worker -> parent:        {"type": "result", "requestId", "result": any}
                         | {"type": "error", "requestId", "errorType", "errorMessage", "stackTrace"}
  or, for a streamed response (a proxy result whose body is an iterator of str, as
  conduix.web.runtime streams it on AWS), as the handler writes it:
                           {"type": "head", "requestId", "result": the result without its body}
                           {"type": "chunk", "requestId", "data": str} ...
                           {"type": "end", "requestId"} | an "error" message (mid-stream)
The worker exits on stdin EOF, after an init error, and when its parent dies.
"""

from __future__ import annotations

import decimal
import importlib
import json
import os
import sys
import threading
import time
import traceback
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

ACCOUNT_ID = "123456789012"


class LambdaContext:
    """The attributes and method the Python runtime's context object offers."""

    def __init__(self, function_name: str, memory_mb: int, region: str, deadline_ms: int) -> None:
        self.function_name = function_name
        self.function_version = "$LATEST"
        self.invoked_function_arn = f"arn:aws:lambda:{region}:{ACCOUNT_ID}:function:{function_name}"
        self.memory_limit_in_mb = str(memory_mb)  # a string in the real runtime too
        self.aws_request_id = str(uuid.uuid4())
        self.log_group_name = f"/aws/lambda/{function_name}"
        self.log_stream_name = os.environ.get("AWS_LAMBDA_LOG_STREAM_NAME", "local")
        self.identity = None
        self.client_context = None
        self._deadline_ms = deadline_ms

    def get_remaining_time_in_millis(self) -> int:
        return max(0, self._deadline_ms - int(time.time() * 1000))


def _json_default(obj: Any) -> Any:
    # The real runtime serialises Decimal (what boto3's DynamoDB layer returns) as a number.
    if isinstance(obj, decimal.Decimal):
        return int(obj) if obj == obj.to_integral_value() else float(obj)
    raise TypeError(f"Object of type {type(obj).__name__} is not JSON serializable")


def _error(exc: BaseException) -> dict[str, Any]:
    return {
        "errorType": type(exc).__name__,
        "errorMessage": str(exc),
        "stackTrace": traceback.format_exception(exc),
    }


def _watch_parent(parent_pid: int) -> None:
    # A worker mid-invocation doesn't read stdin, so it wouldn't see EOF if the front is SIGKILLed.
    while os.getppid() == parent_pid:
        time.sleep(1)
    os._exit(1)


def main(argv: list[str]) -> int:
    code_dir, handler_name, function_name, timeout_s, memory_mb = argv
    # Private copies of the protocol fds; dup() makes them non-inheritable, so a subprocess
    # the handler starts cannot write into the protocol either.
    proto_in = os.fdopen(os.dup(0), "rb")
    proto_out: BinaryIO = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]  # logs show up as they happen

    def send(msg: dict[str, Any]) -> None:
        try:
            line = json.dumps(msg, default=_json_default)
        except (TypeError, ValueError) as exc:  # the handler returned something JSON can't carry
            line = json.dumps(
                {
                    "type": "error",
                    "requestId": msg.get("requestId"),
                    "errorType": "Runtime.MarshalError",
                    "errorMessage": f"Unable to marshal response: {exc}",
                    "stackTrace": [],
                }
            )
        proto_out.write(line.encode() + b"\n")
        proto_out.flush()

    threading.Thread(target=_watch_parent, args=(os.getppid(),), daemon=True).start()
    os.chdir(code_dir)
    sys.path.insert(0, str(Path(code_dir).resolve()))
    module_name, _, attr = handler_name.rpartition(".")
    try:
        handler: Callable[[Any, LambdaContext], Any] = getattr(importlib.import_module(module_name), attr)
    except BaseException as exc:  # SystemExit in module code too: the parent must hear, not hang
        traceback.print_exc()
        err = _error(exc)
        err["errorType"] = f"Runtime.ImportModuleError: {err['errorType']}"
        send({"type": "init_error", **err})
        return 1
    send({"type": "ready"})

    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
    for raw in proto_in:
        request = json.loads(raw)
        deadline_ms = int(request.get("deadlineMs") or time.time() * 1000 + int(timeout_s) * 1000)
        context = LambdaContext(function_name, int(memory_mb), region, deadline_ms)
        os.environ["_X_AMZN_REQUEST_ID"] = context.aws_request_id
        request_id = request.get("requestId")
        try:
            result = handler(request["event"], context)
            body = result.get("body") if isinstance(result, dict) else None
            if body is not None and not isinstance(body, str | bytes | dict | list):
                _stream(send, request_id, result, body)
                continue
        except Exception as exc:
            # Like the runtime: log the failure, report it, stay warm for the next call.
            print(f"[ERROR] {type(exc).__name__}: {exc}", file=sys.stderr)
            traceback.print_exc()
            send({"type": "error", "requestId": request_id, **_error(exc)})
            continue
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
        send({"type": "result", "requestId": request_id, "result": result})
    return 0


def _stream(
    send: Callable[[dict[str, Any]], None], request_id: Any, result: dict[str, Any], body: Any
) -> None:
    """A streamed response: the head, then each piece as the handler's iterator yields it. The
    iterator is read to its end whoever listens, as the function runs on after a client leaves."""
    head = {k: v for k, v in result.items() if k != "body"}
    send({"type": "head", "requestId": request_id, "result": head})
    for piece in body:
        send({"type": "chunk", "requestId": request_id, "data": piece})
    send({"type": "end", "requestId": request_id})


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except KeyboardInterrupt:  # Ctrl-C reaches the whole process group; the front cleans up
        sys.exit(130)
