"""Benchmarks of the billing path, written to docs/benchmarks.md.

    python -m bench.run [--rounds 7] [--per-round 40] [--import-runs 11] [--out docs/benchmarks.md]

Everything runs against the locked moto server (tables from template.yaml) and the fake
upstream, each in its own subprocess, with the functions' handlers invoked in this process
with API Gateway (REST proxy) events, as Lambda would invoke them:

1. DynamoDB requests per request, by operation, for each path, counted with botocore event
   hooks on the shared client, and the capacity units they would consume on DynamoDB,
   computed from item sizes (see bench/meter.py for the rules);
2. the CPU time (`time.process_time()`) of a warm billed request in this process, against one
   bare UpdateItem on the same client and moto, in the same run;
3. the import time of every function's app.py in fresh interpreters, against `import boto3`;
4. what those counts mean: writes per second on one org's wallet item, and the AWS cost per
   million billed requests.

moto's timings are never DynamoDB's: only counts, units and this process's CPU are reported
as results; wall times are labelled as loopback + moto.
"""

from __future__ import annotations

import argparse
import copy
import cProfile
import dataclasses
import gc
import hashlib
import importlib.util
import json
import os
import platform
import pstats
import re
import statistics
import subprocess
import sys
import time
import urllib.request
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

from bench import servers
from bench.meter import Meter, Summary, item_size, summarize, tables_from_template, write_units
from bench.report import KEPT, keep_section

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "benchmarks.md"
OPERATOR_KEY = "cdx_op_bench_" + uuid.uuid4().hex
MODEL = "openai/gpt-4o-mini"

# Prices used (us-east-1, on-demand). Stated in the report.
PRICE_WRU = 0.625  # $ per million write request units
PRICE_RRU = 0.125  # $ per million read request units
PRICE_LAMBDA_GB_S = 0.0000166667  # $ per GB-second
PRICE_LAMBDA_ARM_GB_S = 0.0000133334  # arm64, which the template uses (footnote only)
PRICE_LAMBDA_REQUEST = 0.20  # $ per million requests
PRICE_APIGW_REST = 3.50  # $ per million requests
# Lambda gives a function CPU in proportion to its memory: one full vCPU at 1,769 MB.
LAMBDA_FULL_VCPU_MB = 1769
MEMORY_SIZES = (128, 256, 512, 1024, 1769)
MEMORY_BEFORE_MB = 1024  # Completion's memory before it was sized from these figures
# Completion's memory is the smallest that keeps the billing path's CPU under this share of a
# 1 s model call, with room for the process's peak memory.
CPU_BUDGET_OF_ONE_SECOND = 0.05
MEMORY_HEADROOM = 1.5
PARTITION_WCU = 1000  # DynamoDB's per-partition write limit, units per second

TARGET_WRITES, TARGET_READS = 2, 0
TARGET_CPU_RATIO = 2.0
TARGET_IMPORT_RATIO = 1.2


def log(message: str) -> None:
    print(f"[bench] {message}", file=sys.__stderr__, flush=True)


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


# ------------------------------------------------------------------ the in-process "Lambda"


