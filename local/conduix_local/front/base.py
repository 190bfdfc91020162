"""Constants of the stand-ins (API Gateway and Lambda limits), the log every part writes to, and
invocation errors."""

from __future__ import annotations

import sys
import threading

ACCOUNT_ID = "123456789012"
STAGE = "local"
MAX_REQUEST_BYTES = 10 * 1024 * 1024  # API Gateway's payload limit
MAX_RESPONSE_BYTES = 6 * 1024 * 1024  # Lambda's synchronous response limit
INIT_TIMEOUT_S = 10  # Lambda's init phase limit
KILL_GRACE_S = 2.0

_log_lock = threading.Lock()


def _log(prefix: str, message: str) -> None:
    with _log_lock:
        for line in message.rstrip("\n").split("\n"):
            sys.stderr.write(f"[{prefix}] {line}\n")
        sys.stderr.flush()


class InvocationError(Exception):
    """An invocation that produced no result: handler error, crash, init failure or timeout."""

    status = 502

    def __init__(self, error_type: str, message: str, stack: list[str] | None = None) -> None:
        super().__init__(f"{error_type}: {message}")
        self.error_type = error_type
        self.message = message
        self.stack = stack or []


class InvocationTimeout(InvocationError):
    status = 504
