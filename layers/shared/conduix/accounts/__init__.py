"""The org and what belongs to it beyond its money: the org profile and subscription state
(orgs), its API keys (keys; their items in key_records), who is calling (auth), billing emails
(notices), balance and cap alerts (alerts), and credit grants that expire (grants). Built on
`ledger`."""
