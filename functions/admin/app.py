"""Admin: the operator API under /admin (wiring only). Every route needs the operator key."""

from __future__ import annotations

from typing import Annotated, Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.event_handler import Response, content_types
from aws_lambda_powertools.event_handler.openapi.params import Query
from aws_lambda_powertools.logging import correlation_paths
from aws_lambda_powertools.logging.utils import copy_config_to_registered_loggers
from conduix.accounts import keys
from conduix.accounts.auth import require_operator
from conduix.api import admin, queries, resolver, views
from conduix.core import bodies

logger = Logger()
# The shared package logs through the standard library; give its loggers the same JSON output.
copy_config_to_registered_loggers(source_logger=logger, include={"conduix"})
app = resolver.resolver()


def _json(status: int, body: dict[str, Any]) -> Response[dict[str, Any]]:
    return Response(status_code=status, content_type=content_types.APPLICATION_JSON, body=body)


@app.post("/admin/orgs", responses=resolver.answers(views.OrgView, 201, "Created"))
def create_org(org: bodies.OrgRequest) -> Response[dict[str, Any]]:
    return _json(201, admin.register_org(org.name, org.email))


@app.get("/admin/orgs", responses=resolver.answers(views.OrgList))
def list_orgs(query: Annotated[queries.OrgsQuery, Query()]) -> dict[str, Any]:
    return admin.list_orgs(query.email, query.name, query.limit, query.cursor)


@app.get("/admin/orgs/<org_id>/holds", responses=resolver.answers(views.HoldList))
def list_holds(org_id: str) -> dict[str, Any]:
    return admin.list_holds(org_id)


@app.delete("/admin/orgs/<org_id>/holds/<request_id>", responses=resolver.answers(views.HoldOutcome))
def release_hold(org_id: str, request_id: str) -> dict[str, Any]:
    return admin.release_hold(org_id, request_id)


@app.get("/admin/orgs/<org_id>", responses=resolver.answers(views.OrgView))
def get_org(org_id: str) -> dict[str, Any]:
    return admin.org_view(org_id)


@app.post("/admin/orgs/<org_id>/api-keys", responses=resolver.answers(views.CreatedKey, 201, "Created"))
def create_api_key(org_id: str, asked: bodies.ApiKeyRequest) -> Response[dict[str, Any]]:
    return _json(201, keys.create_api_key(org_id, asked))


@app.delete("/admin/orgs/<org_id>/api-keys/<key_id>", responses=resolver.answers(views.KeyView))
def revoke_api_key(org_id: str, key_id: str) -> dict[str, Any]:
    return keys.revoke_api_key(org_id, key_id)


@app.get("/admin/orgs/<org_id>/reconcile", responses=resolver.answers(views.ReconcileReport))
def reconcile_org(org_id: str) -> dict[str, Any]:
    from conduix.audit import reconcile

    admin.org_view(org_id)  # 404 for an unknown org
    return reconcile.report(org_id)


@app.put("/admin/orgs/<org_id>/billing", responses=resolver.answers(views.BillingModeChange))
def set_billing(org_id: str, billing: bodies.BillingModeRequest) -> dict[str, Any]:
    return admin.set_billing(org_id, billing)


@app.post(
    "/admin/orgs/<org_id>/credits",
    responses={
        **resolver.answers(views.Grant, 201, "Granted"),
        **resolver.answers(views.Grant, 200, "A replay: the grant made the first time"),
    },
)
def grant_credits(org_id: str, grant: bodies.GrantRequest) -> Response[dict[str, Any]]:
    entry, created = admin.grant_credits(org_id, grant)
    return _json(201 if created else 200, entry)


@app.get("/admin/openapi.json", include_in_schema=False)
def get_openapi() -> dict[str, Any]:
    from conduix.api import openapi

    return openapi.admin_document(app)


@logger.inject_lambda_context(correlation_id_path=correlation_paths.API_GATEWAY_REST, clear_state=True)
def lambda_handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    # The operator check comes before routing, so an unknown /admin path tells nothing to strangers.
    return resolver.guarded(app, event, context, require_operator)
