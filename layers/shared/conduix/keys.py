"""API keys, as operators and org admins manage them: create (shown once), list, revoke."""

from __future__ import annotations

from typing import Any

from conduix import clock, orgs, plans, wallets
from conduix.errors import InvalidRequest, PermissionDenied
from conduix.validation import resource_id, text_field


def key_view(key: orgs.ApiKey) -> dict[str, Any]:
    return {
        "key_id": key.key_id,
        "name": key.name,
        "scopes": sorted(key.scopes),
        "created_at": key.created_at,
        "revoked": key.revoked,
    }


def create_api_key(
    org_id: str, body: dict[str, Any], granted: tuple[str, ...] = orgs.SCOPES
) -> dict[str, Any]:
    """Mint a key with the scopes asked for (by default, all of `granted`). A key may create
    keys only with scopes it holds itself (`granted`); the operator holds them all."""
    resource_id(org_id, "org")
    name = text_field(body, "name", required=False) or "default"
    scopes = body.get("scopes", [s for s in orgs.SCOPES if s in granted])
    if (
        not isinstance(scopes, list)
        or not scopes
        or not all(isinstance(x, str) and x in orgs.SCOPES for x in scopes)
    ):
        raise InvalidRequest(
            f"'scopes' must be a non-empty list of {', '.join(orgs.SCOPES)}.", param="scopes"
        )
    beyond = sorted(set(scopes) - set(granted))
    if beyond:
        raise PermissionDenied(
            f"This API key cannot create a key with the {', '.join(repr(x) for x in beyond)} "
            "scope: a key may only grant scopes it holds itself."
        )
    plan = plans.get(wallets.get_wallet(org_id).plan)
    secret, key = orgs.create_api_key(
        org_id, name, tuple(sorted(set(scopes))), clock.now(), plan.max_api_keys
    )
    return {"api_key": secret, "org_id": org_id, **key_view(key)}


def revoke_api_key(org_id: str, key_id: str) -> dict[str, Any]:
    resource_id(org_id, "org")
    resource_id(key_id, "API key")
    return key_view(orgs.revoke_api_key(org_id, key_id, clock.now()))


def list_keys(org_id: str) -> dict[str, Any]:
    resource_id(org_id, "org")
    return {"object": "list", "data": [key_view(k) for k in orgs.list_api_keys(org_id)]}
