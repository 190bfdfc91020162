"""Calls to upstream model providers (OpenAI-compatible), with fallbacks.

Connections come from one small pool per execution environment (the standard library's
http.client), kept alive across warm invocations: no TCP or TLS handshake per request. Not
urllib3's pool: per exchange it cost the billed request more CPU than the rest of its
handler's own work (docs/benchmarks.md), for features an upstream call does not use.

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
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import urlsplit

from conduix.clock import Seconds
from conduix.config import secret
from conduix.errors import UpstreamError, UpstreamRejected, UpstreamTimeout, UpstreamUnavailable
from conduix.pricing import Attempt

_MIN_ATTEMPT_SECONDS = 0.5
_READ_BYTES = 64 * 1024

T = TypeVar("T")
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


@dataclass(frozen=True)
class UpstreamReply:
    attempt: Attempt
    prompt_tokens: int
    completion_tokens: int
    completion: dict[str, Any] | None  # non-streaming answer
    chunks: list[dict[str, Any]]  # streaming answer, without the usage-only chunk


def _usage(obj: Any) -> tuple[int, int]:
    usage = obj.get("usage") if isinstance(obj, dict) else None
    if not isinstance(usage, dict):
        raise UpstreamError("The upstream answer carried no usage.")
    p, c = usage.get("prompt_tokens"), usage.get("completion_tokens")
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in (p, c)):
        raise UpstreamError("The upstream answer's usage is not a pair of token counts.")
    return p, c  # type: ignore[return-value]


_WATCHDOG_COMPACT_AT = 1024


class _Watchdog:
    """Shuts a response's socket at the deadline, so a blocked or dripping read ends there.

    One daemon thread serves every watchdog of the process (a heap of deadlines): a thread
    started per request cost more CPU than the rest of the upstream call."""

    _heap: list[tuple[float, int, _Watchdog]] = []
    _wake = threading.Condition()
    _thread: threading.Thread | None = None
    _seq = 0

    def __init__(self, response: Any, deadline: Seconds) -> None:
        self.fired = False
        self.cancelled = False
        self._response = response
        cls = _Watchdog
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


def _open(
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
        _discard(response)
        if status in (408, 429) or status >= 500 or status in (401, 403):
            raise UpstreamUnavailable(f"{attempt.model.id} answered HTTP {status}.")
        raise UpstreamRejected(f"{attempt.model.id} refused the request (HTTP {status}).")
    return response


def _discard(response: Any) -> None:
    """Close a response whose connection may hold unread bytes: it must not be reused."""
    try:
        response.close()
        response.release_conn()
    except Exception:  # noqa: S110 - a connection we give up on anyway
        pass


@dataclass
class UpstreamStream:
    """An upstream's event stream, open and read as the client is served.

    `chunks()` yields each chunk with choices as it arrives; after it ends, `usage` holds the
    upstream's final (prompt, completion) tokens. Any failure raises an UpstreamError.
    """

    attempt: Attempt
    _response: Any
    _watchdog: _Watchdog
    _pending: list[dict[str, Any]] = field(default_factory=list)
    _buffer: bytes = b""
    _done: bool = False
    usage: tuple[int, int] | None = None

    def _events(self) -> Iterator[dict[str, Any]]:
        name = self.attempt.model.id
        while True:
            newline = self._buffer.find(b"\n")
            if newline < 0:
                try:
                    data = self._response.read1(_READ_BYTES) if hasattr(self._response, "read1") else None
                    if data is None:
                        data = next(self._response.stream(_READ_BYTES), b"")
                except Exception:
                    if self._watchdog.fired:
                        raise UpstreamTimeout(f"{name} did not finish in time.") from None
                    raise UpstreamError(f"{name} broke the connection mid-answer.") from None
                if self._watchdog.fired:
                    raise UpstreamTimeout(f"{name} did not finish in time.")
                if not data:
                    raise UpstreamError(f"{name} ended its stream early.")
                self._buffer += data
                continue
            raw, self._buffer = self._buffer[:newline], self._buffer[newline + 1 :]
            line = raw.strip()
            if not line.startswith(b"data:"):
                continue
            text = line[5:].strip()
            if text == b"[DONE]":
                if self.usage is None:
                    raise UpstreamError(f"{name} ended its stream without usage.")
                self._done = True
                return
            try:
                chunk = json.loads(text)
            except ValueError:
                raise UpstreamError(f"{name} sent an event that is not JSON.") from None
            if not isinstance(chunk, dict):
                raise UpstreamError(f"{name} sent a chunk that is not an object.")
            if chunk.get("error"):
                raise UpstreamError(f"{name} failed mid-stream.")
            if chunk.get("usage"):
                self.usage = _usage(chunk)
            if chunk.get("choices"):
                yield chunk

    def first(self) -> None:
        """Read up to the first chunk with choices (held back for `chunks()`)."""
        for chunk in self._events():
            self._pending.append(chunk)
            return

    def chunks(self) -> Iterator[dict[str, Any]]:
        try:
            while self._pending:
                yield self._pending.pop(0)
            if not self._done:
                yield from self._events()
        finally:
            self.close()

    def close(self) -> None:
        if self._done:
            try:  # the body's end (the chunked terminator): then the connection can be reused
                self._response.read()
                self._done = not self._watchdog.fired
            except Exception:
                self._done = False
        self._watchdog.cancel()
        if self._done:
            self._response.release_conn()  # read to its end: the connection is kept alive
        else:
            _discard(self._response)


def _limit(attempt: Attempt, deadline: Seconds) -> Seconds:
    """The exchange's own deadline: the model's timeout, within the request's."""
    return min(deadline, time.monotonic() + attempt.model.upstream.timeout_seconds)


