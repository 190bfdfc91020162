"""One hot org at 2,000 billed requests a second with 500 in flight: a model and a simulation.

No machine here can send that load through moto, so the simulation runs the billing path's
DynamoDB writes (the shapes `conduix.ledger.leases`, `conduix.ledger.holds` and `conduix.ledger.settles` make)
through the stand-in's own model of DynamoDB (`conduix_local.dynamo_standin.Capacity`: per-item
and per-partition-key throttling with split-for-heat) and a transaction-conflict model (a
transaction holds its items for `TX_SECONDS`; another touching one of them is cancelled), on
simulated time.
Open loop: requests arrive at the target rate whatever happens to earlier ones. Each request
runs in a Lambda-like environment serving one request at a time; environments are created on
demand (about 500: rate x latency). Writes that fail are retried with the product's backoff
(6 attempts); a bill that still fails is deferred (the answer goes out, HoldSweeper bills it).

Writes `docs/hot-org.md`. `python -m bench.hot_org`.
"""

from __future__ import annotations

import heapq
import math
import random
from collections import Counter, defaultdict, deque
from dataclasses import dataclass, field
from pathlib import Path

from conduix_local.dynamo_standin import Capacity

RATE = 2000.0  # billed requests per second
LATENCY = 0.25  # seconds per request: 500 in flight
DURATION = 90.0
RAMP = 30.0  # seconds over which the org's traffic grows to RATE
SPLIT_AFTER = 10.0  # seconds of sustained heat before a partition key splits (a model parameter)
TX_SECONDS = 0.015  # how long a transaction holds its items
HOLD = 1_000_000  # nano-credits held per request
CREDIT = 10**15  # the org's balance: large against its requests (a hot, well-funded org)
# As conduix.ledger.leases: requests per lease = the plan's 6,000 a minute / 16; a lease is used 30 s.
REQUESTS_PER_LEASE, SLICE_FRACTION, LEASE_SECONDS = 375, 16, 30.0
UNIT = {"tx": 2.0, "single": 1.0}  # WCU of a write of an item under 1 KB
PK = "ORG#hot"


@dataclass
class Env:
    lease_left: int = 0
    lease_until: float = 0.0
    lease_spends: int = 0
    lease_open: bool = False


@dataclass
class Store:
    capacity: Capacity
    recent: dict[str, deque[float]] = field(default_factory=lambda: defaultdict(deque))
    wcu: Counter[str] = field(default_factory=Counter)
    counts: Counter[str] = field(default_factory=Counter)
    available: int = CREDIT
    min_available: int = CREDIT
    rng: random.Random = field(default_factory=lambda: random.Random(14))

    def _conflicts(self, sk: str, t: float) -> bool:
        """Whether another transaction holds the item: with transactions on it arriving at rate
        r (measured over the last second), one is in flight with probability 1 - exp(-r x T)."""
        seen = self.recent[sk]
        while seen and seen[0] < t - 1.0:
            seen.popleft()
        return self.rng.random() < 1 - math.exp(-len(seen) * TX_SECONDS)

    def transact(self, items: list[tuple[str, str]], t: float) -> tuple[bool, float]:
        """Run one transaction (item class, sort key) with the product's retries; returns
        whether it landed and the time it took."""
        # Every attempt is judged at the event's time (the simulation's clock never runs back);
        # the backoff between attempts only adds to the request's latency.
        waited = 0.0
        for attempt in range(6):
            for _, sk in items:
                self.recent[sk].append(t)  # an attempt occupies its items, landed or not
            if any(self._conflicts(sk, t) for _, sk in items if sk in _SHARED):
                self.counts["conflicts"] += 1
            elif self.capacity.admit([(("T", PK, sk), UNIT["tx"]) for _, sk in items], t):
                for cls, _ in items:
                    self.wcu[cls] += UNIT["tx"]
                return True, waited + TX_SECONDS
            else:
                self.counts["throttles"] += 1
            waited += self.rng.uniform(0, min(1.0, 0.02 * 2**attempt))
        return False, waited


