"""What keeps the Completion function's cold start and hot path cheap, so a gain cannot
silently regress: what its import loads, its one JSON line per completion (log fields and EMF
metrics together), and the one watchdog thread that serves every upstream deadline."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from conduix.core import errors, telemetry
from conduix.inference import connections

ROOT = Path(__file__).resolve().parents[3]

# Modules the Completion function must not load when it starts: Stripe never (only
# payments talks to it, and Completion never does); Powertools, and the modules only some
# requests need (an Idempotency-Key, the embeddings route, alerts, notices), load where used.
NOT_AT_COLD_START = (
    "stripe",
    "conduix.payments",
    "aws_lambda_powertools",
    "pydantic",
    "conduix.inference.idempotency",
    "conduix.inference.embeddings",
    "conduix.accounts.alerts",
    "conduix.accounts.notices",
)


def _import_completion() -> dict[str, Any]:
    code = (
        "import gc, json, sys\n"
        f"sys.path[:0] = [{str(ROOT / 'functions' / 'completion')!r}, {str(ROOT / 'layers' / 'shared')!r}]\n"
        "import app\n"
        "found = {'modules': sorted(sys.modules), 'gc': gc.isenabled(), 'frozen': gc.get_freeze_count()}\n"
        "print(json.dumps(found))\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("POWERTOOLS_")}
    env.update(AWS_DEFAULT_REGION="us-east-1", POWERTOOLS_SERVICE_NAME="completion")
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env, timeout=120
    )
    loaded: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return loaded


def test_the_completion_functions_import_loads_only_what_every_request_needs() -> None:
    loaded = _import_completion()
    modules = set(loaded["modules"])
    pulled = sorted(m for m in modules for lazy in NOT_AT_COLD_START if m == lazy or m.startswith(lazy + "."))
    assert pulled == []
    assert {
        "app",
        "conduix.inference.completion",
        "conduix.ledger.leases",
        "boto3",
    } <= modules  # it did import
    # The garbage collector, paused during the import, runs again, with the import's objects frozen.
    assert loaded["gc"] is True and loaded["frozen"] > 0


def _lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def test_one_json_line_per_completion_carries_its_log_fields_and_its_metrics(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("POWERTOOLS_SERVICE_NAME", "completion")
    monkeypatch.setenv("POWERTOOLS_METRICS_NAMESPACE", "Conduix")
    context = SimpleNamespace(
        function_name="completion",
        memory_limit_in_mb=256,
        invoked_function_arn="arn:x",
        aws_request_id="inv-1",
    )
    telemetry.invocation(context, request_id="req-1")
    served = SimpleNamespace(
        replay_of=None,
        cache_status="BYPASS",
        requested_model="m",
        model="m",
        fallback_used=False,
        prompt_tokens=8,
        completion_tokens=17,
        cost=10**18 + 1,  # exact even beyond a float's 53 bits: no float carries money
        upstream_ms=1.26,
    )
    telemetry.completion_served(request_id="req-1", org_id="org_1", key_id="key_1", served=served)
    telemetry.completion_refused(
        errors.InsufficientCredits("no", available_nanos=0), request_id="req-2", org_id="org_1"
    )
    billed, refused = _lines(capsys.readouterr().out)

    assert (billed["message"], billed["level"], billed["service"]) == ("completion", "INFO", "completion")
    assert (billed["request_id"], billed["org_id"], billed["key_id"]) == ("req-1", "org_1", "key_1")
    assert billed["function_request_id"] == "inv-1" and billed["cost_nanos"] == 10**18 + 1
    spec = billed["_aws"]["CloudWatchMetrics"][0]
    assert spec["Namespace"] == "Conduix" and spec["Dimensions"] == [["outcome", "service"]]
    assert [m["Name"] for m in spec["Metrics"]] == ["Requests", "BilledNanoCredits", "UpstreamLatency"]
    assert (billed["outcome"], billed["Requests"], billed["BilledNanoCredits"]) == (
        "billed",
        [1],
        [10**18 + 1],
    )
    assert billed["UpstreamLatency"] == [1.3] and isinstance(billed["_aws"]["Timestamp"], int)

    assert (refused["outcome"], refused["code"], refused["cost_nanos"]) == (
        "402_credits",
        "insufficient_credits",
        0,
    )
    assert "BilledNanoCredits" not in refused and refused["Requests"] == [1]


def test_a_metric_that_cannot_be_written_never_fails_the_request(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("POWERTOOLS_METRICS_NAMESPACE", "x" * 256)  # CloudWatch takes at most 255
    telemetry.count_outcome("billed", billed_nanos=5)
    telemetry.completion_refused(RuntimeError("boom"), request_id="r")
    assert capsys.readouterr().out == ""


class _Sock:
    def __init__(self) -> None:
        self.shut = threading.Event()

    def shutdown(self, how: int) -> None:
        self.shut.set()


def _response() -> Any:
    return SimpleNamespace(_connection=SimpleNamespace(sock=_Sock()))


def test_one_watchdog_thread_ends_reads_at_their_deadlines_and_ignores_cancelled_ones() -> None:
    due, cancelled = _response(), _response()
    late = connections.Watchdog(cancelled, time.monotonic() + 0.2)
    soon = connections.Watchdog(due, time.monotonic() + 0.05)
    late.cancel()
    threads = threading.active_count()
    more = [connections.Watchdog(_response(), time.monotonic() + 60) for _ in range(50)]
    assert threading.active_count() == threads  # no thread per watchdog
    assert due._connection.sock.shut.wait(5) and soon.fired
    time.sleep(0.4)
    assert not cancelled._connection.sock.shut.is_set() and not late.fired
    for dog in more:
        dog.cancel()
