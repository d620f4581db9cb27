"""Shadow mode: the client is served by the legacy service; in the background the gateway runs
its own session for the same token and, once both are final, compares them (gateway.rollout.compare).

Each compare is a task the app owns (cancelled on shutdown), started only after the client's
answer is in hand and never awaited by a request. At most `rollout.shadow_max_concurrent` run
at once: a shadow session beyond that is served exactly the same but not compared. The whole
compare, both sides included, is bounded by `rollout.shadow_timeout`.

The legacy side's final answer is taken from the client's own polls when they pass through
this replica; when none has come within `shadow_poll_interval`, the compare polls the legacy
service itself (with the client's headers), once per interval.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import structlog

from gateway.config import RolloutConfig
from gateway.contract import IN_PROGRESS, POLL_PREFIX, GatewayError
from gateway.observability.metrics import Metrics
from gateway.rollout.compare import REASONS, compare_sessions
from gateway.rollout.legacy import Legacy, LegacyAnswer, LegacyFailure
from gateway.store.base import SessionStore, StoreFull, StoreUnavailable
from gateway.tasks import Tasks
from gateway.upstream.client import Caller

log = structlog.get_logger("gateway.shadow")

GROUP = "shadow_compare"
# Opens a session for (token, caller) and returns its GUID.
OpenSession = Callable[[str, Caller], Awaitable[str]]

INCOMPLETE_REASONS = (
    "over_capacity",  # the concurrency cap was reached; not compared
    "candidate_failed",  # the gateway could not open its session (MKAB list failed, store full)
    "candidate_timeout",  # the gateway's session was not final within shadow_timeout
    "legacy_timeout",  # the legacy session was not final within shadow_timeout
    "legacy_unavailable",  # the legacy service did not answer, or answered 5xx
    "legacy_error",  # the legacy service answered 4xx (e.g. the session expired there)
    "legacy_invalid",  # the legacy answer was not a TicketLists array
    "store_unavailable",
)


class _Incomplete(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def final_entries(body: bytes) -> list[Any] | None:
    """The parsed answer if it is a TicketLists array with no LPU InProgress, else None."""
    try:
        entries = json.loads(body)
    except (ValueError, RecursionError):
        raise _Incomplete("legacy_invalid") from None
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise _Incomplete("legacy_invalid")
    return None if any(e.get("state") == IN_PROGRESS for e in entries) else entries


@dataclass
class _Watch:
    """A legacy session being compared: the client's polls fill `answer` when it is final."""

    arrived: asyncio.Event = field(default_factory=asyncio.Event)
    answer: list[Any] | None = None


