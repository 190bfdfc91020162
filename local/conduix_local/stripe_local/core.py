"""Plumbing shared by the Stripe stand-in: localstripe's store, Stripe-shaped errors, params,
expansion, and the event hub that records events and hands them to webhook delivery.

Everything here runs on the server's event loop thread, except the Hub's read helpers
(events, wait_for_event, deliveries), which take its lock.
"""

from __future__ import annotations

import contextvars
import fnmatch
import importlib
import json
import secrets
import string
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from localstripe import resources as ls

with warnings.catch_warnings():  # localstripe's module-level app registers plain-function handlers
    warnings.simplefilter("ignore", DeprecationWarning)
    ls_server = importlib.import_module("localstripe.server")

try:  # events carry the API version of the SDK the product uses
    from stripe import api_version as _SDK_API_VERSION
except ImportError:  # pragma: no cover - the SDK is a dev dependency
    _SDK_API_VERSION = "2026-10-28.endive"

API_VERSION: str = _SDK_API_VERSION
STORE: dict[str, Any] = ls.store  # localstripe's module-global store: "<object>:<id>" -> object
_ALPHABET = string.ascii_letters + string.digits

# Set per HTTP request by the server so events can name the request that caused them.
REQUEST: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar("request", default=None)


class StripeError(Exception):
    """An error answered the way Stripe answers it: an HTTP status and {"error": {...}}."""

    def __init__(self, status: int, message: str, *, type_: str = "invalid_request_error", **fields: Any):
        super().__init__(message)
        self.status = status
        self.error: dict[str, Any] = {"type": type_, "message": message}
        self.error.update({k: v for k, v in fields.items() if v is not None})


def bad(message: str, param: str | None = None, code: str | None = None) -> StripeError:
    return StripeError(400, message, param=param, code=code)


def missing(kind: str, id_: str, param: str = "id") -> StripeError:
    return StripeError(404, f"No such {kind}: '{id_}'", param=param, code="resource_missing")


def new_id(prefix: str, length: int = 24) -> str:
    return prefix + "".join(secrets.choice(_ALPHABET) for _ in range(length))


def now() -> int:
    """The stand-in's clock: the machine's time, moved forward by advance_to (test clocks)."""
    return int(time.time() + HUB.offset)


_ZERO_DECIMAL = frozenset(
    {"bif", "clp", "djf", "gnf", "jpy", "kmf", "krw", "mga", "pyg", "rwf", "vnd", "xaf", "xof"}
)


def money(amount: int, currency_code: str) -> str:
    """An amount in the currency's smallest unit, for people: $50.00, 1,000 JPY, 12.34 EUR."""
    code = currency_code.lower()
    if code in _ZERO_DECIMAL:
        return f"{amount:,} {code.upper()}"
    text = f"{amount / 100:,.2f}"
    return f"${text}" if code == "usd" else f"{text} {code.upper()}"


class Obj(ls.StripeObject):  # type: ignore[misc]  # localstripe is untyped
    """Base of the objects this stand-in adds beside localstripe's: kept in localstripe's
    store (so its flush clears them) and exported by its generic exporter, which turns every
    public attribute and property into a field. Methods and internals therefore start with _."""

    _id_prefix = ""
    # Attributes the stand-in keeps for its own bookkeeping that the pinned API version does
    # not return (Stripe removed them, or never had them on this object): never exported.
    _absent: tuple[str, ...] = ()

    def __init__(self) -> None:
        super().__init__(new_id(self._id_prefix))
        self.created = now()  # the stand-in's clock, which advance_to may have moved

    def _extras(self) -> dict[str, Callable[[], Any]]:
        """Fields Stripe only returns when expanded (e.g. a session's line_items)."""
        return {}

    def _export(self, expand: list[str] | None = None) -> dict[str, Any]:
        obj: dict[str, Any] = super()._export()
        for name in self._absent:
            obj.pop(name, None)
        for name, make in self._extras().items():
            if any(p == name or p.startswith(name + ".") for p in expand or ()):
                obj[name] = make()
        return expand_paths(obj, expand)


# ------------------------------------------------------------------ lookups and expansion

_PREFIXES = (
    ("cs_", "checkout.session"),
    ("cus_", "customer"),
    ("pi_", "payment_intent"),
    ("pm_", "payment_method"),
    ("ch_", "charge"),
    ("re_", "refund"),
    ("dp_", "dispute"),
    ("inpay_", "invoice_payment"),
    ("in_", "invoice"),
    ("ii_", "invoiceitem"),
    ("sub_", "subscription"),
    ("si_", "subscription_item"),
    ("price_", "price"),
    ("prod_", "product"),
    ("evt_", "event"),
)


def get(kind: str, id_: Any, param: str = "id") -> Any:
    """The stored object of that kind, or Stripe's 404."""
    obj = STORE.get(f"{kind}:{id_}") if isinstance(id_, str) else None
    if obj is None:
        raise missing(kind.replace("_", " ").replace("checkout.", "checkout "), str(id_), param)
    return obj


