"""The billed path: the OpenAI wire format (chat), upstream providers and their connections,
the response cache, idempotent answers, a chat completion (completion, streaming) and an
embedding from hold to settle, and the sweeper that settles or frees what a request left.
It never imports `payments`, so Completion's cold start never loads Stripe."""
