"""Connections to upstream providers: one small pool per execution environment (the standard
library's http.client), kept alive across warm invocations, so no TCP or TLS handshake per
request. Not urllib3's pool: per exchange it cost the billed request more CPU than the rest
of its handler's own work (docs/benchmarks.md), for features an upstream call does not use.

Every exchange has one overall deadline covering connect, headers and the whole body or
stream, not each socket read: a watchdog shuts the socket when it passes, so an upstream
that drips a byte a second is cut at the model's timeout like one that says nothing.
"""

from __future__ import annotations

import functools
import heapq
import http.client
import json
import select
import ssl
import threading
import time
from typing import Any
from urllib.parse import urlsplit

from conduix.core.clock import Seconds
from conduix.core.config import secret
from conduix.core.errors import UpstreamRejected, UpstreamTimeout, UpstreamUnavailable
from conduix.pricing.costs import Attempt

READ_BYTES = 64 * 1024
_MAX_IDLE_PER_HOST = 4  # one request at a time per environment, plus a fallback chain's spares
_WATCHDOG_GRACE_SECONDS = 1.0  # a blocked read outlasts the deadline by this, so the watchdog ends it


class _Pool:
    """Kept-alive connections per (scheme, host, port). A connection goes back only once its
    response was read to the end (and the server keeps it open); one the server has closed
    meanwhile is noticed before it is reused, and replaced."""

    def __init__(self) -> None:
        self._idle: dict[tuple[str, str, int], list[http.client.HTTPConnection]] = {}
        self._lock = threading.Lock()
        self._tls: ssl.SSLContext | None = None

    def take(self, scheme: str, host: str, port: int, timeout: float) -> http.client.HTTPConnection:
        with self._lock:
            idle = self._idle.get((scheme, host, port))
            conn = idle.pop() if idle else None
        if conn is not None and conn.sock is not None and not _closed_by_peer(conn.sock):
            conn.sock.settimeout(timeout)
            return conn
        if conn is not None:
            conn.close()
        if scheme == "https":
            if self._tls is None:
                self._tls = ssl.create_default_context()
            return http.client.HTTPSConnection(host, port, timeout=timeout, context=self._tls)
        return http.client.HTTPConnection(host, port, timeout=timeout)

    def give_back(self, key: tuple[str, str, int], conn: http.client.HTTPConnection) -> None:
        with self._lock:
            idle = self._idle.setdefault(key, [])
            if len(idle) < _MAX_IDLE_PER_HOST:
                idle.append(conn)
                return
        conn.close()

    def clear(self) -> None:
        with self._lock:
            every = [conn for idle in self._idle.values() for conn in idle]
            self._idle.clear()
        for conn in every:
            conn.close()


def _closed_by_peer(sock: Any) -> bool:
    """An idle kept-alive socket is readable only when the server closed it (or broke it)."""
    try:
        return bool(select.select([sock], [], [], 0)[0])
    except (OSError, ValueError):
        return True


class _Response:
    """One exchange's response, and the connection it came on (kept alive once read out)."""

    def __init__(
        self, raw: http.client.HTTPResponse, conn: http.client.HTTPConnection, key: tuple[str, str, int]
    ) -> None:
        self._raw = raw
        self._connection = conn  # the watchdog shuts its socket at the deadline
        self._key = key
        self.status = raw.status

    def read(self, amount: int | None = None) -> bytes:
        return self._raw.read(amount)

    def read1(self, amount: int = -1) -> bytes:
        return self._raw.read1(amount)

    def close(self) -> None:
        self._raw.close()
        self._connection.close()

    def release_conn(self) -> None:
        """Keep the connection for the next exchange, if its response was read to the end."""
        if self._raw.isclosed() and not self._raw.will_close and self._connection.sock is not None:
            _http().give_back(self._key, self._connection)
        else:
            self.close()


_pool: _Pool | None = None


def _http() -> _Pool:
    """The execution environment's connection pool, made on first use (not at import)."""
    global _pool
    if _pool is None:
        _pool = _Pool()
    return _pool


def reset_pool() -> None:
    """Drop every kept-alive connection (tests)."""
    global _pool
    if _pool is not None:
        _pool.clear()
    _pool = None


_WATCHDOG_COMPACT_AT = 1024


