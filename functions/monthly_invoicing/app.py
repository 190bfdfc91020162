"""MonthlyInvoicing: on the 1st (UTC), NET-terms invoices for last month's usage of
invoice-mode orgs; an event `{"period": "2026-11"}` invoices that month instead (wiring only)."""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.logging.utils import copy_config_to_registered_loggers
from conduix.core import clock
from conduix.payments import invoicing

logger = Logger()
# The shared package logs through the standard library; give its loggers the same JSON output.
copy_config_to_registered_loggers(source_logger=logger, include={"conduix"})


@logger.inject_lambda_context(clear_state=True)
def lambda_handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    result = invoicing.invoice_month(event if isinstance(event, dict) else {}, clock.now())
    logger.info("monthly invoicing done", extra={"period": result["period"], "orgs": len(result["orgs"])})
    return result
