"""AutoReload: every minute, charge saved cards of orgs whose balance crossed their threshold.

Not wired yet (it needs Stripe): the schedule runs and reports that there is nothing it can do.
"""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.logging.utils import copy_config_to_registered_loggers

logger = Logger()
# The shared package logs through the standard library; give its loggers the same JSON output.
copy_config_to_registered_loggers(source_logger=logger, include={"conduix"})


@logger.inject_lambda_context(clear_state=True)
def lambda_handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    logger.info("auto-reload is not enabled on this deployment yet")
    return {"enabled": False, "charged": 0}
