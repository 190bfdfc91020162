"""`python -m conduix_local.stripe_local`: serve the local Stripe until Ctrl-C."""

from conduix_local.stripe_local import main

main()
