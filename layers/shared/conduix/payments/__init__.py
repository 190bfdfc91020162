"""Money in through Stripe: the SDK behind one gateway (stripe_gateway, stripe_billing), the
org's customer, Checkout top-ups, the signed webhook and its log, auto-reload, subscriptions
and monthly NET-terms invoices. The only package that imports `stripe`."""
