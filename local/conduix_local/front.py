"""Local stand-in for API Gateway (REST API, Lambda proxy), Lambda and EventBridge schedules.

Each function runs in a pool of `conduix_local.worker` subprocesses (warm reuse, cold starts,
timeouts kill the worker), fed REST v1 proxy events built from real HTTP requests.
"""

from __future__ import annotations

import atexit
import base64
import binascii
import calendar
import contextlib
import functools
import hmac
import json
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import IO, Any
from urllib.parse import parse_qsl, unquote, urlsplit

from conduix_local.functions import FunctionSpec, Route, ScheduleSpec

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


# ------------------------------------------------------------------------------------------------ errors


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


# ------------------------------------------------------------------------------------------------ schedules

_MONTHS = {m.upper(): i for i, m in enumerate(calendar.month_abbr) if m}
_DAYS = {d: i for i, d in enumerate(("SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"), start=1)}
_RATE_RE = re.compile(r"^rate\(\s*(\d+)\s+(minute|minutes|hour|hours|day|days)\s*\)$")
_UNIT_S = {"minute": 60, "hour": 3600, "day": 86400}


def parse_rate(expression: str) -> timedelta:
    """`rate(N unit)`; like EventBridge, 1 takes the singular unit and N > 1 the plural."""
    m = _RATE_RE.match(expression.strip())
    if not m:
        raise ValueError(f"not a rate expression: {expression!r}")
    n, unit = int(m.group(1)), m.group(2)
    if n < 1 or (n == 1) == unit.endswith("s"):
        raise ValueError(f"invalid rate expression: {expression!r}")
    return timedelta(seconds=n * _UNIT_S[unit.rstrip("s")])


def _cron_field(text: str, lo: int, hi: int, names: dict[str, int] | None = None) -> frozenset[int]:
    def num(token: str) -> int:
        if names and token.upper() in names:
            return names[token.upper()]
        if not token.isdigit():
            raise ValueError(f"unsupported cron token {token!r}")
        return int(token)

    values: set[int] = set()
    for part in text.split(","):
        base, _, step_s = part.partition("/")
        step = int(step_s) if step_s.isdigit() else 0 if step_s else 1
        if step < 1:
            raise ValueError(f"bad step in cron field {text!r}")
        if base == "*":
            start, end = lo, hi
        elif "-" in base:
            a, b = base.split("-", 1)
            start, end = num(a), num(b)
        else:
            start = num(base)
            end = hi if step_s else start  # "5/15" runs from 5 to the end of the range
        if not lo <= start <= end <= hi:
            raise ValueError(f"cron field {text!r} out of range {lo}-{hi}")
        values.update(range(start, end + 1, step))
    return frozenset(values)


@dataclass(frozen=True)
class CronExpr:
    """AWS 6-field cron (minutes hours day-of-month month day-of-week year), in UTC."""

    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int] | None  # None: "?"
    months: frozenset[int]
    weekdays: frozenset[int] | None  # 1 = SUN ... 7 = SAT, as in AWS
    years: frozenset[int]

    @classmethod
    def parse(cls, expression: str) -> CronExpr:
        m = re.match(r"^cron\((.*)\)$", expression.strip())
        fields = m.group(1).split() if m else []
        if len(fields) != 6:
            raise ValueError(f"not a 6-field cron expression: {expression!r}")
        mi, h, dom, mon, dow, yr = fields
        if (dom == "?") == (dow == "?"):  # EventBridge wants exactly one of them to be "?"
            raise ValueError(f"cron needs '?' in exactly one of day-of-month/day-of-week: {expression!r}")
        return cls(
            _cron_field(mi, 0, 59),
            _cron_field(h, 0, 23),
            None if dom == "?" else _cron_field(dom, 1, 31),
            _cron_field(mon, 1, 12, _MONTHS),
            None if dow == "?" else _cron_field(dow, 1, 7, _DAYS),
            _cron_field(yr, 1970, 2199),
        )

    def _day_ok(self, t: datetime) -> bool:
        if self.days is not None:
            return t.day in self.days
        assert self.weekdays is not None
        return (t.weekday() + 1) % 7 + 1 in self.weekdays

    def next_after(self, after: datetime) -> datetime | None:
        """The first matching minute strictly after `after`; None when the years run out."""
        t = _utc(after).replace(second=0, microsecond=0) + timedelta(minutes=1)
        while t.year <= 2199:
            # Jump by the coarsest field that fails, so a search spans at most a few thousand steps.
            if t.year not in self.years:
                t = datetime(t.year + 1, 1, 1, tzinfo=UTC)
            elif t.month not in self.months:
                t = datetime(t.year + (t.month == 12), t.month % 12 + 1, 1, tzinfo=UTC)
            elif not self._day_ok(t):
                t = t.replace(hour=0, minute=0) + timedelta(days=1)
            elif t.hour not in self.hours:
                t = t.replace(minute=0) + timedelta(hours=1)
            elif t.minute not in self.minutes:
                t += timedelta(minutes=1)
            else:
                return t
        return None


