"""Where sessions live: the record (session.py), the interface and its refusals (base.py), the
in-process store (memory.py, cachetools) for one replica and the shared store (redis.py) for
many. Imports the contract, config and observability only."""
