"""Conduix billing & credits: the shared package every Lambda function imports.

Its subpackages are its layers, each importing only those below it (import contracts in
pyproject.toml check it): api and audit; payments and inference (neither sees the other);
accounts; ledger; pricing, store and web; core. Errors carry no HTTP; `web.responses` maps
them to OpenAI-style responses in one place.
"""
