"""A bounded load on the local stack, then a money check.

    python -m bench.load [--seconds 20] [--clients 32] [--workers 8] [--history 50000]

Starts the local stack in this process (moto behind its lock, the fake upstream, the front with
every function in worker processes; schedules off; the e2e test catalog), creates two orgs
through the operator API and runs, on loopback:

1. `--clients` concurrent clients sending billed chat completions (temperature unset) for
   `--seconds`, most of them on a well-funded org and a few on an org whose credits run out
   mid-run (its refusals must be clean 402s, and it must never go below zero);
2. the same number of clients calling the fake upstream directly for the same time, so the
   gateway's overhead can be read off the difference;
3. `--history` ledger entries (50,000 by default) written straight into the funded org, as a
   year of a busy org's books would look (usage entries' markers and lines, top-ups that pay
   for them, per-day usage rows), then phase 1's clients again: the median billed request
   after them against the median of phase 1 (target: at most 1.3x), with the stand-in's time
   per operation before and after.

Then, straight from the DynamoDB stand-in (not through the product), for each org: no
overdraft, balance = sum of its ledger, held = sum of open holds, one usage entry per 200, and
the credits charged in `x-conduix-cost` headers = what left the balance. Exits non-zero on any
failure. Stops everything it started.

Latencies are of the local stand-ins on this machine (moto behind one lock, Python workers):
they say how the stack behaves under concurrency, not how fast AWS would be.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import multiprocessing
import os
import secrets
import socket
import statistics
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from bench.report import LOAD_SECTION, write_section

ROOT = Path(__file__).resolve().parents[1]
CATALOG = ROOT / "tests" / "e2e" / "models.json"
STACK_LOG = ROOT / "test-artifacts" / "load-stack.log"
MODEL = "test/cheap"
FUNDED_CREDITS = Decimal("1000")
SCARCE_CREDITS = Decimal("0.0005")  # some ten requests: its clients run it dry at once
NANO = Decimal(10) ** 9
HISTORY_PREFIX = "seed-"  # request ids (and top-up keys) of the seeded history
GROWTH_TARGET = 1.3  # the median billed request after the history, at most this times the first
OUT = ROOT / "docs" / "benchmarks.md"


def log(message: str) -> None:
    print(f"[load] {message}", file=sys.__stderr__, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ------------------------------------------------------------------ clients


@dataclass
class Tally:
    """What one phase's clients saw."""

    latencies: list[float] = field(default_factory=list)  # seconds, 200s only
    statuses: Counter[str] = field(default_factory=Counter)
    charged: Decimal = Decimal(0)  # sum of x-conduix-cost of the 200s
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, status: str, seconds: float, cost: str | None) -> None:
        with self.lock:
            self.statuses[status] += 1
            if status == "200":
                self.latencies.append(seconds)
                if cost is not None:
                    self.charged += Decimal(cost)

    @property
    def ok(self) -> int:
        return self.statuses["200"]

    def merged(self, other: Tally) -> Tally:
        both = Tally(self.latencies + other.latencies, self.statuses + other.statuses)
        both.charged = self.charged + other.charged
        return both

    def errors(self, allowed: tuple[str, ...] = ()) -> int:
        return sum(n for s, n in self.statuses.items() if s != "200" and s not in allowed)


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(p / 100 * len(ordered)) - 1))]


@dataclass(frozen=True)
class ClientSpec:
    """One client: where it sends what, and which tally its results go to. Picklable."""

    name: str
    url: str  # base URL; `path` is appended to its path
    path: str
    headers: dict[str, str]
    model: str
    tag: str
    group: str


def _client(spec: ClientSpec, seconds: float, start_delay: float, tally: Tally) -> None:
    """Requests one at a time until the time is up, each on a new connection (as urllib does):
    on a kept-alive connection the stand-ins' separate header and body writes meet delayed ACKs
    and add some 40 ms to every answer, which would measure TCP, not the gateway."""
    time.sleep(start_delay)  # staggered, so the clients' first connects do not arrive as one burst
    split = urlsplit(spec.url)
    host, port = split.hostname or "127.0.0.1", split.port or 80
    path = split.path.rstrip("/") + spec.path
    headers = {"Content-Type": "application/json", "Connection": "close", **spec.headers}
    deadline = time.monotonic() + seconds - start_delay
    i = 0
    while time.monotonic() < deadline:
        i += 1
        body = {
            "model": spec.model,
            "messages": [{"role": "user", "content": f"load {spec.tag} {i}"}],
            "max_tokens": 16,
        }
        started = time.perf_counter()
        connection = http.client.HTTPConnection(host, port, timeout=60)
        try:
            connection.request("POST", path, body=json.dumps(body).encode(), headers=headers)
            response = connection.getresponse()
            response.read()
            status, cost = str(response.status), response.getheader("x-conduix-cost")
        except (OSError, http.client.HTTPException) as exc:
            status, cost = type(exc).__name__, None
        finally:
            connection.close()
        tally.add(status, time.perf_counter() - started, cost)


