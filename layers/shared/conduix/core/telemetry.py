"""What an operator watches: CloudWatch metrics in the embedded metric format (EMF) through
Powertools Metrics, and one structured log line per completion. The one place metric names
and dimensions are spelled; template.yaml's alarms use the same names.

Metrics (namespace POWERTOOLS_METRICS_NAMESPACE, dimension `service` = the function's
POWERTOOLS_SERVICE_NAME, plus the dimensions named):
- Requests {outcome}: one per completion request; outcomes in OUTCOMES.
- BilledNanoCredits {outcome=billed}: credits billed, in nano-credits (integers: no float
  ever carries money, even into a metric).
- UpstreamLatency {outcome}: milliseconds spent waiting on the provider(s).
- SettleIncidents: a settle that failed, or billed above its hold (the kind is in the log).
- HoldsReleased: holds HoldSweeper freed (their request died before settling).
- WebhookEvents {outcome}: Stripe deliveries by what came of them (invalid_signature...).

Each call flushes at once (one EMF line on stdout, which CloudWatch Logs turns into metrics):
no handler decorator is needed, and a metric is never lost with a failed invocation.
Telemetry never fails a request: errors here are logged and swallowed. The EMF line is
written here, in the shape Powertools Metrics writes (same namespace, dimensions and the
`service` dimension from POWERTOOLS_SERVICE_NAME): building a Powertools `Metrics` per
request cost the billed path more CPU than its own logic, and its import is cold-start time
the Completion function no longer pays (it logs without Powertools too: `json_logging`).
Counts stay integers in the blob (EMF takes any JSON number), so no float carries money.

`json_logging` is the Completion function's logger: the standard library with a JSON
formatter, one line per record with the fields Powertools Logger writes (level, location,
message, timestamp, service, the invocation's Lambda context, the request id) plus the
record's `extra` keys.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
from datetime import UTC, datetime
from typing import Any

from conduix.core import config, errors

log = logging.getLogger(__name__)

COUNT, MILLISECONDS = "Count", "Milliseconds"  # CloudWatch units
_MAX_NAMESPACE = 255  # CloudWatch refuses longer namespaces

BILLED, CACHE_HIT, REPLAYED = "billed", "cache_hit", "replayed"
OUTCOMES = (
    BILLED,
    CACHE_HIT,
    REPLAYED,  # an Idempotency-Key retry answered with the first answer: billed once, before
    "402_credits",
    "402_cap",
    "429",
    "upstream_failed",
    "invalid_request",
    "unauthorized",
    "error",
)
_lock = threading.Lock()  # one whole line at a time on stdout


def emf_line(values: dict[str, tuple[str, float]], **dimensions: str) -> str:
    """One CloudWatch embedded-metric-format blob: `values` (name -> unit, value) under the
    given dimensions and the function's `service`."""
    return json.dumps(_emf(values, **dimensions), separators=(",", ":"))


def _emf(values: dict[str, tuple[str, float]], **dimensions: str) -> dict[str, Any]:
    configured = config.telemetry()
    namespace = configured.metrics_namespace
    if len(namespace) > _MAX_NAMESPACE:
        raise ValueError(f"metric namespace longer than {_MAX_NAMESPACE} characters")
    service = configured.service
    if service:
        dimensions = {**dimensions, "service": service}
    blob: dict[str, Any] = {
        "_aws": {
            "Timestamp": int(time.time() * 1000),
            "CloudWatchMetrics": [
                {
                    "Namespace": namespace,
                    "Dimensions": [list(dimensions)],
                    "Metrics": [{"Name": name, "Unit": unit} for name, (unit, _) in values.items()],
                }
            ],
        },
        **dimensions,
    }
    for name, (_, amount) in values.items():
        blob[name] = [amount]
    return blob


def _emit(values: dict[str, tuple[str, float]], **dimensions: str) -> None:
    try:
        line = emf_line(values, **dimensions)
        with _lock:
            print(line, flush=True)
    except Exception:
        log.warning("could not emit metrics %s", sorted(values), exc_info=True)


def outcome_of(exc: BaseException) -> str:
    """The Requests outcome of a completion refused or failed with `exc`."""
    if isinstance(exc, errors.InsufficientCredits):
        return "402_credits"
    if isinstance(exc, errors.SpendCapExceeded):
        return "402_cap"
    if isinstance(exc, errors.KeySpendLimitExceeded):
        return "402_key_limit"
    if isinstance(exc, errors.RateLimited):
        return "429"
    if isinstance(exc, errors.UpstreamError) and not isinstance(exc, errors.UpstreamRejected):
        return "upstream_failed"
    if isinstance(exc, errors.InvalidRequest | errors.NotFound | errors.UpstreamRejected):
        return "invalid_request"
    if isinstance(exc, errors.Unauthenticated | errors.PermissionDenied):
        return "unauthorized"
    return "error"


def count_outcome(outcome: str, *, billed_nanos: int = 0, upstream_ms: float | None = None) -> None:
    _emit(_outcome_values(outcome, billed_nanos, upstream_ms), outcome=outcome)


def _outcome_values(
    outcome: str, billed_nanos: int = 0, upstream_ms: float | None = None
) -> dict[str, tuple[str, float]]:
    values: dict[str, tuple[str, float]] = {"Requests": (COUNT, 1)}
    if outcome == BILLED:
        values["BilledNanoCredits"] = (COUNT, billed_nanos)
    if upstream_ms is not None:
        values["UpstreamLatency"] = (MILLISECONDS, round(upstream_ms, 1))
    return values


