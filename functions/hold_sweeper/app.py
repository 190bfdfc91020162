"""HoldSweeper: every minute, release holds whose request died and expire credit grants (wiring only)."""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.logging.utils import copy_config_to_registered_loggers
from conduix.accounts import grants
from conduix.core import clock
from conduix.inference import sweeper

logger = Logger()
# The shared package logs through the standard library; give its loggers the same JSON output.
copy_config_to_registered_loggers(source_logger=logger, include={"conduix"})


@logger.inject_lambda_context(clear_state=True)
def lambda_handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    now = clock.now()
    result = sweeper.sweep(now)
    result.update(grants.expire_due(now))  # credit grants whose time has come
    logger.info("sweep done", extra=result)
    return result