def load_handler(name: str) -> ModuleType:
    """functions/<name>/app.py as its own module, as Lambda loads it (its logger's service named)."""
    os.environ["POWERTOOLS_SERVICE_NAME"] = name
    spec = importlib.util.spec_from_file_location(f"bench_fn_{name}", ROOT / "functions" / name / "app.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def context(name: str, memory: int) -> Any:
    return SimpleNamespace(
        function_name=name,
        function_version="$LATEST",
        memory_limit_in_mb=memory,
        invoked_function_arn=f"arn:aws:lambda:us-east-1:123456789012:function:{name}",
        aws_request_id=str(uuid.uuid4()),
        get_remaining_time_in_millis=lambda: 30_000,
    )


class Bench:
    """The stand-ins, the tables, the handlers and two orgs (one funded, one empty)."""

    def __init__(self, moto_url: str, upstream_url: str, moto_pid: int) -> None:
        self.moto_url = moto_url
        self.moto_pid = moto_pid
        self.upstream_url = upstream_url
        os.environ.update(
            {
                "AWS_ENDPOINT_URL": moto_url,
                "AWS_DEFAULT_REGION": "us-east-1",
                "AWS_REGION": "us-east-1",
                "AWS_ACCESS_KEY_ID": "bench",
                "AWS_SECRET_ACCESS_KEY": "bench",
                "BILLING_TABLE": "BillingTable",
                "CACHE_TABLE": "CacheTable",
                "OPENAI_BASE_URL": upstream_url,
                "ANTHROPIC_BASE_URL": upstream_url,
                "OPENAI_API_KEY": "bench-upstream-key",
                "ANTHROPIC_API_KEY": "bench-upstream-key",
                "CONDUIX_SECRETS_FROM_ENV": "1",  # in AWS: Secrets Manager, cached (config.secret)
                "PROVIDER_KEYS_SECRET_ID": "local",
                "OPERATOR_KEY_SHA256": hashlib.sha256(OPERATOR_KEY.encode()).hexdigest(),
                "POWERTOOLS_TRACE_DISABLED": "true",
                "POWERTOOLS_LOG_LEVEL": "INFO",  # as template.yaml deploys it
                "POWERTOOLS_DEV": "false",
                "CONDUIX_PUBLIC_URL": "http://127.0.0.1",
            }
        )
        import boto3
        from conduix.store import dynamo
        from conduix_local.tables import create_tables
        from conduix_local.template import load_template

        self.template = load_template()
        side = boto3.client("dynamodb")
        self.table_names = create_tables(side, self.template)
        self.memory = {
            logical: int(r.get("Properties", {}).get("MemorySize", self._global_memory()))
            for logical, r in self.template["Resources"].items()
            if r.get("Type") == "AWS::Serverless::Function"
        }
        # Handler logs (JSON lines on stdout, as in Lambda) go to /dev/null: still written, unseen.
        self.devnull = open(os.devnull, "w")  # noqa: SIM115 - lives as long as the run
        real_stdout, sys.stdout = sys.stdout, self.devnull
        try:
            self.admin = load_handler("admin")
            self.sweeper_fn = load_handler("hold_sweeper")
            # Last: each function sets up the shared package's logging, and in Lambda the
            # Completion function's process has its own (no Powertools), not the others'.
            self.completion = load_handler("completion")
        finally:
            sys.stdout = real_stdout
        self.client = dynamo.client()
        self.meter = Meter(self.client, side, tables_from_template(self.template, self.table_names))
        self.side = side
        self.completion_event = json.loads((ROOT / "events" / "completion.json").read_text())
        self.admin_event = json.loads((ROOT / "events" / "admin.json").read_text())
        self.sweeper_event = json.loads((ROOT / "events" / "hold_sweeper.json").read_text())
        self.funded_org, self.funded_key = self.new_org("1000000")
        self.empty_org, self.empty_key = self.new_org(None)

    def _global_memory(self) -> int:
        return int(self.template.get("Globals", {}).get("Function", {}).get("MemorySize", 128))

    # -------------------------------------------------------------- events

    def admin_call(self, method: str, path: str, body: dict[str, Any]) -> dict[str, Any]:
        event = copy.deepcopy(self.admin_event)
        event["headers"]["Authorization"] = f"Bearer {OPERATOR_KEY}"
        event["multiValueHeaders"]["Authorization"] = [f"Bearer {OPERATOR_KEY}"]
        event.update(httpMethod=method, path=path, body=json.dumps(body))
        event["pathParameters"] = {"proxy": path.removeprefix("/admin/")}
        event["requestContext"].update(httpMethod=method, path=path, requestId=str(uuid.uuid4()))
        result: dict[str, Any] = self.admin.lambda_handler(
            event, context("admin", self.memory["AdminFunction"])
        )
        return result

    def new_org(self, credits: str | None) -> tuple[str, str]:
        from conduix.ledger import wallet_settings
        from conduix.pricing import plans

        created = self.admin_call("POST", "/admin/orgs", {"name": "Bench Org", "email": "bench@example.test"})
        assert created["statusCode"] == 201, created
        org_id = json.loads(created["body"])["org_id"]
        key = self.admin_call("POST", f"/admin/orgs/{org_id}/api-keys", {})
        assert key["statusCode"] == 201, key
        if credits:
            expect(201)(self.grant(org_id, credits))
        # The free plan allows 60 requests a minute per key; the bench sends more. The largest
        # shipped plan keeps the rate limit out of the way (its check rides on the hold's write).
        biggest = max(plans.all_plans().values(), key=lambda p: p.requests_per_minute)
        wallet_settings.set_plan(org_id, biggest)
        return org_id, json.loads(key["body"])["api_key"]

    def grant(self, org_id: str, credits: str) -> dict[str, Any]:
        body = {"amount": credits, "reason": "bench", "idempotency_key": "bench-" + uuid.uuid4().hex}
        return self.admin_call("POST", f"/admin/orgs/{org_id}/credits", body)

    def completion_event_for(self, body: dict[str, Any], key: str | None = None) -> tuple[Any, Any]:
        """What API Gateway and the Lambda runtime hand the handler: an event and a context."""
        event = copy.deepcopy(self.completion_event)
        auth = f"Bearer {key or self.funded_key}"
        event["headers"]["Authorization"] = auth
        event["multiValueHeaders"]["Authorization"] = [auth]
        event["body"] = json.dumps(body)
        event["requestContext"]["requestId"] = str(uuid.uuid4())
        return event, context("completion", self.memory["CompletionFunction"])

    def completion_call(self, body: dict[str, Any], key: str | None = None) -> dict[str, Any]:
        event, ctx = self.completion_event_for(body, key)
        result: dict[str, Any] = self.completion.lambda_handler(event, ctx)
        return result

    def sweep_call(self) -> dict[str, Any]:
        result: dict[str, Any] = self.sweeper_fn.lambda_handler(
            copy.deepcopy(self.sweeper_event), context("sweeper", self.memory["HoldSweeperFunction"])
        )
        return result

    def close(self) -> None:
        self.devnull.close()


def billed_body(i: int = 0) -> dict[str, Any]:
    """A warm uncached billed request: temperature unset (BYPASS), as in events/completion.json."""
    return {"model": MODEL, "messages": [{"role": "user", "content": "Say hello"}], "max_tokens": 64}


def miss_body(i: int) -> dict[str, Any]:
    content = f"Say hello, number {i} {uuid.uuid4().hex[:8]}"
    return {
        "model": MODEL,
        "messages": [{"role": "user", "content": content}],
        "max_tokens": 64,
        "temperature": 0,
    }


def hit_body(i: int = 0) -> dict[str, Any]:
    return {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Say hello from the cache"}],
        "max_tokens": 64,
        "temperature": 0,
    }


def expect(status: int, cache: str | None = None) -> Callable[[dict[str, Any]], None]:
    def check(result: dict[str, Any]) -> None:
        assert result["statusCode"] == status, (result["statusCode"], result.get("body", "")[:300])
        if cache:
            assert result["headers"].get("x-conduix-cache") == cache, result["headers"]

    return check


# ------------------------------------------------------------------ 1. counts and units


@dataclasses.dataclass
class PathResult:
    name: str
    description: str
    summary: Summary | None
    error: str = ""


def count_path(
    bench: Bench,
    name: str,
    description: str,
    run: Callable[[int], None],
    n: int,
    warmup: int = 3,
    setup: Callable[[int], None] | None = None,
) -> PathResult:
    try:
        for i in range(warmup):
            if setup:
                setup(-1 - i)
            run(-1 - i)
        calls = []
        with bench.meter.attached() as meter:
            for i in range(n):
                if setup:
                    setup(i)
                    meter.take()  # the setup's own calls are not the path's
                run(i)
                calls += meter.take()
        return PathResult(name, description, summarize(calls, n))
    except Exception as exc:  # report the path as broken, keep measuring the others
        log(f"{name}: {type(exc).__name__}: {exc}")
        return PathResult(name, description, None, f"{type(exc).__name__}: {exc}")


def measure_paths(bench: Bench, n: int) -> list[PathResult]:
    from conduix.core import clock
    from conduix.ledger import holds

    results = []
    log("counting: warm uncached billed request")
    results.append(
        count_path(
            bench,
            "billed",
            "warm, uncached billed completion (temperature unset: BYPASS)",
            lambda i: expect(200, "BYPASS")(bench.completion_call(billed_body(i))),
            n,
        )
    )
    log("counting: cache miss")
    results.append(
        count_path(
            bench,
            "miss",
            "cache miss (temperature 0, new prompt): billed and stored",
            lambda i: expect(200, "MISS")(bench.completion_call(miss_body(i))),
            n,
        )
    )
    log("counting: cache hit")
    bench.completion_call(hit_body())  # fills the entry
    results.append(
        count_path(
            bench,
            "hit",
            "cache hit (temperature 0, repeated prompt): free",
            lambda i: expect(200, "HIT")(bench.completion_call(hit_body(i))),
            n,
        )
    )
    log("counting: 402 refusal")
    results.append(
        count_path(
            bench,
            "refused",
            "402 insufficient credits (an org with no credits; after its first refusal)",
            lambda i: expect(402)(bench.completion_call(billed_body(i), key=bench.empty_key)),
            n,
        )
    )
    log("counting: operator grant")
    results.append(
        count_path(
            bench,
            "grant",
            "operator grant (POST /admin/orgs/{id}/credits, new idempotency key)",
            lambda i: expect(201)(bench.grant(bench.funded_org, "1")),
            n,
        )
    )

    def expired_hold(i: int) -> None:
        past = clock.now() - timedelta(hours=1)
        holds.reserve(
            bench.funded_org, f"bench-dead-{uuid.uuid4()}", 10**6, model=MODEL, key_id="k", now=past
        )

    def sweep_one(i: int) -> None:
        result = bench.sweep_call()
        assert result["holds_released"] == 1, result

    log("counting: hold sweep")
    bench.sweep_call()  # forget the wallets the earlier paths left in the sweep index
    results.append(
        count_path(
            bench,
            "sweep",
            "HoldSweeper run releasing one expired hold (one wallet in the index)",
            sweep_one,
            n,
            warmup=1,
            setup=expired_hold,
        )
    )
    results.append(
        count_path(
            bench,
            "sweep-idle",
            "HoldSweeper run with nothing to do (empty sweep index)",
            lambda i: bench.sweep_call(),
            n,
            warmup=1,
        )
    )
    return results


def wallet_growth(bench: Bench) -> dict[str, Any]:
    """The wallet's size with k holds open (as many requests of one org in flight)."""
    from conduix.core import clock
    from conduix.ledger import holds, wallets

    org, _ = bench.new_org("1000")
    key = bench.table_names["BillingTable"]
    wallet_key = wallets.wallet_key(org)

    def size() -> int:
        return item_size(bench.side.get_item(TableName=key, Key=wallet_key, ConsistentRead=True)["Item"])

    now = clock.now()

    def hold() -> None:
        # A request id like API Gateway's (a UUID), the catalog's model id, a key id.
        holds.reserve(org, str(uuid.uuid4()), 10**6, model=MODEL, key_id="key_0123456789ab", now=now)

    def reserve_cpu() -> float:
        """Median CPU of one more hold (placed, then released untimed) at the current size."""
        samples = []
        for _ in range(15):
            rid = str(uuid.uuid4())
            cpu = time.process_time()
            holds.reserve(org, rid, 10**6, model=MODEL, key_id="key_0123456789ab", now=now)
            samples.append(time.process_time() - cpu)
            holds.release(org, rid, 10**6)
        return median(samples)

    sizes, cpu = {0: size()}, {0: reserve_cpu()}
    placed = 0
    for k in (1, 10, 50, 100, 200):
        while placed < k:
            hold()
            placed += 1
        sizes[k], cpu[k] = size(), reserve_cpu()
    per_hold = (sizes[200] - sizes[0]) / 200
    return {
        "sizes": sizes,
        "reserve_cpu": cpu,
        "per_hold": per_hold,
        "max_holds": int((400 * 1024 - sizes[0]) / per_hold) if per_hold > 0 else 0,
    }


# ------------------------------------------------------------------ 2. CPU


def measure_cpu(bench: Bench, rounds: int, per_round: int) -> dict[str, Any]:
    from conduix.core import clock
    from conduix.ledger import holds, leases
    from conduix.store import dynamo

    table = bench.table_names["BillingTable"]
    client = dynamo.client()
    bare_key = {"pk": {"S": "BENCH#bare"}, "sk": {"S": "COUNTER"}}

    def bare_update() -> None:
        client.update_item(
            TableName=table,
            Key=bare_key,
            UpdateExpression="ADD n :one",
            ExpressionAttributeValues={":one": {"N": "1"}},
        )

    payload = json.dumps(
        {"model": "gpt-4o-mini", "messages": billed_body()["messages"], "max_tokens": 64}
    ).encode()

    def bare_upstream() -> None:
        request = urllib.request.Request(  # noqa: S310 - a loopback URL of our own
            bench.upstream_url + "/chat/completions",
            data=payload,
            headers={"Content-Type": "application/json", "Authorization": "Bearer x"},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
            json.loads(response.read())

    # A hot org: other requests of it are in flight (HOT_IN_FLIGHT holds, as other environments
    # would have), so this environment reserves against an escrow lease (conduix.ledger.leases). The
    # funded org sends one request at a time, so each of its requests takes a hold of its own.
    hot_org, hot_key = bench.new_org("1000000")
    others = [f"bench-other-{uuid.uuid4()}" for _ in range(leases.HOT_IN_FLIGHT)]
    for rid in others:
        holds.reserve(hot_org, rid, 10**6, model=MODEL, key_id="key_elsewhere", now=clock.now())
    hot_calls: Counter[str] = Counter()
    counting = [False]

    def count_call(model: Any, **_: Any) -> None:
        if counting[0]:
            hot_calls[model.name] += 1

    client.meta.events.register("before-call.dynamodb", count_call)
    check = expect(200, "BYPASS")

    def billed() -> None:
        check(bench.completion_call(billed_body()))

    def timed_handler(key: str | None) -> tuple[float, float]:
        event, ctx = bench.completion_event_for(billed_body(), key)  # the runtime's work, not timed
        counting[0] = key is not None
        wall, cpu = time.perf_counter(), time.process_time()
        result = bench.completion.lambda_handler(event, ctx)
        spent = time.process_time() - cpu, time.perf_counter() - wall
        counting[0] = False
        check(result)
        return spent

    def timed(fn: Callable[[], None]) -> tuple[float, float]:
        wall, cpu = time.perf_counter(), time.process_time()
        fn()
        return time.process_time() - cpu, time.perf_counter() - wall

    for _ in range(5):  # warm every path
        bare_update(), bare_upstream(), billed(), timed_handler(hot_key)
    hot_calls.clear()
    per_round_results = []
    hot_all: list[float] = []
    for r in range(rounds):
        log(f"cpu: round {r + 1}/{rounds}")
        gc.collect()
        samples: dict[str, list[tuple[float, float]]] = defaultdict(list)
        for _ in range(per_round):  # interleaved, so drift hits all alike
            samples["update"].append(timed(bare_update))
            samples["hot"].append(timed_handler(hot_key))
            samples["upstream"].append(timed(bare_upstream))
            samples["billed"].append(timed_handler(None))
        hot_all += [c for c, _ in samples["hot"]]
        medians = {name: median([c for c, _ in s]) for name, s in samples.items()}
        walls = {name: median([w for _, w in s]) for name, s in samples.items()}
        per_round_results.append(
            {
                "cpu": medians,
                "wall": walls,
                "ratio": medians["hot"] / medians["update"],
                "quiet_ratio": medians["billed"] / medians["update"],
            }
        )
    hot_requests = rounds * per_round

    # What the stand-in itself spends (moto's process): why the local stack is slow, never a
    # DynamoDB figure.
    moto_cpu = {}
    for name, fn in (("billed", billed), ("update", bare_update)):
        before = process_cpu(bench.moto_pid)
        for _ in range(per_round):
            fn()
        moto_cpu[name] = (process_cpu(bench.moto_pid) - before) / per_round

    # Where the hot path's CPU goes (a separate, profiled run: profiling inflates times).
    profiler = cProfile.Profile(time.process_time)
    for _ in range(per_round):
        event, ctx = bench.completion_event_for(billed_body(), hot_key)
        profiler.enable()
        result = bench.completion.lambda_handler(event, ctx)
        profiler.disable()
        check(result)
    client.meta.events.unregister("before-call.dynamodb", count_call)
    for rid in others:
        holds.release(hot_org, rid, 10**6)
    leases.close_all(clock.now())  # the lease folded back into the wallet, as a retiring environment does
    return {
        "rounds": per_round_results,
        "profile": _profile_groups(profiler),
        "steps": _profile_steps(profiler),
        "moto": moto_cpu,
        "hot_calls": {name: count / hot_requests for name, count in sorted(hot_calls.items())},
        "hot_mean": statistics.fmean(hot_all),
        "hot_in_flight": leases.HOT_IN_FLIGHT,
    }


_STEPS = (
    ("leases.py", "reserve", "the reservation: `leases.reserve` (in memory, against the lease)"),
    ("lease_store.py", "record", "the bill: `lease_store.record` (one TransactWriteItems)"),
    ("providers.py", "complete", "the upstream call: `providers.complete` (http.client, kept alive)"),
    ("telemetry.py", "completion_served", "the request's log line and metrics (one JSON line)"),
    ("auth.py", "authenticate", "the API key (cached)"),
)


def _profile_steps(profiler: cProfile.Profile) -> list[tuple[str, float]]:
    """Each step's share of the handler's CPU (cumulative time of its function)."""
    stats = pstats.Stats(profiler).stats  # type: ignore[attr-defined]
    total = sum(tottime for (_, _, tottime, _, _) in stats.values())
    shares = []
    for filename, function, label in _STEPS:
        cumulative = sum(
            ct
            for (f, _, name), (_, _, _, ct, _) in stats.items()
            if f.endswith(filename) and name == function
        )
        shares.append((label, cumulative / total))
    shares.append(("everything else: the event, the request's parsing and pricing, the response", 0.0))
    shares[-1] = (shares[-1][0], 1 - sum(s for _, s in shares))
    return shares


def process_cpu(pid: int) -> float:
    """User + system CPU seconds of another process, from /proc (Linux); NaN elsewhere."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _profile_groups(profiler: cProfile.Profile) -> list[tuple[str, float]]:
    stats = pstats.Stats(profiler)
    groups: Counter[str] = Counter()
    for (filename, _, _), (_, _, tottime, _, _) in stats.stats.items():  # type: ignore[attr-defined]
        groups[_group(filename)] += tottime
    total = sum(groups.values())
    return [(name, t / total) for name, t in groups.most_common()]


def _group(filename: str) -> str:
    path = filename.replace("\\", "/")
    for marker, name in (
        ("/botocore/", "botocore (request build, signing, parsing)"),
        ("/boto3/", "boto3"),
        ("/urllib3/", "urllib3 (DynamoDB HTTP)"),
        ("/aws_lambda_powertools/", "Powertools (logger, decorators)"),
        ("/conduix/", "conduix (billing logic)"),
        ("/http/client.py", "http.client (both HTTP clients)"),
        ("/urllib/", "urllib (upstream call)"),
        ("/json/", "json"),
        ("/email/", "email (HTTP header parsing)"),
        ("/logging/", "logging"),
        ("/ssl.py", "ssl"),
        ("/socket.py", "socket"),
        ("/functions/", "function handlers"),
    ):
        if marker in path:
            return name
    if path.startswith("<") or path == "~":
        return "C functions (socket calls, hashing, JSON and regex engines...)"
    return "other stdlib"


# ------------------------------------------------------------------ 3. cold-start imports


# As in Lambda: the function's code first on the path, then the layer (/opt/python there).
_IMPORT_SNIPPET = """
import sys, time
sys.path[:0] = [{path!r}, {layer!r}]
t = time.perf_counter()
{statement}
print(f"{{time.perf_counter() - t:.6f}}")
"""
LAYER = str(ROOT / "layers" / "shared")


def _import_once(statement: str, path: str, env: dict[str, str]) -> float:
    code = _IMPORT_SNIPPET.format(path=path, layer=LAYER, statement=statement)
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=env,
        cwd=path,
        check=True,
        timeout=120,
    )
    return float(out.stdout.strip().splitlines()[-1])


def measure_imports(runs: int) -> dict[str, Any]:
    # PYTHONDONTWRITEBYTECODE (set in some shells and CI) would make every run compile the
    # layer's source while boto3's bytecode comes from site-packages: the warm-up must cache it.
    dropped = ("POWERTOOLS_SERVICE_NAME", "PYTHONDONTWRITEBYTECODE")
    env = {k: v for k, v in os.environ.items() if k not in dropped}
    functions = sorted(p.name for p in (ROOT / "functions").iterdir() if (p / "app.py").exists())
    samples: dict[str, list[float]] = defaultdict(list)
    baseline: list[float] = []
    # Warm the bytecode and page caches once, as a deployed package would be.
    _import_once("import boto3", str(ROOT), env)
    for name in functions:
        _import_once("import app", str(ROOT / "functions" / name), env)
    for r in range(runs):
        log(f"imports: run {r + 1}/{runs}")
        baseline.append(_import_once("import boto3", str(ROOT), env))
        for name in functions:  # interleaved with the baseline, so drift hits both alike
            samples[name].append(_import_once("import app", str(ROOT / "functions" / name), env))
        baseline.append(_import_once("import boto3", str(ROOT), env))
    base = median(baseline)
    medians = {name: median(values) for name, values in samples.items()}
    return {
        "runs": runs,
        "baseline": base,
        "baseline_runs": len(baseline),
        "medians": medians,
        "ratios": {name: value / base for name, value in medians.items()},
        # Fastest runs too: on a busy machine interference only ever adds time.
        "best_ratios": {name: min(values) / min(baseline) for name, values in samples.items()},
        "spread": {name: (min(v), max(v)) for name, v in samples.items()},
        "by_package": _import_self_times(env),
        "completion_rss_mb": _completion_peak_rss_mb(env),
    }


def _completion_peak_rss_mb(env: dict[str, str]) -> float:
    """Peak resident memory of a Completion process once imported and its DynamoDB client made."""
    path = str(ROOT / "functions" / "completion")
    code = (
        f"import sys, resource; sys.path[:0] = [{path!r}, {LAYER!r}]; import app; "
        "from conduix.store import dynamo; dynamo.client(); "
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=env,
        cwd=path,
        check=True,
        timeout=120,
    )
    return int(out.stdout.strip().splitlines()[-1]) / 1024  # Linux reports KiB


def _import_self_times(env: dict[str, str]) -> list[tuple[str, float]]:
    """`python -X importtime`: the Completion function's import, its own time per top-level package."""
    path = str(ROOT / "functions" / "completion")
    code = f"import sys; sys.path[:0] = [{path!r}, {LAYER!r}]; import app"
    out = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", code],
        capture_output=True,
        text=True,
        env=env,
        cwd=path,
        check=True,
        timeout=120,
    )
    rows = []
    for line in out.stderr.splitlines():
        if not line.startswith("import time:") or "cumulative" in line:
            continue
        self_us, _, name = line.removeprefix("import time:").split("|")
        depth = (len(name) - len(name.lstrip(" ")) - 1) // 2
        rows.append((depth, name.strip(), int(self_us)))
    # Lines come children first, so walking them backwards meets each parent before its
    # children. A module's own time goes to the nearest of the packages below that imported
    # it (itself included): the standard library that botocore pulls in counts as botocore's.
    end = max(i for i, (depth, name, _) in enumerate(rows) if depth == 0 and name == "app")
    owner_at_depth: dict[int, str] = {0: _IMPORT_GROUPS["app"]}
    groups: Counter[str] = Counter({_IMPORT_GROUPS["app"]: rows[end][2]})
    for depth, name, self_us in reversed(rows[:end]):
        if depth == 0:
            break  # what the interpreter imported before app belongs to no one
        owner = _IMPORT_GROUPS.get(name.split(".")[0]) or owner_at_depth[depth - 1]
        owner_at_depth[depth] = owner
        groups[owner] += self_us
    return [(name, us / 1e6) for name, us in groups.most_common(8)]


_BOTO = "boto3 and its dependencies (botocore, s3transfer, urllib3, dateutil, jmespath)"
_IMPORT_GROUPS = {
    "app": "app.py (and the stdlib it imports itself)",
    "boto3": _BOTO,
    "botocore": _BOTO,
    "s3transfer": _BOTO,
    "urllib3": _BOTO,
    "dateutil": _BOTO,
    "jmespath": _BOTO,
    "six": _BOTO,
    "aws_lambda_powertools": "aws_lambda_powertools (Logger, Metrics)",
    "conduix": "conduix (the layer's own modules, and the stdlib they import)",
}


# ------------------------------------------------------------------ 4. the report


def row(*cells: object) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def header(*cells: str) -> list[str]:
    return [row(*cells), "|" + "---|" * len(cells)]


def para(*parts: str) -> list[str]:
    return ["".join(parts), ""]


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f}"


