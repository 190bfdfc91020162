"""Lambda stand-in: each function runs in a pool of `conduix_local.worker` subprocesses (warm
reuse, cold starts, a timeout kills the worker)."""

from __future__ import annotations

import contextlib
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from conduix_local.front.base import (
    INIT_TIMEOUT_S,
    KILL_GRACE_S,
    MAX_RESPONSE_BYTES,
    InvocationError,
    InvocationTimeout,
    _log,
)
from conduix_local.functions import FunctionSpec

if TYPE_CHECKING:
    from conduix_local.front.server import StreamSink


_EOF = object()
# Failures after which a worker's state is unknown: it is killed rather than reused.
_WORKER_FAULTS = ("Sandbox.Timedout", "Runtime.ExitError", "Runtime.InvalidResponse")


# The harness a built function runs under, run as a script (not imported from this package).
WORKER_SCRIPT = Path(__file__).resolve().parent.parent / "worker.py"


class _Worker:
    """The parent's handle on one worker subprocess."""

    def __init__(self, spec: FunctionSpec, env: dict[str, str]) -> None:
        self.spec = spec
        self._messages: queue.Queue[Any] = queue.Queue()
        if spec.python_path is not None:
            # The deployment package alone: no site-packages (-S -s), no script folder (-P).
            env = {**env, "PYTHONPATH": os.pathsep.join(str(p) for p in spec.python_path)}
            env.pop("PYTHONHOME", None)
            harness = [sys.executable, "-S", "-s", "-P", str(WORKER_SCRIPT)]
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
        _wait_until_gone(self.proc.pid, KILL_GRACE_S)  # a signal is delivered asynchronously
        for t in self._threads:
            t.join(1.0)
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()

    def kill(self) -> None:
        self.signal(signal.SIGKILL)
        self.reap()


def _live_members(group: int) -> list[int]:
    """Processes of the group that still run (a zombie no one reaps, as under a non-reaping
    init in a container, is dead). Empty where there is no /proc to read."""
    live = []
    for entry in os.listdir("/proc") if os.path.isdir("/proc") else ():
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # it ended while we looked
        if int(fields[2]) == group and fields[0] != "Z":
            live.append(int(entry))
    return live


def _wait_until_gone(group: int, timeout: float) -> None:
    """stop() returns only once the processes it killed are gone (bounded by `timeout`)."""
    deadline = time.monotonic() + timeout
    while _live_members(group) and time.monotonic() < deadline:
        time.sleep(0.02)


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
