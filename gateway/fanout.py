"""The session flow: open a session from the patient's LPU list, then fetch every LPU's
visits, calls and disps concurrently, writing each LPU's terminal state as soon as it is known.

The fan-out tasks belong to the app: `Fanout.close()` (called from the app's cleanup context,
after in-flight requests have been answered) cancels whatever is still running.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Callable
from typing import Any

import structlog

from gateway.config import SessionConfig
from gateway.errors import GatewayError
from gateway.mapping import MappingError, map_calls, map_disps, map_mkab_list, map_visits
from gateway.metrics import Metrics
from gateway.store.base import (
    COMPLETE,
    Session,
    SessionStore,
    StoreFull,
    StoreUnavailable,
    entry_bytes,
    failed_entry,
    token_hash,
)
from gateway.upstream import Caller, CallFailure, Upstream

log = structlog.get_logger("gateway.fanout")

LPU_METHODS = (("visit", map_visits), ("calldoctor", map_calls), ("disp", map_disps))


def dumps(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()


class _LpuFailed(Exception):
    def __init__(self, method: str, reason: str, detail: str) -> None:
        super().__init__(reason)
        self.method = method
        self.reason = reason
        self.detail = detail


class Fanout:
    def __init__(self, config: SessionConfig, store: SessionStore, upstream: Upstream, metrics: Metrics) -> None:
        self._config = config
        self._store = store
        self._upstream = upstream
        self._metrics = metrics
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def running(self) -> int:
        return len(self._tasks)

    async def open_session(self, token: str, caller: Caller, on_done: Callable[[], None] | None = None) -> str:
        """Creates a session and starts its fan-out; returns the session GUID. `on_done` is
        called once the fan-out has ended (at once for a patient with no LPU).

        Raises GatewayError with the status old-api.md §1 gives for each upstream failure.
        """
        lpus = await self._patient_lpus(caller)
        now = time.time()
        session = Session(
            guid=str(uuid.uuid4()),
            token_hash=token_hash(token),
            created_at=now,
            deadline=now + self._config.deadline,
            lpus=tuple(dumps(lpu) for lpu in lpus),
            lpu_guids=tuple(lpu["guid"] for lpu in lpus),
        )
        try:
            await self._store.create(session)
        except StoreFull:
            raise GatewayError("store_full", retry_after=max(1, int(self._config.deadline))) from None
        except StoreUnavailable:
            raise GatewayError("unavailable", retry_after=1) from None
        self._metrics.sessions_created.inc()
        if lpus:
            self.start(session, caller, range(len(lpus)), on_done)
        elif on_done is not None:
            on_done()
        return session.guid

    async def _patient_lpus(self, caller: Caller) -> list[dict[str, Any]]:
        try:
            raw = await self._upstream.mkab(caller)
            return map_mkab_list(raw)
        except CallFailure as failure:
            log.warning(
                "mkab_failed", method="mkab", reason=failure.reason, status=failure.status, detail=failure.detail
            )
            if failure.reason == "status" and failure.status in (401, 403):
                raise GatewayError("token_rejected") from None
            if failure.reason == "timeout":
                raise GatewayError("upstream_timeout") from None
            raise GatewayError("upstream_failed") from None
        except MappingError as exc:
            log.warning("mkab_failed", method="mkab", reason="invalid_body", path=exc.path, problem=exc.problem)
            raise GatewayError("upstream_failed") from None

    def start(
        self, session: Session, caller: Caller, indices: range | list[int], on_done: Callable[[], None] | None = None
    ) -> None:
        """Runs the given LPUs of a session in a task the app owns."""
        task = asyncio.get_running_loop().create_task(self._run(session, caller, list(indices)))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        if on_done is not None:
            task.add_done_callback(lambda _: on_done())

    async def _run(self, session: Session, caller: Caller, indices: list[int]) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (session.deadline - time.time())
        pending = set(indices)
        self._metrics.sessions_in_flight.inc()
        try:
            async with asyncio.timeout_at(deadline):
                async with asyncio.TaskGroup() as group:
                    for index in indices:
                        group.create_task(self._lpu(session, index, caller, pending))
        except TimeoutError:
            for index in sorted(pending):
                if await self._store.finish_lpu(session.guid, index, failed_entry(session.lpus[index])):
                    self._record_failure(session, index, "session", "deadline", "")
        except StoreUnavailable:
            log.warning("fanout_store_unavailable", session=session.guid)
        finally:
            self._metrics.sessions_in_flight.dec()
        self._metrics.session_complete.observe(time.time() - session.created_at)

    async def _lpu(self, session: Session, index: int, caller: Caller, pending: set[int]) -> None:
        lpu_guid = session.lpu_guids[index]
        try:
            # The first failed call fails the LPU and cancels its two siblings.
            async with asyncio.TaskGroup() as group:
                calls = [
                    group.create_task(self._fetch(method, mapper, lpu_guid, caller)) for method, mapper in LPU_METHODS
                ]
        except ExceptionGroup as group_error:
            first = group_error.exceptions[0]
            if not isinstance(first, _LpuFailed):
                raise
            pending.discard(index)
            if await self._store.finish_lpu(session.guid, index, failed_entry(session.lpus[index])):
                self._record_failure(session, index, first.method, first.reason, first.detail)
            return
        visits, lpu_calls, disps = (task.result() for task in calls)
        pending.discard(index)
        entry = entry_bytes(COMPLETE, session.lpus[index], visits, lpu_calls, disps)
        if await self._store.finish_lpu(session.guid, index, entry):
            self._metrics.lpu_outcomes.labels("complete", "ok").inc()

    async def _fetch(self, method: str, mapper: Any, lpu_guid: str, caller: Caller) -> bytes:
        try:
            return dumps(mapper(await self._upstream.for_lpu(method, lpu_guid, caller)))
        except CallFailure as failure:
            detail = f"status {failure.status}" if failure.status else failure.detail
            raise _LpuFailed(method, failure.reason, detail) from None
        except MappingError as exc:
            raise _LpuFailed(method, "invalid_body", f"{exc.path}: {exc.problem}") from None
        except Exception as exc:  # a bug must fail one LPU, not every LPU of the session
            log.exception("lpu_internal_error", method=method, lpu=lpu_guid)
            raise _LpuFailed(method, "internal", type(exc).__name__) from None

    def _record_failure(self, session: Session, index: int, method: str, reason: str, detail: str) -> None:
        self._metrics.lpu_outcomes.labels("failed", reason).inc()
        # Once per LPU, with no token and nothing from the record bodies: only where and why.
        log.warning(
            "lpu_failed",
            session=session.guid,
            lpu=session.lpu_guids[index],
            method=method,
            reason=reason,
            detail=detail,
            elapsed_s=round(time.time() - session.created_at, 3),
        )

    async def close(self) -> None:
        """Cancels every running fan-out and waits for them to end."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
            log.info("fanout_cancelled", sessions=len(tasks))
