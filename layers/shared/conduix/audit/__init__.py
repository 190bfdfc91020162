"""Reconciliation: each org's ledger replayed against its wallet (reconcile) and compared with
what Stripe says moved (reconcile_stripe); every finding is a `discrepancy.Discrepancy`."""
