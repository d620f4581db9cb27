"""The reuse window: sessions created with the same token within `session.reuse_window`
seconds share one fan-out.

An app opens its visits screen several times a minute and every open creates a session; without
reuse each one costs the upstream a full fan-out (the MKAB list and three calls per LPU). With
it, the first create of a token starts the fan-out and every create of the same token within the
window gets a new session GUID holding the same results: copied from the shared session when
they are already in, written to it by the shared run as they arrive otherwise (the new session is
that run's target, `Run.add_target`). A create
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

from gateway.sessions.fanout import Run


class ReuseIndex:
    """Token hash → the latest run started for it within the window, at most `limit` of them.

    A session that shares a run becomes its target (`Run.add_target`, from
    gateway/sessions/service.py); the index only says which run a token may share."""

    def __init__(self, window: float, limit: int) -> None:
        self.window = window
        self._limit = limit
        # Token hash → (when the run started, monotonic; the run), in start order.
        self._entries: OrderedDict[str, tuple[float, Run]] = OrderedDict()

    def _prune(self, now: float) -> None:
        # Entries are kept in start order, so the expired ones are at the front.
        while self._entries:
            started, _ = next(iter(self._entries.values()))
            if now - started < self.window and len(self._entries) <= self._limit:
                break
            self._entries.popitem(last=False)

    def find(self, key: str, now: float) -> Run | None:
        """The run a new session of this token may share, or None: fetch afresh."""
        self._prune(now)
        entry = self._entries.get(key)
        if entry is None or entry[1].failed:
            return None
        return entry[1]

    def add(self, key: str, run: Run, now: float) -> None:
        self._entries.pop(key, None)
        self._entries[key] = (now, run)
        self._prune(now)

    def forget(self, key: str, run: Run) -> None:
        """`run` cannot be shared (its session is gone or has a Failed LPU): later creates of
        this token fetch afresh, unless a newer run is already indexed for it."""
        entry = self._entries.get(key)
        if entry is not None and entry[1] is run:
            del self._entries[key]

    def __len__(self) -> int:
        return len(self._entries)
