"""moto in server mode, made atomic: every request runs alone under one lock.

moto's backends are not thread-safe: concurrent conditional updates or transactions can both
succeed, and a failed transaction restores a deep copy of the whole table, wiping concurrent
writes (see /work/shared/notes/stand-ins.md). DynamoDB serializes per item; one global lock is
stricter than that, which is fine for a stand-in whose job is to be correct, not fast.
Under that lock a transaction rolls back from a per-item undo log (`moto_undo`), not from a
copy of the whole table, so the stand-in does not slow as its tables grow.
"""

from __future__ import annotations

import argparse
import io
import threading
import time
import urllib.request
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from moto.core.models import DEFAULT_ACCOUNT_ID
from moto.dynamodb.models import dynamodb_backends
from moto.dynamodb.models.dynamo_type import Item as DynamoItem
from moto.moto_server.werkzeug_app import (
    DomainDispatcherApplication,
    MotoRequestHandler,
    create_backend_app,
)
from werkzeug.serving import BaseWSGIServer, make_server

from conduix_local import iam, moto_index, moto_undo
from conduix_local.dynamo_standin import StandIn
from conduix_local.serving import ThreadedServer

StartResponse = Callable[..., Any]
WsgiApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]


class _Serialized:
    """WSGI middleware running the wrapped app, body included, under one lock."""

    def __init__(self, app: WsgiApp, standin: StandIn | None = None) -> None:
        self._app = app
        self._lock = threading.Lock()
        self.standin = standin
        self.principals: dict[str, iam.Principal] = {}  # access key id -> the function's policies
        # Per DynamoDB operation: calls and seconds spent under the lock (bench.load reads it).
        self.op_stats: dict[str, list[float]] = {}

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> list[bytes]:
        # Read the request body before taking the lock, so a slow client cannot stall everyone.
        length = environ.get("CONTENT_LENGTH")
        body = b""
        if length and length.isdigit():
            body = environ["wsgi.input"].read(int(length))
            environ["wsgi.input"] = io.BytesIO(body)
        if self.principals:
            headers = {
                k[5:].replace("_", "-").lower(): v for k, v in environ.items() if k.startswith("HTTP_")
            }
            refused = iam.denial(self.principals, headers, environ.get("PATH_INFO", ""), body)
            if refused is not None:
                status, response_headers, payload = refused
                start_response(
                    f"{status} {'Bad Request' if status == 400 else 'Forbidden'}", response_headers
                )
                return [payload]
        held: list[Any] = []
        if self.standin is not None:  # DynamoDB's throttles and transaction conflicts
            refused_by, held = self.standin.before(environ.get("HTTP_X_AMZ_TARGET", ""), body)
            if refused_by is not None:
                status_code, payload = refused_by
                start_response(
                    f"{status_code} Bad Request",
                    [("Content-Type", "application/x-amz-json-1.0"), ("Content-Length", str(len(payload)))],
                )
                return [payload]
        operation = environ.get("HTTP_X_AMZ_TARGET", "").rpartition(".")[2] or "other"
        with self._lock, self.standin.conflicts.running(held) if self.standin else _nothing():
            started = time.perf_counter()
            result = self._app(environ, start_response)
            try:
                # Flask responses may be lazy generators that still touch the backend.
                return list(result)
            finally:
                stat = self.op_stats.setdefault(operation, [0, 0.0])
                stat[0] += 1
                stat[1] += time.perf_counter() - started
                close = getattr(result, "close", None)
                if close is not None:
                    close()
                # moto tracks every model instance it ever made, for its dashboard; each
                # transaction deep-copies whole tables, so the DynamoDB items it tracks grow
                # without bound (memory, and /moto-api/data.json, which the tests read for
                # sent mail, slowing until it times out). Table state is kept elsewhere.
                DynamoItem.instances_tracked.clear()  # type: ignore[attr-defined]


@contextmanager
def _nothing() -> Iterator[None]:
    yield


class _QuietHandler(MotoRequestHandler):
    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        pass  # one access-log line per DynamoDB call drowns test output; errors still log


class LockedMotoServer(ThreadedServer):
    """A moto server on a loopback port, in a daemon thread, with every request serialized."""

    name = "locked-moto-server"

    def __init__(self, host: str = "127.0.0.1", port: int = 0, standin: StandIn | None = None) -> None:
        """`standin` models DynamoDB's throttling and transaction conflicts in front of moto
        (tests, bench and the local stack pass one; without it moto answers alone)."""
        super().__init__(host, port)
        self.standin = standin
        self._app: _Serialized | None = None

    def enforce(self, principals: dict[str, iam.Principal]) -> None:
        """Check every call signed with one of these access keys against its policies."""
        if self._app is None:
            raise RuntimeError("LockedMotoServer not started")
        self._app.principals = dict(principals)

    def operation_times(self, reset: bool = False) -> dict[str, tuple[int, float]]:
        """Per DynamoDB operation since the last reset: calls, and seconds spent under the lock."""
        if self._app is None:
            raise RuntimeError("LockedMotoServer not started")
        with self._app._lock:
            times = {op: (int(count), seconds) for op, (count, seconds) in self._app.op_stats.items()}
            if reset:
                self._app.op_stats.clear()
        return times

    def put_items_directly(
        self, table_name: str, items: Iterable[dict[str, Any]], region: str = "us-east-1"
    ) -> int:
        """Write items straight into moto's table, under the lock: a history of 100,000 items in
        seconds rather than the minutes their HTTP requests would take (bench.load's seeding).
        The items go through moto's own put (its validation, and moto_index's upkeep)."""
        if self._app is None:
            raise RuntimeError("LockedMotoServer not started")
        count = 0
        with self._app._lock:
            table = dynamodb_backends[DEFAULT_ACCOUNT_ID][region].get_table(table_name)
            for item in items:
                table.put_item(item)
                count += 1
            DynamoItem.instances_tracked.clear()  # type: ignore[attr-defined]
        return count

    @contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the server's lock: no request runs meanwhile (bench reads moto's backend)."""
        if self._app is None:
            raise RuntimeError("LockedMotoServer not started")
        with self._app._lock:
            yield

    @contextmanager
    def without_standin(self) -> Iterator[None]:
        """Serve moto alone for a while (tests of moto's own atomicity)."""
        if self._app is None:
            raise RuntimeError("LockedMotoServer not started")
        standin, self._app.standin = self._app.standin, None
        try:
            yield
        finally:
            self._app.standin = standin

    def _bind(self) -> BaseWSGIServer:
        moto_undo.install()  # a transaction costs the items it touches, not a copy of the table
        moto_index.install()  # a Query costs the items it reaches, not a sort of the table
        app = self._app = _Serialized(DomainDispatcherApplication(create_backend_app), self.standin)
        return make_server(self._host, self._port, app, threaded=True, request_handler=_QuietHandler)

    @property
    def url(self) -> str:
        return f"http://{self._host}:{self.port}"

    def reset(self) -> None:
        """Clear every backend's state (all tables, sent mail...)."""
        request = urllib.request.Request(f"{self.url}/moto-api/reset", data=b"", method="POST")
        with urllib.request.urlopen(request, timeout=10) as response:
            response.read()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Serve moto, one request at a time, on loopback.")
    parser.add_argument("--port", type=int, default=5000)
    args = parser.parse_args(argv)
    server = LockedMotoServer(port=args.port, standin=StandIn()).start()
    print(f"moto listening on {server.url} (Ctrl-C to stop)", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()


if __name__ == "__main__":
    main()
