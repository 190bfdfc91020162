"""AutoReload: every minute, charge the saved card of orgs whose balance crossed their
auto-reload threshold (wiring only)."""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.logging.utils import copy_config_to_registered_loggers
from conduix.core import clock
from conduix.payments import autoreload

logger = Logger()
# The shared package logs through the standard library; give its loggers the same JSON output.
copy_config_to_registered_loggers(source_logger=logger, include={"conduix"})


@logger.inject_lambda_context(clear_state=True)
def lambda_handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    result = autoreload.charge_due(clock.now())
    logger.info("auto-reload run done", extra=result)
    return result
