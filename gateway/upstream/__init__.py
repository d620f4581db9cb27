"""The new API as the gateway calls it: the client with its timeouts, bounded decoding, pool
gate and retry budget (client.py), the pure mapping of its JSON to the old contract's shapes
(mapping.py), one answer's caps and sliced mapping (answers.py), per-target circuit breakers
(breaker.py) and per-LPU call slots (slots.py). Imports the contract, config and observability
only."""
