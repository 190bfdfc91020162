"""StripeWebhook: POST /webhooks/stripe (wiring only)."""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.logging.utils import copy_config_to_registered_loggers
from conduix import clock, http, payments
from conduix.errors import MethodNotAllowed

logger = Logger()
# The shared package logs through the standard library; give its loggers the same JSON output.
copy_config_to_registered_loggers(source_logger=logger, include={"conduix"})


def _receive(request: http.Request) -> dict[str, Any]:
    if request.method != "POST":
        raise MethodNotAllowed(f"{request.method} is not allowed on /webhooks/stripe.", ["POST"])
    return http.json_result(
        200, payments.receive(request.body, request.headers.get("stripe-signature"), clock.now())
    )


@logger.inject_lambda_context(clear_state=True)
def lambda_handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    request = http.parse_event(event)
    return http.answer(lambda: _receive(request), request.request_id)
