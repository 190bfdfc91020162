"""Escrow leases: the wallet write taken off the per-request path of a hot org.

A warm environment leases a slice of an org's available credit and spend cap with one
transaction (the wallet's sums, and a `LEASE#<id>` item), for requests of any of the org's
keys. It then reserves each request against the slice in memory, and bills each request with
one transaction of items of its own (the ledger entry's marker and line, and a
`LSPEND#<lease>#<request>` record), none of them hot. When the slice is spent or the lease
reaches its end, the environment folds the lease back into the wallet in one transaction: the
spends debited, the slice returned, the lease's usage added to the per-day usage rows.

A key's requests per minute are counted apart, on an item of that key's minute
(`rate_windows`): the environment takes them in blocks (`Block`: the first 2, then by its rate
over `BLOCK_SECONDS`),
one conditional update each, and gives back what a block did not use while its minute lasts.
So the wallet is written once per lease whatever the number of keys the traffic is spread
over, and a key's block writes that key's item only (`bench/hot_org.py` measured both: with
leases per key, 40 keys held an org near 200 req/s on the wallet). A key with a spend limit
leases a slice of its own, from its budget too (`KEYBUDGET#<key>`).

Sizing, and why nothing waits for the minute to turn (`bench/hot_org.py` measured both):
- A lease's requests (and a block's) are sized by this environment's rate under its previous
  one, over a whole lease with `HEADROOM` (`next_requests`), and a slice by its requests.
  Hundreds of environments of one org then reserve about what they serve, not a fixed block
  each: the org's credit and a key's minute are not stranded in idle slices.
- A lease lasts `key_cache_seconds` from when it is taken, and a block `BLOCK_SECONDS`,
  whatever the minute: a block's requests count in the minute it was taken, so a key may
  serve, in one calendar minute, its limit plus what blocks of the previous minute had left.
  Leases bound to the minute all ended at once, and every environment of a hot org renewed on
  the wallet in the same second.
- A hot org's lease (or block) that cannot land for contention answers 503 busy: a
  per-request hold would write the same wallet item, and holds from every environment kept it
  saturated.

Invariants (reconcile checks them):
- held = open holds + open leases; committed = month spend + held; a key budget's held = the
  key's counted open holds + the slices of its leases taken from the budget;
- balance = the ledger's replay + the spends not folded yet (a spend's ledger entry is
  written when the request is billed; its debit lands with the fold);
- a lease's spends never exceed its slice except by charges above their hold (incidents);
- a key's minute counts at most its limit: holds count one each, blocks only what fits.

Failure cases:
- The environment dies: its lease expires (35 s after its last possible reservation), and
  HoldSweeper folds it from its `LSPEND` records. Nothing billed is lost; requests in flight at
  the death were not billed (as with an expired hold). Its blocks' unused requests stay
  counted in their minute: the key serves fewer that minute, never more.
- A spend is written only while its lease is open and not expired (a condition of its
  transaction), and HoldSweeper folds a lease only after its expiry (plus clock skew), so a
  fold never misses a spend and a spend never lands in a folded lease. One refused that way
  is kept as a pending settle and charged by HoldSweeper on its own.
- A spend whose write cannot land (contention, throttling): the same pending settle; the
  environment retires that lease at once (its reservation stays counted: nothing else is
  reserved in it) and leaves it to HoldSweeper, which writes the pending settle into the lease
  as a spend and folds it with the others, so the slice pays for it.
- A pending settle written after its lease was folded (its environment stalled past the
  lease's expiry) is charged on its own, from credit and cap nobody holds, or else is left
  unbilled with an incident, as a hold's late settle is: the wallet is never overdrawn.
- Stranded credit: other environments' slices are not available to a request. Leases are
  taken only while the org's available credit covers `MIN_HOLDS` holds, a slice is at most
  1/`SLICE_FRACTION` of it, and below that every request takes a per-request hold, so an
  org with a small balance is refused only when its credit is truly held. A limited key's
  slice comes from its spend-limit budget too, only while the budget's room is
  SLICE_FRACTION slices; below that the key's requests hold one by one.
- A key near its limit: a block takes what is left of the key's minute, and a full minute
  refuses the request (429) without a write to the wallet. Requests counted in other
  environments' blocks and not used yet are not available (the same stranding, bounded by a
  block's size, 1/SLICE_FRACTION of the minute at most, and given back as blocks retire).
- Revocation and new limits: a leased request checks the environment's view of the wallet's
  revoked and limited keys, a view at most `key_cache_seconds` old (the time a warm function
  may trust a key anyway); a lease's own transaction checks its requesting key's marks.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from conduix.core.config import settings
from conduix.core.errors import RateLimited, ServiceBusy
from conduix.ledger import holds, metering, rate_windows, settles, wallets
from conduix.ledger.lease_folds import FOLD_SKEW_SECONDS, fold
from conduix.ledger.lease_store import SETTLE_MARGIN_SECONDS, SLICE_FRACTION, Lease, acquire, record
from conduix.pricing import plans

log = logging.getLogger(__name__)

REQUESTS_PER_LEASE = 1000  # at most
FIRST_LEASE_REQUESTS = 16  # an environment's first lease of an org; then sized by its rate
BLOCK_FIRST = 2  # its first block of a key's requests; then sized by its rate, at most
# 1/SLICE_FRACTION of the key's minute
# A block is used this long: its unused requests stay counted in its minute until it retires,
# so a shorter block strands fewer of a key near its limit, for more writes of the key's item
# (bench/hot_org.py, 20 keys at exactly their limits: 30 s served 1,253 req/s, 15 s 1,693).
BLOCK_SECONDS = 15
HEADROOM = 1.5  # a lease asks this much more than the last one's rate would use
MIN_HOLDS = 64  # leases only while the available credit covers this many holds
HOT_IN_FLIGHT = 8  # ...and for an org with this many holds open (or a lease already): a hot org
CONTENDED_SECONDS = 60  # ...or whose holds could not land for contention here that recently


# ------------------------------------------------------------------ the environment's side


_leases: dict[tuple[str, str], Lease] = {}  # (org id, "" or a limited key) -> its open lease
_blocks: dict[tuple[str, str], Block] = {}  # (org id, key id) -> its open block of requests
_contended_until: dict[str, float] = {}  # org id -> monotonic time
# (org, "" or key) -> requests reserved under this environment's last lease, and over how long;
# (org, key) in `_block_served`: the same for its last block.
_last_served: dict[tuple[str, str], tuple[int, float]] = {}
_block_served: dict[tuple[str, str], tuple[int, float]] = {}


def next_requests(
    served: int, seconds: float, most: int, lease_seconds: float, first: int = FIRST_LEASE_REQUESTS
) -> int:
    """A lease's requests (or a block's, from `first`): the last one's rate over a whole lease,
    with headroom. One used up in 4 s asks for 7.5x as many; one that ran its time asks 1.5x
    what it served."""
    if served <= 0:
        return min(most, first)
    wanted = math.ceil(HEADROOM * served * lease_seconds / max(seconds, 1.0))
    return min(most, max(first, wanted))


_lock = threading.Lock()


def forget() -> None:
    """Drop this environment's leases from memory (tests point at a fresh store)."""
    with _lock:
        _leases.clear()
        _blocks.clear()
        _contended_until.clear()
        _last_served.clear()
        _block_served.clear()