def get_any(id_: str) -> Any:
    for prefix, kind in _PREFIXES:
        if id_.startswith(prefix):
            return get(kind, id_)
    raise bad(f"Cannot expand an object with id '{id_}'.", param="expand")


def of_kind(kind: str) -> list[Any]:
    """Stored objects of one kind, oldest first (the store keeps insertion order)."""
    prefix = kind + ":"
    return [v for k, v in STORE.items() if k.startswith(prefix)]


def expand_paths(obj: dict[str, Any], paths: Iterable[str] | None) -> dict[str, Any]:
    for path in paths or ():
        if not isinstance(path, str) or path.count(".") > 3:
            raise bad("You cannot expand more than 4 levels of a property.", param="expand")
        _expand(obj, path.split("."), path)
    return obj


def _expand(node: Any, parts: list[str], path: str) -> None:
    if isinstance(node, list):
        for item in node:
            _expand(item, parts, path)
        return
    head, rest = parts[0], parts[1:]
    if not isinstance(node, dict) or head not in node:
        raise bad(f"This property cannot be expanded ({path}).", param="expand")
    value = node[head]
    if isinstance(value, str):
        value = node[head] = get_any(value)._export()
    if rest and value is not None:
        _expand(value, rest, path)


def list_object(
    url: str, items: list[Any], params: dict[str, Any], expand: list[str] | None
) -> dict[str, Any]:
    """A Stripe list page of `items` (given oldest first; Stripe lists newest first)."""
    limit = as_int(params.get("limit", 10), "limit")
    if not 1 <= limit <= 100:
        raise bad("Invalid limit: must be between 1 and 100", param="limit")
    items = list(reversed(items))
    ids = [getattr(i, "id", None) for i in items]
    after, before = params.get("starting_after"), params.get("ending_before")
    if after:
        start = ids.index(after) + 1 if after in ids else len(items)
        page = items[start : start + limit]
        more = start + limit < len(items)
    elif before:
        end = ids.index(before) if before in ids else 0
        page = items[max(0, end - limit) : end]
        more = end - limit > 0
    else:
        page, more = items[:limit], len(items) > limit
    sub = [p[len("data.") :] for p in expand or () if p.startswith("data.")]
    return {"object": "list", "data": [i._export(sub) for i in page], "has_more": more, "url": url}


# ------------------------------------------------------------------ parameters


def check_params(
    params: dict[str, Any], allowed: str | Iterable[str], ignored: str | Iterable[str] = ()
) -> None:
    """Unknown parameters are refused as Stripe refuses them; `ignored` ones are accepted and
    have no effect here. Names may come as one space-separated string."""
    known = {"expand"}
    for names in (allowed, ignored):
        known.update(names.split() if isinstance(names, str) else names)
    for name in params:
        if name not in known:
            raise bad(f"Received unknown parameter: {name}", param=name)


def as_int(value: Any, name: str) -> int:
    if isinstance(value, bool):
        raise bad(f"Invalid integer: {value}", param=name)
    try:
        return int(value)
    except (TypeError, ValueError):
        raise bad(f"Invalid integer: {value}", param=name) from None


def as_bool(value: Any, name: str) -> bool:
    if value in (True, "true"):
        return True
    if value in (False, "false"):
        return False
    raise bad(f"Invalid boolean: {value}", param=name)


def required(params: dict[str, Any], name: str) -> Any:
    value = params.get(name)
    if value is None or value == "":
        raise bad(f"Missing required param: {name}.", param=name)
    return value


def as_dict(value: Any, name: str) -> dict[str, Any]:
    if value is None or value == "":
        return {}
    if not isinstance(value, dict):
        raise bad(f"Invalid object: {name}", param=name)
    return value


def as_list(value: Any, name: str) -> list[Any]:
    if value is None or value == "":
        return []
    if isinstance(value, dict):  # a form list whose indexes were not all digits
        raise bad(f"Invalid array: {name}", param=name)
    return list(value) if isinstance(value, list) else [value]


def metadata(value: Any, name: str = "metadata") -> dict[str, str]:
    data = as_dict(value, name)
    if len(data) > 50:
        raise bad("Metadata can have at most 50 keys.", param=name)
    return {str(k): str(v) for k, v in data.items() if v != ""}


def merge_metadata(current: dict[str, str], value: Any) -> dict[str, str]:
    """Stripe's update semantics: keys merge, an empty string deletes a key, "" clears all."""
    if value == "":
        return {}
    merged = dict(current)
    for key, item in as_dict(value, "metadata").items():
        if item == "":
            merged.pop(str(key), None)
        else:
            merged[str(key)] = str(item)
    return merged


def currency(value: Any, name: str = "currency") -> str:
    if not isinstance(value, str) or len(value) != 3 or not value.isalpha():
        raise bad(f"Invalid currency: {value}", param=name)
    return value.lower()


# ------------------------------------------------------------------ the event hub


