"""The wallet against a pure-Python model of it, one random step at a time (Hypothesis stateful).

Every rule calls the real data access (`conduix.ledger.holds`, `conduix.ledger.settles`, `conduix.ledger`,
`conduix.ledger.key_limits`, `conduix.inference.sweeper`...) on the locked moto server with tables from
template.yaml, predicts the outcome with the model, and after EVERY step the store is checked
against the model and against itself:

- the wallet's balance equals the replay of its ledger, to the nano-credit;
- `held` equals the sum of the open holds, and the holds are exactly the model's;
- available = balance - held, committed = month_spent + held, cap_remaining = cap_limit - committed;
- month_spent equals the month's usage entries in the ledger, and the usage aggregates add up;
- holds never overdraw: available only goes below zero by negative credits, cost > hold or
  holds of an invoice-mode wallet, and a capped wallet only passes its cap by cost > hold or a
  cap set below what is committed;
- every charge above its hold (the provider billed more than the hold bounded) left exactly one
  incident item, and nothing else did;
- a settle deferred (it could not land at once) keeps its hold until HoldSweeper settles it,
  exactly once, instead of releasing it;
- a wallet with an open hold is in the sweep index, or HoldSweeper would never find it;
- each key budget (per-key daily spend limit) holds exactly the key's counted open holds, its
  window's spend, and room = limit - spent - held;
- escrow leases: held counts open leases, the balance counts their spends only once folded, and
  each environment's memory (the lease it reserves against, the org's or a limited key's, what is
  in flight, its block of each key's requests, and what its last lease and blocks served, which
  sizes the next) is the model's;
- every key's rate window (`RPM#<key>@<minute>`: the minute's requests held, and blocks taken
  less what they gave back while that minute lasted) equals the model's count.

A reserve must be refused (rate limit, then cap, then balance, then the key's limit) exactly
when the model says so; a hot org's lease is taken, sized, answered busy (503, no hold) or left
for a per-request hold exactly when the model says so.

Profiles (deterministic, no example database):
  default                  short, part of the normal test run
  CONDUIX_PROFILE=long     at least 10,000 steps in total (minutes)
"""

from __future__ import annotations

import dataclasses
import math
import os
import types
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from fractions import Fraction
from pathlib import Path
from typing import Any, cast

import botocore.endpoint
import pytest
from conduix.accounts import orgs
from conduix.audit import reconcile
from conduix.core import config
from conduix.core.clock import limit_window, period_of
from conduix.core.errors import (
    Conflict,
    IdempotencyConflict,
    InsufficientCredits,
    KeySpendLimitExceeded,
    RateLimited,
    ServiceBusy,
    SpendCapExceeded,
)
from conduix.core.money import NANOS_PER_CREDIT as C
from conduix.core.money import format_credits
from conduix.inference import sweeper
from conduix.ledger import (
    entries,
    holds,
    key_limits,
    lease_folds,
    lease_store,
    leases,
    metering,
    rate_windows,
    settles,
    upkeep,
    wallet_settings,
    wallets,
)
from conduix.pricing import plans
from conduix.store import dynamo, schema
from conduix_local.dynamo_standin import item_key
from conduix_local.moto_server import LockedMotoServer
from conduix_local.tables import create_tables
from conduix_local.template import load_template
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.configuration import set_hypothesis_home_dir
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from tests.integration.helpers import NOW, ledger_items

pytestmark = pytest.mark.integration

_COMMON: dict[str, Any] = {
    "derandomize": True,  # the same examples on every run: CI is never flaky
    "database": None,  # and no .hypothesis directory
    "deadline": None,  # moto is slow; time is not what is under test
    "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large],
    "print_blob": False,
}
# Each example starts from empty tables (moto's transactions slow down as a table grows).
settings.register_profile("conduix-ledger-short", max_examples=15, stateful_step_count=40, **_COMMON)
settings.register_profile("conduix-ledger-long", max_examples=300, stateful_step_count=50, **_COMMON)
PROFILE = "conduix-ledger-long" if os.environ.get("CONDUIX_PROFILE") == "long" else "conduix-ledger-short"
LONG_RUN_MIN_STEPS = 10_000

HOLD_TTL = 300  # CONDUIX_HOLD_TTL_SECONDS, set by the test
KEY_CACHE = 30  # CONDUIX_KEY_CACHE_SECONDS, set by the test: a lease is used at most this long
KEYS = ("key_1", "key_2")
ENVS = ("env-a", "env-b")  # warm execution environments of the org (env-a also runs HoldSweeper)
ATTEMPTS = 6  # conduix.store.dynamo.retrying's attempts: a write throttled this often gives up
HOLD_ATTEMPTS = 10  # ...and a hold's (nothing is called yet, so it may wait longer)
# botocore retries a throttled single-item write itself (the client's `max_attempts` of 3 are
# retries: 4 in all; it leaves a cancelled transaction to `retrying`): a block's take is tried
# up to ATTEMPTS x this often, and its give-back, which `retrying` does not wrap, this often.
SINGLE_ATTEMPTS = 4
_TEMPLATE = load_template()