@dataclass
class Block:
    """Requests of one key counted at once in its minute's window (rate_windows), used by this
    environment alone until they run out or the block's time ends."""

    org_id: str
    key_id: str
    minute: int  # where its requests count
    granted: int
    taken_at: float  # epoch seconds
    use_until: float
    used: int = 0

    def room(self, at: float) -> bool:
        return self.used < self.granted and at < self.use_until


@dataclass(frozen=True)
class Reservation:
    hold_nanos: int
    wallet: wallets.Wallet
    lease: Lease | None = None
    budget_key: str = ""  # a per-request hold that counts against this key's spend limit

    @property
    def balance(self) -> int:
        return self.wallet.balance


def reserve(
    org_id: str, request_id: str, amount: int, *, model: str, key_id: str, now: datetime, runs_for: int = 0
) -> Reservation:
    """Reserve against this environment's lease of the org (and block of the key's requests),
    taking new ones when the org is hot and its credit is large against the request; otherwise
    a per-request hold."""
    known = wallets.known_wallet(org_id)
    eligible = (
        # (A key with a spend limit leases from its budget too; balance and cap alerts do not
        # keep an org off leases: the debit lands at the fold, and HoldSweeper checks the
        # thresholds of every org it visits, within a minute.)
        # A lease expires SETTLE_MARGIN_SECONDS after its last reservation: a request that may
        # run longer (a long streamed answer) takes a hold that outlives it instead.
        runs_for < SETTLE_MARGIN_SECONDS - FOLD_SKEW_SECONDS
        and known.billing_mode == "prepaid"
        and known.available >= MIN_HOLDS * amount
        and amount > 0
        and key_id not in known.revoked_keys  # the hold refuses it
        and known.rpm_limit // SLICE_FRACTION >= BLOCK_FIRST  # (a small plan is never hot)
    )
    # Hot: requests in flight as this environment's view counts them, or holds on the wallet
    # that kept colliding here lately (the view of one environment sees only its own).
    hot = (
        known.lease_count > 0
        or known.hold_count >= HOT_IN_FLIGHT
        or _contended_until.get(org_id, 0.0) > time.monotonic()
    )
    if hot and eligible:
        leased = _reserve_leased(org_id, amount, key_id, known, now)
        if leased is not None:
            return leased
    try:
        held = holds.reserve(
            org_id, request_id, amount, model=model, key_id=key_id, now=now, runs_for=runs_for
        )
    except ServiceBusy:
        if hot or not eligible:
            raise
        # The hold kept colliding with others on the wallet: the org is hot, whatever this
        # environment's view says. Note it, and serve this request from a lease instead.
        if len(_contended_until) >= 10_000:
            _contended_until.clear()
        _contended_until[org_id] = time.monotonic() + CONTENDED_SECONDS
        return reserve(org_id, request_id, amount, model=model, key_id=key_id, now=now, runs_for=runs_for)
    return Reservation(held.hold_nanos, held.wallet, budget_key=held.budget_key)


