"""Conduix billing & credits: the shared package every Lambda function imports.

Modules name the domain: money (exact amounts), catalog and pricing (what a model costs),
wallets (holds, settles, grants: the money data access), orgs (orgs and API keys), auth,
providers (upstream calls), cache, completion (the billed request), billing, admin, sweeper.
Errors carry no HTTP; `web` maps them to OpenAI-style responses in one place.
"""
