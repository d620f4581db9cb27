"""The narrow interface every session store implements, and the two ways a store can refuse.

Imports only the session record (gateway.store.session).
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Protocol

from gateway.store.session import Session


class StoreFull(Exception):
    """The store holds its maximum number of live sessions; nothing is evicted to make room."""


class StoreUnavailable(Exception):
    """The store cannot be reached (a shared store that is down or slow)."""


class SessionStore(Protocol):
    """Every method may raise StoreUnavailable.

    Leases: the replica running a session's fan-out holds the session's lease and renews it;
    a lease not renewed for `lease_ttl` lapses, and the session then loads as `orphaned`.
    Each store instance is one replica (its own lease owner).
    """

    async def create(self, session: Session) -> None:
        """Stores a new session, with its lease held by this replica. Raises StoreFull."""

    async def load(self, guid: str) -> Session | None:
        """The session, or None if unknown or expired. Raises StoreUnavailable."""

    async def finish_lpu(self, guid: str, index: int, entry: bytes) -> bool:
        """Records LPU `index` as terminal. Only the first write wins (states never go back);
        returns whether this one did."""

    async def acquire_lease(self, guid: str) -> bool:
        """Takes the lease of a session nobody holds; False if any replica (this one included)
        holds it. Atomic: of replicas racing for one lease, exactly one gets it."""

    async def renew_leases(self, guids: Collection[str]) -> set[str]:
        """Extends this replica's leases; returns the guids whose lease it no longer holds."""

    async def release_lease(self, guid: str) -> None:
        """Gives up this replica's lease (a lease held by another replica is left alone)."""

    async def ready(self) -> bool:
        """Whether the store can serve now (for /readyz)."""

    async def close(self) -> None: ...
