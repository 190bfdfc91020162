"""Where money moves: the wallet item and its identities (wallets), its flags and settings
(wallet_settings), the append-only entries (entries), holds, per-key limits, usage counters
(metering), settles, escrow leases for hot orgs, upkeep outside a request, and the ledger read
back as statements. Data access over `store`; every movement carries an idempotency key."""
