"""The new API as the gateway calls it: the client with its timeouts, body cap and retry budget
(client.py), the pure mapping of its JSON to the old contract's shapes (mapping.py), per-target
circuit breakers (breaker.py) and per-LPU call slots (slots.py). Imports the contract, config and
observability only."""
