"""Calls to upstream model providers (OpenAI-compatible), with fallbacks.

Plain urllib: it costs no import time, and the Completion function makes one call at a time.
A streamed upstream answer is read to the end before we answer (Lambda's Python runtime
cannot stream a response), which also means a stream that breaks can still be refused
cleanly and fall back.
"""

from __future__ import annotations

import json
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from conduix.clock import Seconds
from conduix.config import secret
from conduix.errors import UpstreamError, UpstreamRejected, UpstreamTimeout, UpstreamUnavailable
from conduix.pricing import Attempt

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


def _open(
    attempt: Attempt, payload: dict[str, Any], timeout: Seconds, path: str = "/chat/completions"
) -> Any:
    upstream = attempt.model.upstream
    headers = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}
    if upstream.api_key_env:
        key = secret(upstream.api_key_env)
        if not key:
            raise UpstreamUnavailable(f"No credentials configured for {attempt.model.id}.")
        headers["Authorization"] = f"Bearer {key}"
    request = urllib.request.Request(  # noqa: S310 - the catalog only admits http(s) URLs
        f"{upstream.base_url}{path}",
        data=json.dumps(payload).encode("utf-8"),
        headers=headers,
        method="POST",
    )
    try:
        return urllib.request.urlopen(request, timeout=timeout)  # noqa: S310
    except urllib.error.HTTPError as exc:
        status = exc.code
        exc.close()
        if status in (408, 429) or status >= 500 or status in (401, 403):
            raise UpstreamUnavailable(f"{attempt.model.id} answered HTTP {status}.") from None
        raise UpstreamRejected(f"{attempt.model.id} refused the request (HTTP {status}).") from None
    except TimeoutError:
        raise UpstreamTimeout(f"{attempt.model.id} did not answer in time.") from None
    except (urllib.error.URLError, ConnectionError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        if isinstance(reason, TimeoutError | socket.timeout):
            raise UpstreamTimeout(f"{attempt.model.id} did not answer in time.") from None
        raise UpstreamUnavailable(f"{attempt.model.id} could not be reached.") from None


def _read_stream(response: Any, deadline: Seconds) -> tuple[list[dict[str, Any]], tuple[int, int]]:
    chunks: list[dict[str, Any]] = []
    usage: tuple[int, int] | None = None
    for raw in response:
        if time.monotonic() > deadline:
            raise UpstreamTimeout("The upstream stream did not finish in time.")
        line = raw.decode("utf-8").strip()
        if not line.startswith("data:"):
            continue
        data = line[5:].strip()
        if data == "[DONE]":
            if usage is None:
                raise UpstreamError("The upstream stream ended without usage.")
            return chunks, usage
        chunk = json.loads(data)
        if not isinstance(chunk, dict):
            raise UpstreamError("The upstream sent a chunk that is not an object.")
        if chunk.get("usage"):
            usage = _usage(chunk)
        if chunk.get("choices"):
            chunks.append(chunk)
    raise UpstreamError("The upstream stream ended early.")


def call(attempt: Attempt, payload: dict[str, Any], stream: bool, deadline: Seconds) -> UpstreamReply:
    remaining = deadline - time.monotonic()
    if remaining < _MIN_ATTEMPT_SECONDS:
        raise UpstreamTimeout("No time left to call the upstream.")
    timeout = min(attempt.model.upstream.timeout_seconds, remaining)
    response = _open(attempt, payload, timeout)
    try:
        if stream:
            chunks, (p, c) = _read_stream(response, deadline)
            return UpstreamReply(attempt, p, c, None, chunks)
        body = json.loads(response.read())
        if not isinstance(body, dict) or not isinstance(body.get("choices"), list):
            raise UpstreamError("The upstream answer is not a chat completion.")
        p, c = _usage(body)
        return UpstreamReply(attempt, p, c, body, [])
    except TimeoutError:
        raise UpstreamTimeout(f"{attempt.model.id} did not finish in time.") from None
    except (ValueError, UnicodeDecodeError):
        raise UpstreamError(f"{attempt.model.id} sent an answer that is not JSON.") from None
    except (ConnectionError, OSError):
        raise UpstreamError(f"{attempt.model.id} broke the connection mid-answer.") from None
    finally:
        response.close()


def complete(attempts: list[Attempt], build_payload: Any, stream: bool, deadline: Seconds) -> UpstreamReply:
    """Try each model of the chain in turn; the first usable answer wins.

    A provider outage, timeout or unusable answer moves on to the next fallback; a refusal
    of the request itself (4xx) does not, since another model would refuse it too.
    """
    return _with_fallbacks(attempts, lambda a: call(a, build_payload(a), stream, deadline), deadline)


def _with_fallbacks(attempts: list[Attempt], call_one: Callable[[Attempt], T], deadline: Seconds) -> T:
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
    remaining = deadline - time.monotonic()
    if remaining < _MIN_ATTEMPT_SECONDS:
        raise UpstreamTimeout("No time left to call the upstream.")
    response = _open(attempt, payload, min(attempt.model.upstream.timeout_seconds, remaining), "/embeddings")
    try:
        tokens, data = _embedding_answer(json.loads(response.read()), inputs)
        return EmbeddingReply(attempt, tokens, data)
    except TimeoutError:
        raise UpstreamTimeout(f"{attempt.model.id} did not finish in time.") from None
    except (ValueError, UnicodeDecodeError):
        raise UpstreamError(f"{attempt.model.id} sent an answer that is not JSON.") from None
    except (ConnectionError, OSError):
        raise UpstreamError(f"{attempt.model.id} broke the connection mid-answer.") from None
    finally:
        response.close()


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
