"""The ground every other package stands on: exact amounts and the one rounding rule (money),
time (clock), domain errors without HTTP (errors), the environment read in one place (config),
the client input checks every route shares (validation), and what operators watch (telemetry).
It imports nothing else of conduix."""
