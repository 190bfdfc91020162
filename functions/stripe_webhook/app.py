"""StripeWebhook: POST /webhooks/stripe (wiring only).

Money-in over Stripe is not wired yet: until it is, every event is refused with 503 so Stripe
keeps retrying it rather than our acknowledging a payment we did not credit.
"""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.logging.utils import copy_config_to_registered_loggers
from conduix import http
from conduix.errors import ServiceBusy

logger = Logger()
# The shared package logs through the standard library; give its loggers the same JSON output.
copy_config_to_registered_loggers(source_logger=logger, include={"conduix"})


@logger.inject_lambda_context(clear_state=True)
def lambda_handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    request = http.parse_event(event)
    return http.error_result(
        ServiceBusy("Stripe webhooks are not enabled on this deployment yet."),
        {"x-request-id": request.request_id},
    )
