"""A deterministic OpenAI-compatible model server: the upstream provider of local runs and tests.

Answers depend only on (model, messages), so tests can predict content and usage exactly
(see reply_text / count_tokens / prompt_tokens). Model-name prefixes pick failure modes:
  fail-*          500 with an OpenAI-style error body
  slow-<seconds>  sleeps that long, then answers normally (timeouts)
  pace-<ms>       one token per chunk, <ms> apart (a model that writes as it thinks); not
                  streamed, the answer comes whole after the same time
  long-<seconds>  like pace-, its tokens spread evenly over <seconds> (a long answer)
  drip-<ms>       streaming: headers at once, then the body one byte per <ms> (a socket that
                  never goes quiet long enough for a per-read timeout)
  broken-stream*  streaming: two content chunks, then the connection drops; otherwise 500
  garbage-*       200 whose body is not JSON
  nousage-*       a valid answer without `usage`

  overbill-*      bills 5,000 prompt tokens more than it should (a provider above the hold)

It bills the prompt the way OpenAI does, beyond the text:
  - 3 tokens per message and 3 per request (the chat template);
  - each image part by OpenAI's gpt-4o rule: `detail: low` is 85 tokens; otherwise the image is
    fit in 2048x2048, its shortest side brought down to 768, and it costs 85 + 170 per 512 px
    tile (765 for 1024x1024, at most 1,445). The size is read from a PNG data URL's header;
    any other image is taken as 1024x1024;
  - a request with `tools` (or `functions`) pays a hidden tool-use prompt of TOOL_PROMPT_TOKENS
    plus the tokens of the definitions themselves.

Embeddings (`POST /v1/embeddings`): each input's vector is derived from a hash of (model, input),
unit length, `embed_dimensions(model)` wide unless `dimensions` asks for fewer; `base64` packs it as
little-endian float32 as OpenAI does. Usage is the tokens of the text inputs (never more than
their UTF-8 bytes) plus the length of each token-array input. The same failure prefixes apply.

Billing contract: the text's share of prompt_tokens never exceeds the UTF-8 byte length of
json.dumps(messages); what comes on top is at most 3 per message + 3, IMAGE_MAX_TOKENS per
image part and TOOL_PROMPT_TOKENS + the definitions' bytes for tools.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import hashlib
import hmac
import itertools
import json
import math
import re
import socket
import struct
import threading
import time
import uuid
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from conduix_local.serving import ThreadedServer

_TOKEN = re.compile(r"\w+|[^\w\s]")
_SLOW = re.compile(r"slow-(\d+(?:\.\d+)?)")
_PACE = re.compile(r"(pace|long)-(\d+(?:\.\d+)?)")
_DRIP = re.compile(r"drip-(\d+)")
_FILLER = ("alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliet")
MODEL_IDS = (
    "fake-small",
    "fake-large",
    "fail-always",
    "slow-5",
    "broken-stream",
    "garbage-json",
    "nousage-model",
    "overbill-model",
    "pace-50",
    "long-35",
    "drip-1000",
    "fake-embed",
)
EMBED_DIMENSIONS = 16  # the fake embedding models' native size


def embed_dimensions(model: str) -> int:
    """Native vector size: OpenAI's for its model names, small for the fake ones."""
    if model.startswith("text-embedding-3-large"):
        return 3072
    return 1536 if model.startswith("text-embedding") else EMBED_DIMENSIONS


TOOL_PROMPT_TOKENS = 320  # what a provider adds, unseen, to a request that sends tools
IMAGE_LOW_TOKENS = 85
IMAGE_MAX_TOKENS = 85 + 170 * 8  # 768 x 2048 after scaling: 2 x 4 tiles
OVERBILL_TOKENS = 5000


class BadRequest(Exception):
    """The request body is not a chat completion request we can answer (HTTP 400)."""


def count_tokens(text: str) -> int:
    return len(_TOKEN.findall(text))


