"""DynamoDB: the client, its retries and the one conditional-write helper (dynamo), items as
plain values (items), and every key and key prefix of the billing table (schema). Only the
data-access modules import `store.dynamo`; the rest read the items they get back with `items`."""
