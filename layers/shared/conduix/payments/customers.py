"""The org's Stripe customer: the one Stripe object every payment of the org hangs from."""

from __future__ import annotations

from conduix.accounts import orgs
from conduix.payments import stripe_gateway


def customer_of(org: orgs.Org) -> str:
    """The org's Stripe customer, created on first need (the first one attached wins a race)."""
    if org.stripe_customer_id:
        return org.stripe_customer_id
    return orgs.attach_stripe_customer(
        org.org_id, stripe_gateway.create_customer(org.org_id, org.name, org.email)
    )
