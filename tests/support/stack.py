"""The local stack as the end-to-end and browser tests see it: started the way a user does
(`make run`), once per test session, and driven over HTTP (the openai SDK where a client
would use it). tests/conftest.py registers the `stack` fixture for every folder."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import boto3
import pytest
import stripe
from openai import OpenAI

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts"
OPERATOR_KEY = "cdx_op_e2e_" + uuid.uuid4().hex


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None  # the success URL is the dashboard; the status says enough


def wait_until(check: Any, timeout: float = 15.0, interval: float = 0.2) -> Any:
    """Poll until `check()` is truthy (webhooks arrive asynchronously, as from Stripe)."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: Any


@dataclass
class Stack:
    api: str
    upstream: str
    moto: str
    stripe_url: str
    webhook_secret: str
    log: Path

    def call(
        self, method: str, path: str, body: Any = None, key: str | None = None, raw: bytes | None = None
    ) -> Reply:
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        headers = {"Content-Type": "application/json"}
        if key:
            headers["Authorization"] = f"Bearer {key}"
        request = urllib.request.Request(self.api + path, data=data, headers=headers, method=method)
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                status, head, payload = response.status, dict(response.headers), response.read()
        except urllib.error.HTTPError as exc:
            status, head, payload = exc.code, dict(exc.headers), exc.read()
        try:
            parsed = json.loads(payload) if payload else None
        except ValueError:
            parsed = payload.decode()
        return Reply(status, {k.lower(): v for k, v in head.items()}, parsed)

    def operator(self, method: str, path: str, body: Any = None) -> Reply:
        return self.call(method, path, body, key=OPERATOR_KEY)

    def new_org(
        self, credits: str | None = None, scopes: list[str] | None = None, email: str = "t@example.com"
    ) -> tuple[str, str]:
        org = self.operator("POST", "/admin/orgs", {"name": "Test Org", "email": email})
        assert org.status == 201, org.body
        org_id = org.body["org_id"]
        key = self.operator("POST", f"/admin/orgs/{org_id}/api-keys", {"scopes": scopes} if scopes else {})
        assert key.status == 201, key.body
        if credits:
            grant = self.operator(
                "POST",
                f"/admin/orgs/{org_id}/credits",
                {"amount": credits, "reason": "test", "idempotency_key": f"seed-{org_id}"},
            )
            assert grant.status == 201, grant.body
        return org_id, key.body["api_key"]

    def new_org_key(self, org_id: str, scopes: list[str] | None = None) -> str:
        """Another key for an existing org, made by the operator."""
        key = self.operator("POST", f"/admin/orgs/{org_id}/api-keys", {"scopes": scopes} if scopes else {})
        assert key.status == 201, key.body
        return str(key.body["api_key"])

    def billing(self, key: str) -> dict[str, Any]:
        reply = self.call("GET", "/v1/billing", key=key)
        assert reply.status == 200, reply.body
        body: dict[str, Any] = reply.body
        return body

    def sdk(self, key: str) -> OpenAI:
        return OpenAI(base_url=self.api + "/v1", api_key=key, max_retries=0, timeout=60)

    def ledger_amounts(self, org_id: str) -> list[Decimal]:
        """The org's ledger, read straight from the DynamoDB stand-in (not through the product)."""
        dynamodb = boto3.client(
            "dynamodb",
            endpoint_url=self.moto,
            region_name="us-east-1",
            aws_access_key_id="local",
            aws_secret_access_key="local",
        )
        items = dynamodb.query(
            TableName="BillingTable",
            KeyConditionExpression="pk = :pk AND begins_with(sk, :l)",
            ExpressionAttributeValues={":pk": {"S": f"ORG#{org_id}"}, ":l": {"S": "LEDGER#"}},
        )["Items"]
        return [Decimal(i["amount"]["N"]) / 10**9 for i in items]

    def stripe(self) -> stripe.StripeClient:
        """Stripe as a test (or Stripe's dashboard) sees it: the local stand-in, through the SDK."""
        return stripe.StripeClient(
            "sk_test_conduix_local", base_addresses={"api": self.stripe_url}, max_network_retries=0
        )

    def pay(self, checkout_url: str, card: str = "4242424242424242") -> int:
        """Submit the local hosted payment page as a customer would; returns its HTTP status."""
        form = urllib.parse.urlencode({"card": card}).encode()
        request = urllib.request.Request(checkout_url, data=form, method="POST")
        opener = urllib.request.build_opener(_NoRedirect)
        try:
            with opener.open(request, timeout=30) as response:
                return int(response.status)
        except urllib.error.HTTPError as exc:
            return exc.code

    def run_job(self, logical_id: str, event: dict[str, Any] | None = None) -> Reply:
        return self.operator("POST", f"/_local/run/{logical_id}", event)

    def emails(self, to: str | None = None) -> list[dict[str, Any]]:
        with urllib.request.urlopen(self.moto + "/moto-api/data.json", timeout=10) as response:
            sent = json.loads(response.read()).get("ses", {}).get("Message", [])
        return [m for m in sent if to is None or to in (m.get("destinations") or {}).get("ToAddresses", [])]

    def upstream_calls(self) -> int:
        return int(self.upstream_stats()["total"])

    def upstream_stats(self) -> dict[str, Any]:
        """The stand-in's counts: calls by model, streams read to their end or cut, connections."""
        base = self.upstream.removesuffix("/v1")
        with urllib.request.urlopen(base + "/_control/calls", timeout=10) as response:
            stats: dict[str, Any] = json.loads(response.read())
            return stats