# Items more than one transaction writes at once (the per-request items are each written by one).
_SHARED = {"WALLET", "USAGE#day"}


def simulate(
    rate: float = RATE, duration: float = DURATION, leases: bool = True, ramp: float = 0.0
) -> dict[str, object]:
    """`ramp`: seconds over which the rate grows from nothing to `rate` (0: all at once)."""
    store = Store(Capacity(split_after=SPLIT_AFTER))
    rng = random.Random(2000)
    idle: list[Env] = []
    events: list[tuple[float, int, str, Env | None, bool]] = []
    envs = n = 0
    t = 0.0
    while t < duration:  # open loop: Poisson arrivals (thinned while the rate ramps up)
        t += rng.expovariate(rate)
        if ramp and t < ramp and rng.random() > t / ramp:
            continue
        heapq.heappush(events, (t, n, "arrive", None, False))
        n += 1
    out: Counter[str] = Counter()
    in_flight = peak = 0
    seq = n
    while events:
        now, _, kind, env, leased = heapq.heappop(events)
        if kind == "arrive":
            if idle:
                env = idle.pop()
            else:
                env, envs = Env(), envs + 1
            leased, delay = False, 0.0
            if leases and not (env.lease_left > 0 and now < env.lease_until):
                if env.lease_open:  # fold the spent lease: lease, wallet, its usage row
                    items = [("lease", f"LEASE#{id(env)}"), ("wallet", "WALLET"), ("usage", "USAGE#day")]
                    ok, took = store.transact(items, now)
                    delay += took
                    out["folds" if ok else "folds left to HoldSweeper"] += 1
                    env.lease_open = False
                slice_ = min(store.available // SLICE_FRACTION, HOLD * REQUESTS_PER_LEASE)
                ok, took = store.transact([("wallet", "WALLET"), ("lease", f"LEASE#{id(env)}")], now + delay)
                delay += took
                if ok:
                    store.available -= slice_
                    env.lease_left, env.lease_until = REQUESTS_PER_LEASE, now + LEASE_SECONDS
                    env.lease_spends = 0
                    env.lease_open = True
                    out["leases"] += 1
            if leases and env.lease_left > 0 and now < env.lease_until:
                env.lease_left -= 1
                leased = True
            else:  # a per-request hold: the wallet and the hold item
                ok, took = store.transact([("wallet", "WALLET"), ("hold", f"HOLD#{seq}")], now + delay)
                delay += took
                if not ok:
                    out["503 busy"] += 1
                    idle.append(env)
                    continue
                store.available -= HOLD
            store.min_available = min(store.min_available, store.available)
            in_flight += 1
            peak = max(peak, in_flight)
            seq += 1
            heapq.heappush(events, (now + delay + LATENCY, seq, "done", env, leased))
        else:
            assert env is not None
            in_flight -= 1
            cost = HOLD // 2
            if leased:  # the bill: ledger marker and line, spend record, a check of the lease
                items = [
                    ("entry", f"ENTRY#{seq}"),
                    ("entry", f"LEDGER#{seq}"),
                    ("spend", f"LSPEND#{seq}"),
                    ("lease check", f"LEASE#{id(env)}"),
                ]
                env.lease_spends += 1
            else:  # the settle: wallet, hold, ledger marker and line, usage row
                items = [
                    ("wallet", "WALLET"),
                    ("hold", f"HOLD#{seq}"),
                    ("entry", f"ENTRY#{seq}"),
                    ("entry", f"LEDGER#{seq}"),
                    ("usage", "USAGE#day"),
                ]
                store.available += HOLD - cost
            seq += 1
            ok, _ = store.transact(items, now)
            out["served" if ok else "served, bill deferred"] += 1
            idle.append(env)
    served = out["served"] + out["served, bill deferred"]
    return {
        "requests": n,
        "served": served,
        "402": 0,  # the org's credit covers every request: any 402 would be a false one
        "outcomes": dict(out),
        "throttles": store.counts["throttles"],
        "conflicts": store.counts["conflicts"],
        "environments": envs,
        "peak_in_flight": peak,
        "partitions": store.capacity.partitions("T", PK),
        "wcu_per_request": {cls: round(v / max(served, 1), 3) for cls, v in sorted(store.wcu.items())},
        "overdraft": store.min_available < 0,
        "served_per_second": served / duration,
    }


def render(with_leases: dict[str, object], holds: dict[str, object]) -> str:
    def table(result: dict[str, object]) -> list[str]:
        outcomes = result["outcomes"]
        assert isinstance(outcomes, dict)
        return [
            "| | |",
            "|---|---|",
            f"| requests sent (open loop) | {result['requests']:,} |",
            f"| served | {result['served']:,} ({result['served_per_second']:.0f}/s) |",
            f"| of which billed later (bill deferred) | {outcomes.get('served, bill deferred', 0):,} |",
            f"| 503 busy (hold could not land) | {outcomes.get('503 busy', 0):,} |",
            f"| 402 | {result['402']} |",
            f"| throttled write attempts | {result['throttles']:,} |",
            f"| transaction conflicts | {result['conflicts']:,} |",
            f"| leases taken / folded | {outcomes.get('leases', 0):,} / {outcomes.get('folds', 0):,} |",
            f"| environments | {result['environments']:,} (peak in flight {result['peak_in_flight']:,}) |",
            f"| partitions of the org's key at the end | {result['partitions']} |",
            f"| overdraft | {'YES' if result['overdraft'] else 'none'} |",
        ]

    def wcu(result: dict[str, object]) -> list[str]:
        per = result["wcu_per_request"]
        assert isinstance(per, dict)
        rows = ["| item class | WCU per request |", "|---|---|"]
        rows += [f"| {cls} | {v:g} |" for cls, v in per.items()]
        rows.append(f"| **all** | {sum(per.values()):.2f} |")
        return rows

    lw = with_leases["wcu_per_request"]
    assert isinstance(lw, dict)
    wallet = lw.get("wallet", 0.0)
    total = sum(lw.values())
    lines = [
        "# One hot org: 2,000 billed requests a second, 500 in flight",
        "",
        "Written by `python -m bench.hot_org` (part of `make bench`): a simulation on simulated time of",
        f"{DURATION:.0f} s of open-loop arrivals growing to {RATE:,.0f} req/s over {RAMP:.0f} s,",
        f"{LATENCY} s a request, through the",
        "stand-in's DynamoDB model (1,000 WCU/s per item, 1,000 per partition, split for heat after",
        f"{SPLIT_AFTER:.0f} s above 80%; a transaction holds its items {TX_SECONDS * 1000:.0f} ms).",
        "Item sizes under 1 KB: a transactional write is 2 WCU.",
        "",
        "## With escrow leases (what Completion does for a hot org)",
        "",
        *table(with_leases),
        "",
        *wcu(with_leases),
        "",
        f"The wallet takes {wallet:.3f} WCU per request, so the wallet item alone allows about "
        f"{1000 / wallet if wallet else float('inf'):,.0f} billed req/s for one org. "
        f"The org's partition key takes {total:.1f} WCU per request: one partition allows "
        f"{1000 / total:.0f} req/s, and the key splits for heat (every per-request item has its own ",
        "sort key) until it carries the rate.",
        "",
        "## With per-request holds only (every request writes the wallet twice)",
        "",
        *table(holds),
        "",
        *wcu(holds),
        "",
    ]
    return "\n".join(lines)


def main() -> int:
    leased = simulate(leases=True, ramp=RAMP)
    held = simulate(leases=False, ramp=RAMP)
    text = render(leased, held)
    path = Path(__file__).resolve().parent.parent / "docs" / "hot-org.md"
    path.write_text(text)
    print(text)
    ok = not leased["overdraft"] and not held["overdraft"]
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
