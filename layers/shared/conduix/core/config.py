"""The environment: the one module that reads it (a unit test checks that no other does).

Settings are read once per cold start; the rest at the time of use (see the end).

Required values have no defaults: a missing one fails loudly with its name rather than
quietly pointing at a table that doesn't exist. Kept free of pydantic so the Completion
function's cold start stays small.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from typing import Any

from conduix.core.errors import ConfigurationError, InvalidRequest
from conduix.core.money import parse_credits


def _required(name: str) -> str:
    value = os.environ.get(name, "").strip()
    if not value:
        raise ConfigurationError(f"The environment variable {name} is required but not set.")
    return value


def _int(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        return int(raw)
    except ValueError:
        raise ConfigurationError(
            f"The environment variable {name} must be an integer, not {raw!r}."
        ) from None


@dataclass(frozen=True)
class Settings:
    billing_table: str
    cache_table: str
    models_file: str | None
    # A hold outlives any Lambda that could settle it (Completion times out at 30 s), so a
    # hold still open after this long belongs to a request that died: HoldSweeper frees it.
    hold_ttl_seconds: int
    # Org keys are looked up once and remembered this long by a warm function; revoking a
    # key takes effect within it.
    key_cache_seconds: int


@cache
def settings() -> Settings:
    return Settings(
        billing_table=_required("BILLING_TABLE"),
        cache_table=_required("CACHE_TABLE"),
        models_file=os.environ.get("CONDUIX_MODELS_FILE", "").strip() or None,
        hold_ttl_seconds=_int("CONDUIX_HOLD_TTL_SECONDS", 300),
        key_cache_seconds=_int("CONDUIX_KEY_CACHE_SECONDS", 30),
    )


# ------------------------------------------------------------------ secrets
#
# Provider and Stripe keys are never plain environment variables in AWS. A function is given
# the id of each secret it may read (template.yaml, with IAM for exactly those), and reads it
# from Secrets Manager (or SSM Parameter Store, SecureString, when the id starts with "/")
# through Powertools Parameters, cached for SECRET_MAX_AGE seconds: rotating a key takes
# effect within that long, and a warm function makes no call per request.
#
# The local stack and the tests have no Secrets Manager: with CONDUIX_SECRETS_FROM_ENV=1 (set
# only by them) a secret's value is the environment variable of its name, still only for a
# function whose template names the secret.

SECRET_MAX_AGE = 300
PROVIDER_KEYS = "PROVIDER_KEYS_SECRET_ID"  # one JSON object: {"OPENAI_API_KEY": "sk-...", ...}
_SECRET_IDS = {
    "STRIPE_API_KEY": "STRIPE_API_KEY_SECRET_ID",
    "STRIPE_WEBHOOK_SECRET": "STRIPE_WEBHOOK_SECRET_ID",
}


def secret(name: str) -> str | None:
    """The secret called `name` (STRIPE_API_KEY, STRIPE_WEBHOOK_SECRET, or a provider key's
    `api_key_env` from the catalog), or None when this function has none configured."""
    id_variable = _SECRET_IDS.get(name, PROVIDER_KEYS)
    secret_id = os.environ.get(id_variable, "").strip()
    if not secret_id:
        return None
    if os.environ.get("CONDUIX_SECRETS_FROM_ENV") == "1":
        return os.environ.get(name, "").strip() or None
    from aws_lambda_powertools.utilities import parameters  # only functions with secrets pay for it

    try:
        if secret_id.startswith("/"):
            raw = parameters.get_parameter(secret_id, decrypt=True, max_age=SECRET_MAX_AGE)
        else:
            raw = parameters.get_secret(secret_id, max_age=SECRET_MAX_AGE)
    except parameters.exceptions.GetParameterError as exc:
        raise ConfigurationError(f"The secret {secret_id} ({id_variable}) could not be read: {exc}") from None
    text = raw.decode() if isinstance(raw, bytes) else str(raw)
    if id_variable != PROVIDER_KEYS:
        return text.strip() or None
    try:
        keys = json.loads(text or "{}")
    except ValueError:
        keys = None
    if not isinstance(keys, dict):
        raise ConfigurationError(f"The secret {secret_id} must hold a JSON object of provider keys.")
    value = keys.get(name)
    return (value.strip() or None) if isinstance(value, str) else None


@cache
def operator_key_sha256() -> str:
    """Only the hash of the operator key is deployed (see template.yaml)."""
    value = _required("OPERATOR_KEY_SHA256").lower()
    if len(value) != 64 or any(c not in "0123456789abcdef" for c in value):
        raise ConfigurationError("OPERATOR_KEY_SHA256 must be 64 hex digits (a SHA-256).")
    return value


@cache
def cursor_key() -> bytes:
    """The HMAC key that signs ledger cursors (they carry a running balance the client must
    not be able to edit). A secret of at least 32 characters; see template.yaml."""
    value = _required("CONDUIX_CURSOR_KEY")
    if len(value) < 32:
        raise ConfigurationError("CONDUIX_CURSOR_KEY must be at least 32 characters long.")
    return value.encode("utf-8")


def learn_public_url(event: Mapping[str, Any]) -> None:
    """An empty PublicUrl means the API's own URL. CloudFormation cannot hand that URL to the
    API's own functions (the API depends on them: a circular dependency), so they take it from
    the first request they serve: the stage URL, or a custom domain's root."""
    if os.environ.get("CONDUIX_PUBLIC_URL"):
        return
    context = event.get("requestContext") or {}
    domain, stage = context.get("domainName"), context.get("stage")
    if not domain:
        return
    on_stage = str(domain).endswith(".amazonaws.com") and stage
    os.environ["CONDUIX_PUBLIC_URL"] = f"https://{domain}" + (f"/{stage}" if on_stage else "")