@dataclass
class Launched:
    """A `make run` started by a test, with its process (its own process group)."""

    stack: Stack
    process: subprocess.Popen[bytes]
    env: dict[str, str]

    def stop(self, sig: int = signal.SIGINT, timeout: float = 30) -> float:
        """Signal the whole group (as a terminal's Ctrl-C does); seconds until everything exited."""
        started = time.monotonic()
        os.killpg(self.process.pid, sig)
        try:
            self.process.wait(timeout=timeout)
            while _group_alive(self.process.pid) and time.monotonic() - started < timeout:
                time.sleep(0.1)
        except subprocess.TimeoutExpired:
            pass
        elapsed = time.monotonic() - started
        if self.process.poll() is None or _group_alive(self.process.pid):
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        return elapsed


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


@contextlib.contextmanager
def launch(state_dir: Path, name: str, **extra_env: str) -> Iterator[Launched]:
    """`make run` as a user starts it, on free ports, until the block ends (SIGINT)."""
    ARTIFACTS.mkdir(exist_ok=True)
    state_file = state_dir / "state.json"
    log = ARTIFACTS / f"{name}-{os.getpid()}.log"  # one per test session: sessions may overlap
    env = {
        **os.environ,
        "PORT": str(_free_port()),
        "CONDUIX_MODELS_FILE": str(ROOT / "tests/e2e/models.json"),
        "CONDUIX_OPERATOR_KEY": OPERATOR_KEY,
        "CONDUIX_LOCAL_STATE_FILE": str(state_file),
        "CONDUIX_LOCAL_WORKERS": "6",
        # Long, as in production: revocation must count at once however long keys are cached.
        "CONDUIX_KEY_CACHE_SECONDS": "300",
        # Scheduled functions run when a test says so (run_job, or /_local/clock, which fires
        # what falls due): a wall-clock tick racing a test's own run made results timing-bound.
        "CONDUIX_LOCAL_SCHEDULES": "off",
        **extra_env,
    }
    with open(log, "wb") as out:
        process = subprocess.Popen(
            ["make", "-s", "run"],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        launched: Launched | None = None
        try:
            deadline = time.monotonic() + 180
            while not state_file.exists():
                if process.poll() is not None:
                    pytest.fail(f"make run exited with {process.returncode}:\n{log.read_text()[-3000:]}")
                if time.monotonic() > deadline:
                    pytest.fail(f"make run did not come up:\n{log.read_text()[-3000:]}")
                time.sleep(0.2)
            state = json.loads(state_file.read_text())  # written whole (replaced), never half
            launched = Launched(
                Stack(
                    api=state["api"],
                    upstream=state["upstream"],
                    moto=state["moto"],
                    stripe_url=state["stripe"],
                    webhook_secret=state["webhook_secret"],
                    log=log,
                ),
                process,
                env,
            )
            yield launched
        finally:
            if launched is None or process.poll() is None:
                Launched(None, process, env).stop()  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with launch(tmp_path_factory.mktemp("stack"), "e2e-stack") as launched:
        yield launched.stack
        # The suite ends as an operator would: every org's ledger replayed against its wallet.
        audit = subprocess.run(
            ["make", "-s", "reconcile"],
            cwd=ROOT,
            env=launched.env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert audit.returncode == 0, f"make reconcile found discrepancies:\n{audit.stdout}{audit.stderr}"
        # Every function ran under the template's IAM; a denial the product swallowed shows here.
        denied = [line for line in launched.stack.log.read_text().splitlines() if line.startswith("[iam]")]
        assert denied == [], denied
