"""LocalStripe: localstripe's aiohttp handlers on a loopback port, in a background thread with
its own event loop, behind our middlewares (API keys, idempotency keys, Stripe-shaped errors)
and beside our routes for what localstripe lacks."""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextvars
import fnmatch
import hashlib
import hmac
import inspect
import json
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import aiohttp
from aiohttp import web
from localstripe.errors import UserError

from conduix_local.serving import Started

from . import api, clock, pages
from .core import HUB, REQUEST, STORE, Endpoint, StripeError, ls_server, new_id, now

if TYPE_CHECKING:
    import stripe

API_KEY = "sk_test_conduix_local"
log = logging.getLogger("conduix_local.stripe_local")

# localstripe's routes that stay in service; every other resource is served by api.py.
_LOCALSTRIPE_KEPT = ("/v1/products", "/v1/coupons", "/v1/tax_rates", "/v1/tokens", "/v1/balance")

_active: LocalStripe | None = None  # localstripe's state is module-global: one server per process
_active_lock = threading.Lock()

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _api_key(request: web.Request) -> str | None:
    scheme, _, value = request.headers.get("Authorization", "").partition(" ")
    if scheme == "Basic":
        value = base64.b64decode(value.encode()).decode(errors="replace").split(":")[0]
    elif scheme != "Bearer":
        return None
    return value if value.startswith("sk_") and len(value) > 5 else None


def _error_response(exc: BaseException) -> web.Response | None:
    if isinstance(exc, StripeError):
        return api.json_response({"error": exc.error}, exc.status)
    if isinstance(exc, UserError):  # raised by localstripe's own handlers
        return api.json_response(exc.body, exc.code)
    return None


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status in (404, 405) and request.path.startswith("/v1/"):
            message = f"Unrecognized request URL ({request.method}: {request.path})."
            return api.json_response({"error": {"type": "invalid_request_error", "message": message}}, 404)
        raise
    except Exception as exc:
        response = _error_response(exc)
        if response is not None:
            return response
        log.exception("local Stripe failed on %s %s", request.method, request.path)
        error = {"type": "api_error", "message": f"The local Stripe failed: {exc!r}"}
        return api.json_response({"error": error}, 500)


@web.middleware
async def _context(request: web.Request, handler: Handler) -> web.StreamResponse:
    """API key check, a request id on every answer, and the request events are made in."""
    if request.path.startswith("/v1/") and _api_key(request) is None:
        message = "Invalid API Key provided or none given: use `Authorization: Bearer sk_test_...`."
        return api.json_response({"error": {"type": "invalid_request_error", "message": message}}, 401)
    request_id = new_id("req_", 14)
    token = REQUEST.set({"id": request_id, "idempotency_key": request.headers.get("Idempotency-Key")})
    try:
        response = await handler(request)
    finally:
        REQUEST.reset(token)
    response.headers["Request-Id"] = request_id
    return response


@dataclass
class _Saved:
    fingerprint: str
    request_id: str
    status: int | None = None  # None while the first request is still running
    body: bytes = b""
    content_type: str = "application/json"
    saved_at: float = 0.0