def _start_stream(attempt: Attempt, payload: dict[str, Any], deadline: Seconds) -> UpstreamStream:
    deadline = _limit(attempt, deadline)
    response = _open(attempt, payload, deadline)
    stream = UpstreamStream(attempt, response, _Watchdog(response, deadline))
    try:
        stream.first()
    except BaseException:
        stream.close()
        raise
    return stream


def _read_json(attempt: Attempt, payload: dict[str, Any], deadline: Seconds, path: str) -> Any:
    """A whole JSON answer, read within the model's deadline."""
    deadline = _limit(attempt, deadline)
    response = _open(attempt, payload, deadline, path)
    watchdog = _Watchdog(response, deadline)
    complete = False
    try:
        try:
            raw = response.read()
        except Exception:
            if watchdog.fired:
                raise UpstreamTimeout(f"{attempt.model.id} did not finish in time.") from None
            raise UpstreamError(f"{attempt.model.id} broke the connection mid-answer.") from None
        if watchdog.fired:
            raise UpstreamTimeout(f"{attempt.model.id} did not finish in time.")
        complete = True
        try:
            return json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            raise UpstreamError(f"{attempt.model.id} sent an answer that is not JSON.") from None
    finally:
        watchdog.cancel()
        if complete:
            response.release_conn()
        else:
            _discard(response)


def _read_whole(attempt: Attempt, payload: dict[str, Any], deadline: Seconds) -> UpstreamReply:
    body = _read_json(attempt, payload, deadline, "/chat/completions")
    if not isinstance(body, dict) or not isinstance(body.get("choices"), list):
        raise UpstreamError("The upstream answer is not a chat completion.")
    p, c = _usage(body)
    return UpstreamReply(attempt, p, c, body, [])


def call(attempt: Attempt, payload: dict[str, Any], stream: bool, deadline: Seconds) -> UpstreamReply:
    if deadline - time.monotonic() < _MIN_ATTEMPT_SECONDS:
        raise UpstreamTimeout("No time left to call the upstream.")
    if not stream:
        return _read_whole(attempt, payload, deadline)
    opened = _start_stream(attempt, payload, deadline)
    chunks = list(opened.chunks())
    assert opened.usage is not None  # chunks() ends only at [DONE] with usage
    return UpstreamReply(attempt, *opened.usage, None, chunks)