amounts = st.one_of(
    st.integers(1, 3 * C),
    st.integers(1, 1_000),  # a few nano-credits: rounding shows up here
    st.sampled_from([C, 2 * C, 5 * C]),
)
# A lease needs available credit for MIN_HOLDS requests: small amounts against the grants.
lease_amounts = st.one_of(
    st.integers(1, 1_000), st.integers(1, C // 20), st.sampled_from([C // 100, C // 20])
)
grant_amounts = st.one_of(st.integers(1, 10 * C), st.sampled_from([C, 5 * C, 10 * C]))
cap_limits = st.one_of(st.none(), st.integers(0, 15 * C), st.sampled_from([0, C, 5 * C]))
limits = st.one_of(st.none(), st.integers(1, 6 * C), st.sampled_from([C, 3 * C]))


def next_month(moment: datetime) -> datetime:
    first = moment.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    return (first + timedelta(days=32)).replace(day=1)


def minute_of(moment: datetime) -> int:
    return int(moment.timestamp()) // 60


@dataclass
class Model:
    """What the wallet must be, computed in plain Python."""

    period: str
    rpm_limit: int
    balance: int = 0
    holds: dict[str, tuple[int, int]] = field(default_factory=dict)  # rid -> (amount, expires_at)
    month_spent: int = 0
    capped: bool = False
    cap_limit: int = 0
    invoice: bool = False
    rpm: Counter[tuple[str, int]] = field(default_factory=Counter)  # holds per (key, minute)
    ledger: dict[str, int] = field(default_factory=dict)  # entry_id -> amount
    # How far below zero `available` (and `cap_remaining`) may legitimately be: what negative
    # credits, cost > hold, invoice-mode holds and a cap set below the committed spend account
    # for. Prepaid holds never do.
    debt: int = 0
    cap_debt: int = 0
    # Per-key daily spend limits: the limit of each limited key, each budget item's [window,
    # spent] (kept after a limit is removed), and the key whose budget each open hold counts in.
    key_limit: dict[str, int] = field(default_factory=dict)
    budget: dict[str, list[Any]] = field(default_factory=dict)
    hold_budget: dict[str, str] = field(default_factory=dict)

    # Escrow leases open in the store (not folded yet), by lease id.
    leases: dict[str, ModelLease] = field(default_factory=dict)

    def key_held(self, key: str) -> int:
        """A key budget's held: its key's open holds that count against it, and its leases'
        slices taken from it."""
        leased = sum(lease.amount for lease in self.leases.values() if lease.budget and lease.key == key)
        return sum(self.holds[rid][0] for rid, k in self.hold_budget.items() if k == key) + leased

    def key_room(self, key: str) -> int:
        return self.key_limit[key] - self.budget[key][1] - self.key_held(key)

    @property
    def held(self) -> int:
        return sum(a for a, _ in self.holds.values()) + sum(lease.amount for lease in self.leases.values())

    @property
    def unfolded(self) -> int:
        """Billed under open leases: in the ledger already, debited from the wallet at the fold."""
        return sum(lease.spent for lease in self.leases.values())

    @property
    def available(self) -> int:
        return self.balance - self.held

    @property
    def committed(self) -> int:
        return self.month_spent + self.held

    @property
    def cap_remaining(self) -> int:
        return self.cap_limit - self.committed

    def roll(self, now: datetime) -> None:
        """What a write that checks the period does first when the month has changed."""
        if period_of(now) > self.period:
            seen["month-roll"] += 1
            self.period = period_of(now)
            self.month_spent = 0
            self.cap_debt = max(0, -self.cap_remaining) if self.capped else 0


@dataclass(eq=False)
class ModelLease:
    """An escrow lease: in the store until folded, and in its environment's memory until retired."""

    lease_id: str
    key: str
    amount: int
    requests: int  # at most, of any of the org's keys
    taken_at: float
    use_until: int  # key_cache_seconds after it was taken, whatever the minute
    expires: int
    env: str
    spends: dict[str, tuple[int, str]] = field(default_factory=dict)  # rid -> (cost, period billed in)
    reserved: int = 0  # requests in flight against it, in memory
    inflight: int = 0
    retired: bool = False
    uncertain: bool = False  # a spend's write failed: the environment leaves the fold to HoldSweeper
    open: bool = True  # in the store
    budget: bool = False  # its slice is held against its key's spend limit too
    keys: set[str] = field(default_factory=set)  # the keys whose requests it served

    @property
    def spent(self) -> int:
        return sum(cost for cost, _ in self.spends.values())

    def room(self, amount: int, at: float) -> bool:
        return (
            not self.retired
            and at < self.use_until
            and self.reserved + self.spent + amount <= self.amount
            and len(self.spends) + self.inflight < self.requests
        )


@dataclass(eq=False)
class ModelBlock:
    """A block of one key's requests, counted at once in the minute it was taken."""

    minute: int
    granted: int
    taken_at: float
    use_until: float
    used: int = 0

    def room(self, at: float) -> bool:
        return self.used < self.granted and at < self.use_until


@dataclass
class Env:
    """One warm execution environment: the product's memory of it, and the model's."""

    name: str
    leases: dict[Any, Any] = field(default_factory=dict)  # conduix.ledger.leases._leases
    contended: dict[str, float] = field(default_factory=dict)  # conduix.ledger.leases._contended_until
    views: dict[str, Any] = field(default_factory=dict)  # conduix.ledger.wallets._views
    last_served: dict[Any, Any] = field(default_factory=dict)  # conduix.ledger.leases._last_served
    blocks: dict[Any, Any] = field(default_factory=dict)  # conduix.ledger.leases._blocks
    block_served: dict[Any, Any] = field(default_factory=dict)  # conduix.ledger.leases._block_served
    # slot ("" for the org's, or a limited key) -> the lease it reserves against
    mine: dict[str, ModelLease] = field(default_factory=dict)
    contended_until: float = 0.0
    # slot -> (requests, seconds) its last retired lease of the slot served: what sizes the next
    served: dict[str, tuple[int, float]] = field(default_factory=dict)
    my_blocks: dict[str, ModelBlock] = field(default_factory=dict)  # key -> its block of requests
    block_history: dict[str, tuple[int, float]] = field(default_factory=dict)  # key -> its last block's use


@dataclass
class Gate:
    """What the DynamoDB stand-in does to this step's writes to one item: a transaction in flight
    holding it (every write cancelled), or the next `throttles` writes throttled."""

    busy: bool = False
    throttles: int = 0
    cancelled: int = 0  # writes the stand-in cancelled for the transaction in flight

    def lands(self, attempts: int = ATTEMPTS) -> bool:
        """One write through `retrying`: does it land (after the throttles it meets)?"""
        if self.busy:
            self.cancelled += attempts
            return False
        if self.throttles >= attempts:
            self.throttles -= attempts
            return False
        if self.throttles:
            seen["standin:throttled-then-landed"] += 1
        self.throttles = 0
        return True


FREE = Gate()  # nothing in the way


def _memory() -> tuple[Any, ...]:
    """An environment's memory, as the product modules hold it (in the order of `Env`'s fields)."""
    return (
        leases._leases,
        leases._contended_until,
        wallets._views,
        leases._last_served,
        leases._blocks,
        leases._block_served,
    )


def _install(memory: tuple[Any, ...]) -> None:
    (
        leases._leases,
        leases._contended_until,
        wallets._views,
        leases._last_served,
        leases._blocks,
        leases._block_served,
    ) = memory


# The environments' clock (a view's refresh, a lease's contention mark) follows the model's.
_SIM_CLOCK = [NOW.timestamp()]
_SIM_TIME = types.SimpleNamespace(monotonic=lambda: _SIM_CLOCK[0])


steps_run = 0  # checked states of every example (one after each example's start, one per step)
examples_run = 0
# The paths worth reaching, counted so a run shows that it reached them.
seen: Counter[str] = Counter()
MUST_SEE = (
    "refused:rate",
    "refused:cap",
    "refused:balance",
    "hold",
    "hold:invoice",
    "settle:within",
    "settle:over",
    "settle:after-roll",
    "already-settled",
    "hold-gone",
    "release",
    "sweep:released",
    "month-roll",
    "negative-available",
    "conflict",
    "idempotent-replay",
    "duplicate-hold:same",
    "duplicate-hold:conflict",
    "settle:deferred",
    "sweep:settled-deferred",
    "refused:key-limit",
    "hold:key-limit",
    "key-window-roll",
    "lease:acquired",
    "lease:in-memory",
    "lease:spend",
    "lease:spend-over",
    "lease:release",
    "lease:retired:full",
    "lease:retired:time",
    "lease:sized-by-history",
    "lease:many-keys",
    "block:taken",
    "block:across-minute",
    "block:sized-by-history",
    "block:given-back",
    "block:last-of-the-minute",
    "block:rate-429",
    "block:busy-503",
    "block:give-back-lost",
    "lease:refused-hold-instead",
    "lease:busy-no-hold",
    "lease:busy-retired-folded",
    "lease:folded-by-env",
    "lease:close-all",
    "lease:folded-by-sweep",
    "lease:spend-after-expiry",
    "lease:pending-charged",
    "lease:pending-absorbed",
    "lease:key-budget",
    "lease:key-budget-refused",
    "lease:retired:failed-spend",
    "lease:two-environments",
    "env:died",
    "standin:busy-503",
    "standin:contended-then-lease",
    "standin:lease-spend-beside-wallet-transaction",
    "standin:hold-settle-deferred",
    "standin:throttled-then-landed",
    "standin:throttled-lease-not-taken",
    "standin:throttled-spend-pending",
    "standin:fold-left-to-sweep",
)


class LedgerMachine(RuleBasedStateMachine):
    def __init__(self, moto: LockedMotoServer) -> None:
        super().__init__()
        global examples_run
        examples_run += 1
        moto.reset()
        create_tables(dynamo.client(), _TEMPLATE)
        self.moto = moto
        self.now = NOW
        leases.forget()
        wallets.forget_views()
        # env-a runs in the modules' own memory (and runs HoldSweeper); env-b gets its own.
        self.envs = {
            ENVS[0]: Env(ENVS[0], *_memory()),
            ENVS[1]: Env(ENVS[1]),
        }
        self.org = orgs.create_org("Model Org", "model@example.test", self.now).org_id
        limit = wallets.get_wallet(self.org).plan  # the plan a new org starts on
        self.model = Model(period=period_of(self.now), rpm_limit=plans.get(limit).requests_per_minute)
        self.seq = 0
        self.grants: dict[str, tuple[str, int]] = {}  # key -> (kind, amount)
        self.settled: dict[str, tuple[int, metering.Usage]] = {}  # rid -> (hold, usage)
        self.closed: dict[str, int] = {}  # released or swept: rid -> hold
        self.pending: dict[str, metering.Usage] = {}  # deferred settles: rid -> usage
        self.closed_budget: dict[str, str] = {}  # closed requests: rid -> the key budget it counted in
        self.over: set[str] = set()  # requests charged above their hold
        self.billed_requests = 0
        self.billed_credits = 0
        # Requests reserved against a lease and still in flight: rid -> (reservation, lease, env).
        self.lease_flight: dict[str, tuple[leases.Reservation, ModelLease, str]] = {}
        # Deferred settles of lease spends (no hold): rid -> (its lease, the request's hold).
        self.lease_pending: dict[str, tuple[ModelLease, int]] = {}
        self.views_exact = True  # env-a's view of the balance follows every write (until env-b's)
        self.wallet_key = item_key(config.settings().billing_table, wallets.wallet_key(self.org))

    @property
    def now(self) -> datetime:
        return self._now

    @now.setter
    def now(self, moment: datetime) -> None:
        self._now = moment
        _SIM_CLOCK[0] = moment.timestamp()

    @contextmanager
    def _env(self, name: str) -> Iterator[Env]:
        """Run product code as environment `name` (its leases, contention marks and views)."""
        e = self.envs[name]
        saved = _memory()
        _install((e.leases, e.contended, e.views, e.last_served, e.blocks, e.block_served))
        try:
            yield e
        finally:
            _install(saved)

    def _next(self, prefix: str) -> str:
        self.seq += 1
        return f"{prefix}-{self.seq}"

    def _pick(self, data: st.DataObject, keys: Any, label: str) -> str:
        choice: str = data.draw(st.sampled_from(sorted(keys)), label=label)
        return choice

    # ------------------------------------------------------------------ credits in (and out)

    @initialize(
        amount=grant_amounts, rpm_limit=st.one_of(st.integers(2, 8), st.sampled_from([32, 48, 64, 1024]))
    )
    def seed(self, amount: int, rpm_limit: int) -> None:
        # A plan with a small per-key rate limit, so that a few steps can reach it (a lease takes
        # 1/SLICE_FRACTION of the key's minute: with 32 to 64, leases of 2 to 4 requests). With
        # 1,024 a lease may take 64: an environment's first asks FIRST_LEASE_REQUESTS, and the
        # next are sized by what its last one served.
        wallet_settings.set_plan(
            self.org, dataclasses.replace(plans.get(plans.FREE), requests_per_minute=rpm_limit)
        )
        self.model.rpm_limit = rpm_limit
        self._new_credit("grant", amount)

    def _new_credit(self, kind: str, amount: int) -> None:
        key = self._next(kind)
        entry, created = entries.post_entry(
            self.org, kind=kind, key=key, amount=amount, description="model", now=self.now
        )
        assert created and entry.amount == amount and entry.entry_id == f"{kind}:{key}"
        self.grants[key] = (kind, amount)
        self.model.ledger[entry.entry_id] = amount
        self.model.balance += amount
        if amount < 0:
            self.model.debt += -amount
        seen["credit" if amount > 0 else "negative-credit"] += 1

    @rule(data=st.data(), what=st.sampled_from(["grant", "grant", "grant", "reversal", "replay", "conflict"]))
    def credit(self, data: st.DataObject, what: str) -> None:
        """Grants, refund reversals (money taken back, even below zero) and replayed keys."""
        if what == "grant":
            self._new_credit("grant", data.draw(grant_amounts, label="amount"))
            return
        if what == "reversal" or not self.grants:
            self._new_credit("reversal", -data.draw(st.integers(1, 4 * C), label="amount"))
            return
        key = self._pick(data, self.grants, "reused key")
        kind, amount = self.grants[key]
        if what == "replay":  # the same key and amount: the original entry, nothing moves
            entry, created = entries.post_entry(
                self.org, kind=kind, key=key, amount=amount, description="replay", now=self.now
            )
            assert not created, "a replayed idempotency key moved money again"
            assert (entry.entry_id, entry.amount) == (f"{kind}:{key}", amount)
            seen["idempotent-replay"] += 1
            return
        delta = data.draw(st.one_of(st.integers(1, 2 * C), st.integers(-2 * C, -1)), label="delta")
        with pytest.raises(IdempotencyConflict):
            entries.post_entry(
                self.org, kind=kind, key=key, amount=amount + delta, description="changed", now=self.now
            )
        seen["conflict"] += 1

    # ------------------------------------------------------------------ a request's hold

    def _reserve(
        self,
        rid: str,
        amount: int,
        key: str,
        call: Callable[[], Any] | None = None,
        *,
        view_exact: bool = True,
    ) -> bool:
        """Reserve, with the outcome the model predicts; True if the hold was placed. `call`: the
        product call that ends in this hold (a lease's fallback), else `holds.reserve`."""
        m = self.model
        m.roll(self.now)  # reserve rolls the month first, whether or not it then refuses
        window = (key, minute_of(self.now))
        refuse_rate = m.rpm[window] >= m.rpm_limit
        refuse_cap = m.capped and m.cap_remaining < amount
        refuse_balance = not m.invoice and m.available < amount
        limited = key in m.key_limit
        today = limit_window("day", self.now)
        refuse_key = False
        if limited and not (refuse_rate or refuse_cap or refuse_balance):
            if m.budget[key][0] < today:  # the hold rolls the window first
                m.budget[key] = [today, 0]
                seen["key-window-roll"] += 1
            refuse_key = m.key_limit[key] - m.budget[key][1] - m.key_held(key) < amount
        try:
            if call is None:
                r = holds.reserve(self.org, rid, amount, model="acme/fast", key_id=key, now=self.now)
            else:
                r = call()
        except KeySpendLimitExceeded as exc:
            assert refuse_key, (
                f"refused by the key's limit with {m.budget.get(key)} and {m.key_held(key)} held"
            )
            assert (exc.limit_nanos, exc.period) == (m.key_limit[key], "day")
            seen["refused:key-limit"] += 1
            return False
        except RateLimited:
            assert refuse_rate, f"rate-limited after {m.rpm[window]} of {m.rpm_limit} requests this minute"
            seen["refused:rate"] += 1
            return False
        except SpendCapExceeded as exc:
            assert not refuse_rate, "the rate limit should have refused first"
            assert refuse_cap, f"refused by the cap with {format_credits(m.cap_remaining)} remaining"
            assert (exc.limit_nanos, exc.committed_nanos, exc.period) == (m.cap_limit, m.committed, m.period)
            seen["refused:cap"] += 1
            return False
        except InsufficientCredits as exc:
            assert not refuse_rate and not refuse_cap, "the rate limit or the cap should have refused first"
            assert refuse_balance, f"refused with {format_credits(m.available)} available"
            assert exc.available_nanos == m.available
            assert (
                exc.message
                == f"Insufficient credits. Current balance: {format_credits(m.available)} credits."
            )
            seen["refused:balance"] += 1
            return False
        assert not refuse_rate, f"a hold past the rate limit ({m.rpm_limit} per minute per key)"
        assert not refuse_cap, "a hold went past the spend cap"
        assert not refuse_balance, "a hold overdrew the wallet"
        assert not refuse_key, "a hold went past its key's spend limit"
        assert r.budget_key == (key if limited else "")
        if limited:
            m.hold_budget[rid] = key
            seen["hold:key-limit"] += 1
        m.holds[rid] = (amount, int(self.now.timestamp()) + HOLD_TTL)
        m.rpm[window] += 1
        assert r.hold_nanos == amount and getattr(r, "lease", None) is None
        if view_exact and self.views_exact:  # (another environment's writes reach a view at its refresh)
            assert r.balance == m.balance
        assert m.invoice or m.available >= 0, "a hold left the wallet overdrawn"
        assert not m.capped or m.cap_remaining >= 0, "a hold left the wallet past its cap"
        if m.invoice:
            m.debt = max(m.debt, -m.available)
        seen["hold:invoice" if m.invoice else "hold"] += 1
        return True

    def _usage(self, data: st.DataObject, hold: int) -> metering.Usage:
        """What the provider billed: now and then more than the hold (about one in ten)."""
        over = data.draw(st.integers(0, 9), label="over") == 0
        cost = hold + data.draw(st.integers(1, C)) if over else data.draw(st.integers(0, hold), label="cost")
        return metering.Usage("acme/fast", "key_1", data.draw(st.integers(0, 5000)), 7, cost)

    def _settle(self, data: st.DataObject, rid: str) -> None:
        hold, _ = self.model.holds[rid]
        usage = self._usage(data, hold)
        budget_key = self.model.hold_budget.get(rid, "")
        outcome = settles.settle(self.org, rid, hold, usage, self.now, budget_key=budget_key)
        assert outcome is settles.SettleOutcome.SETTLED
        self._settled(rid, usage)

    def _settled(self, rid: str, usage: metering.Usage) -> None:
        m = self.model
        hold, _ = m.holds[rid]
        cost = usage.cost
        seen["settle:over" if cost > hold else "settle:within"] += 1
        if cost > hold:
            self.over.add(rid)
        if period_of(self.now) > m.period:
            seen["settle:after-roll"] += 1
        m.roll(self.now)
        del m.holds[rid]
        budget_key = m.hold_budget.pop(rid, "")
        if budget_key:
            m.budget[budget_key][1] += cost  # in the window the budget item is at
        self.closed_budget[rid] = budget_key
        m.balance -= cost
        m.month_spent += cost
        m.ledger[f"usage:{rid}"] = -cost
        if cost > hold:
            m.debt += cost - hold
            m.cap_debt += cost - hold
        self.settled[rid] = (hold, usage)
        self.pending.pop(rid, None)
        self.billed_requests += 1
        self.billed_credits += cost

    def _release(self, rid: str) -> None:
        hold, _ = self.model.holds.pop(rid)
        budget_key = self.closed_budget[rid] = self.model.hold_budget.pop(rid, "")
        assert holds.release(self.org, rid, hold, budget_key=budget_key) is True
        self.closed[rid] = hold
        seen["release"] += 1

    @rule(data=st.data(), amount=amounts, key=st.sampled_from(KEYS))
    def reserve(self, data: st.DataObject, amount: int, key: str) -> None:
        """A hold left open (the request is in flight, or its Lambda died). Now and then with
        the id of a hold still open: the same amount is a retry and changes nothing, another
        amount is a conflict."""
        if self.model.holds and data.draw(st.integers(0, 7), label="duplicate id") == 0:
            rid = self._pick(data, self.model.holds, "open hold")
            held = self.model.holds[rid][0]
            self.model.roll(self.now)
            if data.draw(st.booleans(), label="same amount"):
                r = holds.reserve(self.org, rid, held, model="acme/fast", key_id=key, now=self.now)
                assert r.hold_nanos == held
                seen["duplicate-hold:same"] += 1
            else:
                with pytest.raises(Conflict):
                    other = amount if amount != held else held + 1
                    holds.reserve(self.org, rid, other, model="acme/fast", key_id=key, now=self.now)
                seen["duplicate-hold:conflict"] += 1
            return
        self._reserve(self._next("req"), amount, key)

    @rule(data=st.data(), amount=amounts, key=st.sampled_from(KEYS), fails=st.booleans())
    def request(self, data: st.DataObject, amount: int, key: str, fails: bool) -> None:
        """A whole request: hold, then settle (the provider answered) or release (it failed)."""
        rid = self._next("req")
        if self._reserve(rid, amount, key):
            if fails:
                self._release(rid)
            else:
                self._settle(data, rid)

    def _in_flight(self) -> set[str]:
        """Open holds whose request still runs (a deferred settle's request has answered)."""
        return set(self.model.holds) - set(self.pending)

    @precondition(lambda self: self._in_flight())
    @rule(data=st.data())
    def settle(self, data: st.DataObject) -> None:
        self._settle(data, self._pick(data, self._in_flight(), "open hold"))

    @precondition(lambda self: self._in_flight())
    @rule(data=st.data(), seconds=st.integers(0, 30))
    def settle_across_midnight(self, data: st.DataObject, seconds: int) -> None:
        """A request in flight when the UTC month turns: held last month, settled in the new one
        (the settle rolls the wallet's month; the hold counted last month, the cost counts now)."""
        self.now = next_month(self.now) + timedelta(seconds=seconds)
        self._settle(data, self._pick(data, self._in_flight(), "open hold"))

    @precondition(lambda self: self._in_flight())
    @rule(data=st.data())
    def release(self, data: st.DataObject) -> None:
        self._release(self._pick(data, self._in_flight(), "open hold"))

    @precondition(lambda self: self._in_flight())
    @rule(data=st.data())
    def settle_deferred(self, data: st.DataObject) -> None:
        """The provider answered but the settle could not land (contention): the usage is kept
        in an item of its own and the hold stays, until HoldSweeper settles it."""
        rid = self._pick(data, self._in_flight(), "open hold")
        hold, _ = self.model.holds[rid]
        usage = self._usage(data, hold)
        settles.record_pending(
            self.org, rid, hold, usage, self.now, budget_key=self.model.hold_budget.get(rid, "")
        )
        self.pending[rid] = usage
        seen["settle:deferred"] += 1

    @precondition(lambda self: self.settled or self.closed)
    @rule(data=st.data(), cost=st.integers(0, 3 * C))
    def close_again(self, data: st.DataObject, cost: int) -> None:
        """A retried settle bills once; a settle after release or sweep bills nothing (HOLD_GONE);
        releasing a closed hold does nothing."""
        rid = self._pick(data, {**self.settled, **self.closed}, "closed request")
        if rid in self.settled:
            hold, usage = self.settled[rid]
        else:
            hold, usage = self.closed[rid], metering.Usage("acme/fast", "key_1", 1, 1, cost)
        budget_key = self.closed_budget.get(rid, "")
        if data.draw(st.booleans(), label="release instead"):
            assert holds.release(self.org, rid, hold, budget_key=budget_key) is False
            seen["release-again"] += 1
        elif rid in self.settled:
            outcome = settles.settle(self.org, rid, hold, usage, self.now, budget_key=budget_key)
            assert outcome is settles.SettleOutcome.ALREADY_SETTLED
            seen["already-settled"] += 1
        else:
            outcome = settles.settle(self.org, rid, hold, usage, self.now, budget_key=budget_key)
            assert outcome is settles.SettleOutcome.HOLD_GONE
            seen["hold-gone"] += 1

    # ------------------------------------------------------------------ escrow leases, environments

    def _product_reserve(self, rid: str, amount: int, key: str) -> leases.Reservation:
        return leases.reserve(self.org, rid, amount, model="acme/fast", key_id=key, now=self.now)

    def _lease_reserve(
        self, env: str, rid: str, amount: int, key: str, gate: Gate = FREE, rate_gate: Gate = FREE
    ) -> None:
        """A request of a hot org through `leases.reserve` in environment `env`: against the
        environment's lease in memory, a new lease, or a per-request hold, as the model says."""
        with self._env(env) as e:
            known = wallets.known_wallet(self.org)  # the environment's view (its refresh follows the clock)
            expect = self._plan_lease_reserve(e, known, amount, key, gate, rate_gate)
            if expect == "hold":
                exact = env == ENVS[0] and self.views_exact
                self._reserve(
                    rid, amount, key, lambda: self._product_reserve(rid, amount, key), view_exact=exact
                )
                return
            if expect == "busy":
                with pytest.raises(ServiceBusy):
                    self._product_reserve(rid, amount, key)
                seen["standin:busy-503"] += 1
                return
            if expect == "rate":
                with pytest.raises(RateLimited):
                    self._product_reserve(rid, amount, key)
                seen["refused:rate"] += 1
                return
            assert isinstance(expect, ModelLease)
            r = self._product_reserve(rid, amount, key)
            assert r.lease is not None and r.hold_nanos == amount, f"expected lease, got {r}"
            if not expect.lease_id:  # acquired by this call
                expect.lease_id = r.lease.lease_id
                self.model.leases[expect.lease_id] = expect
                if env != ENVS[0]:
                    self.views_exact = False
                if any(lease.env != env for lease in self.model.leases.values()):
                    seen["lease:two-environments"] += 1
            assert r.lease.lease_id == expect.lease_id
            self.lease_flight[rid] = (r, expect, env)

    def _plan_lease_reserve(
        self, e: Env, known: wallets.Wallet, amount: int, key: str, gate: Gate, rate_gate: Gate = FREE
    ) -> ModelLease | str:
        """What `leases.reserve` does, step by step, applied to the model: the lease reserved
        against, "hold" (a per-request hold, predicted by `_reserve`) or "busy" (ServiceBusy).
        `gate`: the stand-in on the wallet; `rate_gate`: on the key's rate window."""
        at = self.now.timestamp()
        eligible = self._lease_eligible(known, amount, key)
        slot = key if key in known.limited_keys else ""
        for _ in range(2):  # a hold that kept colliding makes the org hot here: one more go
            if self._hot(e, known) and eligible:
                block = e.my_blocks.get(key)
                if block is None or not block.room(at):
                    if block is not None:
                        self._retire_block(e, key, block, at, rate_gate)
                    taken = self._take_block(e, known, key, rate_gate)
                    if taken == "busy":
                        seen["block:busy-503"] += 1
                        return "busy"
                    if taken == "rate":  # the key's minute is full: 429, the wallet untouched
                        seen["block:rate-429"] += 1
                        return "rate"
                    block = taken if isinstance(taken, ModelBlock) else None
                if block is not None:
                    lease = e.mine.get(slot)
                    if lease is not None and lease.room(amount, at):
                        lease.reserved += amount
                        lease.inflight += 1
                        block.used += 1
                        seen["lease:in-memory"] += 1
                        if minute_of(self.now) != block.minute:
                            seen["block:across-minute"] += 1  # counted in the minute it was taken
                        if key not in lease.keys:
                            seen["lease:many-keys"] += 1
                            lease.keys.add(key)
                        if gate.busy:
                            seen["standin:contended-then-lease"] += 1
                        return lease
                    retire = None
                    if lease is not None:
                        seen["lease:retired:full" if at < lease.use_until else "lease:retired:time"] += 1
                        lease.retired = True
                        del e.mine[slot]
                        if lease.inflight == 0:
                            retire = lease
                        # Its requests billed or still running, over the time it was used.
                        e.served[slot] = (len(lease.spends) + lease.inflight, at - lease.taken_at)
                    requests, slice_ = self._lease_size(e, known, amount, slot)
                    fresh: ModelLease | str | None = None
                    if slice_ >= amount and requests >= 2:
                        fresh = self._acquire(e, known, key, slice_, requests, amount, gate)
                    if retire is not None:
                        self._close(retire, gate)  # folded even when the new lease could not land
                    if fresh == "busy":
                        # Contention on the wallet: a 503, with no per-request hold on the same item.
                        seen["lease:busy-no-hold"] += 1
                        if retire is not None and not retire.open:
                            seen["lease:busy-retired-folded"] += 1
                        return "busy"
                    if isinstance(fresh, ModelLease):
                        block.used += 1
                        return fresh
                    seen["lease:refused-hold-instead"] += 1
            if gate.lands(HOLD_ATTEMPTS):
                return "hold"
            if self._hot(e, known) or not eligible:
                return "busy"
            e.contended_until = at + leases.CONTENDED_SECONDS
        raise AssertionError("unreachable")

    def _block_size(self, e: Env, known: wallets.Wallet, key: str) -> int:
        """A new block's requests: BLOCK_FIRST, then the rate the last one served over a whole
        block, with HEADROOM; at most 1/SLICE_FRACTION of the key's minute."""
        most = known.rpm_limit // leases.SLICE_FRACTION
        served, seconds = e.block_history.get(key, (0, 0.0))
        if served <= 0:
            return min(most, leases.BLOCK_FIRST)
        rate = Fraction(leases.HEADROOM) * served * leases.BLOCK_SECONDS / max(Fraction(seconds), Fraction(1))
        return min(most, max(leases.BLOCK_FIRST, math.ceil(rate)))

    def _take_block(self, e: Env, known: wallets.Wallet, key: str, rate_gate: Gate) -> ModelBlock | str:
        """A new block of the key's requests in this minute, or what is left of it (by the
        view's limit): "busy" when its write cannot land, "rate" when the minute is full."""
        m = self.model
        size = self._block_size(e, known, key)
        if not rate_gate.lands(ATTEMPTS * SINGLE_ATTEMPTS):
            return "busy"
        minute = minute_of(self.now)
        room = known.rpm_limit - m.rpm[(key, minute)]
        if room <= 0:
            return "rate"
        if size > leases.BLOCK_FIRST:
            seen["block:sized-by-history"] += 1
        if size > room:  # (a second write, after the refusal showed the count)
            seen["block:last-of-the-minute"] += 1
            size = room
        m.rpm[(key, minute)] += size
        at = self.now.timestamp()
        block = e.my_blocks[key] = ModelBlock(minute, size, at, at + leases.BLOCK_SECONDS)
        seen["block:taken"] += 1
        return block

    def _retire_block(self, e: Env, key: str, block: ModelBlock, at: float, rate_gate: Gate = FREE) -> None:
        """No more requests from `block`: what it served sizes the next; what it did not use is
        given back while its minute lasts (best effort: a give-back throttled past botocore's
        retries is lost, and the key serves fewer that minute)."""
        del e.my_blocks[key]
        e.block_history[key] = (block.used, at - block.taken_at)
        if block.used < block.granted and int(at) // 60 == block.minute:
            if rate_gate.lands(SINGLE_ATTEMPTS):
                self.model.rpm[(key, block.minute)] -= block.granted - block.used
                seen["block:given-back"] += 1
            else:
                seen["block:give-back-lost"] += 1

    def _lease_eligible(self, known: wallets.Wallet, amount: int, key: str) -> bool:
        return (
            known.billing_mode == "prepaid"
            and known.available >= leases.MIN_HOLDS * amount
            and amount > 0
            and known.rpm_limit // leases.SLICE_FRACTION >= leases.BLOCK_FIRST
        )

    def _hot(self, e: Env, known: wallets.Wallet) -> bool:
        return (
            known.lease_count > 0
            or known.hold_count >= leases.HOT_IN_FLIGHT
            or e.contended_until > self.now.timestamp()
        )

    def _lease_size(self, e: Env, known: wallets.Wallet, amount: int, slot: str) -> tuple[int, int]:
        """A new lease's requests and slice: its environment's first lease of the slot asks for
        FIRST_LEASE_REQUESTS; a later one for the rate its last one served over a whole lease,
        with HEADROOM, at most REQUESTS_PER_LEASE; the slice is the requests' holds, at most
        1/SLICE_FRACTION of what is available."""
        most = leases.REQUESTS_PER_LEASE
        served, seconds = e.served.get(slot, (0, 0.0))
        if served <= 0:
            requests = min(most, leases.FIRST_LEASE_REQUESTS)
        else:  # exact arithmetic: a request count, rounded up
            rate = Fraction(leases.HEADROOM) * served * KEY_CACHE / max(Fraction(seconds), Fraction(1))
            requests = min(most, max(leases.FIRST_LEASE_REQUESTS, math.ceil(rate)))
            if requests > leases.FIRST_LEASE_REQUESTS:
                seen["lease:sized-by-history"] += 1
        slice_ = min(known.available // leases.SLICE_FRACTION, amount * requests)
        if known.capped:
            slice_ = min(slice_, known.cap_remaining // leases.SLICE_FRACTION)
        return requests, slice_

    def _slot(self, key: str) -> str:
        """The lease a key's requests use (as the model knows the key's limit)."""
        return key if key in self.model.key_limit else ""

    def _takes_block(self, env: str, amount: int, key: str) -> bool:
        """Would this request of `env` take a new block of the key's requests?"""
        with self._env(env) as e:
            known = wallets.known_wallet(self.org)
        if not (self._hot(e, known) and self._lease_eligible(known, amount, key)):
            return False
        block = e.my_blocks.get(key)
        return block is None or not block.room(self.now.timestamp())

    def _takes_lease(self, env: str, amount: int, key: str) -> bool:
        """Would this request of `env` try to take a new lease (a write to the wallet)?"""
        with self._env(env) as e:
            known = wallets.known_wallet(self.org)
        if not (self._hot(e, known) and self._lease_eligible(known, amount, key)):
            return False
        at = self.now.timestamp()
        block = e.my_blocks.get(key)
        if block is None or not block.room(at):
            unused = block.granted - block.used if block and int(at) // 60 == block.minute else 0
            counted = self.model.rpm[(key, minute_of(self.now))] - unused
            if counted >= known.rpm_limit:
                return False  # no block: refused for the rate
        lease = e.mine.get(key if key in known.limited_keys else "")
        if lease is not None and lease.room(amount, at):
            return False
        requests, slice_ = self._lease_size(e, known, amount, key if key in known.limited_keys else "")
        return slice_ >= amount and requests >= 2

    def _acquire(
        self, e: Env, known: wallets.Wallet, key: str, slice_: int, requests: int, amount: int, gate: Gate
    ) -> ModelLease | str | None:
        """A new lease: the model's, "busy" when its write cannot land (the stand-in's conflict
        or throttles), None when the wallet's conditions refuse it."""
        m = self.model
        at = int(self.now.timestamp())
        use_until = at + KEY_CACHE  # whatever the minute: no lease ends with it
        if not gate.lands():
            seen["lease:acquire-busy" if gate.busy else "standin:throttled-lease-not-taken"] += 1
            return "busy"
        # A key the view knows limited leases from its budget item too, while its room is
        # SLICE_FRACTION slices (in the budget's current window: else a hold rolls it).
        budget = key in known.limited_keys
        budget_lands = not budget or (
            key in m.key_limit
            and m.budget[key][0] == limit_window("day", self.now)
            and m.key_limit[key] > 0
            and m.key_room(key) >= slice_ * leases.SLICE_FRACTION
        )
        if budget and not budget_lands:
            seen["lease:key-budget-refused"] += 1
        lands = (
            m.period == period_of(self.now)
            and known.rpm_limit == m.rpm_limit
            and budget == (key in m.key_limit)
            and budget_lands
            and m.available >= slice_
            and (not m.capped or m.cap_remaining >= slice_)
            and known.billing_mode == ("invoice" if m.invoice else "prepaid")
        )
        if not lands:
            return None
        slot = key if budget else ""  # the org's lease, or a limited key's own
        lease = ModelLease(
            "",
            slot,
            slice_,
            requests,
            self.now.timestamp(),
            use_until,
            use_until + lease_store.SETTLE_MARGIN_SECONDS,
            e.name,
        )
        lease.reserved, lease.inflight = amount, 1
        lease.budget = budget
        lease.keys.add(key)
        if budget:
            seen["lease:key-budget"] += 1
        e.mine[slot] = lease
        seen["lease:acquired"] += 1
        return lease

    def _close(self, lease: ModelLease, gate: Gate) -> None:
        """The environment folds a retired lease once its last request finished (best effort)."""
        if lease.uncertain:
            return  # a spend's write failed: HoldSweeper folds it from the store
        if not gate.lands():
            seen["standin:fold-left-to-sweep"] += 1
            return
        if lease.open:  # (else HoldSweeper folded it already: nothing moves)
            self._fold(lease, "env")
            seen["lease:folded-by-env"] += 1
            if lease.env != ENVS[0]:
                self.views_exact = False

    def _fold(self, lease: ModelLease, by: str) -> None:
        """Debit the lease's spends, return its slice, add its usage rows."""
        m = self.model
        m.roll(self.now)
        in_month = sum(cost for cost, period in lease.spends.values() if period == m.period)
        m.balance -= lease.spent
        m.month_spent += in_month
        self.billed_requests += len(lease.spends)
        self.billed_credits += lease.spent
        if lease.budget:  # its spends count in the window the key's budget is at
            m.budget[lease.key][1] += lease.spent
        del m.leases[lease.lease_id]
        lease.open = False

    def _lease_settle(
        self,
        data: st.DataObject,
        rid: str,
        gate: Gate = FREE,
        spend_gate: Gate = FREE,
        usage: metering.Usage | None = None,
    ) -> None:
        """The provider answered a request reserved against a lease: its spend is written (not
        the wallet), or, refused or not landed, kept as a deferred settle as Completion does."""
        r, lease, env = self.lease_flight.pop(rid)
        hold = r.hold_nanos
        usage = usage or self._usage(data, hold)
        m = self.model
        expired = not (lease.open and lease.expires > int(self.now.timestamp()))
        written = spend_gate.lands()  # (refused by its condition only once it is not throttled)
        lands = written and not expired
        with self._env(env):
            try:
                outcome = leases.settle(self.org, rid, r, usage, self.now)
            except (Conflict, ServiceBusy) as exc:
                assert not lands, f"a lease's spend was refused: {exc!r}"
                assert isinstance(exc, Conflict if written else ServiceBusy)
                budget_key = lease.key if lease.budget else ""  # as Completion passes it
                settles.record_pending(
                    self.org, rid, hold, usage, self.now, lease_id=lease.lease_id, budget_key=budget_key
                )
            else:
                assert lands, "a spend landed in a lease folded or expired"
                assert outcome is settles.SettleOutcome.SETTLED
        if lands:
            cost = usage.cost
            m.ledger[f"usage:{rid}"] = -cost
            lease.spends[rid] = (cost, period_of(self.now))
            seen["lease:spend-over" if cost > hold else "lease:spend"] += 1
            if gate.busy:
                seen["standin:lease-spend-beside-wallet-transaction"] += 1
            if cost > hold:
                self.over.add(rid)
                m.debt += cost - hold
                m.cap_debt += cost - hold
        else:
            # The environment retires the lease at once: nothing more is reserved in it, so
            # the slice still covers this request when HoldSweeper writes it in as a spend.
            lease.uncertain = True
            if not lease.retired:
                lease.retired = True
                e = self.envs[env]
                if e.mine.get(lease.key) is lease:
                    del e.mine[lease.key]
                at = self.now.timestamp()
                e.served[lease.key] = (len(lease.spends) + lease.inflight, at - lease.taken_at)
                seen["lease:retired:failed-spend"] += 1
            self.pending[rid] = usage
            self.lease_pending[rid] = (lease, hold)
            seen["lease:spend-after-expiry" if written else "standin:throttled-spend-pending"] += 1
        self._lease_done(lease, hold, gate)

    def _lease_done(self, lease: ModelLease, amount: int, gate: Gate) -> None:
        lease.reserved -= amount
        lease.inflight -= 1
        if lease.retired and lease.inflight == 0:
            self._close(lease, gate)

    @rule(env=st.sampled_from(ENVS), amount=lease_amounts, key=st.sampled_from(KEYS))
    def lease_request(self, env: str, amount: int, key: str) -> None:
        """A request of the org in one of its environments, through leases.reserve (left in flight)."""
        self._lease_reserve(env, self._next("lreq"), amount, key)

    @rule(env=st.sampled_from(ENVS), amount=lease_amounts, key=st.sampled_from(KEYS))
    def burst(self, env: str, amount: int, key: str) -> None:
        """A burst: requests of one key pile up in flight until the environment sees the org
        hot (HOT_IN_FLIGHT holds open) and serves the next from a lease."""
        for _ in range(leases.HOT_IN_FLIGHT + 1):
            rid = self._next("lreq")
            self._lease_reserve(env, rid, amount, key)
            if rid in self.lease_flight or rid not in self.model.holds:
                return  # served from a lease, or refused

    def _pile_up(self, env: str, amount: int, key: str, until: Callable[[], bool]) -> None:
        """Requests of one key pile up in flight in `env` (as in a burst) until `until()`."""
        for _ in range(leases.HOT_IN_FLIGHT + 1):
            if until():
                return
            rid = self._next("lreq")
            self._lease_reserve(env, rid, amount, key)
            if rid not in self.lease_flight and rid not in self.model.holds:
                return  # refused, or answered busy

    @rule(
        env=st.sampled_from(ENVS),
        amount=lease_amounts,
        key=st.sampled_from(KEYS),
        gap=st.integers(1, 12),
        # Up to a first lease's FIRST_LEASE_REQUESTS and more: one that fills within its 30 s
        # has its successor sized by what it served.
        count=st.one_of(st.integers(2, 6), st.integers(leases.FIRST_LEASE_REQUESTS, 20)),
    )
    def steady_traffic(self, env: str, amount: int, key: str, gap: int, count: int) -> None:
        """A warm environment serving one key steadily, a request every `gap` seconds (left in
        flight): its lease is reused as time goes, also past the minute it was taken in, and
        retired by time or when full, and its next sized by what it served."""
        for _ in range(count):
            self._lease_reserve(env, self._next("lreq"), amount, key)
            self.now += timedelta(seconds=gap)

    @precondition(lambda self: self.lease_flight)
    @rule(data=st.data())
    def lease_settle(self, data: st.DataObject) -> None:
        self._lease_settle(data, self._pick(data, self.lease_flight, "leased request"))

    @precondition(lambda self: self.lease_flight)
    @rule(data=st.data())
    def lease_release(self, data: st.DataObject) -> None:
        """The provider failed: the reservation goes back in memory, nothing is billed."""
        self._lease_release(self._pick(data, self.lease_flight, "leased request"))

    def _lease_release(self, rid: str) -> None:
        r, lease, env = self.lease_flight.pop(rid)
        with self._env(env):
            leases.release(self.org, rid, r, self.now)
        seen["lease:release"] += 1
        self._lease_done(lease, r.hold_nanos, FREE)

    def _close_all(self, env: str, gate: Gate = FREE) -> None:
        with self._env(env) as e:
            held = list(e.mine.values())
            e.mine.clear()
            for lease in held:
                lease.retired = True
            at = self.now.timestamp()
            for key, block in list(e.my_blocks.items()):  # (given back before the folds)
                self._retire_block(e, key, block, at)
            for lease in held:
                if lease.inflight == 0:
                    self._close(lease, gate)
            leases.close_all(self.now)
        seen["lease:close-all"] += 1

    @rule(env=st.sampled_from(ENVS))
    def close_all(self, env: str) -> None:
        """The environment stops: it folds its leases (those with requests in flight when the last ends)."""
        self._close_all(env)

    @rule(env=st.sampled_from(ENVS))
    def environment_dies(self, env: str) -> None:
        """The environment is gone with its memory and its requests in flight (never billed):
        its leases stay open in the store until they expire and HoldSweeper folds them."""
        with self._env(env) as e:
            leases.forget()
            e.views.clear()
        e.mine.clear()
        e.contended_until = 0.0
        e.served.clear()  # its leases' history went with it: its next lease is a first one
        e.my_blocks.clear()  # its blocks' unused requests stay counted in their minutes
        e.block_history.clear()
        for rid in [rid for rid, (_, _, where) in self.lease_flight.items() if where == env]:
            del self.lease_flight[rid]
        seen["env:died"] += 1

    # ------------------------------------------------------------------ DynamoDB's contention and throttling

    @rule(
        data=st.data(),
        env=st.sampled_from(ENVS),
        amount=lease_amounts,
        key=st.sampled_from(KEYS),
        what=st.sampled_from(["reserve", "reserve", "leased", "lease-settle", "hold-settle", "close-all"]),
    )
    def wallet_in_a_transaction(
        self, data: st.DataObject, env: str, amount: int, key: str, what: str
    ) -> None:
        """Another transaction holds the wallet for the whole call (DynamoDB cancels ours): a
        hold gets ServiceBusy (503) and marks the org contended in the environment, whose next
        requests take a lease; a lease's reservation and spend never touch the wallet and pass;
        a hold's settle is deferred; a fold is left to HoldSweeper. A lease that cannot land is
        answered 503 with no per-request hold: the writes the stand-in cancelled are counted."""
        if what == "close-all":
            self._pile_up(env, amount, key, lambda: bool(self.envs[env].mine))
        elif what == "leased":  # the environment has a lease of the key to reserve against
            self._pile_up(env, amount, key, lambda: self._slot(key) in self.envs[env].mine)
        elif what == "lease-settle":  # a request reserved against a lease is in flight
            self._pile_up(env, amount, key, lambda: bool(self.lease_flight))
        gate = Gate(busy=True)
        conflicts = self.moto.standin.conflicts
        before = conflicts.cancelled
        with conflicts.running([self.wallet_key]):
            if what == "lease-settle" and self.lease_flight:
                self._lease_settle(data, self._pick(data, self.lease_flight, "leased request"), gate)
            elif what == "hold-settle" and self._in_flight():
                rid = self._pick(data, self._in_flight(), "open hold")
                hold, _ = self.model.holds[rid]
                usage = self._usage(data, hold)
                budget_key = self.model.hold_budget.get(rid, "")
                with pytest.raises(ServiceBusy):
                    settles.settle(self.org, rid, hold, usage, self.now, budget_key=budget_key)
                settles.record_pending(self.org, rid, hold, usage, self.now, budget_key=budget_key)
                self.pending[rid] = usage
                seen["standin:hold-settle-deferred"] += 1
                before = conflicts.cancelled - gate.cancelled  # (a settle's writes: not the model's)
            elif what == "close-all":
                self._close_all(env, gate)
            else:
                self._lease_reserve(env, self._next("lreq"), amount, key, gate)
        assert conflicts.cancelled - before == gate.cancelled, (
            f"{conflicts.cancelled - before} writes cancelled, the model says {gate.cancelled}"
        )
        if what == "reserve":  # the client retries its 503 (the wallet is free again)
            self._lease_reserve(env, self._next("lreq"), amount, key)

    @rule(
        data=st.data(),
        env=st.sampled_from(ENVS),
        amount=lease_amounts,
        key=st.sampled_from(KEYS),
        # As many as the retries about half the time: the paths where a write gives up.
        throttles=st.one_of(st.integers(1, ATTEMPTS), st.just(ATTEMPTS)),
        what=st.sampled_from(["reserve", "lease", "block", "spend", "close-all"]),
    )
    def throttled(
        self, data: st.DataObject, env: str, amount: int, key: str, throttles: int, what: str
    ) -> None:
        """The next writes to one item are throttled (over its capacity): fewer than the retries
        and the write lands late; as many and it gives up (ServiceBusy), and the product answers
        as the model says: a new lease not taken (503 busy, no hold; a lease it retired is still
        folded), a spend kept as a deferred settle (charged once by HoldSweeper), a fold left to
        HoldSweeper, a block of a key's requests not taken (503 busy, no hold). "lease" and
        "block": requests pile up first until the next one takes a lease, or a block."""
        gate = Gate(throttles=throttles)
        standin = self.moto.standin
        if what == "lease":
            self._pile_up(env, amount, key, lambda: self._takes_lease(env, amount, key))
            # Its requests in flight fail first: the lease this one retires is folded at once.
            mine = self.envs[env].mine.get(self._slot(key))
            for rid in [rid for rid, (_, lease, _) in self.lease_flight.items() if lease is mine]:
                self._lease_release(rid)
        elif what == "block":
            self._pile_up(env, amount, key, lambda: self._takes_block(env, amount, key))
            if not self._takes_block(env, amount, key):
                return
        elif what == "spend":
            self._pile_up(env, amount, key, lambda: bool(self.lease_flight))
        elif what == "close-all":
            self._pile_up(env, amount, key, lambda: bool(self.envs[env].mine))
        if what == "spend" and self.lease_flight:
            rid = self._pick(data, self.lease_flight, "leased request")
            lease = self.lease_flight[rid][1]
            spend = item_key(
                config.settings().billing_table, lease_store.spend_key(self.org, lease.lease_id, rid)
            )
            standin.throttle_next(throttles, [spend])
            try:
                self._lease_settle(data, rid, spend_gate=gate)
            finally:
                left = standin.throttles_pending
                standin.throttle_next(0)
        elif what == "block":  # the key's window of this minute (botocore retries each attempt)
            gate = Gate(throttles=throttles * SINGLE_ATTEMPTS)
            window = rate_windows.window_key(self.org, key, minute_of(self.now))
            standin.throttle_next(gate.throttles, [item_key(config.settings().billing_table, window)])
            try:
                self._lease_reserve(env, self._next("lreq"), amount, key, rate_gate=gate)
            finally:
                left = standin.throttles_pending
                standin.throttle_next(0)
        else:
            standin.throttle_next(throttles, [self.wallet_key])
            try:
                if what == "close-all":
                    self._close_all(env, gate)
                else:
                    self._lease_reserve(env, self._next("lreq"), amount, key, gate)
            finally:
                left = standin.throttles_pending
                standin.throttle_next(0)
        assert left == gate.throttles, f"{left} throttles left, the model says {gate.throttles}"

    # ------------------------------------------------------------------ rare paths, driven
    # Each rule below drives one path the random rules reach only now and then, from whatever
    # state the example is in (it may find that state cannot lead there, and do less).

    @precondition(lambda self: self.model.rpm_limit // leases.SLICE_FRACTION > leases.FIRST_LEASE_REQUESTS)
    @rule(env=st.sampled_from(ENVS), amount=lease_amounts, key=st.sampled_from(KEYS))
    def a_lease_fills_within_its_time(self, env: str, amount: int, key: str) -> None:
        """An environment's lease fills before its 30 s: the next is sized by what it served."""
        self._pile_up(env, amount, key, lambda: self._slot(key) in self.envs[env].mine)
        for _ in range(leases.FIRST_LEASE_REQUESTS + 1):
            if self._slot(key) not in self.envs[env].mine:
                return
            self._lease_reserve(env, self._next("lreq"), amount, key)

    @rule(data=st.data(), env=st.sampled_from(ENVS), amount=lease_amounts, key=st.sampled_from(KEYS))
    def a_leased_request_outlives_its_lease(
        self, data: st.DataObject, env: str, amount: int, key: str
    ) -> None:
        """A leased request still running when HoldSweeper folds its expired lease: its spend is
        refused and deferred, then charged on its own from credit nobody holds (or unbilled)."""
        self._pile_up(env, amount, key, lambda: bool(self.lease_flight))
        if not self.lease_flight:
            return
        rid = self._pick(data, self.lease_flight, "leased request")
        lease = self.lease_flight[rid][1]
        folded_at = lease.expires + lease_folds.FOLD_SKEW_SECONDS
        self.now += timedelta(seconds=max(folded_at - int(self.now.timestamp()), 0))
        self.sweep()
        self._lease_settle(data, rid)
        self.sweep()

    @rule(data=st.data(), env=st.sampled_from(ENVS), amount=lease_amounts, key=st.sampled_from(KEYS))
    def the_next_lease_is_busy_after_one_ran_its_time(
        self, data: st.DataObject, env: str, amount: int, key: str
    ) -> None:
        """A lease ran its time; its successor meets a throttled wallet (503, no hold) while the
        retired lease, with nothing in flight, is folded all the same."""
        self._pile_up(env, amount, key, lambda: self._slot(key) in self.envs[env].mine)
        lease = self.envs[env].mine.get(self._slot(key))
        if lease is None:
            return
        self.now += timedelta(seconds=max(lease.use_until - int(self.now.timestamp()), 0))
        self.throttled(data, env, amount, key, ATTEMPTS, "lease")

    @rule(
        data=st.data(),
        env=st.sampled_from(ENVS),
        amount=lease_amounts,
        key=st.sampled_from(KEYS),
        over=st.integers(1, C),
    )
    def a_leased_request_costs_more_than_its_hold(
        self, data: st.DataObject, env: str, amount: int, key: str, over: int
    ) -> None:
        """The provider bills a leased request above its hold: the spend lands all the same,
        with an incident, and its lease's fold debits it (the debt the model allows)."""
        self._pile_up(env, amount, key, lambda: bool(self.lease_flight))
        if not self.lease_flight:
            return
        rid = self._pick(data, self.lease_flight, "leased request")
        hold = self.lease_flight[rid][0].hold_nanos
        self._lease_settle(data, rid, usage=metering.Usage("acme/fast", "key_1", 10, 7, hold + over))

    @rule(data=st.data(), env=st.sampled_from(ENVS), amount=lease_amounts, key=st.sampled_from(KEYS))
    def a_throttled_spend_is_absorbed_into_its_open_lease(
        self, data: st.DataObject, env: str, amount: int, key: str
    ) -> None:
        """A leased request's spend is throttled past its retries (kept as a pending settle, the
        lease retired), and HoldSweeper runs while the lease is still open: the pending settle
        is written into the lease as one more spend, and the fold debits it from the slice."""
        self._pile_up(env, amount, key, lambda: bool(self.lease_flight))
        if not self.lease_flight:
            return
        self.throttled(data, env, amount, key, ATTEMPTS, "spend")
        self.sweep()

    @precondition(lambda self: self.model.rpm_limit <= 64)
    @rule(env=st.sampled_from(ENVS), amount=lease_amounts, key=st.sampled_from(KEYS))
    def a_keys_minute_fills_under_blocks(self, env: str, amount: int, key: str) -> None:
        """A hot org's key runs into its limit through blocks: the last block takes what is left
        of the minute, and then the minute refuses (429) without a write to the wallet."""
        self._pile_up(env, amount, key, lambda: key in self.envs[env].my_blocks)
        if key not in self.envs[env].my_blocks:
            return
        for _ in range(self.model.rpm_limit + 2):
            refused = seen["block:rate-429"]
            self._lease_reserve(env, self._next("lreq"), amount, key)
            if seen["block:rate-429"] > refused or key not in self.envs[env].my_blocks:
                return  # full, or off blocks (a hold, a refusal, a busy answer)

    @rule(data=st.data(), env=st.sampled_from(ENVS), amount=lease_amounts, key=st.sampled_from(KEYS))
    def a_retired_blocks_give_back_meets_a_throttled_window(
        self, data: st.DataObject, env: str, amount: int, key: str
    ) -> None:
        """A block ran its time with requests unused, in the minute it was taken: its give-back
        meets the key's throttled window first and is dropped (botocore's retries spent), and
        the next block lands behind it, or not (503)."""
        self._pile_up(env, amount, key, lambda: key in self.envs[env].my_blocks)
        block = self.envs[env].my_blocks.get(key)
        if block is None or block.used >= block.granted or int(block.use_until) // 60 != block.minute:
            return
        self.now += timedelta(seconds=max(int(block.use_until) - int(self.now.timestamp()), 0))
        self.throttled(data, env, amount, key, ATTEMPTS, "block")

    # ------------------------------------------------------------------ time, expiry, settings

    @rule(
        seconds=st.one_of(st.integers(1, 120), st.integers(HOLD_TTL - 5, HOLD_TTL + 5)),
        new_month=st.integers(0, 4),
        offset=st.integers(0, 3 * 86_400),
    )
    def time_passes(self, seconds: int, new_month: int, offset: int) -> None:
        """Seconds or minutes (holds expire, rate windows turn), or into the next UTC month (the
        wallet rolls on its next write that checks the period)."""
        if new_month == 0:
            self.now = next_month(self.now) + timedelta(seconds=offset)
        else:
            self.now += timedelta(seconds=seconds)

    @rule()
    def sweep(self) -> None:
        """HoldSweeper (run by env-a): deferred settles (a hold's settled, a lease spend's written
        into its lease while it is open, else charged on its own from credit nobody holds, else
        left unbilled), expired holds released, expired leases folded from their spend records."""
        cutoff = int(self.now.timestamp())
        deferred = dict(self.pending)
        expired = {rid: a for rid, (a, x) in self.model.holds.items() if x <= cutoff and rid not in deferred}
        folds = [
            lease
            for lease in self.model.leases.values()
            if lease.expires + lease_folds.FOLD_SKEW_SECONDS <= cutoff
        ]
        with self._env(ENVS[0]):
            result = sweeper.sweep(self.now)
        unbilled: dict[str, int] = {}
        for rid, usage in sorted(deferred.items()):  # in the order of their keys, as the sweep
            if rid not in self.lease_pending:
                self._settled(rid, usage)  # (the first write that checks the month rolls it)
                seen["sweep:settled-deferred"] += 1
            elif self.lease_pending[rid][0].open:
                self._absorbed(rid, usage)
            elif not self._charged(rid, usage):
                unbilled[rid] = usage.cost
        settled = {rid: u.cost for rid, u in deferred.items() if rid not in unbilled}
        assert result["pending_settled"] == len(settled), "a deferred settle was not settled once"
        assert result["credits_settled"] == format_credits(sum(settled.values()))
        assert result["served_unbilled"] == len(unbilled)
        assert result["holds_released"] == len(expired)
        assert result["credits_released"] == format_credits(sum(expired.values()))
        assert result["leases_folded"] == len(folds)
        for rid, amount in expired.items():
            del self.model.holds[rid]
            self.closed[rid] = amount
            self.closed_budget[rid] = self.model.hold_budget.pop(rid, "")
        seen["sweep:released"] += len(expired)
        for lease in folds:
            self._fold(lease, "sweep")
            seen["lease:folded-by-sweep"] += 1

    def _absorbed(self, rid: str, usage: metering.Usage) -> None:
        """A lease spend's deferred settle, written into its lease (still open) as one more
        spend: the fold debits it from the slice its reservation was counted in."""
        lease, hold = self.lease_pending.pop(rid)
        del self.pending[rid]
        cost = usage.cost
        self.model.ledger[f"usage:{rid}"] = -cost
        lease.spends[rid] = (cost, period_of(self.now))
        if cost > hold:
            self.over.add(rid)
            self.model.debt += cost - hold
            self.model.cap_debt += cost - hold
        seen["lease:pending-absorbed"] += 1

    def _charged(self, rid: str, usage: metering.Usage) -> bool:
        """A lease spend's deferred settle whose lease was folded without it: charged on its own
        (ledger entry and debit) only from credit and cap nobody holds; else left unbilled."""
        m = self.model
        m.roll(self.now)
        cost = usage.cost
        del self.pending[rid]
        lease, _ = self.lease_pending.pop(rid)
        key = lease.key
        budget_room = not lease.budget or key not in m.key_limit or m.key_room(key) >= cost
        if not (
            (m.invoice or m.available >= cost) and (not m.capped or m.cap_remaining >= cost) and budget_room
        ):
            seen["lease:pending-unbilled"] += 1
            return False
        if lease.budget:
            m.budget[key][1] += cost
        m.balance -= cost
        m.month_spent += cost
        m.ledger[f"usage:{rid}"] = -cost
        self.billed_requests += 1
        self.billed_credits += cost
        seen["lease:pending-charged"] += 1
        return True

    @rule(limit=cap_limits)
    def set_spend_cap(self, limit: int | None) -> None:
        wallet_settings.write_spend_cap(self.org, limit, self.now)
        m = self.model
        m.roll(self.now)
        m.capped, m.cap_limit = limit is not None, limit or 0
        # A lease's spend above its hold reaches month_spent (and so `committed`, which the
        # cap's floor is set from) only at the fold: until then it is still the month's spend.
        over_unfolded = sum(
            cost
            for lease in m.leases.values()
            for rid, (cost, period) in lease.spends.items()
            if rid in self.over and period == m.period
        )
        m.cap_debt = max(0, -m.cap_remaining) + over_unfolded if m.capped else 0

    @rule(key=st.sampled_from(KEYS), limit=limits)
    def set_key_limit(self, key: str, limit: int | None) -> None:
        """A daily spend limit on one key (or none). Changed in the same window, it keeps the
        spend counted so far; set anew, it starts from the figure given (here, none)."""
        m = self.model
        key_limits.set_key_limit(self.org, key, limit, "day", 0, self.now)
        if limit is None:
            m.key_limit.pop(key, None)
            return
        today = limit_window("day", self.now)
        if key not in m.key_limit or m.budget[key][0] != today:  # else: keeps its spend
            m.budget[key] = [today, 0]
        m.key_limit[key] = limit

    @rule(invoice=st.booleans())
    def set_billing_mode(self, invoice: bool) -> None:
        """Invoice-mode wallets are not gated by their balance; caps still hold."""
        wallet_settings.set_billing_mode(self.org, "invoice" if invoice else "prepaid")
        self.model.invoice = invoice

    # ------------------------------------------------------------------ after every step

    @invariant()
    def store_matches_model_and_itself(self) -> None:
        global steps_run
        steps_run += 1
        m = self.model
        w = wallets.get_wallet(self.org)
        lines = ledger_items(self.org)
        entries = {i["entry_id"]["S"]: int(i["amount"]["N"]) for i in lines}
        assert len(entries) == len(lines), "a ledger entry appears twice"

        # The store against itself. A lease spend's ledger entry is written when its request is
        # billed; its debit (balance, month_spent) lands when its lease is folded.
        items = _partition(self.org)
        open_leases = {i["lease_id"]["S"]: i for i in items if i["sk"]["S"].startswith(schema.LEASE)}
        spends = [
            i
            for i in items
            if i["sk"]["S"].startswith(schema.LEASE_SPEND) and i["lease_id"]["S"] in open_leases
        ]
        unfolded = sum(int(i["cost"]["N"]) for i in spends)
        assert w.balance == sum(entries.values()) + unfolded, "wallet != ledger replay + unfolded spends"
        org_holds = holds.open_holds(self.org)
        leased = sum(int(i["amount"]["N"]) for i in open_leases.values())
        assert w.held == sum(h.amount for h in org_holds) + leased, "held != open holds + open leases"
        assert (w.hold_count, w.lease_count) == (len(org_holds), len(open_leases))
        assert w.available == w.balance - w.held
        assert w.committed == w.month_spent + w.held
        assert w.cap_remaining == w.cap_limit - w.committed
        month_usage = [
            int(i["amount"]["N"])
            for i in lines
            if i["entry_type"]["S"] == "usage" and i["created_at"]["S"].startswith(w.period)
        ]
        month_unfolded = sum(int(i["cost"]["N"]) for i in spends if i["created_at"]["S"].startswith(w.period))
        assert w.month_spent == -sum(month_usage) - month_unfolded, (
            "month_spent != this month's usage entries"
        )
        usage = [i for i in items if i["sk"]["S"].startswith("USAGE#")]
        assert sum(int(i["requests"]["N"]) for i in usage) == self.billed_requests
        assert sum(int(i["credits"]["N"]) for i in usage) == self.billed_credits
        incidents = {i["request_id"]["S"] for i in items if i["sk"]["S"].startswith("INCIDENT#over-hold#")}
        assert incidents == self.over, "a charge above its hold left no incident (or one too many)"
        pending = {i["request_id"]["S"] for i in items if i["sk"]["S"].startswith("PENDING#")}
        assert pending == set(self.pending), "a deferred settle was lost or settled twice"
        if org_holds or open_leases or pending:
            assert self.org in upkeep.wallets_with_holds(wallets.sweep_shard(self.org)), (
                "HoldSweeper would never find the org's open holds, leases or deferred settles"
            )

        # The store against the model, exactly.
        assert entries == m.ledger
        assert m.balance == sum(m.ledger.values()) + m.unfolded
        assert {
            lease_id: (
                int(i["amount"]["N"]),
                int(i["requests"]["N"]),
                int(i["lease_expires"]["N"]),
                i["key_id"]["S"],
            )
            for lease_id, i in open_leases.items()
        } == {x.lease_id: (x.amount, x.requests, x.expires, x.key) for x in m.leases.values()}
        assert {(i["lease_id"]["S"], i["request_id"]["S"]): int(i["cost"]["N"]) for i in spends} == {
            (x.lease_id, rid): cost for x in m.leases.values() for rid, (cost, _) in x.spends.items()
        }, "a spend was lost, or billed in a lease twice"
        # Each environment's memory: the lease it reserves against per slot (the org's, or a
        # limited key's), with what is in flight, and its block of each key's requests.
        for e in self.envs.values():
            got_env = {slot: (x.lease_id, x.reserved, x.inflight) for (_, slot), x in e.leases.items()}
            assert got_env == {slot: (x.lease_id, x.reserved, x.inflight) for slot, x in e.mine.items()}
            got_blocks = {key: (b.minute, b.granted, b.used) for (_, key), b in e.blocks.items()}
            assert got_blocks == {key: (b.minute, b.granted, b.used) for key, b in e.my_blocks.items()}
            # ...and what its retired leases and blocks served, which sizes the next ones.
            assert {slot: sv for (_, slot), sv in e.last_served.items()} == e.served
            assert {key: sv for (_, key), sv in e.block_served.items()} == e.block_history
            assert (e.contended.get(self.org, 0.0) > _SIM_CLOCK[0]) == (e.contended_until > _SIM_CLOCK[0])
        assert {h.request_id: (h.amount, h.expires_at) for h in org_holds} == m.holds
        # The keys' rate windows, each an item of its own: every minute's requests held, and
        # blocks taken less what they gave back while it lasted. The wallet keeps none.
        windows: dict[tuple[str, int], int] = {}
        for i in items:
            if i["sk"]["S"].startswith(schema.RATE) and int(i["requests"]["N"]):
                key, _, minute = i["sk"]["S"].removeprefix(schema.RATE).rpartition("@")
                windows[(key, int(minute))] = int(i["requests"]["N"])
        assert windows == {window: count for window, count in m.rpm.items() if count}, "a rate window"
        wallet_item = next(i for i in items if i["sk"]["S"] == schema.WALLET)
        assert "rpm" not in wallet_item
        got = (w.balance, w.held, w.available, w.period, w.month_spent, w.committed)
        assert got == (m.balance, m.held, m.available, m.period, m.month_spent, m.committed)
        assert (w.capped, w.cap_limit, w.cap_remaining) == (m.capped, m.cap_limit, m.cap_remaining)
        assert w.billing_mode == ("invoice" if m.invoice else "prepaid")

        # Key budgets: the store's against the model's, and each against itself.
        budgets = key_limits.key_budgets(self.org)
        assert set(budgets) == set(m.budget)
        assert w.limited_keys == dict.fromkeys(m.key_limit, "day")
        for key, b in budgets.items():
            assert (b.limit, b.window, b.spent) == (
                m.key_limit.get(key, 0),
                m.budget[key][0],
                m.budget[key][1],
            )
            assert b.held == m.key_held(key), "a key budget's held != its counted open holds"
            assert b.room == b.limit - b.spent - b.held
        assert {h.request_id for h in org_holds if h.key_budget} == set(m.hold_budget)

        # Holds never overdraw, and never pass the cap.
        if w.available < 0:
            seen["negative-available"] += 1
        assert w.available >= -m.debt, "holds overdrew the wallet"
        if w.capped:
            assert w.cap_remaining >= -m.cap_debt, "holds went past the spend cap"

        # And `make reconcile` finds nothing the model does not explain.
        found = reconcile.reconcile_org(self.org)
        above = {rid for d in found if d.check == "charge within its hold" for rid in d.request_ids}
        assert above == self.over, "reconcile's charges above their hold != the model's"
        for d in found:
            if d.check == "prepaid wallet never below zero by usage":
                assert m.debt > 0, str(d)
            elif d.check.startswith("spend of "):
                assert m.cap_debt > 0, str(d)
            else:
                assert d.check == "charge within its hold", str(d)


def _partition(org_id: str) -> list[dict[str, Any]]:
    pages = (
        dynamo.client()
        .get_paginator("query")
        .paginate(
            TableName=config.settings().billing_table,
            KeyConditionExpression="pk = :pk",
            ExpressionAttributeValues={":pk": {"S": schema.org_pk(org_id)}},
            ConsistentRead=True,
        )
    )
    return [item for page in pages for item in page["Items"]]


@pytest.fixture
def hold_ttl(tables: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONDUIX_HOLD_TTL_SECONDS", str(HOLD_TTL))
    monkeypatch.setenv("CONDUIX_KEY_CACHE_SECONDS", str(KEY_CACHE))
    config.settings.cache_clear()


@pytest.fixture
def simulated_clocks(monkeypatch: pytest.MonkeyPatch) -> None:
    """The environments' monotonic clocks follow the model's time, and a retry's backoff takes
    no time, ours or botocore's (a throttled write retries at once: the steps stay fast)."""
    monkeypatch.setattr(wallets, "time", _SIM_TIME)
    monkeypatch.setattr(leases, "time", _SIM_TIME)
    monkeypatch.setattr(dynamo, "time", types.SimpleNamespace(sleep=lambda seconds: None))
    monkeypatch.setattr(botocore.endpoint, "time", types.SimpleNamespace(sleep=lambda seconds: None))


def test_the_wallet_follows_its_model_step_by_step(
    hold_ttl: None, simulated_clocks: None, moto_server: LockedMotoServer, tmp_path: Path
) -> None:
    global steps_run, examples_run
    steps_run = examples_run = 0
    seen.clear()
    # With no example database Hypothesis still caches a few things on disk: not in the repo.
    set_hypothesis_home_dir(tmp_path / "hypothesis")
    try:
        run_state_machine_as_test(lambda: LedgerMachine(moto_server), settings=settings.get_profile(PROFILE))
    finally:
        set_hypothesis_home_dir(None)
    steps = steps_run - examples_run  # each example's first check follows its initialization
    print(f"\nledger state machine ({PROFILE}): {examples_run} examples, {steps} steps, each checked")
    print(f"paths reached: {dict(sorted(seen.items()))}")
    if PROFILE == "conduix-ledger-long":
        assert steps >= LONG_RUN_MIN_STEPS, f"only {steps} steps ran"
        assert not [path for path in MUST_SEE if not seen[path]], "some paths were never reached"


def test_a_lease_outlives_its_minute_and_a_busy_one_takes_no_hold(
    hold_ttl: None, simulated_clocks: None, moto_server: LockedMotoServer
) -> None:
    """The lease semantics, step by step through the machine (whatever the random profile
    happens to reach): a lease reused after its minute turned, then, retired by time, a new one
    that cannot land for a transaction holding the wallet is a 503 with no hold; the client's
    retry takes a lease sized by what the last one served. Every step checked."""
    seen.clear()
    m = LedgerMachine(moto_server)
    m.seed(amount=10 * C, rpm_limit=1024)
    m.store_matches_model_and_itself()
    none = cast(Any, None)  # (rules whose data is drawn only for other choices)
    m.time_passes(seconds=50, new_month=1, offset=0)
    m.burst(env=ENVS[0], amount=1000, key=KEYS[0])  # holds pile up until the org is hot: a lease
    m.store_matches_model_and_itself()
    m.time_passes(seconds=12, new_month=1, offset=0)  # the next minute, within the block's 15 s
    m.lease_request(env=ENVS[0], amount=1000, key=KEYS[0])
    m.store_matches_model_and_itself()
    m.time_passes(seconds=23, new_month=1, offset=0)  # past the lease's 30 s
    m.wallet_in_a_transaction(none, env=ENVS[0], amount=1000, key=KEYS[0], what="reserve")
    m.store_matches_model_and_itself()
    assert seen["lease:acquired"] == 2 and seen["block:across-minute"] == 1
    assert seen["lease:busy-no-hold"] == 1 and seen["lease:retired:time"] == 1
    # The next lease is sized by the 2 requests its last one served in 35 s (the floor, here),
    # and so was the key's next block.
    assert m.envs[ENVS[0]].served == {"": (2, 35.0)}
    assert m.envs[ENVS[0]].block_history == {KEYS[0]: (2, 35.0)}


def test_a_keys_requests_are_counted_on_items_of_their_own_that_expire(hold_ttl: None) -> None:
    """The wallet is the hottest item: whatever it accumulates makes every write dearer, and at
    400 KB DynamoDB refuses to write it at all. A key's minute is an item of its own, which the
    table's TTL deletes a few minutes after the minute is over."""
    org = orgs.create_org("Windows", "w@example.test", NOW).org_id
    entries.post_entry(org, kind="grant", key="seed", amount=100 * C, description="t", now=NOW)
    for i in range(10):  # one request every third minute
        now = NOW + timedelta(minutes=3 * i)
        holds.reserve(org, f"req-{i}", 1, model="acme/fast", key_id="key_1", now=now)
        holds.release(org, f"req-{i}", 1)
    item = dynamo.client().get_item(
        TableName=config.settings().billing_table, Key=wallets.wallet_key(org), ConsistentRead=True
    )["Item"]
    assert "rpm" not in item
    windows = {i["sk"]["S"]: i for i in _partition(org) if i["sk"]["S"].startswith(schema.RATE)}
    assert len(windows) == 10
    for i in range(10):
        minute = minute_of(NOW + timedelta(minutes=3 * i))
        window = windows[f"{schema.RATE}key_1@{minute}"]
        assert int(window["requests"]["N"]) == 1  # (a released request still counts)
        assert int(window["expires_at"]["N"]) == (minute + 1 + rate_windows.KEEP_MINUTES) * 60


def test_a_block_behind_a_throttled_give_back(
    hold_ttl: None, simulated_clocks: None, moto_server: LockedMotoServer
) -> None:
    """Found by the long profile (botocore retries a throttled single write 4 times in all):
    a block retired with requests unused meets its throttled window with its give-back first,
    which is dropped (the key serves fewer this minute), and the new block lands behind it on
    the throttles left; with nothing to give back, the window throttled past every retry
    answers the request busy (503) with no hold. Every step checked."""
    seen.clear()
    m = LedgerMachine(moto_server)
    m.seed(amount=C, rpm_limit=1024)
    m.store_matches_model_and_itself()
    none = cast(Any, None)
    m.steady_traffic(env=ENVS[0], amount=1, key=KEYS[0], gap=1, count=16)  # hot: blocks grow
    m.store_matches_model_and_itself()
    m.time_passes(seconds=16, new_month=1, offset=0)  # the block ran its 15 s, unused
    m.throttled(none, env=ENVS[0], amount=1, key=KEYS[0], throttles=ATTEMPTS, what="block")
    m.store_matches_model_and_itself()
    assert seen["block:give-back-lost"] == 1 and seen["block:busy-503"] == 0
    m.time_passes(seconds=60, new_month=1, offset=0)  # a new minute: nothing to give back
    m.throttled(none, env=ENVS[0], amount=1, key=KEYS[0], throttles=ATTEMPTS, what="block")
    m.store_matches_model_and_itself()
    assert seen["block:busy-503"] == 1
