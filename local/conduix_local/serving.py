"""What every local server shares: bound on 127.0.0.1 when `start()` returns, served from a
daemon thread, stopped (shut down, joined, closed) by `stop()` or by leaving a `with` block."""

from __future__ import annotations

import socketserver
import threading
from types import TracebackType
from typing import Self


class Started:
    """`with server:` starts it and stops it, whatever happens inside (every local server)."""

    def start(self) -> Self:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class ThreadedServer(Started):
    """Subclasses build their server in `_bind()`; `_stopping()` runs before it shuts down."""

    name = "local-server"

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        if host not in ("127.0.0.1", "localhost"):
            raise ValueError(f"{self.name} binds to 127.0.0.1 only")
        self._host = host
        self._port = port
        self._server: socketserver.BaseServer | None = None
        self._thread: threading.Thread | None = None

    def _bind(self) -> socketserver.BaseServer:
        raise NotImplementedError

    def _stopping(self) -> None:
        """Before the server shuts down (e.g. tell open streams to end)."""

    def start(self) -> Self:
        if self._server is not None:
            raise RuntimeError(f"{self.name} already started")
        self._server = self._bind()  # bound here: the port is known (and taken) on return
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},  # so stop() returns quickly
            name=self.name,
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        server, thread = self._server, self._thread
        self._server = self._thread = None
        if server is None:
            return
        self._stopping()
        server.shutdown()
        if thread is not None:
            thread.join(timeout=10)
        server.server_close()

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError(f"{self.name} not started")
        return int(self._server.server_address[1])  # type: ignore[index]  # (an AF_INET address)
