"""The stand-ins in their own processes, so that this process's CPU time is only the client's.

`time.process_time()` of a request path measures everything this process runs. With moto and
the fake upstream in threads of the same process, their work (which in production happens on
AWS and at the model provider) would be billed to the path; in subprocesses it is not.
"""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import TracebackType

ROOT = Path(__file__).resolve().parents[1]
_URL = re.compile(r"(http://127\.0\.0\.1:\d+\S*)")


class ServerProcess:
    """`python -m <module> --port 0`, reading its URL from the line it prints when it listens."""

    def __init__(self, module: str, name: str) -> None:
        self.module = module
        self.name = name
        self.process: subprocess.Popen[str] | None = None
        self.url = ""

    def start(self, timeout: float = 30) -> ServerProcess:
        self.process = subprocess.Popen(
            [sys.executable, "-m", self.module, "--port", "0"],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        lines: queue.Queue[str] = queue.Queue()
        stdout = self.process.stdout
        assert stdout is not None

        def pump() -> None:  # keeps reading, so a chatty server never blocks on a full pipe
            for line in stdout:
                lines.put(line)

        threading.Thread(target=pump, name=f"{self.name}-stdout", daemon=True).start()
        deadline = time.monotonic() + timeout
        seen = []
        while time.monotonic() < deadline:
            try:
                line = lines.get(timeout=0.2)
            except queue.Empty:
                if self.process.poll() is not None:
                    break
                continue
            seen.append(line)
            found = _URL.search(line)
            if found:
                self.url = found.group(1)
                return self
        self.stop()
        raise RuntimeError(f"{self.name} did not start: {''.join(seen)[-2000:]}")

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)  # SIGINT may be ignored in a background job
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def moto() -> ServerProcess:
    """The locked moto server (conduix_local.moto_server), alone in its process."""
    return ServerProcess("conduix_local.moto_server", "moto")


def upstream() -> ServerProcess:
    """The fake OpenAI-compatible upstream (conduix_local.upstream), alone in its process."""
    return ServerProcess("conduix_local.upstream", "upstream")
