"""BillingApi: the org's billing JSON API (wiring only). Routes need an org key with billing scope."""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.event_handler import Response, content_types
from aws_lambda_powertools.logging import correlation_paths
from aws_lambda_powertools.logging.utils import copy_config_to_registered_loggers
from conduix.accounts import keys
from conduix.accounts.auth import Principal, authenticate
from conduix.api import billing, resolver
from conduix.core import config
from conduix.core.errors import NotFound
from conduix.ledger import statements
from conduix.web import dashboard

logger = Logger()
# The shared package logs through the standard library; give its loggers the same JSON output.
copy_config_to_registered_loggers(source_logger=logger, include={"conduix"})
app = resolver.resolver()


def _principal() -> Principal:
    # Read fresh on every call: a revoked key is refused at once here, and these routes are
    # not the billed path whose cache the wallet's revocation marks cover.
    return authenticate(resolver.headers(app), "billing", fresh=True)


def _org_id() -> str:
    return _principal().org_id


@app.get("/v1/billing")
def get_billing() -> dict[str, Any]:
    return billing.billing_view(_org_id())


def _csv(export: statements.Export) -> Response[Any]:
    return Response(
        status_code=200,
        content_type="text/csv; charset=utf-8",
        body=export.text,
        headers={
            "Content-Disposition": f'attachment; filename="{export.filename}"',
            "Cache-Control": "no-store",
        },
    )


def _json(body: dict[str, Any]) -> Response[Any]:
    return Response(status_code=200, content_type=content_types.APPLICATION_JSON, body=body)


# JSON by default, CSV with format=csv (one annotation for both, so OpenAPI can describe it).
@app.get("/v1/billing/ledger")
def get_ledger() -> Response[Any]:
    query = app.current_event.query_string_parameters or {}
    if statements.wants_csv(query):
        return _csv(statements.ledger_export(_org_id(), query))
    return _json(statements.ledger_page(_org_id(), query.get("limit"), query.get("cursor"), query))


@app.get("/v1/usage")
def get_usage() -> Response[Any]:
    query = app.current_event.query_string_parameters or {}
    if statements.wants_csv(query):
        return _csv(statements.usage_export(_org_id(), query))
    return _json(statements.usage_report(_org_id(), query))


@app.get("/v1/billing/notices")
def get_notices() -> dict[str, Any]:
    query = app.current_event.query_string_parameters or {}
    return billing.notices_view(_org_id(), query.get("limit"))


@app.get("/v1/billing/alerts")
def get_alerts() -> dict[str, Any]:
    return billing.alerts_view(_org_id())


@app.put("/v1/billing/alerts")
def put_alerts() -> dict[str, Any]:
    org_id = _org_id()
    return billing.set_alerts(org_id, resolver.json_body(app))


@app.get("/v1/billing/api-keys")
def get_api_keys() -> dict[str, Any]:
    return keys.list_keys(_org_id())


@app.post("/v1/billing/api-keys")
def post_api_key() -> Response[dict[str, Any]]:
    principal = _principal()
    created = keys.create_api_key(principal.org_id, resolver.json_body(app), principal.scopes)
    return Response(status_code=201, content_type=content_types.APPLICATION_JSON, body=created)


@app.patch("/v1/billing/api-keys/<key_id>")
def patch_api_key(key_id: str) -> dict[str, Any]:
    return keys.update_api_key(_org_id(), key_id, resolver.json_body(app))


@app.delete("/v1/billing/api-keys/<key_id>")
def delete_api_key(key_id: str) -> dict[str, Any]:
    return keys.revoke_api_key(_org_id(), key_id)


@app.put("/v1/billing/spend-cap")
def put_spend_cap() -> dict[str, Any]:
    org_id = _org_id()
    return billing.set_spend_cap(org_id, resolver.json_body(app))


@app.put("/v1/billing/auto-reload")
def put_auto_reload() -> dict[str, Any]:
    from conduix.payments import autoreload

    org_id = _org_id()
    autoreload.configure(org_id, resolver.json_body(app))
    return billing.billing_view(org_id)


@app.post("/v1/billing/top-ups")
def post_top_up() -> Response[dict[str, Any]]:
    from conduix.payments import topups  # imports stripe: only the routes that need it pay for it

    org_id = _org_id()
    session = topups.start_top_up(org_id, resolver.json_body(app), resolver.idempotency_key(app))
    return Response(status_code=201, content_type=content_types.APPLICATION_JSON, body=session)


@app.post("/v1/billing/subscription")
def post_subscription() -> dict[str, Any]:
    from conduix.payments import subscriptions

    org_id = _org_id()
    return subscriptions.choose(org_id, resolver.json_body(app), resolver.idempotency_key(app))


@app.delete("/v1/billing/subscription")
def delete_subscription() -> dict[str, Any]:
    from conduix.payments import subscriptions

    return subscriptions.cancel(_org_id())


@app.get("/v1/pricing")
def get_pricing() -> dict[str, Any]:
    return billing.pricing()


@app.get("/v1/billing/invoices")
def get_invoices() -> dict[str, Any]:
    from conduix.payments import topups

    return topups.invoices_view(_org_id())


# ---- dashboard pages (static HTML/CSS/JS from conduix.web.dashboard; no auth: the pages call the API)


def _static(content_type: str, text: str, cache_control: str) -> Response[str]:
    headers = {**dashboard.SECURITY_HEADERS, "Cache-Control": cache_control}
    return Response(status_code=200, content_type=content_type, body=text, headers=headers)


def _page(name: str) -> Response[str]:
    text = dashboard.page(name)
    if text is None:
        raise NotFound(f"Unknown page: /dashboard/{name}")
    return _static("text/html; charset=utf-8", text, "no-cache")


@app.get("/openapi.json", include_in_schema=False)
def get_openapi() -> dict[str, Any]:
    from conduix.api import openapi

    return openapi.document(app)


@app.get("/dashboard/assets/<name>", include_in_schema=False)
def get_dashboard_asset(name: str) -> Response[str]:
    found = dashboard.asset(name)
    if found is None:
        raise NotFound(f"Unknown asset: /dashboard/assets/{name}")
    versioned = "v" in (app.current_event.query_string_parameters or {})
    return _static(*found, "public, max-age=31536000, immutable" if versioned else "no-cache")


@app.get("/dashboard/<name>", include_in_schema=False)
def get_dashboard_page(name: str) -> Response[str]:
    return _page(name)


@app.get("/dashboard", include_in_schema=False)
def get_dashboard_home() -> Response[str]:
    return Response(
        status_code=302,
        content_type="text/plain",
        body="",
        headers={"Location": "dashboard/billing"},  # relative: works under the stage path
    )


@app.get("/pricing", include_in_schema=False)
def get_pricing_page() -> Response[str]:
    return _page("pricing")


@logger.inject_lambda_context(correlation_id_path=correlation_paths.API_GATEWAY_REST, clear_state=True)
def lambda_handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    config.learn_public_url(event)  # Checkout returns to the dashboard at this URL
    return app.resolve(event, context)
