"""Orgs (data access): the profile, the operator's directory of orgs, the Stripe customer and
card, the subscription state and invoice terms. Their API keys are in `key_records`.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from conduix.core import clock
from conduix.core.config import settings
from conduix.core.errors import NotFound
from conduix.ledger.wallets import new_wallet_item
from conduix.store import schema
from conduix.store.dynamo import client, write_if
from conduix.store.items import Item, as_int, as_str, n, s


@dataclass(frozen=True)
class Card:
    payment_method_id: str
    brand: str
    last4: str
    exp_month: int
    exp_year: int


@dataclass(frozen=True)
class Org:
    org_id: str
    name: str
    email: str
    created_at: str
    stripe_customer_id: str | None = None
    card: Card | None = None
    subscription: Subscription | None = None
    po_number: str | None = None
    net_terms_days: int = 30


@dataclass(frozen=True)
class Subscription:
    subscription_id: str
    item_id: str
    plan: str
    status: str  # Stripe's: active, past_due, canceled...
    current_period_end: int
    last_payment_failed: bool = False


def create_org(name: str, email: str, now: datetime) -> Org:
    org_id = f"org_{secrets.token_hex(8)}"
    created = clock.iso(now)
    table = settings().billing_table
    client().transact_write_items(
        TransactItems=[
            {
                "Put": {
                    "TableName": table,
                    "Item": {
                        **schema.org_key(org_id, schema.PROFILE),
                        "org_id": s(org_id),
                        "name": s(name),
                        "email": s(email),
                        "created_at": s(created),
                        **directory_attributes(name, email),
                    },
                    "ConditionExpression": "attribute_not_exists(pk)",
                }
            },
            {
                "Put": {
                    "TableName": table,
                    "Item": new_wallet_item(org_id, now),
                    "ConditionExpression": "attribute_not_exists(pk)",
                }
            },
        ]
    )
    return Org(org_id=org_id, name=name, email=email, created_at=created)


def get_org(org_id: str) -> Org:
    item = client().get_item(TableName=settings().billing_table, Key=_org_key(org_id)).get("Item")
    if not item:
        raise NotFound(f"No org '{org_id}'.")
    card = None
    if "card_pm" in item:
        card = Card(
            payment_method_id=as_str(item, "card_pm"),
            brand=as_str(item, "card_brand"),
            last4=as_str(item, "card_last4"),
            exp_month=as_int(item, "card_exp_month"),
            exp_year=as_int(item, "card_exp_year"),
        )
    return Org(
        org_id=org_id,
        name=as_str(item, "name"),
        email=as_str(item, "email"),
        created_at=as_str(item, "created_at"),
        stripe_customer_id=as_str(item, "stripe_customer_id") or None,
        card=card,
        subscription=(
            Subscription(
                subscription_id=as_str(item, "sub_id"),
                item_id=as_str(item, "sub_item_id"),
                plan=as_str(item, "sub_plan"),
                status=as_str(item, "sub_status"),
                current_period_end=as_int(item, "sub_period_end"),
                last_payment_failed=bool(item.get("sub_payment_failed", {}).get("BOOL", False)),
            )
            if "sub_id" in item
            else None
        ),
        po_number=as_str(item, "po_number") or None,
        net_terms_days=as_int(item, "net_terms_days", 30),
    )


# ------------------------------------------------------------------ the operator's org directory
#
# Org items carry `directory` (always "org") and `email_lc`, so the sparse GSI `by_org_directory`
# (hash: directory, range: email_lc) lists every org and nothing else, in email order. An email
# search is a key condition (begins_with on email_lc): it reads only the matching entries. A name
# search is a filter (contains on name_lc) over that index: it reads the directory, which holds
# only org entries of ~150 bytes (about 27 per read unit, eventually consistent), and never the
# ledger or usage items a table Scan would. One hash value puts every org in one index
# partition; org creation is far below its 1,000 writes a second.
DIRECTORY_INDEX = "by_org_directory"
_MAX_READ_PER_PAGE = 2000  # index entries one search call may read before it hands back a cursor


def directory_attributes(name: str, email: str) -> Item:
    return {"directory": s("org"), "email_lc": s(email.lower()), "name_lc": s(name.lower())}


@dataclass(frozen=True)
class OrgSummary:
    org_id: str
    name: str
    email: str
    created_at: str


def search_orgs(
    email_prefix: str | None, name_part: str | None, limit: int, start: Item | None
) -> tuple[list[OrgSummary], Item | None]:
    """Orgs whose email starts with `email_prefix` and whose name contains `name_part` (both
    case-insensitive, either optional), in email order. Returns the page and the key to start
    the next one from (None at the end)."""
    kwargs: dict[str, Any] = {
        "TableName": settings().billing_table,
        "IndexName": DIRECTORY_INDEX,
        "KeyConditionExpression": "directory = :d"
        + (" AND begins_with(email_lc, :e)" if email_prefix else ""),
        "ExpressionAttributeValues": {
            ":d": s("org"),
            **({":e": s(email_prefix.lower())} if email_prefix else {}),
            **({":n": s(name_part.lower())} if name_part else {}),
        },
        **({"FilterExpression": "contains(name_lc, :n)"} if name_part else {}),
    }
    found: list[OrgSummary] = []
    read = 0
    last_key: Item | None = start
    while True:
        if last_key:
            kwargs["ExclusiveStartKey"] = last_key
        kwargs["Limit"] = min(limit - len(found), 200) if not name_part else 200
        page = client().query(**kwargs)
        read += int(page.get("ScannedCount", 0))
        for item in page.get("Items", []):
            found.append(
                OrgSummary(
                    as_str(item, "org_id"),
                    as_str(item, "name"),
                    as_str(item, "email"),
                    as_str(item, "created_at"),
                )
            )
            last_key = {k: item[k] for k in ("pk", "sk", "directory", "email_lc")}
            if len(found) == limit:  # (if it was the very last org, the next page is empty)
                return found, last_key
        if "LastEvaluatedKey" not in page:
            return found, None
        last_key = page["LastEvaluatedKey"]
        if read >= _MAX_READ_PER_PAGE:  # a rare name: hand back what was found, and where to go on
            return found, last_key


def _org_key(org_id: str) -> Item:
    return schema.org_key(org_id, schema.PROFILE)


def attach_stripe_customer(org_id: str, customer_id: str) -> str:
    """Remember the org's Stripe customer; if one was attached first, keep (and return) that one."""
    refused = write_if(
        client().update_item,
        TableName=settings().billing_table,
        Key=_org_key(org_id),
        UpdateExpression="SET stripe_customer_id = :c",
        ConditionExpression="attribute_exists(pk) AND attribute_not_exists(stripe_customer_id)",
        ExpressionAttributeValues={":c": s(customer_id)},
        ReturnValuesOnConditionCheckFailure="ALL_OLD",
    )
    if refused:
        if not refused.old:
            raise NotFound(f"No org '{org_id}'.")
        return as_str(refused.old, "stripe_customer_id")
    return customer_id


