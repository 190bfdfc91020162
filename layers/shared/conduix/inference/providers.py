"""Calls to upstream model providers (OpenAI-compatible), with fallbacks: a whole answer, a
stream read as the client is served, or embeddings, each under one overall deadline. The
connections, their pool and the deadline's watchdog are in `connections`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

from conduix.core.clock import Seconds
from conduix.core.errors import UpstreamError, UpstreamRejected, UpstreamTimeout, UpstreamUnavailable
from conduix.inference import connections
from conduix.pricing.costs import Attempt

_MIN_ATTEMPT_SECONDS = 0.5

T = TypeVar("T")


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


@dataclass
class UpstreamStream:
    """An upstream's event stream, open and read as the client is served.

    `chunks()` yields each chunk with choices as it arrives; after it ends, `usage` holds the
    upstream's final (prompt, completion) tokens. Any failure raises an UpstreamError.
    """

    attempt: Attempt
    _response: Any
    _watchdog: connections.Watchdog
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
                    data = (
                        self._response.read1(connections.READ_BYTES)
                        if hasattr(self._response, "read1")
                        else None
                    )
                    if data is None:
                        data = next(self._response.stream(connections.READ_BYTES), b"")
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
            connections.discard(self._response)


def _limit(attempt: Attempt, deadline: Seconds) -> Seconds:
    """The exchange's own deadline: the model's timeout, within the request's."""
    return min(deadline, time.monotonic() + attempt.model.upstream.timeout_seconds)


def _start_stream(attempt: Attempt, payload: dict[str, Any], deadline: Seconds) -> UpstreamStream:
    deadline = _limit(attempt, deadline)
    response = connections.open_response(attempt, payload, deadline)
    stream = UpstreamStream(attempt, response, connections.Watchdog(response, deadline))
    try:
        stream.first()
    except BaseException:
        stream.close()
        raise
    return stream


def _read_json(attempt: Attempt, payload: dict[str, Any], deadline: Seconds, path: str) -> Any:
    """A whole JSON answer, read within the model's deadline."""
    deadline = _limit(attempt, deadline)
    response = connections.open_response(attempt, payload, deadline, path)
    watchdog = connections.Watchdog(response, deadline)
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
            connections.discard(response)


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