def _reserve_leased(
    org_id: str, amount: int, key_id: str, known: wallets.Wallet, now: datetime
) -> Reservation | None:
    """One request from a block of the key's minute and a lease's slice, taking either anew
    when it is spent or ran its time. None: the wallet cannot spare a slice (a per-request hold
    refuses exactly). Raises RateLimited when the key's minute is full (counted on its own
    item: the wallet is not written), ServiceBusy when a new block or lease cannot land for
    contention."""
    at = now.timestamp()
    slot = (org_id, key_id if key_id in known.limited_keys else "")
    retire: Lease | None = None
    busy: ServiceBusy | None = None
    full: RateLimited | None = None
    result: Reservation | None = None
    with _lock:
        block = _blocks.get((org_id, key_id))
        if block is None or not block.room(at):
            spare = _retire_block(block, at) if block is not None else None
            if spare is not None:  # (first: the new block may need the room)
                rate_windows.give_back(org_id, key_id, spare.minute, spare.granted - spare.used)
            try:
                block = _take_block(org_id, key_id, known, now)
            except ServiceBusy as exc:
                block, busy = None, exc
            if block is None and busy is None:  # the key's minute is full: no wallet write
                full = rate_windows.rate_limited(known.rpm_limit, plans.get(known.plan).name, now)
        lease = _leases.get(slot)
        if block is not None and lease is not None and lease.room(amount, at):
            result = Reservation(amount, known, lease)
        elif block is not None:
            if lease is not None:
                _retire(lease, at)
                if lease.inflight == 0:
                    retire = lease
            served, seconds = _last_served.get(slot, (0, 0.0))
            requests = next_requests(served, seconds, REQUESTS_PER_LEASE, settings().key_cache_seconds)
            slice_ = min(known.available // SLICE_FRACTION, amount * requests)
            if known.capped:
                slice_ = min(slice_, known.cap_remaining // SLICE_FRACTION)
            fresh = None
            if slice_ >= amount and requests >= 2:
                try:
                    fresh = acquire(org_id, key_id, slice_, requests, now)
                except ServiceBusy as exc:
                    # Answered busy (503): a hold would write the same wallet item, adding to
                    # what keeps it busy (bench/hot_org.py: the fallback cost a fifth of the rate).
                    busy = exc
            if fresh is not None:
                _leases[slot] = fresh
                result = Reservation(amount, known, fresh)
        if result is not None and result.lease is not None and block is not None:
            block.used += 1
            result.lease.reserved += amount
            result.lease.inflight += 1
    if retire is not None:
        close(retire, now)
    if busy is not None:
        raise busy
    if full is not None:
        raise full
    return result


def _take_block(org_id: str, key_id: str, known: wallets.Wallet, now: datetime) -> Block | None:
    """A new block of the key's requests in the current minute, sized by this environment's use
    of its last (under `_lock`), or what is left of the minute; None when it is full."""
    most = known.rpm_limit // SLICE_FRACTION
    served, seconds = _block_served.get((org_id, key_id), (0, 0.0))
    size = next_requests(served, seconds, most, BLOCK_SECONDS, first=BLOCK_FIRST)
    at = now.timestamp()
    minute = int(at) // 60
    granted = rate_windows.take_block(org_id, key_id, minute, size, known.rpm_limit)
    if not granted:
        return None
    block = Block(org_id, key_id, minute, granted, at, at + BLOCK_SECONDS)
    if len(_blocks) >= 10_000:
        _blocks.clear()
    _blocks[(org_id, key_id)] = block
    return block


def _retire_block(block: Block, at: float) -> Block | None:
    """No more requests from `block` (under `_lock`); what it served sizes the next. Returns it
    when it has requests to give back to its minute, still current."""
    if _blocks.get((block.org_id, block.key_id)) is block:
        del _blocks[(block.org_id, block.key_id)]
    if len(_block_served) >= 10_000:
        _block_served.clear()
    _block_served[(block.org_id, block.key_id)] = (block.used, at - block.taken_at)
    return block if block.used < block.granted and int(at) // 60 == block.minute else None


def _retire(lease: Lease, at: float) -> None:
    """No new reservation goes into `lease` (under `_lock`); what it served sizes the next."""
    lease.retired = True
    slot = (lease.org_id, lease.key_id)
    if _leases.get(slot) is lease:
        del _leases[slot]
    if len(_last_served) >= 10_000:
        _last_served.clear()
    _last_served[slot] = (len(lease.spends) + lease.inflight, at - lease.taken_at)


def _done(lease: Lease, amount: int, now: datetime) -> None:
    with _lock:
        lease.reserved -= amount
        lease.inflight -= 1
        last = lease.retired and lease.inflight == 0
    if last:
        close(lease, now)


def release(org_id: str, request_id: str, reservation: Reservation, now: datetime) -> None:
    """The request failed: nothing billed. A lease's reservation is given back in memory."""
    if reservation.lease is None:
        holds.release(org_id, request_id, reservation.hold_nanos, budget_key=reservation.budget_key)
        return
    _done(reservation.lease, reservation.hold_nanos, now)


def settle(
    org_id: str,
    request_id: str,
    reservation: Reservation,
    usage: metering.Usage,
    now: datetime,
    *,
    also: Sequence[dict[str, Any]] = (),
    alert_guard: settles.AlertGuard | None = None,
) -> settles.SettleOutcome:
    if reservation.lease is None:
        return settles.settle(
            org_id,
            request_id,
            reservation.hold_nanos,
            usage,
            now,
            also=also,
            budget_key=reservation.budget_key,
            alert_guard=alert_guard,
        )
    lease = reservation.lease
    try:
        return record(lease, request_id, reservation.hold_nanos, usage, now, also=also)
    except Exception:
        # Whether it landed is unknown: HoldSweeper folds the lease from the store, with this
        # request (its pending settle joins the lease). Nothing more is reserved in it, so the
        # slice still covers this request's cost: its reservation is never handed to another.
        with _lock:
            lease.uncertain = True
            if not lease.retired:
                _retire(lease, now.timestamp())
        raise
    finally:
        _done(lease, reservation.hold_nanos, now)


def close(lease: Lease, now: datetime) -> None:
    """Fold a retired lease once its last request finished (best effort: HoldSweeper folds
    whatever is left once the lease expires)."""
    if lease.uncertain:
        return
    try:
        fold(
            lease.org_id,
            lease.lease_id,
            lease.amount,
            list(lease.spends.values()),
            now,
            key_id=lease.key_id,
            budget=lease.budget,
        )
    except Exception:  # HoldSweeper folds it from the store once it expires
        log.warning("could not fold a lease", exc_info=True, extra={"lease_id": lease.lease_id})


def close_all(now: datetime) -> None:
    """Fold every lease this environment holds, and give back its blocks' unused requests
    (tests, and a worker that stops)."""
    at = now.timestamp()
    with _lock:
        held = list(_leases.values())
        _leases.clear()
        for lease in held:
            lease.retired = True
        spare = [b for b in list(_blocks.values()) if _retire_block(b, at) is not None]
    for block in spare:
        rate_windows.give_back(block.org_id, block.key_id, block.minute, block.granted - block.used)
    for lease in held:
        if lease.inflight == 0:
            close(lease, now)