def content_text(content: Any) -> str:
    """The text of a message content: a string, or a list of parts of which text ones count."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        # Joined by newlines so no two parts merge into one token.
        return "\n".join(
            part["text"]
            for part in content
            if isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)
        )
    return ""


def image_tokens(width: int, height: int, detail: str = "high") -> int:
    """What OpenAI bills gpt-4o for an image part (its published rule)."""
    if detail == "low":
        return IMAGE_LOW_TOKENS
    scale = min(1.0, 2048 / max(width, height))  # fit in 2048 x 2048
    w, h = width * scale, height * scale
    if min(w, h) > 768:  # shortest side down to 768
        w, h = w * 768 / min(w, h), h * 768 / min(w, h)
    return IMAGE_LOW_TOKENS + 170 * math.ceil(w / 512) * math.ceil(h / 512)


def png_size(url: str) -> tuple[int, int] | None:
    """Width and height from a PNG data URL's IHDR chunk, or None."""
    prefix = "data:image/png;base64,"
    if not url.startswith(prefix):
        return None
    try:
        head = base64.b64decode(url[len(prefix) : len(prefix) + 44] + "==")
    except (ValueError, binascii.Error):
        return None
    if len(head) < 24 or head[:8] != b"\x89PNG\r\n\x1a\n":
        return None
    return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")


def png_data_url(width: int, height: int) -> str:
    """A data URL whose PNG header says width x height (all this stand-in reads of an image)."""
    ihdr = (
        b"\x00\x00\x00\rIHDR" + width.to_bytes(4, "big") + height.to_bytes(4, "big") + b"\x08\x02\x00\x00\x00"
    )
    return "data:image/png;base64," + base64.b64encode(b"\x89PNG\r\n\x1a\n" + ihdr).decode()


def content_images(content: Any) -> int:
    """Image tokens of a message content's image parts."""
    if not isinstance(content, list):
        return 0
    total = 0
    for part in content:
        if isinstance(part, dict) and part.get("type") == "image_url":
            image = part.get("image_url") if isinstance(part.get("image_url"), dict) else {}
            width, height = png_size(str(image.get("url", ""))) or (1024, 1024)
            total += image_tokens(width, height, str(image.get("detail") or "auto"))
    return total


def prompt_tokens(messages: list[dict[str, Any]], tools: Any = None) -> int:
    # Each counted token is at least one non-space character of a string that json.dumps writes
    # out whole, and a message's JSON braces and "role" key outweigh its 3; hence the contract.
    text = sum(count_tokens(content_text(m.get("content"))) + 3 for m in messages) + 3
    images = sum(content_images(m.get("content")) for m in messages)
    hidden = TOOL_PROMPT_TOKENS + count_tokens(json.dumps(tools)) if tools else 0
    return text + images + hidden


def reply_text(model: str, messages: list[dict[str, Any]]) -> str:
    """The full (untruncated) deterministic answer to a request."""
    last_user = next(
        (content_text(m.get("content")) for m in reversed(messages) if m.get("role") == "user"), ""
    )
    snippet = " ".join(last_user.split())[:60]
    digest = hashlib.sha256(
        json.dumps([model, messages], sort_keys=True, ensure_ascii=False).encode()
    ).digest()
    filler = " ".join(_FILLER[(digest[i] + i) % len(_FILLER)] for i in range(3 + digest[0] % 5))
    return f"Echo from {model}: {snippet} | {filler}."


def truncate_tokens(text: str, limit: int | None) -> tuple[str, int, bool]:
    """(text cut after `limit` tokens, its token count, whether it was cut)."""
    spans = [m.end() for m in _TOKEN.finditer(text)]
    if limit is None or len(spans) <= limit:
        return text, len(spans), False
    return (text[: spans[limit - 1]] if limit > 0 else ""), limit, True


