"""The local stand-in of Stripe: localstripe bound to 127.0.0.1, with what it lacks added
beside it, so the official SDK (`stripe.StripeClient(api_key, base_addresses={"api": url})`)
works for everything Conduix asks of Stripe. Never deployed.

    with LocalStripe() as stripe_local:
        stripe_local.register_webhook("http://127.0.0.1:3000/webhooks/stripe", "whsec_...")
        client = stripe_local.client()

Served by localstripe itself: products, coupons, tax rates, tokens, balance; its store (kept in
memory only: the pickle in /tmp is disabled) and its Customer objects. Served here: customers'
routes, payment methods, payment intents, charges, refunds, disputes, prices, Checkout Sessions
with a local hosted payment page (/pay/<id>), invoices with hosted pages and PDFs
(/invoices/<id>, /invoices/<id>.pdf), invoice items, subscriptions, events, idempotency keys,
signed webhooks, and test hooks: POST /_local/disputes, POST /_local/subscriptions/<id>/cycle,
GET and POST /_local/clock (a test clock: `LocalStripe.advance_to(datetime)` or the module's
`advance_to`, which renews subscriptions and advances invoices as Stripe's test clocks do).

Parameters Stripe knows but this stand-in does not act on are accepted where listed (e.g. a
Checkout Session's locale or automatic_tax) and unknown ones are refused as Stripe refuses them.
"""

from __future__ import annotations

from .server import API_KEY, LocalStripe, advance_to, main

__all__ = ["API_KEY", "LocalStripe", "advance_to", "main"]
