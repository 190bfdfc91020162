"""The whole local stack on one machine: what `make run` starts.

moto (DynamoDB, SES) behind one lock, the tables of template.yaml, a fake OpenAI-compatible
upstream, and the front that plays API Gateway + Lambda + EventBridge for every function of
the template. A demo org with credits and a key is seeded through the operator API.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
import socket
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3

from conduix_local import iam
from conduix_local.build import BuildError, build_all
from conduix_local.dynamo_standin import StandIn
from conduix_local.front import Front
from conduix_local.functions import FunctionSpec, load_functions
from conduix_local.moto_server import LockedMotoServer
from conduix_local.reconcile import STACKS_DIR
from conduix_local.stripe_local import LocalStripe
from conduix_local.tables import create_tables
from conduix_local.template import ROOT, load_template, resources_of_type
from conduix_local.upstream import FakeUpstream

REGION = "us-east-1"
EMAIL_SENDER = "billing@conduix.local"
DEMO_CREDITS = "25"
_UPSTREAM_KEY = "local-upstream-key"  # what the fake upstream expects; no real provider sees it


class StackError(Exception):
    """The stack cannot start; the message says which part and why."""


@dataclass
class StackConfig:
    port: int = 3000
    models_file: str | None = None
    operator_key: str = field(default_factory=lambda: "cdx_op_" + secrets.token_urlsafe(24))
    schedules: bool = True
    workers_per_function: int = 64  # a maximum: workers start on demand, as Lambda's do
    seed_demo: bool = True
    iam: bool = True  # enforce the template's policies on every AWS call a function makes

    @classmethod
    def from_env(cls) -> StackConfig:
        port = os.environ.get("PORT", "3000")
        if not port.isdigit() or not 0 <= int(port) < 65536:
            raise StackError(f"PORT must be a port number, not {port!r}.")
        config = cls(port=int(port), models_file=os.environ.get("CONDUIX_MODELS_FILE") or None)
        if os.environ.get("CONDUIX_OPERATOR_KEY"):
            config.operator_key = os.environ["CONDUIX_OPERATOR_KEY"]
        workers = os.environ.get("CONDUIX_LOCAL_WORKERS", "")
        if workers.isdigit() and int(workers) > 0:
            config.workers_per_function = int(workers)
        config.schedules = os.environ.get("CONDUIX_LOCAL_SCHEDULES", "on") != "off"
        config.iam = os.environ.get("CONDUIX_LOCAL_IAM", "on") != "off"
        return config


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Stack:
    def __init__(self, config: StackConfig) -> None:
        self.config = config
        self.moto: LockedMotoServer | None = None
        self.upstream: FakeUpstream | None = None
        self.stripe: LocalStripe | None = None
        self.front: Front | None = None
        self.demo: dict[str, str] = {}
        self.webhook_secret = "whsec_local_" + secrets.token_hex(16)
        # Per stack, not per checkout: two stacks started from one folder keep apart.
        self.state_dir = STACKS_DIR / str(os.getpid())
        self.clock_file = self.state_dir / "clock"

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> Stack:
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self) -> None:
        config = self.config
        self.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        if config.port and not _port_is_free(config.port):
            raise StackError(
                f"Port {config.port} on 127.0.0.1 is in use. Stop what uses it or set PORT=<another>."
            )
        # The functions must know their public URL (Checkout returns there) before they start.
        port = config.port or _free_port()
        public_url = f"http://127.0.0.1:{port}"
        models_file = str(Path(config.models_file).resolve()) if config.models_file else None
        try:
            self.moto = LockedMotoServer(standin=StandIn()).start()  # DynamoDB's limits too
        except OSError as exc:
            raise StackError(f"moto (the DynamoDB/SES stand-in) could not start: {exc}") from exc
        try:
            self.upstream = FakeUpstream(api_key=_UPSTREAM_KEY).start()
        except OSError as exc:
            raise StackError(f"the fake upstream model server could not start: {exc}") from exc
        stripe_key, stripe_secret = self._start_stripe(public_url)
        env = self.function_env(models_file)
        # In AWS these come from Secrets Manager; locally (and only locally) from the
        # environment, for the functions whose template names the secret (config.secret).
        env.update(
            CONDUIX_SECRETS_FROM_ENV="1", STRIPE_API_KEY=stripe_key, STRIPE_WEBHOOK_SECRET=stripe_secret
        )
        self._check_catalog(models_file, env)

        template = load_template()
        dynamodb = boto3.client(
            "dynamodb",
            endpoint_url=self.moto.url,
            region_name=REGION,
            aws_access_key_id="local",
            aws_secret_access_key="local",
        )
        tables = create_tables(dynamodb, template)
        refs = {
            **tables,
            "ModelsFile": models_file or "",
            "OperatorKeySha256": hashlib.sha256(config.operator_key.encode()).hexdigest(),
            "ScheduledJobFailures.Arn": f"arn:aws:sqs:{REGION}:123456789012:ScheduledJobFailures",
            "PublicUrl": public_url,
            "EmailSender": EMAIL_SENDER,
            "ProviderKeysSecret": "local:ProviderKeysSecret",
            "StripeApiKeySecret": "local:StripeApiKeySecret",
            "StripeWebhookSigningSecret": "local:StripeWebhookSigningSecret",
            "CursorSigningKey": secrets.token_hex(32),  # a new one per start: cursors are short-lived
        }
        # moto's SES refuses mail from unverified senders, as SES does.
        boto3.client(
            "ses",
            endpoint_url=self.moto.url,
            region_name=REGION,
            aws_access_key_id="local",
            aws_secret_access_key="local",
        ).verify_email_identity(EmailAddress=EMAIL_SENDER)
        env["CONDUIX_LOCAL_CLOCK_FILE"] = str(self.clock_file)
        functions = load_functions(template, refs)
        try:
            packages = build_all(template)
        except BuildError as exc:
            raise StackError(str(exc)) from None
        for spec in functions:  # run what deploys: the built package, never this virtualenv
            spec.code_dir = packages[spec.logical_id].code_dir
            spec.python_path = tuple(packages[spec.logical_id].path)
        if config.iam:
            self._enforce_iam(template, refs, functions)
        self.front = Front(
            functions,
            port=port,
            operator_key=config.operator_key,
            max_workers_per_function=config.workers_per_function,
            extra_env=env,
            schedules_enabled=config.schedules,
            clock_file=self.clock_file,
            stage=str((template.get("Parameters") or {}).get("StageName", {}).get("Default") or "") or None,
        ).start()
        if self.stripe is not None:
            # Stripe's test clock: subscriptions renew and invoices advance as the stack's time moves.
            self.front.clock_hooks.append(self.stripe.advance_to)
        self.front.stack_map = self.stack_map()
        if config.seed_demo:
            self._seed_demo()

    def _enforce_iam(
        self, template: dict[str, Any], refs: dict[str, str], functions: list[FunctionSpec]
    ) -> None:
        """Each function signs its AWS calls with a key of its own; moto's front checks each
        call against that function's policies in the template."""
        assert self.moto
        arns = {
            f"{logical_id}.Arn": f"arn:aws:dynamodb:{REGION}:{iam.ACCOUNT_ID}:table/{name}"
            for logical_id, name in refs.items()
            if logical_id in resources_of_type(template, "AWS::DynamoDB::Table")
        }
        try:
            principals = iam.load_principals(template, {**refs, **arns}, REGION)
        except iam.PolicyError as exc:
            raise StackError(f"template.yaml: {exc}") from None
        self.moto.enforce(principals)
        for spec in functions:
            spec.env["AWS_ACCESS_KEY_ID"] = iam.access_key_id(spec.logical_id)

    def _start_stripe(self, public_url: str) -> tuple[str, str]:
        """The local Stripe, with the stack's webhook registered; or, when STRIPE_API_KEY and
        STRIPE_WEBHOOK_SECRET are set, Stripe's test mode itself (forward its webhooks here
        with `stripe listen --forward-to <url>/webhooks/stripe`)."""
        key, secret = os.environ.get("STRIPE_API_KEY", ""), os.environ.get("STRIPE_WEBHOOK_SECRET", "")
        if key and secret:
            self.webhook_secret = secret
            return key, secret
        try:
            self.stripe = LocalStripe().start()
        except (OSError, RuntimeError) as exc:
            raise StackError(f"the local Stripe could not start: {exc}") from exc
        self.stripe.register_webhook(f"{public_url}/webhooks/stripe", self.webhook_secret)
        return self.stripe.api_key, self.webhook_secret

    def function_env(self, models_file: str | None) -> dict[str, str]:
        """What every local function sees beyond its template environment."""
        assert self.moto and self.upstream
        stripe_base = {"STRIPE_API_BASE": self.stripe.url} if self.stripe else {}
        return {
            **stripe_base,
            "AWS_ENDPOINT_URL": self.moto.url,
            "AWS_DEFAULT_REGION": REGION,
            "AWS_REGION": REGION,
            "AWS_ACCESS_KEY_ID": "local",
            "AWS_SECRET_ACCESS_KEY": "local",
            "OPENAI_BASE_URL": self.upstream.url,
            "ANTHROPIC_BASE_URL": self.upstream.url,
            "CONDUIX_LOCAL_UPSTREAM_URL": self.upstream.url,
            "OPENAI_API_KEY": _UPSTREAM_KEY,
            "ANTHROPIC_API_KEY": _UPSTREAM_KEY,
            "CONDUIX_LOCAL_UPSTREAM_KEY": _UPSTREAM_KEY,
            "POWERTOOLS_TRACE_DISABLED": "true",
            "POWERTOOLS_DEV": "false",
            "CONDUIX_MODELS_FILE": models_file or "",
        }

    @staticmethod
    def _check_catalog(models_file: str | None, env: dict[str, str]) -> None:
        """An invalid catalog stops the start, naming the entry and field, before anything serves."""
        from conduix.core.errors import ConfigurationError
        from conduix.pricing.catalog import load_catalog

        saved = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        try:
            load_catalog(models_file)
        except ConfigurationError as exc:
            raise StackError(exc.message) from None
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v

    def stop(self) -> None:
        for part in (self.front, self.stripe, self.upstream, self.moto):
            if part is not None:
                started = time.monotonic()
                try:
                    part.stop()
                except Exception as exc:
                    print(f"[stack] stopping {type(part).__name__} failed: {exc}")
                took = time.monotonic() - started
                if took > 2:  # a slow stop names its culprit in the stack's log
                    print(f"[stack] stopping {type(part).__name__} took {took:.1f} s", flush=True)
        self.front = self.upstream = self.moto = None
        self.stripe = None
        shutil.rmtree(self.state_dir, ignore_errors=True)

    def __enter__(self) -> Stack:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ demo org

    @property
    def url(self) -> str:
        assert self.front
        return str(self.front.url)

    def operator(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        request = urllib.request.Request(
            self.url + path,
            data=json.dumps(body).encode() if body is not None else None,
            headers={
                "Authorization": f"Bearer {self.config.operator_key}",
                "Content-Type": "application/json",
            },
            method=method,
        )
        with urllib.request.urlopen(request, timeout=60) as response:
            result: dict[str, Any] = json.loads(response.read())
            return result

    def _seed_demo(self) -> None:
        org = self.operator("POST", "/admin/orgs", {"name": "Demo Org", "email": "demo@conduix.local"})
        key = self.operator("POST", f"/admin/orgs/{org['org_id']}/api-keys", {"name": "demo"})
        self.operator(
            "POST",
            f"/admin/orgs/{org['org_id']}/credits",
            {"amount": DEMO_CREDITS, "reason": "demo credits", "idempotency_key": "demo-seed"},
        )
        self.demo = {"org_id": org["org_id"], "api_key": key["api_key"]}

    def stack_map(self) -> dict[str, Any]:
        """Where each part of the stack answers (GET /_local/stack, and the start banner)."""
        assert self.moto and self.upstream
        if self.stripe is not None:
            stripe = {"api_base": self.stripe.url, "secret_key": self.stripe.api_key}
        else:  # Stripe's test mode: its key is the operator's own, not repeated here
            stripe = {"api_base": "https://api.stripe.com", "secret_key": "(STRIPE_API_KEY)"}
        return {
            "api": self.url,
            "dashboard": self.url + "/dashboard/billing",
            "dynamodb": {"endpoint": self.moto.url},
            "stripe": stripe,
            "upstream": {"base_url": self.upstream.url},
        }

    def state(self) -> dict[str, Any]:
        """Everything a test or a curious developer needs to reach the parts."""
        assert self.moto and self.upstream
        return {
            "stack": self.state_dir.name,
            "pid": os.getpid(),
            "map": self.stack_map(),
            "api": self.url,
            "moto": self.moto.url,
            "upstream": self.upstream.url,
            "operator_key": self.config.operator_key,
            "stripe": self.stripe.url if self.stripe else "https://api.stripe.com",
            "webhook_secret": self.webhook_secret,
            "email_sender": EMAIL_SENDER,
            "demo": self.demo,
            "root": str(ROOT),
        }