class Shadow:
    def __init__(
        self,
        config: RolloutConfig,
        open_session: OpenSession,
        store: SessionStore,
        legacy: Legacy,
        metrics: Metrics,
        tasks: Tasks,
    ) -> None:
        self._config = config
        # The session service's create, for sessions no client sees (no admission: they have
        # their own cap, shadow_max_concurrent).
        self._open_session = open_session
        self._store = store
        self._legacy = legacy
        self._metrics = metrics
        self._tasks = tasks
        self._watching: dict[str, _Watch] = {}
        self._samples: deque[dict[str, Any]] = deque(maxlen=config.shadow_max_samples)
        metrics.shadow_results.labels("match", "equal")
        for reason in REASONS:
            metrics.shadow_results.labels("mismatch", reason)
        for reason in INCOMPLETE_REASONS:
            metrics.shadow_results.labels("incomplete", reason)

    @property
    def running(self) -> int:
        return self._tasks.count(GROUP)

    def samples(self) -> list[dict[str, Any]]:
        """The latest mismatches, newest first: paths only, no values, no session GUIDs."""
        return list(reversed(self._samples))

    def begin(self, created: LegacyAnswer, token: str, caller: Caller, legacy_headers: dict[str, str]) -> bool:
        """Starts comparing the session the legacy service just created for this token (its
        answer to the create is `created`); False when there is nothing to compare or no room."""
        if created.status != 200:
            self.not_compared("legacy_unavailable" if created.status >= 500 else "legacy_error")
            return False
        try:
            guid = json.loads(created.body)["session"].lower()
        except (ValueError, TypeError, KeyError, AttributeError):
            self.not_compared("legacy_invalid")
            return False
        if self.running >= self._config.shadow_max_concurrent:
            self.not_compared("over_capacity")
            return False
        watch = self._watching.setdefault(guid, _Watch())
        self._tasks.spawn(self._run(guid, token, caller, legacy_headers, watch), GROUP)
        return True

    def not_compared(self, reason: str) -> None:
        self._count("incomplete", reason)

    def offer(self, legacy_guid: str, status: int, body: bytes) -> None:
        """A legacy answer to a client's poll; taken if it is a final answer for a watched session."""
        watch = self._watching.get(legacy_guid.lower())
        if watch is None or status != 200 or watch.answer is not None:
            return
        try:
            entries = final_entries(body)
        except _Incomplete:
            return
        if entries is not None:
            watch.answer = entries
            watch.arrived.set()

    async def _run(self, guid: str, token: str, caller: Caller, headers: dict[str, str], watch: _Watch) -> None:
        waiting_for = "candidate"
        started = time.monotonic()
        try:
            async with asyncio.timeout(self._config.shadow_timeout):
                candidate = await self._candidate(token, caller)
                del token
                waiting_for = "legacy"
                legacy = await self._legacy_final(guid, headers, watch)
        except TimeoutError:
            self._count("incomplete", f"{waiting_for}_timeout")
            return
        except _Incomplete as incomplete:
            self._count("incomplete", incomplete.reason)
            return
        finally:
            self._watching.pop(guid, None)
        result = compare_sessions(legacy, candidate, self._config.shadow_ignore_fields)
        if result.match:
            self._count("match", "equal")
            return
        self._count("mismatch", result.reason)
        # Field paths only: no values, no token, no session GUID (a GUID alone can read a session).
        log.warning("shadow_mismatch", reason=result.reason, paths=list(result.paths), paths_total=result.total)
        self._samples.append(
            {
                "at": time.time(),
                "reason": result.reason,
                "paths": list(result.paths),
                "paths_total": result.total,
                "lpus": len(legacy),
                "seconds": round(time.monotonic() - started, 3),
            }
        )

    async def _candidate(self, token: str, caller: Caller) -> list[Any]:
        """The gateway's own final answer for the same token, from a session no client sees."""
        try:
            guid = await self._open_session(token, caller)
        except (GatewayError, StoreFull, StoreUnavailable):
            raise _Incomplete("candidate_failed") from None
        while True:
            try:
                session = await self._store.load(guid)
            except StoreUnavailable:
                raise _Incomplete("store_unavailable") from None
            if session is None:
                raise _Incomplete("candidate_failed")
            now = session.read_at  # the store's clock: see Session.read_at
            if session.is_final(now):
                return json.loads(session.body(now))
            await asyncio.sleep(self._config.shadow_poll_interval)

    async def _legacy_final(self, guid: str, headers: dict[str, str], watch: _Watch) -> list[Any]:
        while True:
            try:
                async with asyncio.timeout(self._config.shadow_poll_interval):
                    await watch.arrived.wait()
            except TimeoutError:
                pass
            if watch.answer is not None:
                return watch.answer
            try:
                answer = await self._legacy.call("GET", POLL_PREFIX + guid, headers, route="shadow_poll")
            except LegacyFailure:
                raise _Incomplete("legacy_unavailable") from None
            if answer.status >= 500:
                raise _Incomplete("legacy_unavailable")
            if answer.status != 200:
                raise _Incomplete("legacy_error")
            entries = final_entries(answer.body)
            if entries is not None:
                return entries

    def _count(self, result: str, reason: str) -> None:
        self._metrics.shadow_results.labels(result, reason).inc()
        if result != "mismatch":
            log.info("shadow_result", result=result, reason=reason)

    async def close(self) -> None:
        """Cancels every running compare and waits for them to end."""
        await self._tasks.cancel(GROUP)