class Watchdog:
    """Shuts a response's socket at the deadline, so a blocked or dripping read ends there.

    One daemon thread serves every watchdog of the process (a heap of deadlines): a thread
    started per request cost more CPU than the rest of the upstream call."""

    _heap: list[tuple[float, int, Watchdog]] = []
    _wake = threading.Condition()
    _thread: threading.Thread | None = None
    _seq = 0

    def __init__(self, response: Any, deadline: Seconds) -> None:
        self.fired = False
        self.cancelled = False
        self._response = response
        cls = Watchdog
        with cls._wake:
            if len(cls._heap) > _WATCHDOG_COMPACT_AT:  # cancelled ones wait for their deadline
                cls._heap[:] = [entry for entry in cls._heap if not entry[2].cancelled]
                heapq.heapify(cls._heap)
            cls._seq += 1
            heapq.heappush(cls._heap, (deadline, cls._seq, self))
            if cls._thread is None or not cls._thread.is_alive():  # first use (or after a fork)
                cls._thread = threading.Thread(target=cls._run, name="upstream-watchdog", daemon=True)
                cls._thread.start()
            elif cls._heap[0][2] is self:  # sooner than the thread sleeps for
                cls._wake.notify()

    @classmethod
    def _run(cls) -> None:
        while True:
            with cls._wake:
                while True:
                    while cls._heap and cls._heap[0][2].cancelled:
                        heapq.heappop(cls._heap)
                    wait = cls._heap[0][0] - time.monotonic() if cls._heap else None
                    if wait is not None and wait <= 0:
                        due = heapq.heappop(cls._heap)[2]
                        break
                    cls._wake.wait(wait)
            due._fire()

    def _fire(self) -> None:
        if self.cancelled:
            return
        self.fired = True
        sock = getattr(getattr(self._response, "_connection", None), "sock", None)
        try:
            if sock is not None:
                sock.shutdown(2)  # SHUT_RDWR: the blocked recv returns at once
        except OSError:
            pass

    def cancel(self) -> None:
        self.cancelled = True  # the thread drops it when it reaches the top of the heap
        self._response = None


@functools.lru_cache(maxsize=64)
def _origin(url: str) -> tuple[tuple[str, str, int], str]:
    """(scheme, host, port) of a URL, and its path and query."""
    split = urlsplit(url)
    port = split.port or (443 if split.scheme == "https" else 80)
    return (split.scheme, split.hostname or "", port), split.path + (f"?{split.query}" if split.query else "")


def open_response(
    attempt: Attempt, payload: dict[str, Any], deadline: Seconds, path: str = "/chat/completions"
) -> Any:
    """Connect, send, and read the status and headers, all within the deadline."""
    upstream = attempt.model.upstream
    headers = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}
    if upstream.api_key_env:
        key = secret(upstream.api_key_env)
        if not key:
            raise UpstreamUnavailable(f"No credentials configured for {attempt.model.id}.")
        headers["Authorization"] = f"Bearer {key}"
    origin, target = _origin(f"{upstream.base_url}{path}")
    body = json.dumps(payload).encode("utf-8")
    conn = None
    try:
        # Connect and the wait for headers share the deadline; the body is the watchdog's.
        conn = _http().take(*origin, timeout=max(0.01, deadline - time.monotonic()))
        conn.request("POST", target, body=body, headers=headers)
        if conn.sock is not None:
            conn.sock.settimeout(max(0.01, deadline - time.monotonic()))
        response = _Response(conn.getresponse(), conn, origin)
        if conn.sock is not None:  # the body's reads: the watchdog ends them at the deadline
            conn.sock.settimeout(max(0.01, deadline - time.monotonic()) + _WATCHDOG_GRACE_SECONDS)
    except TimeoutError:
        if conn is not None:
            conn.close()
        raise UpstreamTimeout(f"{attempt.model.id} did not answer in time.") from None
    except (http.client.HTTPException, OSError, ValueError):
        if conn is not None:
            conn.close()
        raise UpstreamUnavailable(f"{attempt.model.id} could not be reached.") from None
    status = response.status
    if status >= 400:
        discard(response)
        if status in (408, 429) or status >= 500 or status in (401, 403):
            raise UpstreamUnavailable(f"{attempt.model.id} answered HTTP {status}.")
        raise UpstreamRejected(f"{attempt.model.id} refused the request (HTTP {status}).")
    return response


def discard(response: Any) -> None:
    """Close a response whose connection may hold unread bytes: it must not be reused."""
    try:
        response.close()
        response.release_conn()
    except Exception:  # noqa: S110 - a connection we give up on anyway
        pass
