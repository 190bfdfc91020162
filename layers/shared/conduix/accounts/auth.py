"""Who is calling: org keys (with scopes) and the operator key."""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Mapping
from dataclasses import dataclass

from conduix.accounts import key_records
from conduix.core.config import operator_key_sha256, settings
from conduix.core.errors import PermissionDenied, Unauthenticated

_MAX_CACHED_KEYS = 10_000


@dataclass(frozen=True)
class Principal:
    org_id: str
    key_id: str
    scopes: tuple[str, ...]


# key hash -> (monotonic expiry, principal). Only found, live keys are remembered, so a new key
# works at once. A revoked one is refused at once all the same: by a fresh read on the routes
# that ask for one, and on the billed path by the wallet's revocation marks, which the hold's
# conditional write checks (see wallets.note_revoked_key).
_cache: dict[str, tuple[float, Principal]] = {}


def clear_cache() -> None:
    _cache.clear()


def _bearer(headers: Mapping[str, str]) -> str:
    scheme, _, token = headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthenticated("You didn't provide an API key. Send it as 'Authorization: Bearer <key>'.")
    return token.strip()


def authenticate(headers: Mapping[str, str], scope: str, *, fresh: bool = False) -> Principal:
    """The org key's principal, if the key is known, live and has `scope`.

    `fresh` reads the key (strongly consistent) instead of trusting the warm cache: for every
    route that does not end in a hold, which is where the cache's revocation check lives."""
    key_hash = key_records.hash_key(_bearer(headers))
    now = time.monotonic()
    cached = None if fresh else _cache.get(key_hash)
    if cached and cached[0] > now:
        principal = cached[1]
    else:
        key = key_records.find_key(key_hash, consistent=fresh)
        if key is None or key.revoked:
            _cache.pop(key_hash, None)
            raise Unauthenticated("Incorrect API key provided.")
        principal = Principal(org_id=key.org_id, key_id=key.key_id, scopes=key.scopes)
        if len(_cache) >= _MAX_CACHED_KEYS:
            _cache.clear()
        _cache[key_hash] = (now + settings().key_cache_seconds, principal)
    if scope not in principal.scopes:
        raise PermissionDenied(f"This API key lacks the '{scope}' scope.")
    return principal


def require_operator(headers: Mapping[str, str]) -> None:
    presented = hashlib.sha256(_bearer(headers).encode("utf-8")).hexdigest()
    if not hmac.compare_digest(presented, operator_key_sha256()):
        raise PermissionDenied("This route needs the operator key.")
