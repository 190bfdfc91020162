"""What the JSON APIs do: the Powertools resolver every API function sets up the same way
(resolver), an org's billing view and settings (billing), the operator's actions (admin), and
the OpenAPI document generated from the routes (openapi). The top of the package."""