def _client_process(specs: list[ClientSpec], seconds: float, results: Any) -> None:
    """The clients of one phase, as threads of a process of their own: in the stack's process
    they would compete for its interpreter lock with moto and the front, and slow both."""
    tallies: dict[str, Tally] = {spec.group: Tally() for spec in specs}
    threads = [
        threading.Thread(target=_client, args=(spec, seconds, 0.01 * i, tallies[spec.group]), daemon=True)
        for i, spec in enumerate(specs)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    results.put(
        {
            group: {"latencies": t.latencies, "statuses": dict(t.statuses), "charged": str(t.charged)}
            for group, t in tallies.items()
        }
    )


def run_phase(specs: list[ClientSpec], seconds: float) -> tuple[dict[str, Tally], float, float]:
    """Run the clients; their tallies, the phase's wall time, and this process's CPU time in it
    (the stack's process: moto, the front and the fake upstream; not the workers, not the clients)."""
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    process = context.Process(target=_client_process, args=(specs, seconds, results), name="load-clients")
    started, cpu = time.monotonic(), time.process_time()
    process.start()
    try:
        raw = results.get(timeout=seconds + 120)
    finally:
        process.join(timeout=30)
        if process.is_alive():
            process.kill()
            process.join()
    elapsed, cpu = time.monotonic() - started, time.process_time() - cpu
    tallies = {}
    for group, data in raw.items():
        tally = Tally(data["latencies"], Counter(data["statuses"]))
        tally.charged = Decimal(data["charged"])
        tallies[group] = tally
    return tallies, elapsed, cpu


# ------------------------------------------------------------------ checks


def _dynamodb(moto_url: str) -> Any:
    import boto3

    return boto3.client(
        "dynamodb",
        endpoint_url=moto_url,
        region_name="us-east-1",
        aws_access_key_id="local",
        aws_secret_access_key="local",
    )


def org_items(moto_url: str, org_id: str, prefix: str = "", select: str = "ALL_ATTRIBUTES") -> list[Any]:
    """The org's items whose sort key starts with `prefix` (the pages' counts with COUNT)."""
    pages = (
        _dynamodb(moto_url)
        .get_paginator("query")
        .paginate(
            TableName="BillingTable",
            KeyConditionExpression="pk = :pk AND begins_with(sk, :prefix)",
            ExpressionAttributeValues={":pk": {"S": f"ORG#{org_id}"}, ":prefix": {"S": prefix}},
            ConsistentRead=True,
            Select=select,
        )
    )
    if select == "COUNT":
        return [page["Count"] for page in pages]
    return [item for page in pages for item in page["Items"]]


def check_org(moto_url: str, org_id: str, granted: Decimal, tally: Tally) -> tuple[dict[str, Any], list[str]]:
    """The org's money, read from the stand-in itself, against what the clients were told.

    The ledger's own identities (balance = the ledger and the spends a lease has not folded
    yet, held = open holds + open leases...) are `conduix.audit.reconcile`'s; here: no overdraft,
    and every answered request billed once at the cost its headers said, either as a usage
    entry or as a settle deferred to HoldSweeper. Only this month's lines are read back here:
    the seeded history is older, and reconcile reads all of it."""
    from conduix.audit import reconcile
    from conduix.store import dynamo

    wallet = org_items(moto_url, org_id, "WALLET")[0]
    month = datetime.now(UTC).strftime("%Y-%m")
    lines = org_items(moto_url, org_id, f"LEDGER#{month}")
    all_lines = sum(org_items(moto_url, org_id, "LEDGER#", select="COUNT"))

    def num(item: dict[str, Any], name: str) -> int:
        return int(item[name]["N"]) if name in item else 0

    balance, held, available = num(wallet, "balance"), num(wallet, "held"), num(wallet, "available")
    holds = org_items(moto_url, org_id, "HOLD#")
    pending = org_items(moto_url, org_id, "PENDING#")
    usage = [i for i in lines if i["entry_type"]["S"] == "usage"]
    spent = -sum(num(i, "amount") for i in usage) + sum(num(i, "cost") for i in pending)
    facts = {
        "balance": (Decimal(balance) / NANO).normalize(),
        "held": (Decimal(held) / NANO).normalize(),
        "open holds": len(holds),
        "open leases": len(org_items(moto_url, org_id, "LEASE#")),
        "ledger entries": all_lines,
        "this month": len(lines),
        "usage entries this month": len(usage),
        "settles deferred": len(pending),
        "spent": (Decimal(spent) / NANO).normalize(),
        "charged (headers)": tally.charged.normalize(),
    }
    # The product's client gives up on a read after 5 s, DynamoDB's scale; the stand-in takes
    # seconds to serialize a 1 MB page of a large ledger.
    dynamo._client = _dynamodb(moto_url)
    try:
        failures = [_shorten(str(d)) for d in reconcile.reconcile_org(org_id)]
    finally:
        dynamo.reset_client()
    if balance < 0 or available < 0:
        failures.append(f"overdraft: balance {balance} nano, available {available} nano")
    if Decimal(spent) / NANO != tally.charged:
        failures.append(f"usage entries total {Decimal(spent) / NANO} credits, headers said {tally.charged}")
    ledger = sum(num(i, "amount") for i in lines) - sum(num(i, "cost") for i in pending)
    if Decimal(ledger) / NANO != granted - tally.charged:
        failures.append(
            f"this month's ledger {Decimal(ledger) / NANO} != granted {granted} - charged {tally.charged}"
        )
    if len(usage) + len(pending) != tally.ok:
        failures.append(
            f"{len(usage)} usage entries and {len(pending)} deferred for {tally.ok} answered requests"
        )
    return facts, failures


def _shorten(text: str, limit: int = 400) -> str:
    return text if len(text) <= limit else text[: limit - 5] + " ...)"


# ------------------------------------------------------------------ history


def history_items(org_id: str, key_id: str, entries: int, now: datetime) -> Iterator[dict[str, Any]]:
    """A busy org's books before today, as the product writes them: `entries` usage entries
    (marker and statement line each) over the year before this month, a top-up paying for
    every 1,000 of them (so the history nets to zero and the wallet stays equal to its ledger), and the
    per-day usage rows. Request ids start with HISTORY_PREFIX, so the checks can tell them."""
    from conduix.ledger import metering

    # The year before this month: this month's spend and usage rows stay the load's own.
    end = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0) - timedelta(days=1)
    days = 365
    rows: dict[str, dict[str, int]] = {}

    def when(i: int) -> datetime:
        return end - timedelta(days=days) + timedelta(seconds=i * days * 86400 // max(entries, 1))

    def tokens(i: int) -> tuple[int, int]:
        return 20 + i % 50, 16

    for i in range(entries):
        prompt, completion = tokens(i)
        if i % 1000 == 0:  # a top-up just before each 1,000 requests, paying for exactly them
            block = range(i, min(i + 1000, entries))
            cost = sum(1_000 * sum(tokens(j)) for j in block)
            yield from _top_up_items(org_id, f"{HISTORY_PREFIX}{i:08d}", cost, when(i) - timedelta(seconds=1))
        at = when(i)
        usage = metering.Usage(MODEL, key_id, prompt, completion, cost=1_000 * (prompt + completion))
        yield from metering.usage_ledger_items(org_id, f"{HISTORY_PREFIX}{i:08d}", usage, at)
        row = rows.setdefault(
            at.strftime("%Y-%m-%d"), {"requests": 0, "prompt_tokens": 0, "completion_tokens": 0, "credits": 0}
        )
        row["requests"] += 1
        row["prompt_tokens"] += prompt
        row["completion_tokens"] += completion
        row["credits"] += usage.cost
    for day, counts in rows.items():
        yield {
            "pk": {"S": f"ORG#{org_id}"},
            "sk": {"S": f"USAGE#{day}#{MODEL}#{key_id}"},
            "day": {"S": day},
            "model": {"S": MODEL},
            "key_id": {"S": key_id},
            **{name: {"N": str(count)} for name, count in counts.items()},
        }


def _top_up_items(org_id: str, key: str, amount: int, at: datetime) -> list[dict[str, Any]]:
    """A top-up's marker and line, in the shape of the product's ledger entries."""
    created = at.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
    entry_id = f"top_up:{key}"
    entry = {
        "pk": {"S": f"ORG#{org_id}"},
        "entry_id": {"S": entry_id},
        "entry_type": {"S": "top_up"},
        "amount": {"N": str(amount)},
        "description": {"S": "Top-up"},
        "created_at": {"S": created},
    }
    line_sk = f"LEDGER#{created}#{entry_id}"
    marker = {
        **entry,
        "sk": {"S": f"ENTRY#{entry_id}"},
        "fingerprint": {"S": "0" * 32},
        "line_sk": {"S": line_sk},
    }
    return [marker, {**entry, "sk": {"S": line_sk}}]


# ------------------------------------------------------------------ growth


def _sweep(stack: Any) -> None:
    """What a minute of schedules would do (they are off): the leases expire, and HoldSweeper
    folds them and charges the settles that were deferred, so the books are whole."""
    stack.front.move_clock(stack.front.now() + timedelta(minutes=2))
    swept = stack.operator("POST", "/_local/run/HoldSweeperFunction", None)
    log(f"  HoldSweeper: {json.dumps(swept)[:160]}")


def sweep_costs(stack: Any) -> list[tuple[str, float, float]]:
    """The minute's scheduled jobs that query the table, each run once with moto alone and once
    through moto_index, on the grown table: (job, seconds with moto alone, with moto_index).
    What they find to do is the same both times (nothing is open after the final sweep)."""
    from conduix_local import moto_index

    out = []
    for job in ("HoldSweeperFunction", "AutoReloadFunction"):
        took = []
        for alone in (True, False):
            if alone:
                moto_index.uninstall()
            try:
                started = time.monotonic()
                stack.operator("POST", f"/_local/run/{job}", None)
                took.append(time.monotonic() - started)
            finally:
                moto_index.install()
        out.append((job, took[0], took[1]))
    return out


def query_costs(moto: Any, org_ids: list[str]) -> list[tuple[str, float, float, bool]]:
    """Time Queries the product makes, on the big org's ledger, answered by moto's own query
    (which sorts the whole table) and through moto_index, in this process under the server's
    lock: (what, moto's ms, moto_index's ms, same answer)."""
    from conduix_local import moto_index
    from moto.core.models import DEFAULT_ACCOUNT_ID
    from moto.dynamodb.comparisons import get_filter_expression
    from moto.dynamodb.models import dynamodb_backends
    from moto.dynamodb.models.dynamo_type import DynamoType
    from moto.dynamodb.models.table import Table

    big, small = org_ids
    cases = [
        (
            "the big org's open holds: begins_with(sk, HOLD#)",
            "pk",
            f"ORG#{big}",
            "BEGINS_WITH",
            ["HOLD#"],
            None,
            True,
        ),
        ("a page of its 50 newest ledger lines", "pk", f"ORG#{big}", "BEGINS_WITH", ["LEDGER#"], 50, False),
        ("the small org's whole partition", "pk", f"ORG#{small}", None, [], None, True),
        ("one shard of the by_sweep_shard index", "sweep_shard", "0", None, [], None, True),
    ]
    out = []
    with moto.locked():
        table = dynamodb_backends[DEFAULT_ACCOUNT_ID]["us-east-1"].get_table("BillingTable")
        for what, attr, value, comparison, values, limit, forward in cases:
            hash_key = DynamoType({"S": value})
            args = (
                hash_key,
                comparison,
                [DynamoType({"S": v}) for v in values],
                limit,
                None,
                forward,
                None,
                None if attr == "pk" else "by_sweep_shard",
                False,
                get_filter_expression(None, None, None),
            )
            keys = {
                "hash_key_conditions": [(attr, hash_key)],
                "range_key_conditions": [("sk", comparison, args[2])] if comparison else [],
            }
            timed = []
            for query in (moto_index._ORIGINAL["query"], Table.query):
                started = time.perf_counter()
                items, scanned, last = query(table, *args, **keys)
                timed.append((time.perf_counter() - started, [i.to_json() for i in items], scanned, last))
            (moto_s, *moto_answer), (index_s, *index_answer) = timed
            out.append((what, moto_s * 1000, index_s * 1000, moto_answer == index_answer))
    return out


def _table_items(moto_url: str) -> int:
    return int(_dynamodb(moto_url).describe_table(TableName="BillingTable")["Table"]["ItemCount"])


@dataclass
class Growth:
    """Phase 1 against phase 3: the same clients, before and after the history."""

    before: Tally
    after: Tally
    times_before: dict[str, tuple[int, float]]
    times_after: dict[str, tuple[int, float]]
    items_before: int
    items_after: int
    queries: list[tuple[str, float, float, bool]] = field(default_factory=list)
    sweeps: list[tuple[str, float, float]] = field(default_factory=list)

    @property
    def ratio(self) -> float:
        return percentile(self.after.latencies, 50) / percentile(self.before.latencies, 50)

    def print(self, history: int) -> None:
        def ms(seconds: float) -> str:
            return f"{seconds * 1000:.1f}"

        print(f"Growth: the funded org before and after {history:,} ledger entries of history")
        rows = [("", "phase 1", "phase 3", "after / before")]
        rows.append(("BillingTable items", f"{self.items_before:,}", f"{self.items_after:,}", ""))
        rows.append(("answered 200", str(self.before.ok), str(self.after.ok), ""))
        for label, p in (("p50 latency (ms)", 50), ("p90 latency (ms)", 90)):
            b, a = percentile(self.before.latencies, p), percentile(self.after.latencies, p)
            rows.append((label, ms(b), ms(a), f"{a / b:.2f}x"))
        ops = sorted(set(self.times_before) | set(self.times_after))
        for op in ops:
            (nb, sb), (na, sa) = self.times_before.get(op, (0, 0.0)), self.times_after.get(op, (0, 0.0))
            if nb + na < 20:
                continue  # a handful of calls says nothing per call
            per_b, per_a = sb / max(nb, 1), sa / max(na, 1)
            ratio = f"{per_a / per_b:.2f}x" if nb and na else ""
            rows.append((f"moto {op} (ms a call, {nb}/{na} calls)", ms(per_b), ms(per_a), ratio))
        width = [max(len(r[i]) for r in rows) for i in range(4)]
        for r in rows:
            print("  " + "  ".join(cell.ljust(width[i]) for i, cell in enumerate(r)))
        print(
            f"Target: the median at most {GROWTH_TARGET}x; "
            f"{'met' if self.ratio <= GROWTH_TARGET else 'MISSED'} ({self.ratio:.2f}x)."
        )
        for job, alone, indexed in self.sweeps:
            print(f"  {job}, one run: moto alone {alone:.2f} s, with moto_index {indexed:.2f} s")
        for what, moto_ms, index_ms, same in self.queries:
            print(
                f"  Query, {what}: moto alone {moto_ms:.1f} ms, with moto_index {index_ms:.1f} ms"
                + ("" if same else " (ANSWERS DIFFER)")
            )
        print()

    def section(self, args: argparse.Namespace) -> str:
        """The report's section (docs/benchmarks.md)."""

        def ms(seconds: float) -> str:
            return f"{seconds * 1000:.1f}"

        lines = [
            LOAD_SECTION,
            "",
            f"`make load` (bench/load.py), {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {os.cpu_count()} CPUs "
            f"(the machine is shared: its load average was {os.getloadavg()[0]:.1f}). {args.clients} clients "
            f"({args.scarce_clients} of them on an org that runs dry), {args.workers} Completion workers at "
            f"most, {args.seconds:g} s per phase; schedules off. Phase 1 bills through the gateway on a "
            f"fresh table; then {args.history:,} ledger entries of a year's history are written into the "
            "funded org (usage entries' markers and lines, top-ups, per-day usage rows), and the same "
            "clients run again (phase 3). Latencies are of the local stand-ins behind one lock on this "
            "machine, not of AWS; what matters is the ratio.",
            "",
            "| | phase 1 (fresh table) | phase 3 (after the history) | after / before |",
            "|---|---|---|---|",
            f"| BillingTable items | {self.items_before:,} | {self.items_after:,} | |",
            f"| billed requests answered | {self.before.ok} | {self.after.ok} | |",
        ]
        for label, p in (("median latency (ms)", 50), ("p90 latency (ms)", 90)):
            b, a = percentile(self.before.latencies, p), percentile(self.after.latencies, p)
            lines.append(f"| {label} | {ms(b)} | {ms(a)} | {a / b:.2f}x |")
        for op in sorted(set(self.times_before) | set(self.times_after)):
            (nb, sb), (na, sa) = self.times_before.get(op, (0, 0.0)), self.times_after.get(op, (0, 0.0))
            if nb < 20 or na < 20:
                continue
            per_b, per_a = sb / nb, sa / na
            lines.append(
                f"| moto's time under its lock per {op} (ms; {nb} and {na} calls) "
                f"| {ms(per_b)} | {ms(per_a)} | {per_a / per_b:.2f}x |"
            )
        verdict = "met" if self.ratio <= GROWTH_TARGET else "**missed**"
        lines += [
            "",
            f"Target: the median billed request after the history at most {GROWTH_TARGET}x the first: "
            f"{verdict} ({self.ratio:.2f}x).",
            "",
            "Why it stays flat: a billed request reads nothing that grows with the books. It writes "
            "its hold (or lease spend), its ledger entry and its usage, one item each, and moto's "
            "transactions roll back from a per-item undo log (`moto_undo.py`), not a copy of the "
            "table. With the schedules off, as here, that alone keeps the median flat. What still "
            "grew was every Query: moto answers one by sorting every item of the table, then "
            "walking the partition, under its one lock. With the schedules on (`make run`), the "
            "sweeps' Queries every minute, the dashboard's and reconcile's held that lock for "
            "seconds at this size, and billed requests waited behind them. "
            "`local/conduix_local/moto_index.py` keeps each partition's sort keys in order and each "
            "global index's members, and hands moto's own query code only the items a Query can "
            "reach. The same Queries on the table above, timed in the stack's process:",
            "",
            "| Query | moto alone (ms) | with moto_index (ms) | same answer |",
            "|---|---|---|---|",
        ]
        for what, moto_ms, index_ms, same in self.queries:
            lines.append(f"| {what} | {moto_ms:.1f} | {index_ms:.1f} | {'yes' if same else '**no**'} |")
        if self.sweeps:
            lines += [
                "",
                "And the jobs the schedules run every minute (off in this run), each run once on the "
                "grown table, with moto alone and with moto_index (wall time of the run; moto holds "
                "its one lock through each of their Queries, so billed requests wait that long):",
                "",
                "| job | moto alone (s) | with moto_index (s) |",
                "|---|---|---|",
            ]
            lines += [f"| {job} | {alone:.2f} | {indexed:.2f} |" for job, alone, indexed in self.sweeps]
        lines.append("")
        return "\n".join(lines)


# ------------------------------------------------------------------ main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="length of each phase (default 20)")
    parser.add_argument("--clients", type=int, default=32, help="concurrent clients (default 32)")
    parser.add_argument("--workers", type=int, default=8, help="warm workers per function (default 8)")
    parser.add_argument("--warmup", type=float, default=3.0, help="unmeasured seconds first (default 3)")
    parser.add_argument("--scarce-clients", type=int, default=4, help="clients on the org that runs dry")
    parser.add_argument(
        "--history",
        type=int,
        default=50_000,
        help="ledger entries written into the funded org before the last phase (default 50000; 0: none)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=OUT,
        help=f"the report whose local-stack section this writes (default {OUT}); --out '' writes none",
    )
    parser.add_argument(
        "--stack-log", type=Path, default=STACK_LOG, help=f"the stack's log (default {STACK_LOG})"
    )
    args = parser.parse_args(argv)
    if args.out == Path(""):
        args.out = None
    if args.clients <= args.scarce_clients:
        parser.error("--clients must be larger than --scarce-clients")

    from conduix_local.stack import Stack, StackConfig, StackError

    config = StackConfig(
        port=free_port(),
        models_file=str(CATALOG),
        operator_key="cdx_op_load_" + secrets.token_hex(16),
        schedules=False,
        workers_per_function=args.workers,
        seed_demo=False,
    )
    args.stack_log.parent.mkdir(parents=True, exist_ok=True)
    log(
        f"starting the local stack ({args.workers} workers per function, schedules off); "
        f"its log: {args.stack_log}"
    )
    started = time.monotonic()
    # The front logs every request and relays the functions' logs on stderr: into a file.
    with open(args.stack_log, "w", encoding="utf-8") as stack_log, contextlib.redirect_stderr(stack_log):
        stack = Stack(config)
        try:
            stack.start()
        except StackError as exc:
            log(f"the stack did not start: {exc}")
            return 2
        try:
            return _run(stack, args, started)
        finally:
            log("stopping the local stack")
            stack.stop()


def _new_org(stack: Any, name: str, credits: Decimal) -> tuple[str, str, str]:
    org = stack.operator("POST", "/admin/orgs", {"name": name, "email": "load@example.test"})
    key = stack.operator("POST", f"/admin/orgs/{org['org_id']}/api-keys", {"name": "load"})
    stack.operator(
        "POST",
        f"/admin/orgs/{org['org_id']}/credits",
        {"amount": str(credits), "reason": "load test", "idempotency_key": f"load-{org['org_id']}"},
    )
    return org["org_id"], key["api_key"], key["key_id"]


def _lift_rate_limit(moto_url: str, org_ids: list[str]) -> str:
    """Put the orgs on the shipped plan with the highest per-key rate: the free plan's 60
    requests a minute would turn most of the load into 429s. (A direct write to the stand-in;
    there is no operator route for plans.)"""
    os.environ.update(
        AWS_ENDPOINT_URL=moto_url,
        AWS_DEFAULT_REGION="us-east-1",
        AWS_ACCESS_KEY_ID="local",
        AWS_SECRET_ACCESS_KEY="local",
        BILLING_TABLE="BillingTable",
        CACHE_TABLE="CacheTable",
    )
    from conduix.core import config
    from conduix.ledger import wallet_settings
    from conduix.pricing import plans
    from conduix.store import dynamo

    config.settings.cache_clear()
    dynamo.reset_client()
    plan = max(plans.all_plans().values(), key=lambda p: p.requests_per_minute)
    for org_id in org_ids:
        wallet_settings.set_plan(org_id, plan)
    return f"{plan.id} ({plan.requests_per_minute} requests a minute per key)"


def _run(stack: Any, args: argparse.Namespace, started: float) -> int:
    state = stack.state()
    funded_org, funded_key, funded_key_id = _new_org(stack, "Load Org", FUNDED_CREDITS)
    scarce_org, scarce_key, _ = _new_org(stack, "Scarce Org", SCARCE_CREDITS)
    plan = _lift_rate_limit(state["moto"], [funded_org, scarce_org])
    log(f"orgs ready on plan {plan}; stack up in {time.monotonic() - started:.1f} s")

    def gateway_client(i: int, key: str, tag: str, group: str) -> ClientSpec:
        auth = {"Authorization": f"Bearer {key}"}
        return ClientSpec(f"{group}-{i}", state["api"], "/v1/chat/completions", auth, MODEL, tag, group)

    # Phase 0: the workers start (cold starts) under the same load; not measured, but billed.
    log(f"warm-up: {args.clients} clients for {args.warmup:g} s (not measured)")
    specs = [gateway_client(i, funded_key, f"w{i}", "warm") for i in range(args.clients)]
    warm = run_phase(specs, args.warmup)[0]["warm"]

    # Phase 1: through the gateway; a few clients on the org that runs dry.
    log(f"phase 1: {args.clients} clients through the gateway for {args.seconds:g} s")

    def gateway_clients(tag: str) -> list[ClientSpec]:
        return [
            gateway_client(i, scarce_key, f"s{tag}{i}", "scarce")
            if i < args.scarce_clients
            else gateway_client(i, funded_key, f"g{tag}{i}", "gateway")
            for i in range(args.clients)
        ]

    moto = stack.moto
    moto.operation_times(reset=True)
    tables_before = _table_items(state["moto"])
    tallies, gateway_seconds, gateway_cpu = run_phase(gateway_clients(""), args.seconds)
    gateway, scarce = tallies["gateway"], tallies["scarce"]
    times_before = moto.operation_times()

    # Phase 2: as many clients, straight at the fake upstream, for as long.
    log(f"phase 2: {args.clients} clients straight at the fake upstream for {args.seconds:g} s")
    upstream_model = json.loads(CATALOG.read_text())["models"][0]["upstream"]["model"]
    auth = {"Authorization": "Bearer local-upstream-key"}
    specs = [
        ClientSpec(
            f"direct-{i}", state["upstream"], "/chat/completions", auth, upstream_model, f"d{i}", "direct"
        )
        for i in range(args.clients)
    ]
    tallies, direct_seconds, direct_cpu = run_phase(specs, args.seconds)
    direct = tallies["direct"]

    # Phase 3: a year of the funded org's books, then phase 1's clients again.
    after, growth = Tally(), None
    if args.history:
        log(f"phase 3: {args.history:,} ledger entries into the funded org, then phase 1 again")
        _sweep(stack)  # phase 3 starts from phase 1's state: no lease, nothing deferred
        seeding = time.monotonic()
        written = moto.put_items_directly(
            "BillingTable", history_items(funded_org, funded_key_id, args.history, datetime.now(UTC))
        )
        log(f"  {written:,} items written in {time.monotonic() - seeding:.1f} s")
        moto.operation_times(reset=True)
        tables_after = _table_items(state["moto"])
        tallies, _, _ = run_phase(gateway_clients("h"), args.seconds)
        after = tallies["gateway"]
        scarce = scarce.merged(tallies["scarce"])
        growth = Growth(gateway, after, times_before, moto.operation_times(), tables_before, tables_after)
        growth.queries = query_costs(moto, [funded_org, scarce_org])

    _sweep(stack)
    if growth is not None:
        growth.sweeps = sweep_costs(stack)
    funded_facts, funded_failures = check_org(
        state["moto"], funded_org, FUNDED_CREDITS, gateway.merged(warm).merged(after)
    )
    scarce_facts, scarce_failures = check_org(state["moto"], scarce_org, SCARCE_CREDITS, scarce)
    failures = [f"funded org: {f}" for f in funded_failures] + [f"scarce org: {f}" for f in scarce_failures]
    if gateway.errors() or warm.errors() or after.errors():
        failures.append(
            f"gateway errors on the funded org: {dict(gateway.statuses + warm.statuses + after.statuses)}"
        )
    if growth is not None and not all(same for *_, same in growth.queries):
        failures.append("moto_index answered a Query differently from moto")
    if growth is not None and growth.ratio > GROWTH_TARGET:
        failures.append(
            f"the median billed request after {args.history:,} ledger entries is {growth.ratio:.2f}x "
            f"the first phase's (target: at most {GROWTH_TARGET}x)"
        )
    if scarce.errors(allowed=("402",)):
        failures.append(f"errors other than 402 on the scarce org: {dict(scarce.statuses)}")
    warnings = []
    if direct.errors():  # the baseline's own hiccups are not the gateway's failures
        warnings.append(f"errors calling the upstream directly: {dict(direct.statuses)}")
    if not scarce.statuses["402"]:
        warnings.append("the scarce org never ran out, so no refusal under load was seen: run longer")

    table_items = _table_items(state["moto"])
    _print_summary(
        args,
        {"gateway": gateway, "scarce": scarce, "direct": direct, "warm": warm},
        {"gateway": (gateway_seconds, gateway_cpu), "direct": (direct_seconds, direct_cpu)},
        {"funded org": funded_facts, "scarce org": scarce_facts},
        table_items,
    )
    if growth is not None:
        growth.print(args.history)
        if args.out is not None:
            write_section(args.out, growth.section(args), LOAD_SECTION)
            log(f"wrote the growth section of {args.out}")
    for warning in warnings:
        print(f"WARNING: {warning}")
    for failure in failures:
        print(f"FAIL: {failure}")
    print(
        "OK: no overdraft; balances equal their ledgers and the charges sent to clients"
        if not failures
        else ""
    )
    log(f"done in {time.monotonic() - started:.0f} s")
    return 1 if failures else 0


def _print_summary(
    args: argparse.Namespace,
    tallies: dict[str, Tally],
    times: dict[str, tuple[float, float]],
    money: dict[str, dict[str, Any]],
    table_items: int,
) -> None:
    gateway, direct, scarce, warm = tallies["gateway"], tallies["direct"], tallies["scarce"], tallies["warm"]
    (g_wall, g_cpu), (d_wall, d_cpu) = times["gateway"], times["direct"]

    def ms(seconds: float) -> str:
        return f"{seconds * 1000:.1f}"

    g_all = gateway.ok + sum(scarce.statuses.values())  # everything the stack answered in phase 1
    rows = [
        ("", "through the gateway", "upstream directly", "gateway overhead"),
        (
            "clients",
            f"{args.clients - args.scarce_clients} (+{args.scarce_clients} scarce)",
            str(args.clients),
            "",
        ),
        ("answered 200", str(gateway.ok), str(direct.ok), ""),
        ("throughput (200/s)", f"{gateway.ok / g_wall:.1f}", f"{direct.ok / d_wall:.1f}", ""),
    ]
    for label, p in (("p50 latency (ms)", 50), ("p90 latency (ms)", 90), ("p99 latency (ms)", 99)):
        g, d = percentile(gateway.latencies, p), percentile(direct.latencies, p)
        rows.append((label, ms(g), ms(d), f"+{ms(g - d)}"))
    g_mean, d_mean = statistics.fmean(gateway.latencies or [0]), statistics.fmean(direct.latencies or [0])
    rows.append(("mean latency (ms)", ms(g_mean), ms(d_mean), f"+{ms(g_mean - d_mean)}"))
    rows.append(("errors", str(gateway.errors()), str(direct.errors()), ""))
    rows.append(
        (
            "stack-process CPU per request (ms)",
            ms(g_cpu / max(g_all, 1)),
            ms(d_cpu / max(direct.ok, 1)),
            "",
        )
    )
    width = [max(len(r[i]) for r in rows) for i in range(4)]
    print()
    print(f"Load: {args.seconds:g} s per phase, {args.clients} concurrent clients, {args.workers} workers")
    for r in rows:
        print("  " + "  ".join(cell.ljust(width[i]) for i, cell in enumerate(r)))
    print()
    print(f"Warm-up before it: {args.warmup:g} s, {warm.ok} answered (cold starts; billed, not measured).")
    print(
        f"Scarce org ({args.scarce_clients} clients, {SCARCE_CREDITS} credits): {scarce.ok} answered, "
        f"{scarce.statuses['402']} refused with 402, other {scarce.errors(('402',))}."
    )
    if percentile(direct.latencies, 99) > 0.9:
        print(
            "The upstream's own p99 near 1 s is TCP retrying a connect its full accept queue dropped "
            "(each request opens a connection): a stand-in artefact."
        )
    print(
        f"The stack's process runs moto (one lock; {table_items:,} BillingTable items at the end), the "
        "front and the fake upstream: its CPU, not the billing code, bounds the throughput here. "
        "These are stand-in figures, not AWS ones."
    )
    print()
    print("Money, read from the DynamoDB stand-in:")
    for name, facts in money.items():
        print(f"  {name}: " + ", ".join(f"{k} {v}" for k, v in facts.items()))
    print()


if __name__ == "__main__":
    sys.exit(main())