@dataclass
class Endpoint:
    url: str
    secret: str
    events: frozenset[str] | None = None

    def wants(self, event_type: str) -> bool:
        return self.events is None or "*" in self.events or event_type in self.events


@dataclass
class Hub:
    """Per-process state of the stand-in that localstripe has no place for."""

    base_url: str = ""
    async_payment_delay: float = 1.0
    deliver: Callable[[Endpoint, dict[str, Any]], None] | None = None
    later: Callable[[float, Callable[[], object]], None] | None = None
    endpoints: list[Endpoint] = field(default_factory=list)
    idempotency: dict[tuple[str, str], Any] = field(default_factory=dict)
    offset: float = 0.0  # seconds the clock was advanced past the machine's time
    # Stripe prunes idempotency keys once they are at least 24 hours old; a request after that
    # with the same key is a new request.
    idempotency_ttl: float = 24 * 3600
    # Armed failures (see server._faults): method, path pattern, mode, calls left.
    faults: list[dict[str, Any]] = field(default_factory=list)
    invoice_sequence: dict[str, int] = field(default_factory=dict)
    _events: list[dict[str, Any]] = field(default_factory=list)
    _deliveries: list[dict[str, Any]] = field(default_factory=list)
    _cond: threading.Condition = field(default_factory=threading.Condition)
    _quiet: int = 0

    def reset_data(self) -> None:
        with self._cond:
            self._events.clear()
            self._deliveries.clear()
        self.idempotency.clear()
        self.invoice_sequence.clear()
        self.offset = 0.0
        self.faults.clear()

    @contextmanager
    def quiet(self) -> Iterator[None]:
        """Objects made as a side effect Stripe does not announce (inline products, prices)."""
        self._quiet += 1
        try:
            yield
        finally:
            self._quiet -= 1

    # -- publishing (loop thread)
    def publish(self, event: Any, previous: dict[str, Any] | None = None) -> dict[str, Any] | None:
        """Finish a localstripe Event (created by `emit` or by localstripe itself), record it
        and queue it for every matching endpoint."""
        if self._quiet:
            STORE.pop(f"event:{event.id}", None)
            return None
        with self._cond:
            endpoints = [e for e in self.endpoints if e.wants(event.type)]
        event.api_version = API_VERSION
        event.created = now()
        event.pending_webhooks = len(endpoints)
        event.request = REQUEST.get() or {"id": None, "idempotency_key": None}
        # A deep snapshot: later changes to the object must not leak into the event.
        event.data = json.loads(json.dumps(event.data))
        if previous is not None:
            event.data["previous_attributes"] = json.loads(json.dumps(previous))
        exported: dict[str, Any] = json.loads(json.dumps(event._export()))
        with self._cond:
            self._events.append(exported)
            self._cond.notify_all()
        if self.deliver is not None:
            for endpoint in endpoints:
                self.deliver(endpoint, exported)
        return exported

    def record_delivery(self, entry: dict[str, Any]) -> None:
        with self._cond:
            self._deliveries.append(entry)
            self._cond.notify_all()

    # -- reading (any thread)
    def events(self, type_: str | None = None) -> list[dict[str, Any]]:
        with self._cond:
            return [e for e in self._events if type_ is None or fnmatch.fnmatchcase(e["type"], type_)]

    def deliveries(self) -> list[dict[str, Any]]:
        with self._cond:
            return list(self._deliveries)

    def wait_for(
        self,
        predicate: Callable[[], Any],
        timeout: float,
    ) -> Any:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                found = predicate()
                if found:
                    return found
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._cond.wait(left)

    def _find(self, type_: str, predicate: Callable[[dict[str, Any]], bool] | None) -> dict[str, Any] | None:
        # Called with the lock held (from wait_for).
        for event in self._events:
            if fnmatch.fnmatchcase(event["type"], type_) and (predicate is None or predicate(event)):
                return event
        return None


HUB = Hub()

# For as long as this process lives: no pickle in /tmp (two stacks may run side by side; the
# store is per process), and every event, localstripe's own included, goes through the hub.
STORE.dump_to_disk = lambda: None  # type: ignore[attr-defined]
ls.schedule_webhook = HUB.publish
_product_export = ls.Product._export


def _product_today(self: Any, expand: list[str] | None = None) -> dict[str, Any]:
    """localstripe's Product without the fields of API versions before 2018-02-05."""
    obj: dict[str, Any] = _product_export(self, expand=expand)
    for old in ("attributes", "caption", "deactivate_on", "skus"):
        obj.pop(old, None)
    return obj


ls.Product._export = _product_today


def emit(type_: str, obj: Any, previous: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """Announce `obj` as it is now, with event type `type_`."""
    return HUB.publish(ls.Event(type_, obj), previous)


def later(delay: float, fn: Callable[[], object]) -> None:
    """Run fn on the loop after `delay` seconds (delayed payments, disputes)."""
    if HUB.later is None:
        raise RuntimeError("the local Stripe is not running")
    HUB.later(delay, fn)