@dataclass(frozen=True)
class PaymentSettings:
    top_up_tiers: tuple[int, ...]  # nano-credits; operator-configured
    reload_min: int
    reload_max: int
    public_url: str  # where the dashboard lives (Checkout returns there)


def _credit_list(name: str, default: str) -> tuple[int, ...]:
    raw = os.environ.get(name, "").strip() or default
    try:
        values = tuple(
            sorted({parse_credits(part.strip(), field=name) for part in raw.split(",") if part.strip()})
        )
    except InvalidRequest as exc:
        raise ConfigurationError(f"{name}: {exc.message}") from None
    if not values or any(v % 10_000_000 for v in values):
        raise ConfigurationError(f"{name} must list amounts in whole cents, such as 10,50,100,500.")
    return values


@cache
def payment_settings() -> PaymentSettings:
    reload_limits = _credit_list("CONDUIX_RELOAD_LIMITS", "5,1000")
    return PaymentSettings(
        top_up_tiers=_credit_list("CONDUIX_TOP_UP_TIERS", "10,50,100,500"),
        reload_min=reload_limits[0],
        reload_max=reload_limits[-1],
        public_url=_required("CONDUIX_PUBLIC_URL").rstrip("/"),
    )


@cache
def reload_daily_limit() -> int:
    """How many auto-reload charges one org may have per UTC day before auto-reload pauses."""
    limit = _int("CONDUIX_RELOAD_DAILY_LIMIT", 5)
    if limit < 1:
        raise ConfigurationError("CONDUIX_RELOAD_DAILY_LIMIT must be at least 1.")
    return limit


# ------------------------------------------------------------------ read at the time of use
#
# The rest of the environment, read here too (no other module reads it), but at each call:
# the local stack and the tests change these between calls, and none is on a hot path.


def variable(name: str) -> str | None:
    """An environment variable the model catalog names in a URL (`${VAR}`); None when unset."""
    return os.environ.get(name) or None


def local_clock_file() -> str | None:
    """The local stack's test clock (POST /_local/clock); unset in AWS."""
    return os.environ.get("CONDUIX_LOCAL_CLOCK_FILE") or None


def plans_file() -> str | None:
    return os.environ.get("CONDUIX_PLANS_FILE") or None


def stripe_api_base() -> str | None:
    """Where the Stripe SDK sends requests when not to Stripe itself (the local stand-in)."""
    return os.environ.get("STRIPE_API_BASE", "").strip() or None


def email_sender() -> str:
    """The verified SES sender of billing emails; empty: emails are recorded, not sent."""
    return os.environ.get("CONDUIX_EMAIL_FROM", "").strip()


def public_url() -> str:
    """Where the dashboard lives, without a trailing slash (empty until known: see
    learn_public_url)."""
    return os.environ.get("CONDUIX_PUBLIC_URL", "").rstrip("/")


@dataclass(frozen=True)
class Telemetry:
    service: str  # POWERTOOLS_SERVICE_NAME: the `service` of every log line and metric
    metrics_namespace: str  # POWERTOOLS_METRICS_NAMESPACE
    log_level: str  # POWERTOOLS_LOG_LEVEL, or LOG_LEVEL


def telemetry() -> Telemetry:
    return Telemetry(
        service=os.environ.get("POWERTOOLS_SERVICE_NAME") or "",
        metrics_namespace=os.environ.get("POWERTOOLS_METRICS_NAMESPACE") or "Conduix",
        log_level=os.environ.get("POWERTOOLS_LOG_LEVEL") or os.environ.get("LOG_LEVEL") or "INFO",
    )


@dataclass(frozen=True)
class LambdaFunction:
    """What the Lambda runtime tells a function about itself (its context object's fields)."""

    runtime_api: str  # AWS_LAMBDA_RUNTIME_API: host:port of the Runtime API
    task_root: str  # where the function's code is
    handler: str  # "module.function"
    name: str
    version: str
    memory_mb: str
    log_group: str
    log_stream: str


def lambda_function() -> LambdaFunction:
    env = os.environ
    return LambdaFunction(
        runtime_api=env.get("AWS_LAMBDA_RUNTIME_API", ""),
        task_root=env.get("LAMBDA_TASK_ROOT", "/var/task"),
        handler=env.get("_HANDLER", ""),
        name=env.get("AWS_LAMBDA_FUNCTION_NAME", ""),
        version=env.get("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST"),
        memory_mb=env.get("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", ""),
        log_group=env.get("AWS_LAMBDA_LOG_GROUP_NAME", ""),
        log_stream=env.get("AWS_LAMBDA_LOG_STREAM_NAME", ""),
    )
