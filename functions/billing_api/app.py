"""BillingApi: the org's billing JSON API (wiring only). Routes need an org key with billing scope."""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.logging import correlation_paths
from aws_lambda_powertools.logging.utils import copy_config_to_registered_loggers
from conduix import api, billing
from conduix.auth import authenticate

logger = Logger()
# The shared package logs through the standard library; give its loggers the same JSON output.
copy_config_to_registered_loggers(source_logger=logger, include={"conduix"})
app = api.resolver()


def _org_id() -> str:
    return authenticate(api.headers(app), "billing").org_id


@app.get("/v1/billing")
def get_billing() -> dict[str, Any]:
    return billing.billing_view(_org_id())


@app.put("/v1/billing/spend-cap")
def put_spend_cap() -> dict[str, Any]:
    org_id = _org_id()
    return billing.set_spend_cap(org_id, api.json_body(app))


@logger.inject_lambda_context(correlation_id_path=correlation_paths.API_GATEWAY_REST, clear_state=True)
def lambda_handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    return app.resolve(event, context)