def _completion_line(fields: dict[str, Any], values: dict[str, tuple[str, float]]) -> None:
    """A completion's one line: its log record (what an operator searches by) and its metrics
    in one JSON object, as EMF allows. One line instead of a log line and a metrics line
    halves what each request writes (and CloudWatch Logs ingests). It is written at any log
    level: it carries the metrics."""
    try:
        line = {
            "level": "INFO",
            "location": "telemetry",
            "message": "completion",
            "timestamp": datetime.now(UTC).isoformat(timespec="milliseconds"),
            "service": config.telemetry().service or "service_undefined",
            "name": log.name,
            **_invocation,
            **fields,
            **_emf(values, outcome=fields["outcome"]),
        }
        text = json.dumps(line, default=str, separators=(",", ":"))
        with _lock:
            print(text, flush=True)
    except Exception:
        log.warning("could not write a completion's line", exc_info=True)


def completion_served(*, request_id: str, org_id: str, key_id: str, served: Any) -> None:
    """The log line and metrics of an answered completion. `served` is completion.Served."""
    if served.replay_of is not None:
        outcome = REPLAYED
    else:
        outcome = CACHE_HIT if served.cache_status == "HIT" else BILLED
    fields = {
        "request_id": request_id,
        "org_id": org_id,
        "key_id": key_id,
        "requested_model": served.requested_model,
        "model": served.model,
        "fallback_used": served.fallback_used,
        "prompt_tokens": served.prompt_tokens,
        "completion_tokens": served.completion_tokens,
        "cost_nanos": served.cost,
        "cache": served.cache_status,
        "outcome": outcome,
        "upstream_ms": served.upstream_ms,
    }
    _completion_line(fields, _outcome_values(outcome, served.cost, served.upstream_ms))


def completion_refused(
    exc: BaseException, *, request_id: str, org_id: str | None = None, key_id: str | None = None
) -> None:
    """The log line and metrics of a completion that was refused or failed."""
    outcome = outcome_of(exc)
    fields = {
        "request_id": request_id,
        "org_id": org_id,
        "key_id": key_id,
        "outcome": outcome,
        "code": getattr(exc, "code", type(exc).__name__),
        "cost_nanos": 0,
    }
    _completion_line(fields, _outcome_values(outcome))


def settle_incident(kind: str, **context: Any) -> None:
    """A settle that could not land, or landed above its hold: reconcile has work to do."""
    log.error("settle incident", extra={"kind": kind, **context})
    _emit({"SettleIncidents": (COUNT, 1)})  # one series, so one alarm covers every kind


def holds_released(count: int) -> None:
    _emit({"HoldsReleased": (COUNT, count)})


def webhook_outcome(outcome: str) -> None:
    """One Stripe delivery, by its outcome's first word (credited, ignored, duplicate...)."""
    word = outcome.split(":", 1)[0].strip().replace(" ", "_") or "unknown"
    _emit({"WebhookEvents": (COUNT, 1)}, outcome=word)


# ------------------------------------------------------------------ JSON logs without Powertools

# What every LogRecord carries; anything else on a record came from `extra=` and is logged.
_RECORD_FIELDS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}
_invocation: dict[str, Any] = {}  # the current invocation's keys (one invocation at a time)
_cold = [True]


class JsonFormatter(logging.Formatter):
    """One JSON object per record, in Powertools Logger's field names."""

    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "level": record.levelname,
            "location": f"{record.funcName}:{record.lineno}",
            "message": record.getMessage(),
            "timestamp": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "service": self.service,
            "name": record.name,
            **_invocation,
        }
        for key, value in vars(record).items():
            if key not in _RECORD_FIELDS:
                line[key] = value
        if record.exc_info:
            line["exception_name"] = record.exc_info[0].__name__ if record.exc_info[0] else ""
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str, separators=(",", ":"))


def json_logging(*names: str) -> None:
    """Log the named loggers (and their children) as JSON lines on stdout, at
    POWERTOOLS_LOG_LEVEL (or LOG_LEVEL), INFO by default; they no longer propagate to the
    runtime's root handler, so each record is written once. Children configured before (by
    Powertools, in a process that loads several functions) hand their records up again."""
    configured = config.telemetry()
    level, service = configured.log_level, configured.service or "service_undefined"
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(JsonFormatter(service))
    for name in names:
        logger = logging.getLogger(name)
        logger.handlers = [handler]
        logger.setLevel(level.upper())
        logger.propagate = False
        for child_name, child in list(logging.root.manager.loggerDict.items()):
            if child_name.startswith(name + ".") and isinstance(child, logging.Logger):
                child.handlers = []
                child.setLevel(logging.NOTSET)
                child.propagate = True


def invocation(context: Any, **keys: Any) -> None:
    """Start an invocation's log keys (the previous invocation's are dropped): Lambda's
    context, whether this is the environment's first invocation, and `keys`."""
    _invocation.clear()
    _invocation.update(
        cold_start=_cold[0],
        function_name=getattr(context, "function_name", ""),
        function_memory_size=getattr(context, "memory_limit_in_mb", ""),
        function_arn=getattr(context, "invoked_function_arn", ""),
        function_request_id=getattr(context, "aws_request_id", ""),
        **keys,
    )
    _cold[0] = False
