"""The billing table's keys: every partition and sort key it holds, owned here and only here.

Per org, one partition `ORG#<org id>` keeps the org and all its books, so an org's audit is
one query:

    ORG                              the profile (orgs)
    WALLET                           the sums every conditional write compares (wallets)
    HOLD#<request id>                an open hold
    PENDING#<request id>             a settle that could not land at once (HoldSweeper's)
    LEDGER#<created>#<entry id>      a ledger line (append-only)
    ENTRY#<entry id>                 its idempotency marker
    USAGE#<day>#<model>#<key id>     the day's usage counters
    KEYBUDGET#<key id>               a key's spend limit and what it used
    RPM#<key id>@<minute>            a key's requests counted in one minute (rate_windows)
    LEASE#<lease id>                 an escrow lease (leases)
    LSPEND#<lease id>#<request id>   a request billed under a lease
    INCIDENT#over-hold#<request id>  a charge above its hold (reconcile reports it)
    GRANT#<entry id>                 a credit grant that expires
    NOTICE#<sent at>#<id>            an email sent (notices)
    INVOICE#<YYYY-MM>                a month's NET-terms invoice record
    APIKEY#<key id>                  an API key's profile

Items of their own partition: `KEY#<sha256 of the key>` (the lookup by secret),
`IDEMPOTENCY#<org id>#<digest>` (an Idempotency-Key's answer) and `STRIPE_EVENT#<event id>`
(the webhook log).
"""

from __future__ import annotations

from conduix.store.items import Item, s

# Sort keys (and their prefixes) in an org's partition.
PROFILE = "ORG"
WALLET = "WALLET"
HOLD = "HOLD#"
PENDING = "PENDING#"
LEDGER = "LEDGER#"
ENTRY = "ENTRY#"
USAGE = "USAGE#"
KEY_BUDGET = "KEYBUDGET#"
RATE = "RPM#"
LEASE = "LEASE#"
LEASE_SPEND = "LSPEND#"
OVER_HOLD = "INCIDENT#over-hold#"
GRANT = "GRANT#"
NOTICE = "NOTICE#"
INVOICE = "INVOICE#"
API_KEY = "APIKEY#"

_ORG = "ORG#"


def org_pk(org_id: str) -> str:
    return f"{_ORG}{org_id}"


def org_of(pk: str) -> str:
    """The org id of an `ORG#` partition key."""
    return pk.removeprefix(_ORG)


def org_key(org_id: str, sk: str) -> Item:
    """The key of the item `sk` in the org's partition."""
    return {"pk": s(org_pk(org_id)), "sk": s(sk)}


def key_lookup_key(key_hash: str) -> Item:
    """The item that finds an API key by the hash of its secret."""
    return {"pk": s(f"KEY#{key_hash}"), "sk": s("KEY")}


def idempotent_answer_key(org_id: str, digest: str) -> Item:
    return {"pk": s(f"IDEMPOTENCY#{org_id}#{digest}"), "sk": s("IDEMPOTENCY")}


def stripe_event_key(event_id: str) -> Item:
    return {"pk": s(f"STRIPE_EVENT#{event_id}"), "sk": s("EVENT")}
