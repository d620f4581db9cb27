"""The session flow: the service's create and poll rules (service.py), the run of a session's
fan-out (fanout.py), this replica's leases (leases.py), the reuse window (reuse.py), admission
and poll-rate limits (limits.py) and the token binding (tokens.py). Imports the store, the
upstream client, the contract and observability; never the HTTP edge or the rollout."""
