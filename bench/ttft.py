"""Time to first token through the gateway, against a direct call to the same upstream.

    python -m bench.ttft [--levels 1,10,50] [--pairs 60] [--out docs/benchmarks.md]

Starts the local stack in this process (schedules off, the e2e catalog, as many Completion
workers as the most requests in flight: Lambda gives each request in flight its own execution
environment), funds one org, and for each number of requests in flight runs that many clients,
each alternating a streamed request through the gateway and the same request straight at the
fake upstream (model `pace-10`: a token every 10 ms). Time to first token is from sending the
request to reading the first chunk with content, on a new connection each time. The overhead
is the gateway's median (and p99) minus the direct call's, from the same run.

Writes (or replaces) the "Time to first token" section of docs/benchmarks.md; the rest of the
file is bench.run's.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import secrets
import sys
import threading
import time
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from bench.load import CATALOG, _lift_rate_limit, _new_org, free_port, percentile
from bench.report import write_section

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "benchmarks.md"
STACK_LOG = ROOT / "test-artifacts" / "ttft-stack.log"
MODEL = "test/pace"  # upstream model pace-10
SECTION = "## Time to first token"
MESSAGES = [{"role": "user", "content": "Stream a short answer, please"}]


def log(message: str) -> None:
    print(f"[ttft] {message}", file=sys.__stderr__, flush=True)


def first_token(base: str, path: str, headers: dict[str, str], model: str) -> float:
    """Seconds from sending a streamed request to its first content chunk; the rest is read."""
    url = urlsplit(base)
    body = json.dumps({"model": model, "messages": MESSAGES, "stream": True})
    # Long enough for a request queued behind 50 others on moto's lock: a measure, not a failure.
    conn = http.client.HTTPConnection(url.hostname or "127.0.0.1", url.port, timeout=120)
    try:
        started = time.perf_counter()
        conn.request("POST", url.path + path, body, {"Content-Type": "application/json", **headers})
        response = conn.getresponse()
        if response.status != 200:
            raise RuntimeError(f"HTTP {response.status}: {response.read()[:200]!r}")
        first = None
        while line := response.readline():
            if first is None and line.startswith(b"data: {"):
                chunk = json.loads(line[6:])
                if any((c.get("delta") or {}).get("content") for c in chunk.get("choices") or []):
                    first = time.perf_counter() - started
        if first is None:
            raise RuntimeError("no content arrived")
        return first
    finally:
        conn.close()


def run_level(
    clients: int, pairs: int, gateway: tuple[str, dict[str, str]], direct: tuple[str, dict[str, str]]
) -> tuple[list[float], list[float], int]:
    """(gateway TTFTs, direct TTFTs, failures) of `clients` concurrent clients, `pairs` each."""
    gw: list[float] = []
    dr: list[float] = []
    failures = [0]
    lock = threading.Lock()
    start = threading.Barrier(clients)

    def client(i: int) -> None:
        start.wait()
        for n in range(pairs):
            # Alternate which goes first, so neither always meets the other's tail.
            order = (
                [("gw", gateway), ("dr", direct)] if (i + n) % 2 == 0 else [("dr", direct), ("gw", gateway)]
            )
            for which, (base, headers) in order:
                model = MODEL if which == "gw" else "pace-10"
                path = "/v1/chat/completions" if which == "gw" else "/chat/completions"
                try:
                    seconds = first_token(base, path, headers, model)
                except Exception as exc:
                    log(f"{which} failed: {exc}")
                    with lock:
                        failures[0] += 1
                    continue
                with lock:
                    (gw if which == "gw" else dr).append(seconds)

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return gw, dr, failures[0]


def _median(values: list[float]) -> float:
    return percentile(values, 50)


def render(results: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    def ms(seconds: float) -> str:
        return f"{seconds * 1000:.1f}"

    lines = [
        SECTION,
        "",
        f"`make bench` (bench/ttft.py), {meta['date']}, {meta['machine']}, {meta['python']}; "
        f"{os.cpu_count()} CPUs (load average: the machine's 1-minute load after each level, "
        "other work included); "
        f"{meta['workers']} Completion workers; model `pace-10` (a token every 10 ms) on the fake "
        "upstream; each request on a new loopback connection; streamed through the local front, a "
        "Completion worker (hold, upstream through the kept-alive pool) and the moto stand-in. "
        "Overhead = gateway minus direct, from the same run. Target: under 20 ms at the median.",
        "",
        "| in flight | samples (gateway / direct) | gateway median | direct median | **overhead median** "
        "| gateway p99 | direct p99 | **overhead p99** | failures | load average |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        gw, dr = r["gateway"], r["direct"]
        lines.append(
            f"| {r['clients']} | {len(gw)} / {len(dr)} | {ms(_median(gw))} ms | {ms(_median(dr))} ms "
            f"| **{ms(_median(gw) - _median(dr))} ms** | {ms(percentile(gw, 99))} ms "
            f"| {ms(percentile(dr, 99))} ms | **{ms(percentile(gw, 99) - percentile(dr, 99))} ms** "
            f"| {r['failures']} | {r['load']:.1f} |"
        )
    lines += [
        "",
        "What the overhead is made of, locally: the front's proxy event and its pipe to the worker "
        "(about 2 ms for a bare GET /v1/models), the key check (cached while warm), the request's "
        "validation and pricing, the hold, and the upstream request on a kept-alive connection. "
        "The hold is most of it: it must land before the provider is called, and one conditional "
        "UpdateItem of the wallet item takes moto about 12 ms here (timed inside the handler while "
        "writing this benchmark), where DynamoDB takes a few. Under load, "
        "the hold waits for moto's one lock and the 2 cores are shared by every process: the "
        "figures at 10 and 50 in flight are this machine's contention, not Lambda's, where each "
        "request has its own environment and DynamoDB is not one locked process. At 50 in "
        "flight every round is 50 holds and 50 settle transactions through moto's one lock (a "
        "transaction deep-copies the table), on a machine whose load average says how many other "
        "processes wanted its 2 cores; this benchmark does not separate the two.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--levels", default="1,10,50", help="requests in flight (default 1,10,50)")
    parser.add_argument("--pairs", type=int, default=60, help="samples of each kind per level (default 60)")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    levels = [int(x) for x in args.levels.split(",")]
    from datetime import UTC, datetime

    from conduix_local.stack import Stack, StackConfig, StackError

    workers = max(levels)
    config = StackConfig(
        port=free_port(),
        models_file=str(CATALOG),
        operator_key="cdx_op_ttft_" + secrets.token_hex(16),
        schedules=False,
        workers_per_function=workers,
        seed_demo=False,
    )
    STACK_LOG.parent.mkdir(parents=True, exist_ok=True)
    log(f"starting the local stack ({workers} workers per function); its log: {STACK_LOG}")
    with open(STACK_LOG, "w", encoding="utf-8") as stack_log, contextlib.redirect_stderr(stack_log):
        stack = Stack(config)
        try:
            stack.start()
        except StackError as exc:
            log(f"the stack did not start: {exc}")
            return 2
        try:
            state = stack.state()
            org_id, key = _new_org(stack, "TTFT Org", Decimal(1000))
            _lift_rate_limit(state["moto"], [org_id])
            gateway = (state["api"], {"Authorization": f"Bearer {key}"})
            direct = (state["upstream"], {"Authorization": "Bearer local-upstream-key"})
            log(f"warming {workers} workers")
            run_level(workers, 2, gateway, direct)
            results = []
            for clients in levels:
                pairs = max(2, args.pairs // clients) if clients > 1 else args.pairs
                log(f"{clients} in flight, {pairs} pairs each")
                gw, dr, failures = run_level(clients, pairs, gateway, direct)
                load = os.getloadavg()[0]  # the machine's own load, which the figures include
                results.append(
                    {"clients": clients, "gateway": gw, "direct": dr, "failures": failures, "load": load}
                )
                log(
                    f"  overhead median {(_median(gw) - _median(dr)) * 1000:.1f} ms, "
                    f"p99 {(percentile(gw, 99) - percentile(dr, 99)) * 1000:.1f} ms"
                )
        finally:
            stack.stop()
    import platform

    meta = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.system()} {platform.machine()}",
        "python": f"Python {platform.python_version()}",
        "workers": workers,
    }
    section = render(results, meta)
    write_section(args.out, section, SECTION)
    print(section)
    return 1 if any(r["failures"] for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
