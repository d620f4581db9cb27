"""Where sessions live: the record (session.py), the interface and its refusals (base.py), the
in-process store (memory.py, cachetools) for one replica and the shared store (redis.py, its Lua
scripts in redis_scripts.py) for many. redis_client.py builds every Redis client of the gateway
(the store's, the guardrail board's, the migration ledger's) and tracks whether Redis answers.
Imports the contract, config and observability only."""
