"""StripeWebhook: POST /webhooks/stripe (wiring only)."""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.logging.utils import copy_config_to_registered_loggers
from conduix.core import clock, telemetry
from conduix.core.errors import ConduixError, MethodNotAllowed
from conduix.payments import webhooks
from conduix.web import responses

logger = Logger()
# The shared package logs through the standard library; give its loggers the same JSON output.
copy_config_to_registered_loggers(source_logger=logger, include={"conduix"})


def _receive(request: responses.Request) -> dict[str, Any]:
    if request.method != "POST":
        raise MethodNotAllowed(f"{request.method} is not allowed on /webhooks/stripe.", ["POST"])
    try:
        received = webhooks.receive(request.body, request.headers.get("stripe-signature"), clock.now())
    except ConduixError as exc:  # invalid_signature, service_busy, configuration_error
        telemetry.webhook_outcome(exc.code)
        raise
    except Exception:
        telemetry.webhook_outcome("failed")
        raise
    telemetry.webhook_outcome(str(received["outcome"]))
    return responses.json_result(200, received)


@logger.inject_lambda_context(clear_state=True)
def lambda_handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    request = responses.parse_event(event)
    return responses.answer(lambda: _receive(request), request.request_id)