def _utc(t: datetime) -> datetime:
    return t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC)


def next_fire(expression: str, after: datetime, anchor: datetime | None = None) -> datetime | None:
    """When a schedule fires next, strictly after `after`.

    A rate counts from `anchor` (when the rule was created; defaults to `after`), a cron from
    the clock.
    """
    if expression.strip().startswith("rate("):
        period = parse_rate(expression)
        start = _utc(anchor or after)
        after = _utc(after)
        if after < start:
            return start + period
        return start + period * ((after - start) // period + 1)
    return CronExpr.parse(expression).next_after(after)


def last_fire(expression: str, after: datetime, until: datetime, anchor: datetime) -> datetime | None:
    """The latest time in (after, until] a schedule fires at; None when it does not fire."""
    if expression.strip().startswith("rate("):
        period = parse_rate(expression)
        until, anchor = _utc(until), _utc(anchor)
        if until < anchor + period:
            return None
        last = anchor + period * ((until - anchor) // period)
        return last if last > _utc(after) else None
    cron = CronExpr.parse(expression)
    found, t = None, _utc(after)
    for _ in range(100_000):  # a year of minutes is more than any test clock move needs
        t_next = cron.next_after(t)
        if t_next is None or t_next > _utc(until):
            return found
        found = t = t_next
    return found


def scheduled_event(rule_arn: str, region: str, at: datetime) -> dict[str, Any]:
    """The event EventBridge sends a scheduled rule's target."""
    return {
        "version": "0",
        "id": str(uuid.uuid4()),
        "detail-type": "Scheduled Event",
        "source": "aws.events",
        "account": ACCOUNT_ID,
        "time": _utc(at).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "region": region,
        "resources": [rule_arn],
        "detail": {},
    }


# ------------------------------------------------------------------------------------------------ routing


@dataclass(frozen=True)
class RouteMatch:
    function: str
    route: Route
    path_parameters: dict[str, str]


class Router:
    """API Gateway resource matching: literal segments beat {param}, which beats {proxy+}."""

    def __init__(self, functions: Iterable[FunctionSpec]) -> None:
        self._routes: list[tuple[str, Route, list[str]]] = []
        seen: dict[tuple[str, str], str] = {}
        for spec in functions:
            for route in spec.routes:
                key = (route.method, route.path_template)
                if key in seen:
                    raise ValueError(f"route {key} declared by both {seen[key]} and {spec.logical_id}")
                seen[key] = spec.logical_id
                self._routes.append((spec.logical_id, route, _segments(route.path_template)))

    def resolve(self, method: str, raw_path: str) -> tuple[RouteMatch | None, list[str]]:
        """(match, []) on success; (None, allowed methods) for a 405; (None, []) for a 404."""
        raw_segs = _segments(raw_path)
        best: tuple[tuple[int, ...], str] | None = None
        candidates: list[tuple[str, Route, dict[str, str]]] = []
        for fn, route, tmpl in self._routes:
            hit = _match_segments(tmpl, raw_segs)
            if hit is None:
                continue
            rank = (hit[0], route.path_template)
            if best is None or rank[0] < best[0]:
                best, candidates = rank, []
            if rank == best:
                candidates.append((fn, route, hit[1]))
        for wanted in (method, "ANY"):
            for fn, route, params in candidates:
                if route.method == wanted:
                    return RouteMatch(fn, route, params), []
        return None, sorted({r.method for _, r, _ in candidates})


def _segments(path: str) -> list[str]:
    # API Gateway routes "/v1/models/" like "/v1/models".
    path = path.rstrip("/") if path != "/" else path
    return path.split("/")[1:] if path not in ("", "/") else []


def _match_segments(tmpl: list[str], raw: list[str]) -> tuple[tuple[int, ...], dict[str, str]] | None:
    rank: list[int] = []
    params: dict[str, str] = {}
    for i, t in enumerate(tmpl):
        if t.startswith("{") and t.endswith("+}"):
            if i >= len(raw):  # a greedy parameter needs at least one segment
                return None
            params[t[1:-2]] = "/".join(unquote(s) for s in raw[i:])
            rank.append(2)
            return tuple(rank), params
        if i >= len(raw):
            return None
        if t.startswith("{") and t.endswith("}"):
            params[t[1:-1]] = unquote(raw[i])
            rank.append(1)
        elif t == unquote(raw[i]):
            rank.append(0)
        else:
            return None
    return (tuple(rank), params) if len(tmpl) == len(raw) else None


# ------------------------------------------------------------------------------------------------ events


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


# ------------------------------------------------------------------------------------------------ workers


_EOF = object()
# Failures after which a worker's state is unknown: it is killed rather than reused.
_WORKER_FAULTS = ("Sandbox.Timedout", "Runtime.ExitError", "Runtime.InvalidResponse")


class _Worker:
    """The parent's handle on one worker subprocess."""

    def __init__(self, spec: FunctionSpec, env: dict[str, str]) -> None:
        self.spec = spec
        self._messages: queue.Queue[Any] = queue.Queue()
        if spec.python_path is not None:
            # The deployment package alone: no site-packages (-S -s), no script folder (-P).
            env = {**env, "PYTHONPATH": os.pathsep.join(str(p) for p in spec.python_path)}
            env.pop("PYTHONHOME", None)
            harness = [sys.executable, "-S", "-s", "-P", str(Path(__file__).with_name("worker.py"))]
        else:  # test fixtures without a build: the front's own interpreter and packages
            harness = [sys.executable, "-m", "conduix_local.worker"]
        self.proc = subprocess.Popen(
            [
                *harness,
                str(spec.code_dir),
                spec.handler,
                spec.logical_id,
                str(spec.timeout_s),
                str(spec.memory_mb),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=spec.code_dir,
            env=env,
            start_new_session=True,  # its own process group, so stop() also reaps what the handler spawns
        )
        assert self.proc.stdout is not None and self.proc.stderr is not None
        self._threads = [
            threading.Thread(target=self._read_protocol, args=(self.proc.stdout,), daemon=True),
            threading.Thread(target=self._forward_logs, args=(self.proc.stderr,), daemon=True),
        ]
        for t in self._threads:
            t.start()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _read_protocol(self, stream: IO[bytes]) -> None:
        for line in stream:
            try:
                msg = json.loads(line)
                msg["_bytes"] = len(line)
            except (ValueError, TypeError):
                msg = {"type": "malformed", "line": line[:200].decode("utf-8", "replace")}
            self._messages.put(msg)
        self._messages.put(_EOF)

    def _forward_logs(self, stream: IO[bytes]) -> None:
        for line in stream:
            _log(self.spec.logical_id, line.decode("utf-8", "replace"))

    def _next_message(self, timeout: float) -> dict[str, Any]:
        msg = self._messages.get(timeout=timeout)  # queue.Empty propagates to the caller
        if msg is _EOF:
            code = self.proc.wait()
            raise InvocationError("Runtime.ExitError", f"worker exited (code {code})")
        if msg.get("type") == "malformed":
            raise InvocationError("Runtime.InvalidResponse", f"worker sent non-JSON: {msg['line']!r}")
        return msg  # type: ignore[no-any-return]

    def wait_ready(self) -> None:
        timeout = max(INIT_TIMEOUT_S, self.spec.timeout_s)
        try:
            msg = self._next_message(timeout)
        except queue.Empty:
            raise InvocationTimeout("Runtime.InitTimeout", f"init took over {timeout} s") from None
        if msg.get("type") == "init_error":
            raise InvocationError(msg["errorType"], msg["errorMessage"], msg.get("stackTrace"))
        if msg.get("type") != "ready":
            raise InvocationError("Runtime.InvalidResponse", f"unexpected init message {msg.get('type')!r}")

    def invoke(self, event: Any, sink: StreamSink | None = None) -> Any:
        """The handler's result. A streamed response goes to `sink` as it arrives (the return
        value is then None), or without a sink is gathered into one result, as Invoke does."""
        request_id = str(uuid.uuid4())
        timeout = float(self.spec.timeout_s)
        deadline = time.monotonic() + timeout
        line = json.dumps(
            {"requestId": request_id, "deadlineMs": int((time.time() + timeout) * 1000), "event": event}
        )
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(line.encode() + b"\n")
            self.proc.stdin.flush()
            msg = self._next_message(timeout)
        except (BrokenPipeError, OSError) as exc:
            raise InvocationError("Runtime.ExitError", f"worker is gone: {exc}") from None
        except queue.Empty:
            raise InvocationTimeout(
                "Sandbox.Timedout",
                f"RequestId: {request_id} Error: Task timed out after {timeout:.2f} seconds",
            ) from None
        if msg.get("requestId") != request_id:
            raise InvocationError("Runtime.InvalidResponse", "worker answered another request")
        if msg.get("type") == "error":
            raise InvocationError(msg["errorType"], msg["errorMessage"], msg.get("stackTrace"))
        if msg.get("type") == "head":
            return self._stream(request_id, msg.get("result"), deadline, sink)
        if msg["_bytes"] > MAX_RESPONSE_BYTES:
            raise InvocationError("Function.ResponseSizeTooLarge", "response exceeds Lambda's 6 MB limit")
        return msg.get("result")

    def _stream(self, request_id: str, head: Any, deadline: float, sink: StreamSink | None) -> Any:
        """Forward a streamed response piece by piece, within the function's timeout."""
        pieces: list[str] = []
        if sink is not None:
            sink.head(head)
        while True:
            try:
                msg = self._next_message(max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise InvocationTimeout(
                    "Sandbox.Timedout",
                    f"RequestId: {request_id} Error: Task timed out after {self.spec.timeout_s:.2f} seconds",
                ) from None
            kind = msg.get("type")
            if msg.get("requestId") != request_id:
                raise InvocationError("Runtime.InvalidResponse", "worker answered another request")
            if kind == "chunk":
                if sink is not None:
                    sink.chunk(str(msg.get("data", "")))
                else:
                    pieces.append(str(msg.get("data", "")))
            elif kind == "end":
                return None if sink is not None else {**head, "body": "".join(pieces)}
            elif kind == "error":
                raise InvocationError(msg["errorType"], msg["errorMessage"], msg.get("stackTrace"))
            else:
                raise InvocationError("Runtime.InvalidResponse", f"unexpected stream message {kind!r}")

    def signal(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, sig)

    def reap(self) -> None:
        """Wait for the process (SIGKILL after a grace period) and its reader threads."""
        try:
            self.proc.wait(KILL_GRACE_S)
        except subprocess.TimeoutExpired:
            self.signal(signal.SIGKILL)
            self.proc.wait()
        self.signal(signal.SIGKILL)  # leftovers the handler started in the worker's group
        for t in self._threads:
            t.join(1.0)
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()

    def kill(self) -> None:
        self.signal(signal.SIGKILL)
        self.reap()


class _Pool:
    """Up to `size` warm workers for one function, started on demand (a request finding none
    idle starts one, as Lambda starts an execution environment); callers queue at `size`."""

    def __init__(self, spec: FunctionSpec, env: Callable[[], dict[str, str]], size: int) -> None:
        self.spec, self._env, self._size = spec, env, size
        self._cond = threading.Condition()
        self._idle: list[_Worker] = []
        self._all: set[_Worker] = set()
        self._starting = 0
        self._closed = False

    def pids(self) -> list[int]:
        with self._cond:
            return sorted(w.pid for w in self._all)

    def acquire(self) -> _Worker:
        dead: list[_Worker] = []
        try:
            with self._cond:
                while True:
                    if self._closed:
                        raise InvocationError("Runtime.Unavailable", "the local stack is stopping")
                    while self._idle:
                        idle = self._idle.pop()  # the most recently used one: the warmest
                        if idle.proc.poll() is None:
                            return idle
                        self._all.discard(idle)  # died while idle (killed from outside)
                        dead.append(idle)
                    if len(self._all) + self._starting < self._size:
                        self._starting += 1
                        break
                    self._cond.wait()
        finally:
            for w in dead:
                w.reap()
        worker: _Worker | None = None
        try:
            try:
                worker = _Worker(self.spec, self._env())
            finally:
                with self._cond:
                    self._starting -= 1  # stop() waits for this count: no process may escape close()
                    closed = self._closed
                    if worker is not None and closed:
                        worker.signal(signal.SIGKILL)  # spawned during close(); reaped below
                    elif worker is not None:
                        self._all.add(worker)  # visible to close() before the slow init
                    self._cond.notify_all()
            if closed:
                raise InvocationError("Runtime.Unavailable", "the local stack is stopping")
            worker.wait_ready()
            return worker
        except BaseException as exc:
            if worker is not None:
                self.release(worker, healthy=False)
            if isinstance(exc, OSError):  # Popen: a missing CodeUri folder, say
                raise InvocationError("Runtime.InvalidEntrypoint", str(exc)) from None
            raise

    def release(self, worker: _Worker, healthy: bool) -> None:
        with self._cond:
            if healthy and not self._closed and worker.proc.poll() is None:
                self._idle.append(worker)
                self._cond.notify()
                return
            self._all.discard(worker)
            if worker in self._idle:
                self._idle.remove(worker)
            self._cond.notify()
        worker.kill()

    def wait_no_starts(self, timeout: float) -> None:
        with self._cond:
            self._cond.wait_for(lambda: self._starting == 0, timeout)

    def close(self) -> list[_Worker]:
        """Refuse new work and SIGTERM every worker; the caller reaps them."""
        with self._cond:
            self._closed = True
            workers = list(self._all)
            self._all.clear()
            self._idle.clear()
            self._cond.notify_all()
        for w in workers:
            w.signal(signal.SIGTERM)
        return workers


# ------------------------------------------------------------------------------------------------ HTTP


class StreamSink:
    """Where a route in ResponseTransferMode STREAM sends a streamed response: the head, then
    each piece as the function writes it (HTTP/1.1 chunked). A client that hangs up stops the
    writes, not the function, which runs to its end as it does behind API Gateway."""

    def __init__(self, handler: BaseHTTPRequestHandler, extra_headers: list[tuple[str, str]]) -> None:
        self._handler = handler
        self._extra = extra_headers
        self.started = False
        self.gone = False

    def head(self, result: Any) -> None:
        status, headers, _ = proxy_response_to_http({**(result or {}), "body": ""})
        handler = self._handler
        # Each piece goes out as written: no Nagle wait for the previous write's ACK.
        with contextlib.suppress(OSError):
            handler.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.started = True
        try:
            handler.send_response(status)
            for name, value in [*headers, *self._extra]:
                handler.send_header(name, value)
            handler.send_header("Transfer-Encoding", "chunked")
            handler.end_headers()
        except OSError:  # gone before the head: the function still runs to its end
            self.gone = True
            handler.close_connection = True
            return
        self._write(b"")

    def chunk(self, data: str) -> None:
        if data:
            raw = data.encode()
            self._write(f"{len(raw):X}\r\n".encode() + raw + b"\r\n")

    def end(self) -> None:
        self._write(b"0\r\n\r\n")

    def abort(self) -> None:
        """The function failed mid-stream: the body ends without its last chunk, as in AWS."""
        self._handler.close_connection = True

    def _write(self, raw: bytes) -> None:
        if self.gone:
            return
        try:
            if raw:
                self._handler.wfile.write(raw)
            self._handler.wfile.flush()
        except OSError:  # BrokenPipe, ConnectionReset: the client hung up
            self.gone = True
            self._handler.close_connection = True


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    # socketserver's default backlog of 5 refuses connections under a burst of clients.
    request_queue_size = 128
    front: Front


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as SDK clients expect
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        _log("front", format % args)

    def _send(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _send_json(self, status: int, payload: Any, headers: list[tuple[str, str]] | None = None) -> None:
        self._send(
            status, [("Content-Type", "application/json"), *(headers or [])], json.dumps(payload).encode()
        )

    def _read_body(self) -> bytes | None:
        """The request body, or None after answering 400/413."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks: list[bytes] = []
            total = 0
            while True:
                size_line = self.rfile.readline(1024)
                try:
                    size = int(size_line.split(b";")[0].strip(), 16)
                except ValueError:
                    self._reject(400, "Malformed chunked body.", "bad_request")
                    return None
                if size == 0:
                    while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return b"".join(chunks)
                total += size
                if total > MAX_REQUEST_BYTES:
                    self._reject(413, "Request body too large.", "payload_too_large")
                    return None
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            self._reject(400, "Invalid Content-Length.", "bad_request")
            return None
        if length > MAX_REQUEST_BYTES:
            if length <= 4 * MAX_REQUEST_BYTES:  # drain, so the client gets to read the 413
                while length > 0 and (chunk := self.rfile.read(min(1 << 20, length))):
                    length -= len(chunk)
            self._reject(413, "Request body too large.", "payload_too_large")
            return None
        return self.rfile.read(length) if length > 0 else b""

    def _reject(self, status: int, message: str, code: str) -> None:
        self.close_connection = True
        self._send_json(status, _error_json(status, message, code))

    def _dispatch(self) -> None:
        try:
            self._handle()
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        except Exception:
            _log("front", f"internal error on {self.command} {self.path}:\n{traceback.format_exc()}")
            self.close_connection = True
            self._send_json(500, _error_json(500, "The local front failed.", "internal_error"))

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = _dispatch

    def _handle(self) -> None:
        front = self.server.front
        body = self._read_body()
        if body is None:
            return
        path = urlsplit(self.path).path
        if path.startswith("/_local/"):
            self._local(path, body)
            return
        match, allowed = front.router.resolve(self.command, path)
        target, staged = self.path, False
        if match is None and front.stage and path.startswith(f"/{front.stage}/"):
            # The stage URL (ApiUrl): API Gateway strips the stage before routing.
            target = self.path[len(front.stage) + 1 :]
            match, allowed = front.router.resolve(self.command, urlsplit(target).path)
            staged = True
        if match is None:
            status, code = (405, "method_not_allowed") if allowed else (404, "not_found")
            headers = [("Allow", ", ".join(allowed))] if allowed else []
            self._send_json(
                status, _error_json(status, f"Unknown route: {self.command} {path}", code), headers
            )
            return
        request_id = str(uuid.uuid4())
        event = build_proxy_event(
            method=self.command,
            target=target,
            headers=list(self.headers.items()),
            body=body,
            match=match,
            source_ip=self.client_address[0],
            request_id=request_id,
        )
        if staged:
            event["requestContext"].update(stage=front.stage, path=path)
        trace = [("x-amzn-RequestId", request_id)]
        sink = StreamSink(self, trace) if match.route.stream else None
        try:
            result = front.invoke(match.function, event, sink)
            if sink is not None and sink.started:
                sink.end()
                return
            status, headers, payload = proxy_response_to_http(result)
        except (InvocationError, MalformedResponse) as exc:
            if sink is not None and sink.started:
                _log(match.function, f"stream ended early: {exc}")
                sink.abort()
                return
            if isinstance(exc, MalformedResponse):
                _log(match.function, f"Malformed Lambda proxy response: {exc}")
                self._send_json(
                    502, _error_json(502, "Malformed Lambda proxy response.", "bad_gateway"), trace
                )
                return
            code = "gateway_timeout" if exc.status == 504 else "bad_gateway"
            message = "The function timed out." if exc.status == 504 else "The function failed to answer."
            self._send_json(exc.status, _error_json(exc.status, message, code), trace)
            return
        self._send(status, [*headers, *trace], payload)

    def _local(self, path: str, body: bytes) -> None:
        """The operator's test hooks: /_local/run/<function>, /_local/clock, /_local/stack."""
        front = self.server.front
        auth = self.headers.get("Authorization", "")
        routes = {"/_local/clock": ("GET", "POST"), "/_local/stack": ("GET",)}
        fn = path.removeprefix("/_local/run/")
        allowed = routes.get(path) if fn == path else ("POST",) if fn and "/" not in fn else None
        if allowed is None:
            self._send_json(404, _error_json(404, f"Unknown route: {self.command} {path}", "not_found"))
        elif self.command not in allowed:
            self._send_json(
                405,
                _error_json(405, f"Use {' or '.join(allowed)}.", "method_not_allowed"),
                [("Allow", ", ".join(allowed))],
            )
        elif not hmac.compare_digest(auth.encode(), f"Bearer {front.operator_key}".encode()):
            self._send_json(401, _error_json(401, "Operator key required.", "unauthorized"))
        elif path == "/_local/stack":
            self._send_json(200, front.stack_map or {"api": front.url})
        elif path == "/_local/clock":
            self._clock(body)
        elif front.function_id(fn) is None:
            self._send_json(404, _error_json(404, f"Unknown function: {fn}", "not_found"))
        else:
            self._run(front.function_id(fn) or fn, body)

    def _clock(self, body: bytes) -> None:
        front = self.server.front
        if self.command == "GET":
            self._send_json(200, {"now": iso_utc(front.now())})
            return
        try:
            wanted = json.loads(body or b"{}").get("now")
            target = datetime.fromisoformat(str(wanted).replace("Z", "+00:00"))
            if target.tzinfo is None:
                raise ValueError("no time zone")
        except (ValueError, AttributeError):
            self._send_json(
                400, _error_json(400, 'Body must be {"now": "<ISO 8601 time with a zone>"}.', "bad_request")
            )
            return
        try:
            fired = front.move_clock(target)
        except ClockError as exc:
            self._send_json(409, _error_json(409, str(exc), "clock_conflict"))
            return
        self._send_json(200, {"now": iso_utc(front.now()), "fired": fired})

    def _run(self, fn: str, body: bytes) -> None:
        front = self.server.front
        event: Any = scheduled_event(front.rule_arn(fn, "Manual"), front.region, front.now())
        if body.strip():
            try:
                event = json.loads(body)
            except ValueError:
                self._send_json(400, _error_json(400, "Body must be JSON.", "bad_request"))
                return
        try:
            result = front.invoke(fn, event)
        except InvocationError as exc:
            error = {"errorType": exc.error_type, "errorMessage": exc.message}
            self._send_json(exc.status, {"function": fn, "error": error})
            return
        self._send_json(200, {"function": fn, "result": result})


def iso_utc(moment: datetime) -> str:
    return _utc(moment).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class ClockError(Exception):
    """The stack's clock only moves forward."""


# ------------------------------------------------------------------------------------------------ front


class Front:
    """API Gateway + Lambda + EventBridge schedules for a list of functions, on 127.0.0.1."""

    def __init__(
        self,
        functions: list[FunctionSpec],
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        operator_key: str,
        max_workers_per_function: int = 64,
        extra_env: dict[str, str] | None = None,
        schedules_enabled: bool = True,
        clock_file: Path | None = None,
        stage: str | None = None,
    ) -> None:
        if host not in ("127.0.0.1", "localhost"):
            raise ValueError("the local front binds to 127.0.0.1 only")
        if not operator_key:
            raise ValueError("operator_key must not be empty")
        if max_workers_per_function < 1:
            raise ValueError("max_workers_per_function must be at least 1")
        self.functions = {spec.logical_id: spec for spec in functions}
        self.router = Router(functions)
        for spec in functions:
            for sched in spec.schedules:  # a bad expression fails here, not later in the scheduler thread
                try:
                    next_fire(sched.expression, datetime.now(UTC))
                except ValueError as exc:
                    raise ValueError(f"{spec.logical_id}: schedule {sched.name}: {exc}") from None
        self.operator_key = operator_key
        self.schedules_enabled = schedules_enabled
        self._host, self._port = "127.0.0.1", port
        self._extra_env = dict(extra_env or {})
        self.region = (
            self._extra_env.get("AWS_REGION")
            or self._extra_env.get("AWS_DEFAULT_REGION")
            or os.environ.get("AWS_REGION")
            or os.environ.get("AWS_DEFAULT_REGION")
            or "us-east-1"
        )
        self._pools = {
            spec.logical_id: _Pool(spec, functools.partial(self._worker_env, spec), max_workers_per_function)
            for spec in functions
        }
        self._server: _Server | None = None
        self._threads: list[threading.Thread] = []
        self._fired: list[threading.Thread] = []
        self._fired_lock = threading.Lock()
        self._stopping = threading.Event()
        # The test clock: stack time = real time + offset, shared with the workers through
        # clock_file (conduix.clock reads it). It only moves forward.
        self.clock_file = clock_file
        self._offset = timedelta(0)
        self._clock_lock = threading.Lock()
        self._replan = threading.Event()
        self.clock_hooks: list[Callable[[datetime], None]] = []  # e.g. the local Stripe's advance_to
        self.stage = stage  # also served under /<stage>/..., as API Gateway's stage URL
        self.stack_map: dict[str, Any] | None = None  # what GET /_local/stack answers
        self._schedule_anchor = datetime.now(UTC)  # when the rules were "created": rates count from it

    # -------------------------------------------------------------------------------- lifecycle

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("the front is not started")
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> Front:
        if self._server is not None:
            raise RuntimeError("already started")
        self._server = _Server((self._host, self._port), _Handler)
        self._server.front = self
        self._threads.append(
            threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
        )
        if self.schedules_enabled and any(s.schedules for s in self.functions.values()):
            self._threads.append(threading.Thread(target=self._run_schedules, daemon=True))
        for t in self._threads:
            t.start()
        atexit.register(self.stop)  # a caller that forgets stop() must not leave workers behind
        return self

    def stop(self) -> None:
        """Stop serving and scheduling, then terminate every worker (SIGKILL after a grace)."""
        if self._stopping.is_set():
            return
        self._stopping.set()
        atexit.unregister(self.stop)
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        workers = [w for pool in self._pools.values() for w in pool.close()]
        # Reaped side by side: each may take its kill grace, and a stop must not take their sum.
        reapers = [threading.Thread(target=w.reap, daemon=True) for w in workers]
        for t in reapers:
            t.start()
        for t in reapers:
            t.join(KILL_GRACE_S + 5.0)
        for pool in self._pools.values():
            pool.wait_no_starts(KILL_GRACE_S * 2)  # a worker spawned during close() is killed by its starter
        for t in self._threads:
            t.join(5.0)
        with self._fired_lock:
            fired, self._fired = self._fired, []
        for t in fired:
            t.join(5.0)
        self._threads.clear()

    def __enter__(self) -> Front:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # -------------------------------------------------------------------------------- invocation

    def invoke(self, logical_id: str, event: Any, sink: StreamSink | None = None) -> Any:
        """Invoke a function synchronously; the handler's return value, or InvocationError.
        A streamed response goes to `sink` when given (see _Worker.invoke)."""
        pool = self._pools[logical_id]
        worker = pool.acquire()
        healthy = False
        try:
            result = worker.invoke(event, sink)
            healthy = True
            return result
        except InvocationError as exc:
            # A handler error leaves the worker warm; a timeout or a protocol failure doesn't.
            healthy = exc.error_type not in _WORKER_FAULTS
            # The worker has already logged the traceback, Lambda-style; one line here is enough.
            _log(logical_id, f"invocation failed: {exc.error_type}: {exc.message}")
            raise
        finally:
            pool.release(worker, healthy)

    def worker_pids(self, logical_id: str | None = None) -> list[int]:
        """Live worker processes (for tests and diagnostics)."""
        pools = [self._pools[logical_id]] if logical_id else list(self._pools.values())
        return sorted(pid for pool in pools for pid in pool.pids())

    def rule_arn(self, logical_id: str, event_name: str) -> str:
        return f"arn:aws:events:{self.region}:{ACCOUNT_ID}:rule/{logical_id}{event_name}"

    def _worker_env(self, spec: FunctionSpec) -> dict[str, str]:
        env = {**os.environ, **self._extra_env, **spec.env}
        env.update(  # what the Lambda runtime sets and functions can't override
            {
                "AWS_LAMBDA_FUNCTION_NAME": spec.logical_id,
                "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
                "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(spec.memory_mb),
                "AWS_LAMBDA_LOG_GROUP_NAME": f"/aws/lambda/{spec.logical_id}",
                "AWS_LAMBDA_LOG_STREAM_NAME": f"local/[$LATEST]{uuid.uuid4().hex}",
                "AWS_EXECUTION_ENV": "AWS_Lambda_python3.12",
                "LAMBDA_TASK_ROOT": str(spec.code_dir),
                "_HANDLER": spec.handler,
                "AWS_REGION": self.region,
                "AWS_DEFAULT_REGION": env.get("AWS_DEFAULT_REGION", self.region),
                "TZ": ":UTC",
                # As under `sam local`: Powertools Tracer then stays off (no X-Ray daemon here).
                "AWS_SAM_LOCAL": "true",
                "PYTHONUNBUFFERED": "1",
                "PYTHONDONTWRITEBYTECODE": "1",
            }
        )
        return env

    def function_id(self, name: str) -> str | None:
        """A function's logical id from itself or its short name (AutoReload)."""
        for candidate in (name, f"{name}Function"):
            if candidate in self.functions:
                return candidate
        return None

    # -------------------------------------------------------------------------------- clock

    def now(self) -> datetime:
        return datetime.now(UTC) + self._offset

    def move_clock(self, target: datetime) -> list[dict[str, Any]]:
        """Move the stack's time forward to `target`: the workers' clocks, the clock hooks (the
        local Stripe), then each schedule due in between, fired once for its latest due time,
        as EventBridge would have fired it by then. Returns what was fired and how it went."""
        with self._clock_lock:
            before = self.now()
            target = _utc(target)
            if target < before:
                raise ClockError(
                    f"The stack's clock is at {iso_utc(before)}; it cannot go back to {iso_utc(target)}."
                )
            self._offset = target - datetime.now(UTC)
            if self.clock_file is not None:
                tmp = self.clock_file.with_name(self.clock_file.name + ".tmp")
                tmp.write_text(str(self._offset // timedelta(microseconds=1)), encoding="ascii")
                os.replace(tmp, self.clock_file)  # a new inode: every worker notices
            self._replan.set()
            for hook in self.clock_hooks:
                hook(target)
            fired = []
            for spec in self.functions.values():
                for sched in spec.schedules:
                    due = last_fire(sched.expression, before, target, anchor=self._schedule_anchor)
                    if due is None:
                        continue
                    event = sched.input
                    if event is None:
                        event = scheduled_event(self.rule_arn(spec.logical_id, sched.name), self.region, due)
                    outcome: dict[str, Any] = {
                        "function": spec.logical_id,
                        "schedule": sched.name,
                        "at": iso_utc(due),
                    }
                    try:
                        outcome["result"] = self.invoke(spec.logical_id, event)
                    except InvocationError as exc:
                        outcome["error"] = {"errorType": exc.error_type, "errorMessage": exc.message}
                    fired.append(outcome)
            return fired

    # -------------------------------------------------------------------------------- schedules

    def _run_schedules(self) -> None:
        plan: list[_Planned] = []
        while True:
            if not plan or self._replan.is_set():  # first round, or the clock moved
                self._replan.clear()
                now = self.now()
                plan = [
                    _Planned(
                        spec.logical_id, sched, next_fire(sched.expression, now, anchor=self._schedule_anchor)
                    )
                    for spec in self.functions.values()
                    for sched in spec.schedules
                ]
            times = [p.due for p in plan if p.due is not None]
            if not times:
                return
            wait = (min(times) - self.now()).total_seconds()
            # Re-reads the clock at least every second, so a moved clock replans promptly.
            if self._stopping.wait(min(max(wait, 0.0), 1.0)):
                return
            if self._replan.is_set():
                continue
            now = self.now()
            for p in plan:
                if p.due is None or p.due > now:
                    continue
                event = p.schedule.input
                if event is None:
                    event = scheduled_event(self.rule_arn(p.logical_id, p.schedule.name), self.region, p.due)
                # Like EventBridge's async invoke: a slow run doesn't delay the other rules.
                t = threading.Thread(
                    target=self._fire, args=(p.logical_id, p.schedule.name, event), daemon=True
                )
                with self._fired_lock:
                    self._fired = [f for f in self._fired if f.is_alive()]
                    self._fired.append(t)
                t.start()
                p.due = next_fire(p.schedule.expression, now, anchor=self._schedule_anchor)

    def _fire(self, logical_id: str, rule: str, event: Any) -> None:
        try:
            self.invoke(logical_id, event)
        except InvocationError:
            if not self._stopping.is_set():
                _log(logical_id, f"scheduled run {rule} failed (EventBridge would retry it asynchronously)")


@dataclass
class _Planned:
    logical_id: str
    schedule: ScheduleSpec
    due: datetime | None
