"""Local stand-in for API Gateway (REST API, Lambda proxy), Lambda and EventBridge schedules.

Each function runs in a pool of `conduix_local.worker` subprocesses (warm reuse, cold starts,
timeouts kill the worker), fed REST v1 proxy events built from real HTTP requests.

`Front` (here) ties the parts together: `server` (HTTP in and out), `routing` (the template's
routes), `events` (proxy events and responses), `workers` (the function pools), `schedules`
(EventBridge rate and cron) and `base` (limits, the log, invocation errors).
"""

from __future__ import annotations

import atexit
import functools
import os
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from conduix_local.front.base import ACCOUNT_ID, KILL_GRACE_S, InvocationError, _log
from conduix_local.front.routing import Router
from conduix_local.front.schedules import _utc, last_fire, next_fire, scheduled_event
from conduix_local.front.server import ClockError, StreamSink, _Handler, _Server, iso_utc
from conduix_local.front.workers import _WORKER_FAULTS, _Pool
from conduix_local.functions import FunctionSpec, ScheduleSpec
from conduix_local.serving import Started


class Front(Started):
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
        # clock_file (conduix.core.clock reads it). It only moves forward.
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
