"""Admin: the operator API under /admin (wiring only). Every route needs the operator key."""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.event_handler import Response, content_types
from aws_lambda_powertools.logging import correlation_paths
from aws_lambda_powertools.logging.utils import copy_config_to_registered_loggers
from conduix.accounts import keys
from conduix.accounts.auth import require_operator
from conduix.api import admin, resolver

logger = Logger()
# The shared package logs through the standard library; give its loggers the same JSON output.
copy_config_to_registered_loggers(source_logger=logger, include={"conduix"})
app = resolver.resolver()


def _json(status: int, body: dict[str, Any]) -> Response[dict[str, Any]]:
    return Response(status_code=status, content_type=content_types.APPLICATION_JSON, body=body)


@app.post("/admin/orgs")
def create_org() -> Response[dict[str, Any]]:
    return _json(201, admin.register_org(resolver.json_body(app)))


@app.get("/admin/orgs")
def list_orgs() -> dict[str, Any]:
    return admin.list_orgs(app.current_event.query_string_parameters or {})


@app.get("/admin/orgs/<org_id>/holds")
def list_holds(org_id: str) -> dict[str, Any]:
    return admin.list_holds(org_id)


@app.delete("/admin/orgs/<org_id>/holds/<request_id>")
def release_hold(org_id: str, request_id: str) -> dict[str, Any]:
    return admin.release_hold(org_id, request_id)


@app.get("/admin/orgs/<org_id>")
def get_org(org_id: str) -> dict[str, Any]:
    return admin.org_view(org_id)


@app.post("/admin/orgs/<org_id>/api-keys")
def create_api_key(org_id: str) -> Response[dict[str, Any]]:
    return _json(201, keys.create_api_key(org_id, resolver.json_body(app)))


@app.delete("/admin/orgs/<org_id>/api-keys/<key_id>")
def revoke_api_key(org_id: str, key_id: str) -> dict[str, Any]:
    return keys.revoke_api_key(org_id, key_id)


@app.get("/admin/orgs/<org_id>/reconcile")
def reconcile_org(org_id: str) -> dict[str, Any]:
    from conduix.audit import reconcile

    admin.org_view(org_id)  # 404 for an unknown org
    return reconcile.report(org_id)


@app.put("/admin/orgs/<org_id>/billing")
def set_billing(org_id: str) -> dict[str, Any]:
    return admin.set_billing(org_id, resolver.json_body(app))


@app.post("/admin/orgs/<org_id>/credits")
def grant_credits(org_id: str) -> Response[dict[str, Any]]:
    entry, created = admin.grant_credits(org_id, resolver.json_body(app))
    return _json(201 if created else 200, entry)


@logger.inject_lambda_context(correlation_id_path=correlation_paths.API_GATEWAY_REST, clear_state=True)
def lambda_handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    # The operator check comes before routing, so an unknown /admin path tells nothing to strangers.
    return resolver.guarded(app, event, context, require_operator)