@web.middleware
async def _idempotency(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Stripe's idempotency keys: the first answer under a key (per API key) is replayed for
    the same parameters; other parameters get an idempotency_error."""
    key = request.headers.get("Idempotency-Key")
    if request.method != "POST" or not key or not request.path.startswith("/v1/"):
        return await handler(request)
    scope = (_api_key(request) or "", key)
    fingerprint = json.dumps([request.path, await api.request_params(request)], sort_keys=True, default=str)
    saved: _Saved | None = HUB.idempotency.get(scope)
    if saved is not None and saved.status is not None and time.time() - saved.saved_at >= HUB.idempotency_ttl:
        HUB.idempotency.pop(scope)  # pruned: the key starts afresh
        saved = None
    if saved is not None:
        if saved.fingerprint != fingerprint:
            message = (
                "Keys for idempotent requests can only be used with the same parameters they were first used "
                f"with. Try using a key other than '{key}' if you meant to execute a different request."
            )
            return api.json_response({"error": {"type": "idempotency_error", "message": message}}, 400)
        if saved.status is None:
            message = "There is currently another in-progress request using this Idempotent Key."
            error = {"type": "invalid_request_error", "code": "idempotency_key_in_use", "message": message}
            return api.json_response({"error": error}, 409)
        headers = {"Idempotent-Replayed": "true", "Original-Request": saved.request_id}
        return web.Response(
            body=saved.body, status=saved.status, content_type=saved.content_type, headers=headers
        )
    request_id = (REQUEST.get() or {}).get("id") or ""
    entry = HUB.idempotency[scope] = _Saved(fingerprint, request_id)
    try:
        response = await handler(request)
    except Exception as exc:
        converted = _error_response(exc)
        if converted is None:
            HUB.idempotency.pop(scope, None)
            raise
        response = converted
    # Stripe saves a result once the endpoint ran; refused input (400/404...) is not saved.
    body = getattr(response, "body", None)
    if isinstance(body, bytes) and (
        response.status < 400 or response.status == 402 or response.status >= 500
    ):
        entry.status, entry.body = response.status, body
        entry.content_type = response.content_type
        entry.saved_at = time.time()
    else:
        HUB.idempotency.pop(scope, None)
    return response


@web.middleware
async def _faults(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Failures armed through POST /_local/faults, for fault tests: "down" answers 500 without
    doing anything; "lose_answer" does the request (or replays it) and then answers 500, as
    when the connection drops after Stripe acted. Stripe-Should-Retry: false stops the SDK's
    own retries, so the caller sees the failure."""
    fault = next(
        (
            f
            for f in HUB.faults
            if f["left"] > 0
            and f["method"] == request.method
            and fnmatch.fnmatchcase(request.path, f["path"])
        ),
        None,
    )
    if fault is None:
        return await handler(request)
    fault["left"] -= 1
    if fault["mode"] == "lose_answer":
        await handler(request)
    error = {"type": "api_error", "message": f"Injected fault ({fault['mode']}) on {request.path}."}
    response = api.json_response({"error": error}, 500)
    response.headers["Stripe-Should-Retry"] = "false"
    return response


def _as_async(handler: Callable[[web.Request], Any]) -> Handler:
    """localstripe's handlers are partly plain functions; aiohttp wants coroutines."""

    async def run(request: web.Request) -> web.StreamResponse:
        result = handler(request)
        response: web.StreamResponse = await result if inspect.isawaitable(result) else result
        return response

    return run


class LocalStripe(Started):
    """The Stripe API stand-in on a loopback port; point the official SDK at `url` with
    `api_key`. Webhooks registered with register_webhook get every event, signed."""

    api_key = API_KEY

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        webhook_delay: float = 0.2,
        async_payment_delay: float = 1.0,
        webhook_retries: tuple[float, ...] = (1.0, 2.0, 4.0),
    ) -> None:
        """webhook_delay: seconds between an event and its delivery (Stripe's are asynchronous).
        async_payment_delay: seconds until a delayed (bank) payment settles, and until the
        dispute of card 4000000000000259 opens. webhook_retries: waits before each new attempt
        at a failed delivery (Stripe retries for days; a few quick tries here)."""
        self._host = host
        self._port = port
        self.webhook_delay = webhook_delay
        self.async_payment_delay = async_payment_delay
        self.webhook_retries = webhook_retries
        self._endpoints: list[Endpoint] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self._bound_port: int | None = None
        self._queues: dict[int, asyncio.Queue[tuple[float, dict[str, Any]]]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._timers: set[asyncio.TimerHandle] = set()

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> LocalStripe:
        global _active
        with _active_lock:
            if _active is not None:
                raise RuntimeError(
                    "a LocalStripe already runs in this process (localstripe's state is global)"
                )
            _active = self
        try:
            STORE.clear()
            HUB.reset_data()
            HUB.endpoints = self._endpoints
            loop = self._loop = asyncio.new_event_loop()
            ready = threading.Event()
            failure: list[BaseException] = []

            def run() -> None:
                asyncio.set_event_loop(loop)
                try:
                    loop.run_until_complete(self._serve())
                except BaseException as exc:
                    failure.append(exc)
                    loop.run_until_complete(self._shutdown())  # e.g. the port was taken
                    ready.set()
                    return
                ready.set()
                loop.run_forever()

            self._thread = threading.Thread(target=run, name="local-stripe", daemon=True)
            self._thread.start()
            if not ready.wait(timeout=10) or failure:
                raise RuntimeError("the local Stripe did not start") from (failure[0] if failure else None)
        except BaseException:
            self.stop()
            raise
        return self

    async def _serve(self) -> None:
        app = web.Application(middlewares=[_errors, _context, _faults, _idempotency])
        api.add_routes(app.router)
        pages.add_routes(app.router)
        app.router.add_post("/_config/webhooks/{id}", self._config_webhook)
        app.router.add_delete("/_config/data", self._flush)
        app.router.add_post("/_local/faults", self._arm_fault)
        app.router.add_post("/_local/idempotency_keys/expire", self._expire_keys)
        for route in ls_server.app.router.routes():
            path = route.resource.canonical if route.resource is not None else ""
            if route.method in ("GET", "POST", "DELETE") and path.startswith(_LOCALSTRIPE_KEPT):
                app.router.add_route(route.method, path, _as_async(route.handler))
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._host, self._port)
        await site.start()
        self._bound_port = int(self._runner.addresses[0][1])
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))
        HUB.base_url = self.url
        HUB.async_payment_delay = self.async_payment_delay
        HUB.deliver = self._deliver
        HUB.later = self._later

    def stop(self) -> None:
        global _active
        loop, thread = self._loop, self._thread
        self._loop = self._thread = None
        if loop is not None:
            if thread is not None and thread.is_alive() and loop.is_running():
                try:
                    asyncio.run_coroutine_threadsafe(self._shutdown(), loop).result(timeout=10)
                finally:
                    loop.call_soon_threadsafe(loop.stop)
            if thread is not None:
                thread.join(timeout=10)
            loop.close()
        with _active_lock:
            if _active is self:
                _active = None

    async def _shutdown(self) -> None:
        tasks = list(self._tasks)
        self._drop_pending()
        await asyncio.gather(*tasks, return_exceptions=True)  # let cancelled deliveries unwind
        if self._session is not None:
            await self._session.close()
        if self._runner is not None:
            await self._runner.cleanup()
        HUB.deliver = HUB.later = None

    def reset(self) -> None:
        """Forget every object, event, idempotency key, pending delivery and clock advance;
        keep webhooks."""
        self._call(self._reset)

    async def _reset(self) -> None:
        tasks = list(self._tasks)
        self._drop_pending()
        await asyncio.gather(*tasks, return_exceptions=True)
        STORE.clear()
        HUB.reset_data()

    def _drop_pending(self) -> None:
        for timer in self._timers:
            timer.cancel()
        for task in self._tasks:
            task.cancel()
        self._timers.clear()
        self._tasks.clear()
        self._queues.clear()

    def _call(self, fn: Callable[[], Coroutine[Any, Any, None]]) -> None:
        if self._loop is None:
            raise RuntimeError("LocalStripe not started")
        asyncio.run_coroutine_threadsafe(fn(), self._loop).result(timeout=10)

    @property
    def port(self) -> int:
        if self._bound_port is None or self._loop is None:
            raise RuntimeError("LocalStripe not started")
        return self._bound_port

    @property
    def url(self) -> str:
        return f"http://{self._host}:{self.port}"

    # ------------------------------------------------------------------ the test clock
    def now(self) -> datetime:
        """The stand-in's time (the machine's, unless advance_to moved it on)."""
        return datetime.fromtimestamp(now(), UTC)

    def advance_to(self, when: datetime) -> list[dict[str, Any]]:
        """Move the stand-in's time forward to `when` (timezone-aware) and do what Stripe's
        test clocks do meanwhile: renewals, auto-advancing invoices with their charges,
        overdue notices, expiries (see clock.py). Returns the events made, oldest first;
        their webhooks follow as usual. Raises ValueError for a time in the past."""
        if when.tzinfo is None:
            raise ValueError("advance_to needs a timezone-aware datetime")
        target = int(when.timestamp())
        made: list[list[dict[str, Any]]] = []

        async def run() -> None:
            if target < now():
                raise ValueError(f"the local Stripe's clock is already at {self.now().isoformat()}")
            made.append(clock.advance_to(target))

        self._call(run)
        return made[0]

    def client(self) -> stripe.StripeClient:
        """The official SDK's client for this server, as product code builds it."""
        import stripe

        return stripe.StripeClient(self.api_key, base_addresses={"api": self.url}, max_network_retries=0)

    # ------------------------------------------------------------------ webhooks and events
    def register_webhook(self, url: str, secret: str, events: list[str] | None = None) -> None:
        """Send every later event (or those of the given types) to url, signed with secret."""
        if not url.startswith(("http://", "https://")) or not secret:
            raise ValueError("a webhook needs an http(s) URL and a secret")
        with HUB._cond:
            self._endpoints.append(Endpoint(url, secret, frozenset(events) if events is not None else None))

    def events(self, type: str | None = None) -> list[dict[str, Any]]:
        """Events emitted so far, oldest first (type may use * wildcards: "invoice.*")."""
        return HUB.events(type)

    def deliveries(self) -> list[dict[str, Any]]:
        """Webhook delivery attempts so far: event id, type, url, attempt, HTTP status (or None)."""
        return HUB.deliveries()

    def wait_for_event(
        self,
        type: str,
        predicate: Callable[[dict[str, Any]], bool] | None = None,
        timeout: float = 10,
    ) -> dict[str, Any]:
        """The first event of that type (matching predicate) emitted so far or within timeout."""
        found: dict[str, Any] | None = HUB.wait_for(lambda: HUB._find(type, predicate), timeout)
        if found is None:
            seen = [e["type"] for e in HUB.events()]
            raise TimeoutError(f"no {type} event within {timeout} s; events so far: {seen}")
        return found

    def _deliver(self, endpoint: Endpoint, event: dict[str, Any]) -> None:
        # One queue and worker per endpoint: events reach it in the order they were made.
        queue = self._queues.get(id(endpoint))
        if queue is None:
            queue = self._queues[id(endpoint)] = asyncio.Queue()
            self._spawn(self._worker(endpoint, queue))
        queue.put_nowait((asyncio.get_running_loop().time() + self.webhook_delay, event))

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro, context=contextvars.Context())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _worker(self, endpoint: Endpoint, queue: asyncio.Queue[tuple[float, dict[str, Any]]]) -> None:
        loop = asyncio.get_running_loop()
        while True:
            due, event = await queue.get()
            await asyncio.sleep(max(0.0, due - loop.time()))
            if not await self._post(endpoint, event, 1):
                self._spawn(self._retry(endpoint, event))

    async def _retry(self, endpoint: Endpoint, event: dict[str, Any]) -> None:
        for attempt, delay in enumerate(self.webhook_retries, start=2):
            await asyncio.sleep(delay)
            if await self._post(endpoint, event, attempt):
                return

    async def _post(self, endpoint: Endpoint, event: dict[str, Any], attempt: int) -> bool:
        assert self._session is not None
        payload = json.dumps(event, indent=2).encode()
        stamp = int(time.time())
        signature = hmac.new(
            endpoint.secret.encode(), f"{stamp}.".encode() + payload, hashlib.sha256
        ).hexdigest()
        headers = {
            "Content-Type": "application/json; charset=utf-8",
            "Stripe-Signature": f"t={stamp},v1={signature}",
            "User-Agent": "Stripe/1.0 (+https://stripe.com/docs/webhooks) conduix-local",
        }
        status: int | None = None
        try:
            async with self._session.post(endpoint.url, data=payload, headers=headers) as response:
                status = response.status
                await response.read()
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.info("webhook %s to %s failed: %s", event["type"], endpoint.url, exc)
        HUB.record_delivery(
            {
                "event": event["id"],
                "type": event["type"],
                "url": endpoint.url,
                "attempt": attempt,
                "status": status,
            }
        )
        return status is not None and 200 <= status < 300

    def _later(self, delay: float, fn: Callable[[], object]) -> None:

        def run() -> None:
            self._timers.discard(timer)
            try:
                fn()
            except Exception:
                log.exception("a delayed local Stripe action failed")

        timer = asyncio.get_running_loop().call_later(delay, run, context=contextvars.Context())
        self._timers.add(timer)

    # ------------------------------------------------------------------ localstripe's config routes
    async def _config_webhook(self, request: web.Request) -> web.Response:
        """localstripe's POST /_config/webhooks/<id> (url, secret, optional events[])."""
        params = await api.request_params(request)
        events = params.get("events")
        try:
            self.register_webhook(str(params.get("url", "")), str(params.get("secret", "")), events)
        except ValueError as exc:
            raise StripeError(400, str(exc)) from None
        return web.Response()

    def arm_fault(self, method: str, path: str, mode: str = "lose_answer", times: int = 1) -> None:
        """Make the next `times` requests matching method and path (a glob) fail: "down" or
        "lose_answer" (see _faults)."""
        if mode not in ("down", "lose_answer") or times < 1:
            raise ValueError("mode is down or lose_answer, and times at least 1")
        HUB.faults.append({"method": method.upper(), "path": path, "mode": mode, "left": times})

    def expire_idempotency_keys(self) -> int:
        """Age every saved idempotency key past Stripe's 24 hours (a rerun "much later")."""
        saved = list(HUB.idempotency.values())
        for entry in saved:
            entry.saved_at -= HUB.idempotency_ttl
        return len(saved)

    async def _arm_fault(self, request: web.Request) -> web.Response:
        """POST /_local/faults {"method", "path", "mode"?, "times"?}."""
        params = await api.request_params(request)
        try:
            self.arm_fault(
                str(params.get("method", "POST")),
                str(params.get("path", "")),
                str(params.get("mode", "lose_answer")),
                int(params.get("times", 1)),
            )
        except (TypeError, ValueError) as exc:
            raise StripeError(400, str(exc)) from None
        return api.json_response({"armed": True})

    async def _expire_keys(self, request: web.Request) -> web.Response:
        """POST /_local/idempotency_keys/expire."""
        return api.json_response({"expired": self.expire_idempotency_keys()})

    async def _flush(self, request: web.Request) -> web.Response:
        """localstripe's DELETE /_config/data: forget everything (webhooks stay)."""
        await self._reset()
        return web.Response()


def advance_to(when: datetime) -> list[dict[str, Any]]:
    """LocalStripe.advance_to on the local Stripe running in this process."""
    with _active_lock:
        server = _active
    if server is None:
        raise RuntimeError("no local Stripe runs in this process")
    return server.advance_to(when)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Serve the local Stripe API stand-in on loopback.")
    parser.add_argument("--port", type=int, default=12111)
    parser.add_argument("--webhook", help="URL to post signed events to")
    parser.add_argument("--webhook-secret", default="whsec_local")
    args = parser.parse_args(argv)
    server = LocalStripe(port=args.port).start()
    if args.webhook:
        server.register_webhook(args.webhook, args.webhook_secret)
    print(f"local Stripe at {server.url} (API key {server.api_key}; Ctrl-C to stop)", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