def _with_fallbacks(attempts: list[Attempt], call_one: Callable[[Attempt], T], deadline: Seconds) -> T:
    """Try each model of the chain in turn; the first usable answer wins.

    A provider outage, timeout or unusable answer moves on to the next fallback; a refusal
    of the request itself (4xx) does not, since another model would refuse it too.
    """
    last: UpstreamError = UpstreamUnavailable("No upstream was tried.")
    for attempt in attempts:
        try:
            return call_one(attempt)
        except UpstreamRejected:
            raise
        except UpstreamError as exc:
            last = exc
            if time.monotonic() + _MIN_ATTEMPT_SECONDS > deadline:
                break
    raise last


def complete(attempts: list[Attempt], build_payload: Any, stream: bool, deadline: Seconds) -> UpstreamReply:
    """A whole answer (a stream read to its end), from the first model of the chain that gives one."""
    return _with_fallbacks(attempts, lambda a: call(a, build_payload(a), stream, deadline), deadline)


def open_stream(attempts: list[Attempt], build_payload: Any, deadline: Seconds) -> UpstreamStream:
    """A stream whose first chunk has arrived. Until then a failing model falls back to the
    next one; after it, the client has seen bytes and a failure ends the stream."""

    def start(attempt: Attempt) -> UpstreamStream:
        if deadline - time.monotonic() < _MIN_ATTEMPT_SECONDS:
            raise UpstreamTimeout("No time left to call the upstream.")
        return _start_stream(attempt, build_payload(attempt), deadline)

    return _with_fallbacks(attempts, start, deadline)


@dataclass(frozen=True)
class EmbeddingReply:
    attempt: Attempt
    prompt_tokens: int
    data: list[dict[str, Any]]  # one embedding object per input, in input order


def _embedding_answer(body: Any, inputs: int) -> tuple[int, list[dict[str, Any]]]:
    if not isinstance(body, dict) or not isinstance(body.get("data"), list):
        raise UpstreamError("The upstream answer is not a list of embeddings.")
    usage = body.get("usage")
    tokens = usage.get("prompt_tokens") if isinstance(usage, dict) else None
    if not isinstance(tokens, int) or isinstance(tokens, bool) or tokens < 0:
        raise UpstreamError("The upstream answer carried no usage.")
    data = body["data"]
    if not all(isinstance(d, dict) and isinstance(d.get("embedding"), list | str) for d in data):
        raise UpstreamError("The upstream sent an embedding that is not a vector.")
    indexes = [d.get("index") for d in data]
    if not all(type(i) is int for i in indexes) or sorted(indexes) != list(range(inputs)):
        raise UpstreamError("The upstream did not answer one embedding per input.")
    return tokens, sorted(data, key=lambda d: int(d["index"]))


def call_embeddings(
    attempt: Attempt, payload: dict[str, Any], inputs: int, deadline: Seconds
) -> EmbeddingReply:
    if deadline - time.monotonic() < _MIN_ATTEMPT_SECONDS:
        raise UpstreamTimeout("No time left to call the upstream.")
    tokens, data = _embedding_answer(_read_json(attempt, payload, deadline, "/embeddings"), inputs)
    return EmbeddingReply(attempt, tokens, data)


def embed(
    attempts: list[Attempt],
    build_payload: Callable[[Attempt], dict[str, Any]],
    inputs: int,
    deadline: Seconds,
) -> EmbeddingReply:
    """The embeddings of `inputs` inputs, from the first model of the chain that answers."""
    return _with_fallbacks(
        attempts, lambda a: call_embeddings(a, build_payload(a), inputs, deadline), deadline
    )
