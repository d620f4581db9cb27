"""The session flow: open a session from the patient's LPU list, then fetch every LPU's
visits, calls and disps concurrently, writing each LPU's terminal state as soon as it is known.

The fan-out tasks belong to the app: `Fanout.close()` (called from the app's cleanup context,
after in-flight requests have been answered) cancels whatever is still running.

Each running fan-out holds its session's lease in the store, renewed by one background task, so
that another replica can tell a running session from an orphaned one and finish the latter
(`take_over`; the protocol is in the README, "Replicas and Redis").

Within `session.reuse_window`, creates of one token share the fan-out started for its first
create (gateway/reuse.py): each gets a new session, written through the store like any other.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from typing import Any

import orjson
import structlog

from gateway.config import SessionConfig
from gateway.errors import GatewayError
from gateway.mapping import MappingError, map_calls, map_disps, map_mkab_list, map_visits
from gateway.metrics import Metrics
from gateway.reuse import ReuseIndex, SharedFanout
from gateway.store.base import (
    COMPLETE,
    FAILED,
    Session,
    SessionStore,
    StoreFull,
    StoreUnavailable,
    entry_bytes,
    entry_state,
    failed_entry,
    token_hash,
)
from gateway.upstream import Caller, CallFailure, Upstream

log = structlog.get_logger("gateway.fanout")

LPU_METHODS = (("visit", map_visits), ("calldoctor", map_calls), ("disp", map_disps))


def dumps(value: Any) -> bytes:
    """Compact UTF-8 JSON. orjson: a tenth of the stdlib's time on the fan-out's records
    (docs/benchmarks.md). Its result holds a buffer of at least 4 KiB whatever its length:
    fine for what is joined into an entry and dropped, not for what a session keeps."""
    return orjson.dumps(value)


def dumps_kept(value: Any) -> bytes:
    """`dumps` for bytes a session keeps for its lifetime: an exact-size copy."""
    return bytes(memoryview(orjson.dumps(value)))


class _LpuFailed(Exception):
    def __init__(self, method: str, reason: str, detail: str, duration: float) -> None:
        super().__init__(reason)
        self.method = method
        self.reason = reason
        self.detail = detail
        self.duration = duration  # of the failed call, retries included


class Fanout:
    def __init__(
        self,
        config: SessionConfig,
        store: SessionStore,
        upstream: Upstream,
        metrics: Metrics,
        lease_ttl: float = 3.0,
    ) -> None:
        self._config = config
        self._store = store
        self._upstream = upstream
        self._metrics = metrics
        self._lease_ttl = lease_ttl
        self._tasks: set[asyncio.Task[None]] = set()
        # Session guid → the task running its fan-out here, whose lease the keeper renews.
        self._leased: dict[str, asyncio.Task[None]] = {}
        # Sessions sharing a fan-out running here → that fan-out's task: their leases are renewed
        # while it runs, but losing one never stops it (it is another session's fan-out).
        self._shared_leases: dict[str, asyncio.Task[None]] = {}
        self._keeper: asyncio.Task[None] | None = None
        self._lpu_complete = metrics.lpu_outcomes.labels("complete", "ok")
        self._reuse = ReuseIndex(config.reuse_window, config.max_sessions) if config.reuse_window > 0 else None

    @property
    def running(self) -> int:
        return len(self._tasks)

    async def open_session(self, token: str, caller: Caller, on_done: Callable[[], None] | None = None) -> str:
        """Creates a session and starts its fan-out; returns the session GUID. `on_done` is
        called once the fan-out has ended (at once for a patient with no LPU).

        Raises GatewayError with the status old-api.md §1 gives for each upstream failure.
        """
        if not await self._store.ready():
            # Before the upstream call: with the store down the session could not be kept anyway.
            raise GatewayError("unavailable", retry_after=1)
        key = token_hash(token)
        if self._reuse is not None:
            shared = self._reuse.find(key, time.monotonic())
            if shared is not None and (guid := await self._share(shared)) is not None:
                if on_done is not None:
                    on_done()  # no fan-out of its own
                return guid
        lpus = await self._patient_lpus(caller)
        now = time.time()
        session = Session(
            guid=str(uuid.uuid4()),
            token_hash=key,
            created_at=now,
            deadline=now + self._config.deadline,
            lpus=tuple(dumps_kept(lpu) for lpu in lpus),
            lpu_guids=tuple(lpu["guid"] for lpu in lpus),
        )
        await self._create(session)
        shared = self._reuse.add(key, session.guid, time.monotonic()) if self._reuse is not None else None
        if lpus:
            self.start(session, caller, range(len(lpus)), on_done, shared)
        else:
            if shared is not None:
                shared.finished()
            if on_done is not None:
                on_done()
        return session.guid

    async def _create(self, session: Session) -> None:
        try:
            await self._store.create(session)
        except StoreFull:
            raise GatewayError("store_full", retry_after=max(1, int(self._config.deadline))) from None
        except StoreUnavailable:
            raise GatewayError("unavailable", retry_after=1) from None
        self._metrics.sessions_created.inc()

    async def _share(self, shared: SharedFanout) -> str | None:
        """A new session with the shared fan-out's results (see gateway/reuse.py), or None when
        that fan-out cannot be shared (gone from the store, or an LPU Failed)."""
        try:
            source = await self._store.load(shared.guid)
        except StoreUnavailable:
            raise GatewayError("unavailable", retry_after=1) from None
        now = time.time()
        if source is None or FAILED in source.states(now):
            shared.failed = True
            return None
        session = Session(
            guid=str(uuid.uuid4()),
            token_hash=source.token_hash,
            created_at=now,
            deadline=source.deadline,
            lpus=source.lpus,
            lpu_guids=source.lpu_guids,
        )
        await self._create(session)
        try:
            running = self._leased.get(shared.guid)
            if shared.running and running is not None:
                # From here on the fan-out writes every result to this session too (and the
                # keeper renews its lease); what it wrote while this one was being created is in
                # the source (no await separates the two).
                shared.subscribers.append(session.guid)
                self._shared_leases[session.guid] = running
                source = await self._store.load(shared.guid) or source
            # Results go through finish_lpu, as any store stores them (a duplicate is a no-op).
            for index, entry in source.results.items():
                await self._store.finish_lpu(session.guid, index, entry)
        except StoreUnavailable:
            # The session exists; what it lacks reads as Failed at the deadline, as for any
            # fan-out that lost the store (a poll with the token may re-run it: take_over).
            log.warning("reuse_store_unavailable", session=session.guid)
        self._metrics.sessions_reused.inc()
        log.info("session_reused", session=session.guid, shared=shared.guid)
        return session.guid

    async def _patient_lpus(self, caller: Caller) -> list[dict[str, Any]]:
        started = time.perf_counter()
        try:
            raw = await self._upstream.mkab(caller)
            return map_mkab_list(raw)
        except CallFailure as failure:
            log.warning(
                "mkab_failed",
                method="mkab",
                reason=failure.reason,
                status=failure.status,
                detail=failure.detail,
                duration_s=round(time.perf_counter() - started, 3),
            )
            if failure.reason == "status" and failure.status in (401, 403):
                raise GatewayError("token_rejected") from None
            if failure.reason == "timeout":
                raise GatewayError("upstream_timeout") from None
            raise GatewayError("upstream_failed") from None
        except MappingError as exc:
            log.warning(
                "mkab_failed",
                method="mkab",
                reason="invalid_body",
                path=exc.path,
                problem=exc.problem,
                duration_s=round(time.perf_counter() - started, 3),
            )
            raise GatewayError("upstream_failed") from None

    def start(
        self,
        session: Session,
        caller: Caller,
        indices: range | list[int],
        on_done: Callable[[], None] | None = None,
        shared: SharedFanout | None = None,
    ) -> None:
        """Runs the given LPUs of a session in a task the app owns. This replica must hold the
        session's lease (taken by `create` or `acquire_lease`); it is renewed while the task runs.
        Each result is also written to the sessions sharing this fan-out (`shared`), if any."""
        loop = asyncio.get_running_loop()
        task = loop.create_task(self._run(session, caller, list(indices), shared))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        if on_done is not None:
            task.add_done_callback(lambda _: on_done())
        self._leased[session.guid] = task
        if self._keeper is None:
            self._keeper = loop.create_task(self._keep_leases())

    async def _finish(self, session: Session, index: int, entry: bytes, shared: SharedFanout | None) -> bool:
        """Writes LPU `index`'s terminal entry; returns whether this write won."""
        won = await self._store.finish_lpu(session.guid, index, entry)
        if won and shared is not None:
            if entry_state(entry) == FAILED:
                shared.failed = True
            for guid in list(shared.subscribers):
                await self._store.finish_lpu(guid, index, entry)
        return won

    async def _run(self, session: Session, caller: Caller, indices: list[int], shared: SharedFanout | None) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (session.deadline - time.time())
        pending = set(indices)
        self._metrics.sessions_in_flight.inc()
        try:
            try:
                async with asyncio.timeout_at(deadline):
                    async with asyncio.TaskGroup() as group:
                        for index in indices:
                            group.create_task(self._lpu(session, index, caller, pending, shared))
            except TimeoutError:
                self._metrics.sessions_deadline.inc()
                waited = time.time() - session.created_at
                for index in sorted(pending):
                    if await self._finish(session, index, failed_entry(session.lpus[index]), shared):
                        self._record_failure(session, index, _LpuFailed("session", "deadline", "", waited))
        except* StoreUnavailable:
            # The unwritten LPUs read as Failed at the deadline; the lease lapses, so a poll with
            # the token may re-run them once the store is back (take_over).
            log.warning("fanout_store_unavailable", session=session.guid, unfinished=len(pending))
        finally:
            self._metrics.sessions_in_flight.dec()
            if self._leased.get(session.guid) is asyncio.current_task():
                del self._leased[session.guid]
            if shared is not None:
                for guid in shared.subscribers:
                    self._shared_leases.pop(guid, None)
                shared.finished()
        self._metrics.session_complete.observe(time.time() - session.created_at)

    async def _keep_leases(self) -> None:
        """Renews the leases of the fan-outs running here, several times per lease_ttl; stops a
        fan-out whose lease another replica holds now, or whose session is gone."""
        while True:
            await asyncio.sleep(self._lease_ttl / 3)
            if not self._leased and not self._shared_leases:
                # Idle: no task stays behind at rest; the next start() starts a keeper again.
                self._keeper = None
                return
            running = dict(self._leased)
            try:
                lost = await self._store.renew_leases(running.keys() | self._shared_leases.keys())
            except StoreUnavailable:
                continue  # logged by the store; a lease that lapses meanwhile is retaken or lost
            except Exception:  # a bug here must not end renewals for every fan-out of the replica
                log.exception("lease_renewal_failed")
                continue
            for guid in lost:
                log.warning("lease_lost", session=guid)
                if guid in running:
                    running[guid].cancel()
                self._shared_leases.pop(guid, None)

    async def take_over(self, session: Session, caller: Caller | None) -> None:
        """Finishes an orphaned session (no replica holds its lease: its replica died or lost the
        store mid-run). Before the deadline, a poll with the session's token (`caller`) re-runs
        the unfinished LPUs here; after it, any poll writes them Failed. A poll without the token
        before the deadline changes nothing: the LPUs read as Failed from the deadline anyway.
        Of replicas polling at once, only the one that takes the lease acts."""
        unfinished = session.unfinished()
        if (
            not session.orphaned
            or not unfinished
            or session.guid in self._leased
            or session.guid in self._shared_leases
        ):
            return  # running, finished, or running here (the keeper takes its lapsed lease back)
        late = time.time() >= session.deadline
        if caller is None and not late:
            return
        try:
            if not await self._store.acquire_lease(session.guid):
                return
            result = "failed" if late else "rerun"
            log.info("session_takeover", session=session.guid, result=result, lpus=len(unfinished))
            self._metrics.takeovers.labels(result).inc()
            if caller is not None and result == "rerun":
                self.start(session, caller, unfinished)
                return
            for index in unfinished:
                if await self._store.finish_lpu(session.guid, index, failed_entry(session.lpus[index])):
                    waited = time.time() - session.created_at
                    self._record_failure(session, index, _LpuFailed("session", "deadline", "orphaned", waited))
        except StoreUnavailable:
            log.warning("takeover_store_unavailable", session=session.guid)

    async def _lpu(
        self, session: Session, index: int, caller: Caller, pending: set[int], shared: SharedFanout | None
    ) -> None:
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
            if await self._finish(session, index, failed_entry(session.lpus[index]), shared):
                self._record_failure(session, index, first)
            return
        visits, lpu_calls, disps = (task.result() for task in calls)
        pending.discard(index)
        entry = entry_bytes(COMPLETE, session.lpus[index], visits, lpu_calls, disps)
        if await self._finish(session, index, entry, shared):
            self._lpu_complete.inc()

    async def _fetch(self, method: str, mapper: Any, lpu_guid: str, caller: Caller) -> bytes:
        started = time.perf_counter()
        try:
            return dumps(mapper(await self._upstream.for_lpu(method, lpu_guid, caller)))
        except CallFailure as failure:
            detail = f"status {failure.status}" if failure.status else failure.detail
            raise _LpuFailed(method, failure.reason, detail, time.perf_counter() - started) from None
        except MappingError as exc:
            detail = f"{exc.path}: {exc.problem}"
            raise _LpuFailed(method, "invalid_body", detail, time.perf_counter() - started) from None
        except Exception as exc:  # a bug must fail one LPU, not every LPU of the session
            log.exception("lpu_internal_error", method=method, lpu=lpu_guid)
            raise _LpuFailed(method, "internal", type(exc).__name__, time.perf_counter() - started) from None

    def _record_failure(self, session: Session, index: int, failure: _LpuFailed) -> None:
        self._metrics.lpu_outcomes.labels("failed", failure.reason).inc()
        # Once per LPU, with no token and nothing from the record bodies: only where and why.
        log.warning(
            "lpu_failed",
            session=session.guid,
            lpu=session.lpu_guids[index],
            method=failure.method,
            reason=failure.reason,
            detail=failure.detail,
            duration_s=round(failure.duration, 3),
            elapsed_s=round(time.time() - session.created_at, 3),
        )

    async def close(self) -> None:
        """Cancels every running fan-out and waits for them to end, then gives up their leases
        so that another replica can take the sessions over at the next poll, not a lease later."""
        if self._keeper is not None:
            self._keeper.cancel()
            await asyncio.gather(self._keeper, return_exceptions=True)
        leased = list(self._leased) + list(self._shared_leases)
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
            log.info("fanout_cancelled", sessions=len(tasks))
        for guid in leased:
            try:
                await self._store.release_lease(guid)
            except StoreUnavailable:
                break  # the leases lapse by themselves
