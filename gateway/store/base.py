"""The session store: what a session is, and the narrow interface every store implements.

A session is written once at creation (its LPUs, serialized once) and then only gains terminal
per-LPU results, each written at most once. Results are stored as the finished JSON of their
TicketLists element, so a poll joins bytes and serializes nothing.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Protocol

IN_PROGRESS = "InProgress"
COMPLETE = "Complete"
FAILED = "Failed"

_EMPTY_TAIL = b',"visits":[],"calls":[],"disps":[]}'


class StoreFull(Exception):
    """The store holds its maximum number of live sessions; nothing is evicted to make room."""


class StoreUnavailable(Exception):
    """The store cannot be reached (a shared store that is down or slow)."""


def token_hash(token: str) -> str:
    """What binds a session to its token; the token itself is never stored or logged."""
    return hashlib.sha256(b"visit-gateway/session-token\0" + token.encode()).hexdigest()


def same_token(stored_hash: str, token: str) -> bool:
    return hmac.compare_digest(stored_hash, token_hash(token))


def entry_bytes(state: str, lpu: bytes, visits: bytes = b"[]", calls: bytes = b"[]", disps: bytes = b"[]") -> bytes:
    """One TicketLists element from already-serialized parts."""
    return b"".join(
        (
            b'{"state":"',
            state.encode(),
            b'","lpu":',
            lpu,
            b',"visits":',
            visits,
            b',"calls":',
            calls,
            b',"disps":',
            disps,
            b"}",
        )
    )


def in_progress_entry(lpu: bytes) -> bytes:
    return b'{"state":"InProgress","lpu":' + lpu + _EMPTY_TAIL


def failed_entry(lpu: bytes) -> bytes:
    return b'{"state":"Failed","lpu":' + lpu + _EMPTY_TAIL


def entry_state(entry: bytes) -> str:
    return COMPLETE if entry.startswith(b'{"state":"Complete"') else FAILED


@dataclass
class Session:
    """A session as a store holds it. `results` maps LPU index → terminal entry bytes.

    `orphaned` is set by `load`: no replica held the session's lease when it was read, so no
    fan-out is running for it (see the README, "Replicas and Redis").
    """

    guid: str
    token_hash: str
    created_at: float
    deadline: float
    lpus: tuple[bytes, ...]
    lpu_guids: tuple[str, ...]
    results: dict[int, bytes] = field(default_factory=dict)
    orphaned: bool = field(default=False, compare=False)

    def is_final(self, now: float) -> bool:
        return len(self.results) == len(self.lpus) or now >= self.deadline

    def unfinished(self) -> list[int]:
        return [i for i in range(len(self.lpus)) if i not in self.results]

    def states(self, now: float) -> list[str]:
        late = now >= self.deadline
        return [
            entry_state(self.results[i]) if i in self.results else (FAILED if late else IN_PROGRESS)
            for i in range(len(self.lpus))
        ]

    def body(self, now: float) -> bytes:
        """The poll response. An LPU unfinished at the deadline reads as Failed even if the
        replica that ran it died, so no reader ever sees InProgress past the deadline.

        Nothing is serialized here: each entry was serialized once, when its LPU finished, and a
        poll only joins them. The joined body is not kept: a copy per session would double the
        memory of every cached session to save a join of a few KiB (docs/benchmarks.md)."""
        unfinished = failed_entry if now >= self.deadline else in_progress_entry
        return b"[" + b",".join([self.results.get(i) or unfinished(lpu) for i, lpu in enumerate(self.lpus)]) + b"]"


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
