"""The reuse window: sessions created with the same token within `session.reuse_window`
seconds share one fan-out.

An app opens its visits screen several times a minute and every open creates a session; without
reuse each one costs the upstream a full fan-out (the MKAB list and three calls per LPU). With
it, the first create of a token starts the fan-out and every create of the same token within the
window gets a new session GUID holding the same results: copied from the shared session when
they are already in, written to it by the shared fan-out as they arrive otherwise. A create
that arrives while the token's first one is still fetching the LPU list waits for it and shares
its fan-out (gateway/sessions/service.py).

A fresh fetch is forced when:
- the window is off (0) or has passed since the shared fan-out started;
- the shared fan-out has a Failed LPU (an app that re-opens after a failure gets a retry);
- the shared session is no longer in the store (expired, or the store lost it);
- the token differs (the key is the token's hash: sessions are never shared between tokens).

The index is this replica's own (a fan-out runs where it was started); with several replicas a
token's creates are shared only when they reach the same replica.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field


@dataclass
class SharedFanout:
    """A fan-out that later sessions of the same token may share."""

    guid: str
    started: float  # monotonic
    failed: bool = False
    running: bool = True
    # Sessions that receive each LPU result of this fan-out as it is written.
    subscribers: list[str] = field(default_factory=list)

    def finished(self) -> None:
        self.running = False
        self.subscribers = []


class ReuseIndex:
    """Token hash → the latest fan-out started for it within the window, at most `limit` of them."""

    def __init__(self, window: float, limit: int) -> None:
        self.window = window
        self._limit = limit
        self._entries: OrderedDict[str, SharedFanout] = OrderedDict()

    def _prune(self, now: float) -> None:
        # Entries are kept in start order, so the expired ones are at the front.
        while self._entries:
            oldest = next(iter(self._entries.values()))
            if now - oldest.started < self.window and len(self._entries) <= self._limit:
                break
            self._entries.popitem(last=False)

    def find(self, key: str, now: float) -> SharedFanout | None:
        """The fan-out a new session of this token may share, or None: fetch afresh."""
        self._prune(now)
        shared = self._entries.get(key)
        if shared is None or shared.failed:
            return None
        return shared

    def add(self, key: str, guid: str, now: float) -> SharedFanout:
        shared = SharedFanout(guid, now)
        self._entries.pop(key, None)
        self._entries[key] = shared
        self._prune(now)
        return shared

    def __len__(self) -> int:
        return len(self._entries)
