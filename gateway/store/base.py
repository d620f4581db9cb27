"""The narrow interface every session store implements, the per-token quota it enforces, and the
ways a store can refuse.

Imports only the session record (gateway.store.session) and the config.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from typing import Protocol

from gateway.config import LimitsConfig, SessionConfig
from gateway.store.session import Session


class StoreFull(Exception):
    """The store holds its maximum number of live sessions, or has no memory left for another
    (Redis at maxmemory); nothing is evicted to make room."""


class StoreUnavailable(Exception):
    """The store cannot be reached (a shared store that is down or slow)."""


class StoreRefused(StoreUnavailable):
    """The store answered but refused this one call (Redis out of memory, or an error about this
    call only). The store is up for every other call: the caller fails or retries this one."""


# Why a token's create is refused; each is a `gateway_rejected_requests_total{limit}` value.
LIVE_SESSIONS_PER_TOKEN = "live_sessions_per_token"
CREATE_RATE_PER_TOKEN = "create_rate_per_token"


class TokenLimited(Exception):
    """A token's create is refused by its quota; `retry_after` is the whole seconds until a
    create of that token would be admitted."""

    def __init__(self, limit: str, retry_after: int) -> None:
        super().__init__(limit)
        self.limit = limit
        self.retry_after = max(1, retry_after)


@dataclass(frozen=True)
class TokenQuota:
    """What one token may hold and start, counted by the store (so across replicas on Redis):
    `live` sessions for their TTL, and creates at `rate` per second with a `burst`."""

    live: int
    rate: float
    burst: int

    @classmethod
    def of(cls, session: SessionConfig, limits: LimitsConfig) -> TokenQuota:
        # One token never holds more than its share of the store, whatever live_sessions_per_token says.
        share = max(1, int(session.max_sessions * limits.token_share))
        live = min(limits.live_sessions_per_token, share)
        return cls(live, limits.create_rate_per_token, limits.create_burst_per_token)


@dataclass(frozen=True)
class PollRead:
    """A poll's read of a session. `counted`: the store counted the poll against the session's
    poll limit itself (shared across replicas), and `retry_after` is set when it was over it."""

    session: Session | None
    counted: bool = False
    retry_after: int | None = None


class SessionStore(Protocol):
    """Every method may raise StoreUnavailable.

    Leases: the replica running a session's fan-out holds the session's lease and renews it;
    a lease not renewed for `lease_ttl` lapses, and the session then loads as `orphaned`.
    Each store instance is one replica (its own lease owner).
    """

    async def admit(self, token_key: str) -> None:
        """Spends one create of this token's rate; raises TokenLimited when its rate is spent or
        it holds its quota of live sessions. Called before any upstream call."""

    async def create(self, session: Session, *, count_token: bool = True) -> None:
        """Stores a new session, with its lease held by this replica. Raises StoreFull, and
        TokenLimited when `count_token` and the session's token holds its quota of live sessions."""

    async def load(self, guid: str) -> Session | None:
        """The session, or None if unknown or expired. Raises StoreUnavailable."""

    async def read_poll(self, guid: str, binding: str | None) -> PollRead:
        """`load` for a poll. A store that counts polls counts this one when the session exists and
        `binding` is None (a poll without credentials) or the session's token hash."""

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
