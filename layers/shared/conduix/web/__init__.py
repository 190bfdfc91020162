"""HTTP at the edge, with no domain in it: the one map from domain errors to OpenAI-style
responses and API Gateway events in and out (responses), the Lambda Runtime API client that
streams Completion's answers (runtime), and the dashboard's static pages (dashboard)."""
