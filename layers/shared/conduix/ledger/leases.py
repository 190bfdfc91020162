"""Escrow leases: the wallet write taken off the per-request path of a hot org.

A warm environment leases a slice of an org's available credit and spend cap, and a block of
one key's requests, counted in the minute it is taken, with one transaction (the wallet's sums, and a
`LEASE#<id>` item). It then reserves each request against the slice in memory, and bills
each request with one transaction of items of its own (the ledger entry's marker and line,
and a `LSPEND#<lease>#<request>` record), none of them hot. When the slice is spent, the
lease reaches its end, the environment folds the lease back into the wallet
in one transaction: the spends debited, the slice returned, the lease's usage added to the
per-day usage rows, the unused requests given back to the key's minute (while it lasts).

Sizing, and why no lease waits for the minute to turn (`bench/hot_org.py` measured both):
- A lease's requests are sized by this environment's rate under its previous one, over a
  whole lease with `HEADROOM` (from `FIRST_LEASE_REQUESTS`, at most `REQUESTS_PER_LEASE` and
  1/`SLICE_FRACTION` of the key's minute: `next_requests`), and its slice by its requests.
  Hundreds of environments of one org then reserve about what they serve, not a fixed block
  each: the key's minute and the org's credit are not stranded in idle slices.
- A lease lasts `key_cache_seconds` from when it is taken, whatever the minute: its requests
  count in the minute it was taken, so a key may serve, in one calendar minute, its limit plus
  what leases of the previous minute had left. Leases bound to the minute all ended at once,
  and every environment of a hot org renewed on the wallet in the same second.
- A hot org's lease that cannot land for contention answers 503 busy: a per-request hold would
  write the same wallet item, and holds from every environment kept it saturated.

Invariants (reconcile checks them):
- held = open holds + open leases; committed = month spend + held; a key budget's held = the
  key's counted open holds + the slices of its leases taken from the budget;
- balance = the ledger's replay + the spends not folded yet (a spend's ledger entry is
  written when the request is billed; its debit lands with the fold);
- a lease's spends never exceed its slice except by charges above their hold (incidents).

Failure cases:
- The environment dies: its lease expires (35 s after its last possible reservation), and
  HoldSweeper folds it from its `LSPEND` records. Nothing billed is lost; requests in flight at
  the death were not billed (as with an expired hold).
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
- Revocation: a lease is used for at most `key_cache_seconds`, the time a warm function may
  trust a key anyway; the per-key rate limit is leased with the slice, so it holds too.
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
from conduix.core.errors import ServiceBusy
from conduix.ledger import holds, metering, settles, wallets
from conduix.ledger.lease_folds import FOLD_SKEW_SECONDS, fold
from conduix.ledger.lease_store import SETTLE_MARGIN_SECONDS, SLICE_FRACTION, Lease, acquire, record

log = logging.getLogger(__name__)

REQUESTS_PER_LEASE = 1000  # at most; and at most 1/SLICE_FRACTION of the key's requests a minute
FIRST_LEASE_REQUESTS = 16  # an environment's first lease of a key; then sized by its rate
HEADROOM = 1.5  # a lease asks this much more than the last one's rate would use
MIN_HOLDS = 64  # leases only while the available credit covers this many holds
HOT_IN_FLIGHT = 8  # ...and for an org with this many holds open (or a lease already): a hot org
CONTENDED_SECONDS = 60  # ...or whose holds could not land for contention here that recently


# ------------------------------------------------------------------ the environment's side


_leases: dict[tuple[str, str], Lease] = {}
_contended_until: dict[str, float] = {}  # org id -> monotonic time
# (org, key) -> requests reserved under this environment's last lease, and over how long
_last_served: dict[tuple[str, str], tuple[int, float]] = {}


def next_requests(served: int, seconds: float, most: int, lease_seconds: float) -> int:
    """A lease's requests: the last lease's rate over a whole lease, with headroom. A lease
    used up in 4 s asks for 7.5x as many; one that ran its time asks 1.5x what it served."""
    if served <= 0:
        return min(most, FIRST_LEASE_REQUESTS)
    wanted = math.ceil(HEADROOM * served * lease_seconds / max(seconds, 1.0))
    return min(most, max(FIRST_LEASE_REQUESTS, wanted))


_lock = threading.Lock()


def forget() -> None:
    """Drop this environment's leases from memory (tests point at a fresh store)."""
    with _lock:
        _leases.clear()
        _contended_until.clear()
        _last_served.clear()


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
    """Reserve against this environment's lease for the org and key, taking a new one when
    the org is hot and its credit is large against the request; otherwise a per-request hold."""
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
    )
    # Hot: requests in flight as this environment's view counts them, or holds on the wallet
    # that kept colliding here lately (the view of one environment sees only its own).
    hot = (
        known.lease_count > 0
        or known.hold_count >= HOT_IN_FLIGHT
        or _contended_until.get(org_id, 0.0) > time.monotonic()
    )
    if hot and eligible:
        at = now.timestamp()
        retire: Lease | None = None
        busy: ServiceBusy | None = None
        with _lock:
            lease = _leases.get((org_id, key_id))
            if lease is not None and lease.room(amount, at):
                lease.reserved += amount
                lease.inflight += 1
                return Reservation(amount, known, lease)
            if lease is not None:
                _retire(lease, at)
                if lease.inflight == 0:
                    retire = lease
            most = min(REQUESTS_PER_LEASE, known.rpm_limit // SLICE_FRACTION)
            served, seconds = _last_served.get((org_id, key_id), (0, 0.0))
            requests = next_requests(served, seconds, most, settings().key_cache_seconds)
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
                fresh.reserved += amount
                fresh.inflight += 1
                _leases[(org_id, key_id)] = fresh
        if retire is not None:
            close(retire, now)
        if busy is not None:
            raise busy
        if fresh is not None:
            return Reservation(amount, known, fresh)
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


def _retire(lease: Lease, at: float) -> None:
    """No new reservation goes into `lease` (under `_lock`); what it served sizes the next."""
    lease.retired = True
    if _leases.get((lease.org_id, lease.key_id)) is lease:
        del _leases[(lease.org_id, lease.key_id)]
    if len(_last_served) >= 10_000:
        _last_served.clear()
    _last_served[(lease.org_id, lease.key_id)] = (len(lease.spends) + lease.inflight, at - lease.taken_at)


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
            minute=lease.minute,
            unused_requests=max(lease.requests - len(lease.spends), 0),
            budget=lease.budget,
        )
    except Exception:  # HoldSweeper folds it from the store once it expires
        log.warning("could not fold a lease", exc_info=True, extra={"lease_id": lease.lease_id})


def close_all(now: datetime) -> None:
    """Fold every lease this environment holds (tests, and a worker that stops)."""
    with _lock:
        held = list(_leases.values())
        _leases.clear()
        for lease in held:
            lease.retired = True
    for lease in held:
        if lease.inflight == 0:
            close(lease, now)