def save_card(org_id: str, card: Card) -> None:
    """The card auto-reload charges (the one saved by the latest top-up)."""
    client().update_item(
        TableName=settings().billing_table,
        Key=_org_key(org_id),
        UpdateExpression=(
            "SET card_pm = :pm, card_brand = :brand, card_last4 = :last4, "
            "card_exp_month = :m, card_exp_year = :y"
        ),
        ConditionExpression="attribute_exists(pk)",
        ExpressionAttributeValues={
            ":pm": s(card.payment_method_id),
            ":brand": s(card.brand),
            ":last4": s(card.last4),
            ":m": n(card.exp_month),
            ":y": n(card.exp_year),
        },
    )


def save_subscription(org_id: str, sub: Subscription) -> None:
    client().update_item(
        TableName=settings().billing_table,
        Key=_org_key(org_id),
        UpdateExpression=(
            "SET sub_id = :id, sub_item_id = :item, sub_plan = :plan, sub_status = :status, "
            "sub_period_end = :end, sub_payment_failed = :failed"
        ),
        ConditionExpression="attribute_exists(pk)",
        ExpressionAttributeValues={
            ":id": s(sub.subscription_id),
            ":item": s(sub.item_id),
            ":plan": s(sub.plan),
            ":status": s(sub.status),
            ":end": n(sub.current_period_end),
            ":failed": {"BOOL": sub.last_payment_failed},
        },
    )


def mark_subscription_payment(org_id: str, subscription_id: str, failed: bool) -> None:
    """Note whether the latest charge of this subscription failed (shown in billing)."""
    write_if(  # (refused: no longer the org's subscription)
        client().update_item,
        TableName=settings().billing_table,
        Key=_org_key(org_id),
        UpdateExpression="SET sub_payment_failed = :failed",
        ConditionExpression="sub_id = :id",
        ExpressionAttributeValues={":failed": {"BOOL": failed}, ":id": s(subscription_id)},
    )


def forget_subscription(org_id: str, subscription_id: str) -> None:
    """Drop the subscription once Stripe says it ended (only if it is still the org's)."""
    write_if(  # (refused: another subscription replaced it)
        client().update_item,
        TableName=settings().billing_table,
        Key=_org_key(org_id),
        UpdateExpression=(
            "REMOVE sub_id, sub_item_id, sub_plan, sub_status, sub_period_end, sub_payment_failed"
        ),
        ConditionExpression="sub_id = :id",
        ExpressionAttributeValues={":id": s(subscription_id)},
    )


def set_invoice_terms(org_id: str, po_number: str | None, net_terms_days: int) -> None:
    update = "SET net_terms_days = :days" + (", po_number = :po" if po_number else " REMOVE po_number")
    values: dict[str, Any] = {":days": n(net_terms_days)}
    if po_number:
        values[":po"] = s(po_number)
    client().update_item(
        TableName=settings().billing_table,
        Key=_org_key(org_id),
        UpdateExpression=update,
        ConditionExpression="attribute_exists(pk)",
        ExpressionAttributeValues=values,
    )