def split_pieces(text: str, pieces: int = 4) -> list[str]:
    """Cut text at token starts into about `pieces` parts that join back to it exactly."""
    starts = [m.start() for m in _TOKEN.finditer(text)]
    step = max(1, -(-len(starts) // pieces))
    cuts = [0, *starts[step::step], len(text)]
    return [text[a:b] for a, b in itertools.pairwise(cuts) if b > a]


def _error(message: str, type_: str, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": None, "code": code}}


def _max_tokens(body: dict[str, Any]) -> int | None:
    value = body.get("max_completion_tokens", body.get("max_tokens"))
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise BadRequest("max_tokens must be a non-negative integer")
    return value


def _parse(raw: bytes) -> tuple[str, list[dict[str, Any]], dict[str, Any]]:
    try:
        body = json.loads(raw)
    except ValueError as exc:
        raise BadRequest("The body is not valid JSON.") from exc
    if not isinstance(body, dict) or not isinstance(body.get("model"), str):
        raise BadRequest("`model` is required.")
    messages = body.get("messages")
    # Refused as OpenAI does; an empty list or a message without a role would also let the
    # fixed +3 overheads outweigh the JSON bytes and break the byte-length contract.
    if not isinstance(messages, list) or not messages:
        raise BadRequest("`messages` must be a non-empty list.")
    if not all(isinstance(m, dict) and isinstance(m.get("role"), str) for m in messages):
        raise BadRequest("Every message must be an object with a string `role`.")
    return body["model"], messages, body


def _parse_embeddings(raw: bytes) -> tuple[str, list[str | list[int]], int, str]:
    try:
        body = json.loads(raw)
    except ValueError as exc:
        raise BadRequest("The body is not valid JSON.") from exc
    if not isinstance(body, dict) or not isinstance(body.get("model"), str):
        raise BadRequest("`model` is required.")
    given = body.get("input")
    if isinstance(given, str) or (
        isinstance(given, list) and given and all(isinstance(t, int) for t in given)
    ):
        inputs: list[Any] = [given]
    elif isinstance(given, list) and given:
        inputs = given
    else:
        raise BadRequest("`input` must be a string, or a non-empty array of strings or token arrays.")
    for item in inputs:
        ok_text = isinstance(item, str) and item != ""
        ok_tokens = isinstance(item, list) and item and all(type(t) is int and t >= 0 for t in item)
        if not (ok_text or ok_tokens):
            raise BadRequest("Each input must be a non-empty string or a non-empty array of token ids.")
    native = embed_dimensions(body["model"])
    dimensions = body.get("dimensions", native)
    if type(dimensions) is not int or not 1 <= dimensions <= native:
        raise BadRequest(f"`dimensions` must be between 1 and {native}.")
    encoding = body.get("encoding_format", "float")
    if encoding not in ("float", "base64"):
        raise BadRequest("`encoding_format` must be float or base64.")
    return body["model"], inputs, dimensions, encoding


def embedding_tokens(inputs: list[str | list[int]]) -> int:
    """What an embedding request bills: the text's tokens, and token arrays as they are."""
    return sum(count_tokens(i) if isinstance(i, str) else len(i) for i in inputs)


def embedding_vector(model: str, item: str | list[int], dimensions: int) -> list[float]:
    """A deterministic unit vector for (model, input), shortened to `dimensions` and
    renormalised, as OpenAI's text-embedding-3 models do."""
    seed = hashlib.sha256(json.dumps([model, item]).encode()).digest()
    size = embed_dimensions(model)
    raw = [(seed[i % len(seed)] - 127.5) / 127.5 + i / (1000 * size) for i in range(size)][:dimensions]
    norm = math.sqrt(sum(v * v for v in raw)) or 1.0
    return [round(v / norm, 6) for v in raw]


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    # socketserver's default backlog of 5 resets connections under a burst of clients.
    request_queue_size = 128
    upstream: FakeUpstream


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"  # keep-alive, and chunked transfer for streams

    def log_message(self, format: str, *args: Any) -> None:
        pass  # keep test output clean

    # ------------------------------------------------------------------ plumbing
    def _send_json(self, status: int, payload: Any) -> None:
        self._send_raw(status, json.dumps(payload).encode(), "application/json")

    def _send_raw(self, status: int, data: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _read_body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _authorized(self) -> bool:
        key = self.server.upstream.api_key
        if key is None:
            return True
        given = self.headers.get("Authorization", "")
        if hmac.compare_digest(given.encode(), f"Bearer {key}".encode()):
            return True
        error = _error("Incorrect API key provided.", "invalid_request_error", "invalid_api_key")
        self._send_json(401, error)
        return False

    # ------------------------------------------------------------------ routes
    def do_GET(self) -> None:
        upstream = self.server.upstream
        if self.path == "/_control/calls":
            self._send_json(200, upstream.calls())
        elif self.path == "/v1/models":
            if self._authorized():
                data = [
                    {"id": m, "object": "model", "created": 0, "owned_by": "fake-upstream"} for m in MODEL_IDS
                ]
                self._send_json(200, {"object": "list", "data": data})
        else:
            self._send_json(404, _error(f"Unknown route {self.path}.", "invalid_request_error", "not_found"))

    def do_POST(self) -> None:
        raw = self._read_body()
        if self.path == "/_control/reset":
            self.server.upstream.reset_calls()
            self._send_json(200, {"ok": True})
        elif self.path == "/v1/chat/completions":
            self._chat(raw)
        elif self.path == "/v1/embeddings":
            self._embeddings(raw)
        else:
            self._send_json(404, _error(f"Unknown route {self.path}.", "invalid_request_error", "not_found"))

    def _chat(self, raw: bytes) -> None:
        upstream = self.server.upstream
        try:
            model, messages, body = _parse(raw)
        except BadRequest as exc:
            upstream._count("")
            self._send_json(400, _error(str(exc), "invalid_request_error"))
            return
        upstream._count(model)
        if not self._authorized():
            return
        try:
            limit = _max_tokens(body)
        except BadRequest as exc:
            self._send_json(400, _error(str(exc), "invalid_request_error"))
            return
        stream = body.get("stream") is True
        slow = _SLOW.match(model)
        # Interruptible, so stop() does not wait for sleeping handlers.
        if slow and upstream._stop_event.wait(float(slow.group(1))):
            return
        if model.startswith("fail-") or (model.startswith("broken-stream") and not stream):
            self._send_json(500, _error("The upstream failed (fake).", "server_error"))
            return
        if model.startswith("garbage-"):
            self._send_raw(200, b"<html><body>502 Bad Gateway</body></html>", "application/json")
            return
        content, completion, cut = truncate_tokens(reply_text(model, messages), limit)
        usage = None
        if not model.startswith("nousage-"):
            prompt = prompt_tokens(messages, body.get("tools") or body.get("functions"))
            if model.startswith("overbill-"):
                prompt += OVERBILL_TOKENS
            usage = {
                "prompt_tokens": prompt,
                "completion_tokens": completion,
                "total_tokens": prompt + completion,
            }
        finish = "length" if cut else "stop"
        pieces, gap = split_pieces(content), 0.0
        paced = _PACE.match(model)
        if paced:
            pieces = split_pieces(content, pieces=max(1, count_tokens(content)))  # a token a chunk
            seconds = float(paced.group(2))
            gap = seconds / 1000 if paced.group(1) == "pace" else seconds / max(1, len(pieces) - 1)
        if stream:
            options = body.get("stream_options")
            include_usage = isinstance(options, dict) and options.get("include_usage") is True
            try:
                self._stream(model, pieces, gap, finish, usage if include_usage else None, include_usage)
            except (BrokenPipeError, ConnectionResetError):
                upstream._count_stream("cut")  # the client hung up before the end
                raise
            return
        if gap and upstream._stop_event.wait(gap * (len(pieces) - 1)):
            return
        answer: dict[str, Any] = {
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": content, "refusal": None},
                    "logprobs": None,
                    "finish_reason": finish,
                }
            ],
        }
        if usage is not None:
            answer["usage"] = usage
        self._send_json(200, answer)

    def _embeddings(self, raw: bytes) -> None:
        upstream = self.server.upstream
        try:
            model, inputs, dimensions, encoding = _parse_embeddings(raw)
        except BadRequest as exc:
            upstream._count("")
            self._send_json(400, _error(str(exc), "invalid_request_error"))
            return
        upstream._count(model)
        if not self._authorized():
            return
        slow = _SLOW.match(model)
        if slow and upstream._stop_event.wait(float(slow.group(1))):
            return
        if model.startswith("fail-"):
            self._send_json(500, _error("The upstream failed (fake).", "server_error"))
            return
        if model.startswith("garbage-"):
            self._send_raw(200, b"<html><body>502 Bad Gateway</body></html>", "application/json")
            return
        data = []
        for index, item in enumerate(inputs):
            vector = embedding_vector(model, item, dimensions)
            packed: Any = vector
            if encoding == "base64":
                packed = base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
            data.append({"object": "embedding", "index": index, "embedding": packed})
        answer: dict[str, Any] = {"object": "list", "data": data, "model": model}
        if not model.startswith("nousage-"):
            tokens = embedding_tokens(inputs) + (OVERBILL_TOKENS if model.startswith("overbill-") else 0)
            answer["usage"] = {"prompt_tokens": tokens, "total_tokens": tokens}
        self._send_json(200, answer)

    def _stream(
        self,
        model: str,
        pieces: list[str],
        gap: float,
        finish: str,
        usage: dict[str, int] | None,
        include_usage: bool,
    ) -> None:
        upstream = self.server.upstream
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # each event as written
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        self.wfile.flush()
        drip = _DRIP.match(model)
        if drip:  # the whole answer, one byte per chunk: each read sees data soon enough
            events = self._events(model, pieces, finish, usage, include_usage)
            for byte in b"".join(events):
                if upstream._stop_event.wait(int(drip.group(1)) / 1000):
                    return
                self._chunk(bytes([byte]))
            self._chunk(b"")
            upstream._count_stream("completed")
            return
        if model.startswith("broken-stream"):
            for event in self._events(model, pieces, finish, usage, include_usage)[:3]:
                self._chunk(event)
            # Drop the connection mid-body: no final chunk, no usage, no [DONE], no chunked trailer.
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        for i, event in enumerate(self._events(model, pieces, finish, usage, include_usage)):
            # Events 2.. are the content pieces after the first: the model "writes" between them.
            if gap and 2 <= i <= len(pieces) and upstream._stop_event.wait(gap):
                return
            self._chunk(event)
        self._chunk(b"")  # end of the chunked body
        upstream._count_stream("completed")

    @staticmethod
    def _events(
        model: str, pieces: list[str], finish: str, usage: dict[str, int] | None, include_usage: bool
    ) -> list[bytes]:
        """The stream's server-sent events: role, one per piece, finish, usage, [DONE]."""
        base = {
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": model,
        }
        # OpenAI sends "usage": null on every chunk but the last when include_usage is on.
        extra: dict[str, Any] = {"usage": None} if include_usage else {}

        def choice(delta: dict[str, Any], finish_reason: str | None = None) -> bytes:
            chunk = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
            return b"data: " + json.dumps({**base, "choices": [chunk], **extra}).encode() + b"\n\n"

        events = [choice({"role": "assistant", "content": ""})]
        events += [choice({"content": piece}) for piece in pieces]
        events.append(choice({}, finish))
        if usage is not None:
            events.append(b"data: " + json.dumps({**base, "choices": [], "usage": usage}).encode() + b"\n\n")
        events.append(b"data: [DONE]\n\n")
        return events

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(f"{len(data):X}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()

    def setup(self) -> None:
        super().setup()
        self.server.upstream._count_stream("connections")  # a new TCP connection (keep-alive reuses one)

    def handle_one_request(self) -> None:
        # A client that timed out or hung up mid-answer is normal here, not an error to print.
        try:
            super().handle_one_request()
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True


class FakeUpstream(ThreadedServer):
    """The fake model server on a loopback port; `url` is its OpenAI base URL (ends in /v1)."""

    name = "fake-upstream"

    def __init__(self, host: str = "127.0.0.1", port: int = 0, api_key: str | None = None) -> None:
        super().__init__(host, port)
        self.api_key = api_key
        self._stop_event = threading.Event()
        self._lock = threading.Lock()
        self._calls: Counter[str] = Counter()
        self._streams: Counter[str] = Counter()

    def _bind(self) -> _Server:
        self._stop_event.clear()
        server = _Server((self._host, self._port), _Handler)
        server.upstream = self
        return server

    def _stopping(self) -> None:
        self._stop_event.set()  # streams in flight end rather than hold shutdown

    @property
    def url(self) -> str:
        return f"http://{self._host}:{self.port}/v1"

    def calls(self) -> dict[str, Any]:
        """Chat completion requests received, failing ones included."""
        with self._lock:
            return {
                "total": sum(self._calls.values()),
                "by_model": dict(self._calls),
                # Streams sent to their end, and streams whose reader hung up before it.
                "streams": {"completed": self._streams["completed"], "cut": self._streams["cut"]},
                "connections": self._streams["connections"],
            }

    def reset_calls(self) -> None:
        with self._lock:
            self._calls.clear()
            self._streams.clear()

    def _count_stream(self, outcome: str) -> None:
        with self._lock:
            self._streams[outcome] += 1

    def _count(self, model: str) -> None:
        with self._lock:
            self._calls[model] += 1


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Serve the fake OpenAI-compatible upstream on loopback.")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--api-key", default=None)
    args = parser.parse_args(argv)
    upstream = FakeUpstream(port=args.port, api_key=args.api_key).start()
    print(f"fake upstream at {upstream.url} (Ctrl-C to stop)", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        upstream.stop()


if __name__ == "__main__":
    main()
