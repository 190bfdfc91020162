"""BillingApi: the org's billing JSON API (wiring only). Routes need an org key with billing scope."""

from __future__ import annotations

from typing import Annotated, Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.event_handler import Response, content_types
from aws_lambda_powertools.event_handler.openapi.params import Query
from aws_lambda_powertools.logging import correlation_paths
from aws_lambda_powertools.logging.utils import copy_config_to_registered_loggers
from conduix.accounts import keys
from conduix.accounts.auth import Principal, authenticate
from conduix.api import billing, queries, resolver, views
from conduix.core import bodies, config, errors
from conduix.core.errors import NotFound
from conduix.ledger import statements
from conduix.web import dashboard
from conduix.web.responses import error_result

logger = Logger()
# The shared package logs through the standard library; give its loggers the same JSON output.
copy_config_to_registered_loggers(source_logger=logger, include={"conduix"})
app = resolver.resolver()


def _principal() -> Principal:
    principal: Principal = app.context["principal"]  # set by lambda_handler, before validation
    return principal


def _org_id() -> str:
    return _principal().org_id


@app.get("/v1/billing", responses=resolver.answers(views.BillingView))
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
@app.get("/v1/billing/ledger", responses=views.with_csv(views.LedgerPage))
def get_ledger(query: Annotated[queries.LedgerQuery, Query()]) -> Response[Any]:
    if query.format == "csv":
        return _csv(statements.ledger_export(_org_id(), query.filter))
    return _json(statements.ledger_page(_org_id(), query.limit, query.cursor, query.filter))


@app.get("/v1/usage", responses=views.with_csv(views.UsageReport))
def get_usage(query: Annotated[queries.UsageQuery, Query()]) -> Response[Any]:
    asked = (query.first, query.last, query.group_by)
    if query.format == "csv":
        return _csv(statements.usage_export(_org_id(), *asked))
    return _json(statements.usage_report(_org_id(), *asked))


@app.get("/v1/billing/notices", responses=resolver.answers(views.NoticeList))
def get_notices(query: Annotated[queries.NoticesQuery, Query()]) -> dict[str, Any]:
    return billing.notices_view(_org_id(), query.limit)


@app.get("/v1/billing/alerts", responses=resolver.answers(views.AlertsView))
def get_alerts() -> dict[str, Any]:
    return billing.alerts_view(_org_id())


@app.put("/v1/billing/alerts", responses=resolver.answers(views.AlertsView))
def put_alerts(settings: bodies.AlertsRequest) -> dict[str, Any]:
    return billing.set_alerts(_org_id(), settings)


@app.get("/v1/billing/api-keys", responses=resolver.answers(views.KeyList))
def get_api_keys() -> dict[str, Any]:
    return keys.list_keys(_org_id())


@app.post(
    "/v1/billing/api-keys",
    responses=resolver.answers(views.CreatedKey, 201, "Created (the key is shown once)"),
)
def post_api_key(asked: bodies.ApiKeyRequest) -> Response[dict[str, Any]]:
    principal = _principal()
    created = keys.create_api_key(principal.org_id, asked, principal.scopes)
    return Response(status_code=201, content_type=content_types.APPLICATION_JSON, body=created)


@app.patch("/v1/billing/api-keys/<key_id>", responses=resolver.answers(views.KeyView))
def patch_api_key(key_id: str, change: bodies.ApiKeyUpdate) -> dict[str, Any]:
    return keys.update_api_key(_org_id(), key_id, change)


@app.delete("/v1/billing/api-keys/<key_id>", responses=resolver.answers(views.KeyView))
def delete_api_key(key_id: str) -> dict[str, Any]:
    return keys.revoke_api_key(_org_id(), key_id)


@app.put("/v1/billing/spend-cap", responses=resolver.answers(views.BillingView))
def put_spend_cap(cap: bodies.SpendCapRequest) -> dict[str, Any]:
    return billing.set_spend_cap(_org_id(), cap.monthly_limit)


@app.put("/v1/billing/auto-reload", responses=resolver.answers(views.BillingView))
def put_auto_reload(reload: bodies.AutoReloadRequest) -> dict[str, Any]:
    from conduix.payments import autoreload

    org_id = _org_id()
    autoreload.configure(org_id, reload)
    return billing.billing_view(org_id)


@app.post("/v1/billing/top-ups", responses=resolver.answers(views.CheckoutSession, 201, "Checkout started"))
def post_top_up(top_up: bodies.TopUpRequest) -> Response[dict[str, Any]]:
    from conduix.payments import topups  # imports stripe: only the routes that need it pay for it

    org_id = _org_id()
    session = topups.start_top_up(org_id, top_up.amount, resolver.idempotency_key(app))
    return Response(status_code=201, content_type=content_types.APPLICATION_JSON, body=session)


@app.post("/v1/billing/subscription", responses=resolver.answers(views.SubscriptionChange))
def post_subscription(choice: bodies.SubscriptionRequest) -> dict[str, Any]:
    from conduix.payments import subscriptions

    return subscriptions.choose(_org_id(), choice.plan, resolver.idempotency_key(app))


@app.delete("/v1/billing/subscription", responses=resolver.answers(views.SubscriptionChange))
def delete_subscription() -> dict[str, Any]:
    from conduix.payments import subscriptions

    return subscriptions.cancel(_org_id())


@app.get("/v1/pricing", responses=resolver.answers(views.Pricing))
def get_pricing() -> dict[str, Any]:
    return billing.pricing()


@app.get("/v1/billing/invoices", responses=resolver.answers(views.InvoiceList))
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
def get_dashboard_asset(name: str, v: Annotated[str | None, Query()] = None) -> Response[str]:
    found = dashboard.asset(name)
    if found is None:
        raise NotFound(f"Unknown asset: /dashboard/assets/{name}")
    versioned = v is not None  # ?v=<hash>: this URL's bytes never change
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


def _private(path: str) -> bool:
    return path in ("/v1/billing", "/v1/usage") or path.startswith("/v1/billing/")


@logger.inject_lambda_context(correlation_id_path=correlation_paths.API_GATEWAY_REST, clear_state=True)
def lambda_handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    config.learn_public_url(event)  # Checkout returns to the dashboard at this URL
    if _private(event.get("path") or ""):
        # Who is calling comes before what they sent: a stranger gets 401, not a body check.
        # Read fresh on every call: a revoked key is refused at once here, and these routes
        # are not the billed path whose cache the wallet's revocation marks cover.
        headers = {k.lower(): v for k, v in (event.get("headers") or {}).items() if v is not None}
        try:
            app.append_context(principal=authenticate(headers, "billing", fresh=True))
        except errors.ConduixError as exc:
            return error_result(exc)
    return resolver.resolve(app, event, context)