def money(value: float) -> str:
    return f"${value:,.2f}"


def price(value: float) -> str:
    return "$" + f"{value:.10f}".rstrip("0").rstrip(".")


def _fmt_ops(summary: Summary) -> str:
    return "<br>".join(f"{op} x {count:g}" for op, count in sorted(summary.calls.items())) or "none"


_VARIABLE_PARTS = (
    (re.compile(r"ORG#org_[0-9a-f]+"), "ORG#<org>"),
    (re.compile(r"\d{4}-\d\d-\d\dT[\d:.]+Z"), "<time>"),
    (re.compile(r"\d{4}-\d\d-\d\d"), "<day>"),
    (re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"), "<request id>"),
    (re.compile(r"key_[0-9a-f]+"), "<key id>"),
)


def _item_kind(item: str) -> str:
    """An item's key with its variable parts named, so each request's new items group together."""
    table, *key = item.split("|")
    text = " / ".join(key)
    for pattern, name in _VARIABLE_PARTS:
        text = pattern.sub(name, text)
    return f"{table} `{text}`"


def _items_by_kind(summary: Summary) -> list[tuple[str, float, float, int]]:
    writes: Counter[str] = Counter()
    wru: Counter[str] = Counter()
    sizes: dict[str, int] = {}
    for item, count in summary.writes_per_item.items():
        kind = _item_kind(item)
        writes[kind] += count  # type: ignore[assignment]
        wru[kind] += summary.wru_per_item.get(item, 0)  # type: ignore[assignment]
        sizes[kind] = max(sizes.get(kind, 0), summary.item_sizes.get(item, 0))
    return [(kind, writes[kind], wru[kind], sizes[kind]) for kind, _ in writes.most_common()]


def _wallet_key(summary: Summary) -> str | None:
    return next((k for k in summary.wru_per_item if k.endswith("|WALLET")), None)


def render(
    paths: list[PathResult],
    growth: dict[str, Any],
    cpu: dict[str, Any],
    imports: dict[str, Any],
    meta: dict[str, Any],
) -> str:
    by_name = {p.name: p for p in paths}
    billed = by_name["billed"].summary
    rounds = cpu["rounds"]
    ratios = [r["ratio"] for r in rounds]
    kinds = ("hot", "billed", "update", "upstream")
    cpu_med = {name: median([r["cpu"][name] for r in rounds]) for name in kinds}
    wall_med = {name: median([r["wall"][name] for r in rounds]) for name in kinds}
    ratio = median(ratios)
    quiet_ratio = median([r["quiet_ratio"] for r in rounds])
    import_ratio = imports["ratios"].get("completion", float("nan"))
    out: list[str] = []

    def verdict(ok: bool) -> str:
        return "met" if ok else "**missed**"

    out += ["# Benchmarks", ""]
    out += para(
        f"Generated by `python -m bench.run` on {meta['date']} ({meta['python']}, {meta['machine']}, ",
        f"{meta['cpus']} CPUs; boto3 {meta['boto3']}, moto {meta['moto']}) in {meta['seconds']:.0f} s. ",
        "Every figure below is measured or computed by that run; run it again after a change.",
    )
    out += para(
        "Against the locked moto server with the tables of `template.yaml` and the fake upstream, each in ",
        "its own process; the functions' handlers run in the benchmark's process, invoked with API Gateway ",
        "REST proxy events as Lambda would. **moto is not DynamoDB**: its latencies say nothing about ",
        "DynamoDB's, so the results are request counts, capacity units computed from item sizes, and this ",
        "process's CPU time.",
    )

    # ---------------------------------------------------------- targets
    out += ["## Targets", ""]
    out += header("target", "measured", "")
    if billed:
        ok = billed.writes <= TARGET_WRITES and billed.reads <= TARGET_READS
        out.append(
            row(
                f"warm uncached billed request: at most {TARGET_WRITES} DynamoDB writes and no reads",
                f"{billed.writes:g} writes, {billed.reads:g} reads",
                verdict(ok),
            )
        )
    out.append(
        row(
            f"billing-path CPU at most {TARGET_CPU_RATIO:g}x one bare UpdateItem (a hot org's request)",
            f"{ratio:.2f}x (median of {len(rounds)} rounds, {min(ratios):.2f} to {max(ratios):.2f}; "
            f"an org with nothing else in flight, two writes: {quiet_ratio:.2f}x)",
            verdict(ratio <= TARGET_CPU_RATIO),
        )
    )
    out.append(
        row(
            f"Completion cold import at most {TARGET_IMPORT_RATIO:g}x `import boto3`",
            f"{import_ratio:.2f}x ({imports['medians'].get('completion', 0) * 1000:.0f} ms vs "
            f"{imports['baseline'] * 1000:.0f} ms, medians of {imports['runs']} and "
            f"{imports['baseline_runs']}; fastest runs {imports['best_ratios'].get('completion', 0):.2f}x)",
            verdict(import_ratio <= TARGET_IMPORT_RATIO),
        )
    )
    out.append("")

    # ---------------------------------------------------------- DynamoDB per request
    out += ["## DynamoDB per request", ""]
    counted = next((p.summary.requests for p in paths if p.summary), 0)
    out += para(
        "Counted with botocore event hooks on the shared DynamoDB client (`conduix.store.dynamo.client()`), ",
        f"over {counted} requests per path after a warm-up (the API key is cached, the clients exist). ",
        "Figures are per request. *Index WRU* are the writes DynamoDB makes to the table's global ",
        "secondary indexes on top of the table's.",
    )
    out += header("path", "DynamoDB requests", "writes", "reads", "table WRU", "index WRU", "RRU")
    for p in paths:
        s = p.summary
        if s is None:
            out.append(row(p.description, f"failed: {p.error}", "", "", "", "", ""))
            continue
        out.append(
            row(
                p.description,
                _fmt_ops(s),
                f"{s.writes:g}",
                f"{s.reads:g}",
                f"{s.wru:g}",
                f"{s.index_wru:g}",
                f"{s.rru:g}",
            )
        )
    out.append("")
    out += ["How the units are computed (moto returns no consumed capacity for transactions):", ""]
    out += [
        "- Each request's items are read just before and just after it through a second, uncounted "
        "client, and sized by DynamoDB's rules: attribute name bytes + value (strings: UTF-8 bytes; "
        "numbers: 1 byte per 2 significant digits + 1; booleans and null: 1; maps and lists: 3 + 1 per "
        "element + the elements, map keys counted).",
        "- Writes: 1 WRU per started KB of the larger of the item before and after (minimum 1). A failed "
        "condition costs the existing item's size (minimum 1). Each action of a `TransactWriteItems` "
        "costs twice that; a `ConditionCheck` counts as a transactional write.",
        "- Reads: 1 RRU per started 4 KB of the whole item when strongly consistent, half that when "
        "eventually consistent (a projection does not make a `GetItem` cheaper; a miss costs the "
        "minimum). A `Query` costs the summed size of what it returns, rounded up once.",
        "- Indexes: 1 WRU per started KB of the projected entry when a write adds, removes or changes it "
        "(two when the index key changes), none otherwise; not doubled by transactions.",
        "",
    ]
    if billed:
        out += ["Items written by one warm billed request (largest size seen):", ""]
        out += header("item", "writes", "table WRU", "size (bytes)")
        for kind, writes, wru, size in _items_by_kind(billed):
            out.append(row(kind, f"{writes:g}", f"{wru:g}", size))
        out.append("")

    # ---------------------------------------------------------- the hottest item
    out += ["## The hottest item: one org's wallet", ""]
    wallet = _wallet_key(billed) if billed else None
    if billed and wallet:
        w_writes, w_wru = billed.writes_per_item[wallet], billed.wru_per_item[wallet]
        out += para(
            f"Every billed request writes its org's wallet item {w_writes:g} times (the hold's update ",
            f"and the settle's, each in a transaction): {w_wru:g} WRU at the measured size ",
            f"({billed.item_sizes.get(wallet, 0)} bytes, no other request in flight). An item lives in one ",
            f"partition, and a partition takes at most {PARTITION_WCU:,} WRU per second:",
        )
        out += header("billed req/s of one org", "wallet writes/s", "wallet WRU/s", "of the partition limit")
        for rate in (10, 50, 100, 250, 500):
            share = 100 * rate * w_wru / PARTITION_WCU
            out.append(row(rate, f"{rate * w_writes:g}", f"{rate * w_wru:g}", f"{share:.0f}%"))
        out.append("")
        out += para(
            f"At that size one org tops out near **{PARTITION_WCU / w_wru:.0f} billed requests per second**.",
        )
    sizes = growth["sizes"]
    out += para(
        "Each open hold is an item of its own (`HOLD#<request id>`); the wallet keeps only sums, so its ",
        "size, and the price of every write to it, stays the same whatever the org has in flight ",
        f"(measured on a fresh org; {growth['per_hold']:.1f} bytes of wallet per open hold):",
    )
    out += header(
        "holds in flight",
        "wallet (bytes)",
        "WRU per hold",
        "WRU per settle update",
        "wallet WRU per request",
        "max billed req/s of one org",
        "CPU of one reserve (ms)",
    )
    for k, size in sizes.items():
        unit = write_units(size)
        out.append(
            row(
                k,
                size,
                2 * unit,
                2 * unit,
                4 * unit,
                f"{PARTITION_WCU / (4 * unit):.0f}",
                ms(growth["reserve_cpu"][k]),
            )
        )
    out.append("")
    out += para(
        "The last column is this process's CPU for one `holds.reserve` (a transaction: nothing comes ",
        "back to parse).",
    )
    at200 = 4 * write_units(sizes.get(200, 0))
    out += para(
        "In flight = rate x time per request (Little's law). An org sending 100 req/s to a model that ",
        f"answers in 2 s has about 200 holds open: its wallet is still {sizes.get(200, 0)} bytes, and each ",
        f"request costs {at200} WRU on it (two transactional writes), whatever the concurrency. What ",
        "caps an org on per-request holds is the wallet item's 1,000 WRU a second and DynamoDB's ",
        "transaction conflicts on it, not its size; a hot org therefore bills through escrow leases, ",
        "whose model and simulation at 2,000 billed req/s are in `docs/hot-org.md` ",
        "(`python -m bench.hot_org`).",
    )
    if billed:
        org_wru = sum(v for k, v in billed.wru_per_item.items() if "|ORG#" in k)
        out += para(
            "Every BillingTable item a billed request writes shares the org's partition key (`ORG#<org>`): ",
            f"{org_wru:g} table WRU per request on that key, about {PARTITION_WCU / org_wru:.0f} billed "
            "req/s per ",
            "org unless DynamoDB splits the key's items across partitions by sort key (it can, under ",
            "sustained load; it can never split the wallet item itself).",
        )

    # ---------------------------------------------------------- CPU
    out += ["## CPU time of the billing path", ""]
    calls = ", ".join(f"{name} x {count:.3f}" for name, count in cpu["hot_calls"].items())
    out += para(
        "`time.process_time()` of one warm billed request through `functions/completion/app.py`'s ",
        "`lambda_handler` (API Gateway event in, proxy result out), against one bare `UpdateItem` on the ",
        "same boto3 client and moto, in the same process and run: ",
        f"{len(rounds)} rounds of {meta['per_round']} of each, interleaved; the median of each round, then ",
        "the median of the rounds. moto and the fake upstream run in other processes, so their work is not ",
        "counted. What is: the handler, the billing logic, and the client side of the path's network calls ",
        "(botocore building, signing and parsing the DynamoDB calls; http.client making the upstream call).",
    )
    out += para(
        "Two requests are measured. A **hot org's** (the target's): other requests of the org are in ",
        f"flight ({cpu['hot_in_flight']} holds placed beforehand, as other environments would have), so the ",
        "environment reserves against its escrow lease in memory and bills with one transaction ",
        f"(DynamoDB calls per request, averaged over all {len(rounds) * meta['per_round']}: {calls}; ",
        "the lease's acquire and fold are the fractions). Their mean CPU, those included, is ",
        f"{ms(cpu['hot_mean'])} ms. A **quiet org's** (nothing else in flight): a hold and a settle, two ",
        "transactions, so it costs at least two bare calls by construction, and is shown for comparison.",
    )
    out += header(
        "round",
        "hot org's request (ms)",
        "bare UpdateItem (ms)",
        "bare upstream POST (ms)",
        "hot / UpdateItem",
        "quiet org's request (ms)",
        "quiet / UpdateItem",
    )
    for i, r in enumerate(rounds, 1):
        c = r["cpu"]
        out.append(
            row(
                i,
                ms(c["hot"]),
                ms(c["update"]),
                ms(c["upstream"]),
                f"{r['ratio']:.2f}",
                ms(c["billed"]),
                f"{r['quiet_ratio']:.2f}",
            )
        )
    out.append(
        row(
            "**median**",
            f"**{ms(cpu_med['hot'])}**",
            f"**{ms(cpu_med['update'])}**",
            f"**{ms(cpu_med['upstream'])}**",
            f"**{ratio:.2f}**",
            f"**{ms(cpu_med['billed'])}**",
            f"**{quiet_ratio:.2f}**",
        )
    )
    out.append("")
    network = cpu_med["update"] + cpu_med["upstream"]
    out += para(
        f"One bare DynamoDB call and one bare upstream POST alone take {ms(network)} ms of the hot ",
        f"request's {ms(cpu_med['hot'])} ms; the other {ms(cpu_med['hot'] - network)} ms are the handler, ",
        "the billing logic, the bill's larger transaction, the upstream client's own work and the response. ",
        "Where the hot path's CPU goes, from a separate run under cProfile (CPU clock; profiling inflates ",
        "the total):",
    )
    out += header("step", "share of the handler's CPU", "about (ms)")
    for name, share in cpu["steps"]:
        out.append(row(name, f"{share * 100:.0f}%", ms(share * cpu_med["hot"])))
    out.append("")
    out += ["By package (own time of their functions):", ""]
    out += header("package", "share of the handler's CPU")
    for name, share in cpu["profile"][:8]:
        out.append(row(name, f"{share * 100:.0f}%"))
    out.append("")
    out += para(
        "What was cut to get here: botocore's client-side parameter validation (it walked every attribute ",
        "value of every request; DynamoDB validates each request itself), Powertools in the Completion ",
        "function (its Logger per record and a `Metrics` object per request; now one JSON line per ",
        "request that is both the log record and the EMF metrics), urllib3's pool for the upstream call ",
        "(a kept-alive http.client connection does the same exchange for about half the CPU), and a thread ",
        "started per upstream call for its deadline (one watchdog thread serves them all).",
    )
    moto = cpu["moto"]
    out += para(
        "The stand-in's own cost, for the local stack's sake: moto's process spent ",
        f"{moto['billed'] * 1000:.0f} ms of CPU per billed request and {moto['update'] * 1000:.0f} ms per ",
        "bare UpdateItem, measured after the rounds above (it copies the whole table for every ",
        "transaction, so this grows with the table). That, not the billing code, is what limits ",
        "the local stack's throughput (see `python -m bench.load`).",
    )
    out += para(
        "For scale only (loopback and moto, **not** DynamoDB): median wall time per billed request ",
        f"{ms(wall_med['hot'])} ms (hot org) and {ms(wall_med['billed'])} ms (quiet org), per bare ",
        f"UpdateItem {ms(wall_med['update'])} ms, per bare upstream ",
        f"POST {ms(wall_med['upstream'])} ms.",
    )

    # ---------------------------------------------------------- imports
    out += ["## Cold-start imports", ""]
    out += para(
        "`import app` of each `functions/<name>/app.py` in a fresh interpreter, with the function's folder ",
        "and the layer first on `sys.path` as in Lambda, timed with `time.perf_counter()` around the import ",
        f"(interpreter start excluded, bytecode cached): median of {imports['runs']} runs, against ",
        f"`import boto3` in fresh interpreters of the same run ({imports['baseline'] * 1000:.0f} ms, "
        "median of ",
        f"{imports['baseline_runs']}).",
    )
    out += para(
        "Completion's import loads only what every request needs (no Powertools, no Stripe; the ",
        "Idempotency-Key, embeddings, alerts and notices modules load where used), runs with the garbage ",
        "collector paused (the import's objects live as long as the process; they are then frozen out of ",
        "later collections), and loads boto3 before the rest of the package, which measured about 25 ms ",
        "faster here than loading it midway. `tests/unit/inference/test_completion_cold_start.py` keeps ",
        "the list. ",
        "Bytecode: this run caches it, as the method says; a Lambda file system is read-only, so a layer ",
        "whose build ships only source compiles the package's modules at every cold start.",
    )
    out += header("function", "import (ms)", "range (ms)", "x import boto3", "x import boto3, fastest runs")
    for name, value in sorted(imports["medians"].items(), key=lambda kv: kv[1]):
        lo, hi = imports["spread"][name]
        out.append(
            row(
                name,
                f"{value * 1000:.0f}",
                f"{lo * 1000:.0f} to {hi * 1000:.0f}",
                f"{imports['ratios'][name]:.2f}",
                f"{imports['best_ratios'][name]:.2f}",
            )
        )
    out.append("")
    out += [
        "Completion's import by package (`python -X importtime`, one run, so slower than above; each "
        "module's own time is counted to the package that pulled it in):",
        "",
    ]
    out += header("package", "ms")
    for name, seconds in imports["by_package"]:
        out.append(row(f"`{name}`", f"{seconds * 1000:.0f}"))
    out.append("")

    # ---------------------------------------------------------- cost
    out += ["## AWS cost per million billed requests", ""]
    memory = meta["memory"]
    gb = memory["CompletionFunction"] / 1024
    out += para(
        f"Prices used (us-east-1, on-demand): DynamoDB {price(PRICE_WRU)} per million write request units ",
        f"and {price(PRICE_RRU)} per million read request units; Lambda {price(PRICE_LAMBDA_GB_S)} per "
        "GB-s and ",
        f"{price(PRICE_LAMBDA_REQUEST)} per million requests; API Gateway REST {price(PRICE_APIGW_REST)} "
        "per ",
        f"million requests. Completion has {memory['CompletionFunction']} MB in template.yaml. Lambda bills ",
        "the whole invocation, the wait for the model included, so its duration is an assumption, shown for ",
        f"three values. (template.yaml deploys arm64, billed {price(PRICE_LAMBDA_ARM_GB_S)} per GB-s, 20% "
        "less.)",
    )
    out += _memory_section(cpu_med["billed"], imports, billed, meta)
    durations = (0.2, 1.0, 5.0)
    out += header("path", "DynamoDB", *(f"Lambda @ {d:g} s" for d in durations), "API Gateway", "total @ 1 s")
    for name in ("billed", "miss", "hit", "refused"):
        p = by_name.get(name)
        if not p or not p.summary:
            continue
        s = p.summary
        ddb = (s.wru + s.index_wru) * PRICE_WRU + s.rru * PRICE_RRU
        lam = {d: gb * d * PRICE_LAMBDA_GB_S * 1e6 + PRICE_LAMBDA_REQUEST for d in durations}
        total = ddb + lam[1.0] + PRICE_APIGW_REST
        out.append(
            row(
                p.description,
                money(ddb),
                *(money(lam[d]) for d in durations),
                money(PRICE_APIGW_REST),
                money(total),
            )
        )
    out.append("")
    if billed:
        ddb = (billed.wru + billed.index_wru) * PRICE_WRU + billed.rru * PRICE_RRU
        out += para(
            f"The billing itself (DynamoDB) costs {money(ddb)} per million billed requests ",
            f"({ddb * 1000:,.0f} nano-dollars each). At 1 s per request, Lambda "
            f"({money(gb * PRICE_LAMBDA_GB_S * 1e6)}) ",
            f"and API Gateway ({money(PRICE_APIGW_REST)}) are most of the bill, and they grow with the "
            "model's ",
            "latency, not with billing.",
        )
    sweep, idle = by_name.get("sweep"), by_name.get("sweep-idle")
    if sweep and sweep.summary and idle and idle.summary:
        runs = 43_200  # one a minute, for a 30-day month
        idle_cost = (idle.summary.wru * PRICE_WRU + idle.summary.rru * PRICE_RRU) * runs / 1e6
        lam_month = runs * (memory["HoldSweeperFunction"] / 1024) * 0.2 * PRICE_LAMBDA_GB_S
        out += para(
            f"HoldSweeper runs every minute ({runs:,} runs a month): an idle run costs "
            f"{idle.summary.rru:g} RRU ",
            f"({money(idle_cost)} a month) plus its Lambda time (about {money(lam_month)} a month at an "
            "assumed ",
            f"0.2 s); each wallet it visits adds {sweep.summary.rru - idle.summary.rru:g} RRU and ",
            f"{sweep.summary.wru:g} WRU (one expired hold released, the wallet dropped from the index).",
        )
    return "\n".join(out).rstrip("\n") + "\n"


def choose_memory(cpu_seconds: float, rss_mb: float) -> int:
    """The smallest Lambda memory size whose CPU share runs the billing path within the budget
    and which holds the process's peak memory with headroom."""
    for mb in MEMORY_SIZES:
        share = min(1.0, mb / LAMBDA_FULL_VCPU_MB)
        if cpu_seconds / share <= CPU_BUDGET_OF_ONE_SECOND and mb >= rss_mb * MEMORY_HEADROOM:
            return mb
    return MEMORY_SIZES[-1]


def _memory_section(
    cpu_seconds: float, imports: dict[str, Any], billed: Any, meta: dict[str, Any]
) -> list[str]:
    out = ["### Completion's memory, from the CPU it uses", ""]
    rss = imports["completion_rss_mb"]
    cold = imports["spread"].get("completion", (0.0, 0.0))[0]  # fastest run: load only adds time
    chosen, deployed = choose_memory(cpu_seconds, rss), meta["memory"]["CompletionFunction"]
    ddb = (billed.wru + billed.index_wru) * PRICE_WRU + billed.rru * PRICE_RRU if billed else 0.0
    out += para(
        f"A warm billed request takes {ms(cpu_seconds)} ms of CPU here (above) and the process peaks at ",
        f"{rss:.0f} MB. Lambda gives a function CPU in proportion to its memory (one vCPU at ",
        f"{LAMBDA_FULL_VCPU_MB:,} MB), and bills the whole invocation, the wait for the model included. ",
        "Assuming one vCPU of Lambda's runs this code as fast as one core here, the rows below scale the ",
        "measured CPU and the fastest cold import by the CPU share, and price the invocation on arm64 (what ",
        f"template.yaml deploys, {price(PRICE_LAMBDA_ARM_GB_S)} per GB-s) at 1 s of model latency, with ",
        f"DynamoDB ({money(ddb)}) and API Gateway ({money(PRICE_APIGW_REST)}) per million billed requests.",
    )
    out += header(
        "memory (MB)", "CPU share", "billing CPU (ms)", "cold import (ms)", "Lambda @ 1 s", "total @ 1 s", ""
    )
    for mb in MEMORY_SIZES:
        share = min(1.0, mb / LAMBDA_FULL_VCPU_MB)
        duration = 1.0 + cpu_seconds / share
        lam = mb / 1024 * duration * PRICE_LAMBDA_ARM_GB_S * 1e6 + PRICE_LAMBDA_REQUEST
        notes = [n for n, on in (("before", mb == MEMORY_BEFORE_MB), ("**deployed**", mb == deployed)) if on]
        out.append(
            row(
                mb,
                f"{share:.2f}",
                ms(cpu_seconds / share),
                f"{cold / share * 1000:.0f}",
                money(lam),
                money(lam + ddb + PRICE_APIGW_REST),
                ", ".join(notes),
            )
        )
    out.append("")
    out += para(
        f"The rule: the smallest size whose billing CPU stays under {CPU_BUDGET_OF_ONE_SECOND:.0%} of a 1 s ",
        f"model call and which holds {MEMORY_HEADROOM:g}x the peak memory. It picks **{chosen} MB**; ",
        f"template.yaml deploys {deployed} MB"
        + (" (the same)." if chosen == deployed else f" (**differs**: set MemorySize to {chosen}).")
        + " The price of the choice is the cold start, paid once per instance at the same CPU share: "
        + f"about {cold / min(1.0, chosen / LAMBDA_FULL_VCPU_MB):.1f} s of imports at {chosen} MB. Where "
        + "that matters more than the difference per million requests, double the memory to halve it.",
    )
    return out


# ------------------------------------------------------------------ main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=7, help="CPU rounds (default 7)")
    parser.add_argument("--per-round", type=int, default=40, help="requests per CPU round (default 40)")
    parser.add_argument("--count", type=int, default=20, help="requests counted per path (default 20)")
    parser.add_argument(
        "--import-runs", type=int, default=11, help="fresh interpreters per import (default 11)"
    )
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    started = time.monotonic()

    import boto3
    import moto

    with servers.moto() as moto_server, servers.upstream() as upstream_server:
        log(f"moto at {moto_server.url}, upstream at {upstream_server.url}")
        assert moto_server.process is not None
        bench = Bench(moto_server.url, upstream_server.url, moto_server.process.pid)
        try:
            paths = measure_paths(bench, args.count)
            growth = wallet_growth(bench)
            cpu = measure_cpu(bench, args.rounds, args.per_round)
        finally:
            bench.close()
    imports = measure_imports(args.import_runs)
    meta = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "python": f"Python {platform.python_version()}",
        "machine": f"{platform.system()} {platform.machine()}",
        "cpus": os.cpu_count(),
        "boto3": boto3.__version__,
        "moto": moto.__version__,
        "per_round": args.per_round,
        "memory": bench.memory,
    }
    meta["seconds"] = time.monotonic() - started
    report = render(paths, growth, cpu, imports, meta)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    if args.out.exists():  # make load's and bench.hot_org's sections are their own: keep them
        existing = args.out.read_text(encoding="utf-8")
        for title in KEPT:
            kept = keep_section(existing, title)
            report = report.rstrip("\n") + ("\n\n" + kept if kept else "\n")
    args.out.write_text(report, encoding="utf-8")
    log(f"wrote {args.out} in {time.monotonic() - started:.0f} s")
    print(report.split("## DynamoDB per request")[0])
    return 1 if any(p.summary is None for p in paths) else 0


if __name__ == "__main__":
    sys.exit(main())
