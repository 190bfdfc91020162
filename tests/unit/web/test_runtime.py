"""conduix.web.runtime against a stand-in of Lambda's Runtime API: a response goes out in streaming
mode, in the format API Gateway's STREAM integration reads, each piece as it is written."""

from __future__ import annotations

import http.client
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from conduix.web import runtime


class _RuntimeApi(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, event: Any) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.event = event
        self.pieces: list[tuple[float, bytes]] = []  # each chunk of the response, when it came
        self.headers_seen: dict[str, str] = {}
        self.trailers = b""


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _RuntimeApi

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        body = json.dumps(self.server.event).encode()
        self.send_response(200)
        self.send_header("Lambda-Runtime-Aws-Request-Id", "req-1")
        self.send_header("Lambda-Runtime-Deadline-Ms", str(int(time.time() * 1000) + 60_000))
        self.send_header("Lambda-Runtime-Invoked-Function-Arn", "arn:aws:lambda:us-east-1:1:function:f")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:
        self.server.headers_seen = {k.lower(): v for k, v in self.headers.items()}
        while True:
            size = int(self.rfile.readline().split(b";")[0], 16)
            if size == 0:
                self.server.trailers = b"".join(iter(lambda: self.rfile.readline(), b"\r\n"))
                break
            self.server.pieces.append((time.monotonic(), self.rfile.read(size)))
            self.rfile.readline()
        self.send_response(202)
        self.send_header("Content-Length", "0")
        self.end_headers()


@pytest.fixture
def api() -> Iterator[_RuntimeApi]:
    server = _RuntimeApi({"path": "/v1/chat/completions"})
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def _serve(api: _RuntimeApi, handler: Any) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", api.server_address[1], timeout=10)
    runtime.serve_next(conn, handler)
    conn.close()


def test_a_streamed_body_goes_out_piece_by_piece_after_the_prelude(api: _RuntimeApi) -> None:
    def events() -> Iterator[str]:
        yield "data: one\n\n"
        time.sleep(0.3)
        yield "data: two\n\n"

    def handler(event: Any, context: runtime.Context) -> dict[str, Any]:
        assert context.aws_request_id == "req-1" and context.get_remaining_time_in_millis() > 50_000
        return {"statusCode": 200, "headers": {"Content-Type": "text/event-stream"}, "body": events()}

    started = time.monotonic()
    _serve(api, handler)
    assert api.headers_seen["lambda-runtime-function-response-mode"] == "streaming"
    assert api.headers_seen["content-type"] == runtime.CONTENT_TYPE
    prelude, *pieces = api.pieces
    head, _, rest = prelude[1].partition(runtime.DELIMITER)
    assert json.loads(head) == {"statusCode": 200, "headers": {"Content-Type": "text/event-stream"}}
    assert rest == b"" and [p for _, p in pieces] == [b"data: one\n\n", b"data: two\n\n"]
    assert pieces[0][0] - started < 0.2 and pieces[1][0] - pieces[0][0] > 0.25  # sent when written
    assert api.trailers == b""


def test_a_whole_result_and_a_failure_mid_stream(api: _RuntimeApi) -> None:
    _serve(api, lambda event, context: {"statusCode": 404, "body": '{"error":{}}'})
    assert b"".join(p for _, p in api.pieces) == b'{"statusCode":404}' + runtime.DELIMITER + b'{"error":{}}'

    def failing() -> Iterator[str]:
        yield "data: one\n\n"
        raise RuntimeError("broke")

    api.pieces.clear()
    _serve(api, lambda event, context: {"statusCode": 200, "body": failing()})
    assert api.pieces[-1][1] == b"data: one\n\n"
    assert b"Lambda-Runtime-Function-Error-Type: RuntimeError" in api.trailers
