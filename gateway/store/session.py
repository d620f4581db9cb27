"""A session as every store holds it: written once at creation (its LPUs, serialized once),
then only gaining terminal per-LPU results, each written at most once. Results are kept as the
finished JSON of their TicketLists element, so a poll joins bytes and serializes nothing.

Imports only the contract's words.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from gateway.contract import COMPLETE, FAILED, IN_PROGRESS

_EMPTY_TAIL = b',"visits":[],"calls":[],"disps":[]}'


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


def is_complete(entry: bytes) -> bool:
    return entry.startswith(b'{"state":"Complete"')


def entry_state(entry: bytes) -> str:
    return COMPLETE if is_complete(entry) else FAILED


@dataclass
class Session:
    """A session as a store holds it. `results` maps LPU index → terminal entry bytes.

    `orphaned` is set by `load`: no replica held the session's lease when it was read, so no
    fan-out is running for it (see docs/replicas.md).

    `read_at` is set by `load`: the store's clock (unix seconds) when it read the session. It is
    the `now` a poll renders with, because it is the clock `finish_lpu` judges lateness by: a
    reader that rendered an LPU Failed (read_at >= deadline) can never see a Complete written
    after it (docs/upstream-isolation.md, "Terminal states").
    """

    guid: str
    token_hash: str
    created_at: float
    deadline: float
    lpus: tuple[bytes, ...]
    lpu_guids: tuple[str, ...]
    results: dict[int, bytes] = field(default_factory=dict)
    orphaned: bool = field(default=False, compare=False)
    read_at: float = field(default=0.0, compare=False)

    def is_final(self, now: float) -> bool:
        return len(self.results) == len(self.lpus) or now >= self.deadline

    def unfinished(self) -> list[int]:
        return [i for i in range(len(self.lpus)) if i not in self.results]

    def failed(self, now: float) -> int:
        """How many LPUs read as Failed at `now`, from each result's state prefix (the entry the
        store wrote), without parsing anything: the guardrails' `failed_lpu_ratio` counts it."""
        failed = sum(1 for entry in self.results.values() if not is_complete(entry))
        return failed + (len(self.lpus) - len(self.results) if now >= self.deadline else 0)

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
