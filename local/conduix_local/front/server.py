"""The HTTP side of the API Gateway stand-in: requests in, (streamed) responses out."""

from __future__ import annotations

import contextlib
import hmac
import json
import socket
import traceback
import uuid
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from conduix_local.front.base import MAX_REQUEST_BYTES, InvocationError, _log
from conduix_local.front.events import (
    MalformedResponse,
    _error_json,
    build_proxy_event,
    proxy_response_to_http,
)
from conduix_local.front.schedules import _utc, scheduled_event

if TYPE_CHECKING:
    from conduix_local.front import Front


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
