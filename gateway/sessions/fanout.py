"""The run of a session: every LPU's visits, calls and disps fetched concurrently, each LPU's
terminal entry written to the store as soon as it is known, everything unfinished written
Failed at the deadline.

Each run is a `Run`: a task of the app's task owner (gateway/tasks.py, group "fanout") holding
its session's lease while it runs (gateway/sessions/leases.py). The sessions that share a run
(the reuse window, gateway/sessions/reuse.py) are its targets (`Run.add_target`): it writes every
result to them too and keeps their leases with its own. The service asks this module, never the
leases: `start` a run, `runs_here` for a session, `fail_unfinished` for an orphan past its deadline.
"""

from __future__ import annotations

import asyncio
import contextvars
import random
import time
from collections.abc import Callable
from typing import Any

import orjson
import structlog

from gateway.config import SessionConfig
from gateway.contract import COMPLETE, LPU_METHODS
from gateway.observability.metrics import Metrics
from gateway.sessions.leases import Leases
from gateway.store.base import SessionStore, StoreUnavailable
from gateway.store.session import Session, entry_bytes, failed_entry
from gateway.tasks import Tasks
from gateway.upstream.answers import AnswerCaps, CallFailure, map_answer, parse_answer
from gateway.upstream.client import Caller, Upstream
from gateway.upstream.mapping import MappingError, map_calls, map_disps, map_visits
from gateway.upstream.slots import Gate

log = structlog.get_logger("gateway.fanout")

GROUP = "fanout"
# Seconds between retries of a result write the store refused as unavailable: the first wait,
# and the most it doubles to.
WRITE_RETRY_FIRST = 0.05
WRITE_RETRY_MAX = 1.0
# The mapper of each per-LPU method, in the contract's order (visits, calls, disps).
MAPPERS = (map_visits, map_calls, map_disps)


def dumps_kept(value: Any) -> bytes:
    """Compact UTF-8 JSON for bytes a session keeps for its lifetime: an exact-size copy, since
    orjson's own result holds a buffer of at least 4 KiB whatever its length."""
    return bytes(memoryview(orjson.dumps(value)))


class LpuFailed(Exception):
    def __init__(self, method: str, reason: str, detail: str, duration: float) -> None:
        super().__init__(reason)
        self.method = method
        self.reason = reason
        self.detail = detail
        self.duration = duration  # of the failed call, retries included


class _Lpu:
    """One LPU of a run while its three calls are in flight: what they share, made once per LPU,
    so that a call's own bookkeeping allocates nothing. The last call to answer builds and
    writes the entry; the first to fail fails the LPU and cancels the other two."""

    __slots__ = ("answers", "calls", "done", "index", "left", "started")

    def __init__(self, index: int) -> None:
        self.index = index
        self.started = time.perf_counter()
        self.answers: list[bytes] = [b""] * len(LPU_METHODS)  # in LPU_METHODS' order
        self.calls: list[asyncio.Task[None]] = []
        self.left = len(LPU_METHODS)
        self.done = False  # its terminal entry is being written: nothing more of it counts


class Run:
    """One run of a session's LPUs, and the sessions it writes: its own, then its targets.

    Also what its LPUs share: the per-session bound on upstream calls in flight, and the mapped
    bytes its entries hold so far (`session.max_session_bytes`)."""

    def __init__(
        self, session: Session, caller: Caller, indices: list[int], leases: Leases, calls_in_flight: int
    ) -> None:
        self.session = session
        self.caller = caller
        self.indices = indices
        self.pending = set(indices)
        # The other sessions that receive each result of this run as it is written.
        self.targets: list[str] = []
        self.failed = False  # an LPU of this run was written Failed
        self.task: asyncio.Task[None] | None = None  # None once the run has ended (or had nothing to run)
        self.calls = Gate(calls_in_flight)
        self.entry_bytes = sum(len(entry) for entry in session.results.values())
        # The run's call tasks not yet ended, and `idle` set when the last one does; `error`
        # the first exception a call task could not handle (it ends the run).
        self.in_flight = 0
        self.idle = asyncio.Event()
        self.lpus: list[_Lpu] = []
        self.error: BaseException | None = None
        self._leases = leases

    def call_ended(self, _: asyncio.Task[None]) -> None:
        """A call task's done callback: a task cancelled before its first step never runs its
        body, so only this sees every one end."""
        self.in_flight -= 1
        if not self.in_flight:
            self.idle.set()

    @property
    def guid(self) -> str:
        return self.session.guid

    @property
    def running(self) -> bool:
        return self.task is not None

    def add_target(self, guid: str) -> bool:
        """From now on every result of this run is also written to session `guid`, whose lease
        is renewed with the run's; False when the run has ended (nothing more will be written)."""
        if self.task is None:
            return False
        self.targets.append(guid)
        self._leases.share(guid, self.task)
        return True

    def ended(self) -> None:
        """Called by the run's task as it ends: its leases are no longer renewed here."""
        self._leases.drop(self.session.guid, self.task, self.targets)
        self.task = None
        self.targets = []
        self.lpus = []  # their answers and tasks: the reuse window may keep the run a while


class Fanout:
    def __init__(
        self,
        config: SessionConfig,
        store: SessionStore,
        upstream: Upstream,
        metrics: Metrics,
        tasks: Tasks,
        leases: Leases,
        caps: AnswerCaps,
        calls_per_session: int,
    ) -> None:
        self._config = config
        self._store = store
        self._upstream = upstream
        self._metrics = metrics
        self._tasks = tasks
        self._leases = leases
        self._caps = caps
        self._calls_per_session = calls_per_session
        self._lpu_complete = metrics.lpu_outcomes.labels("complete", "ok")

    @property
    def running(self) -> int:
        return self._tasks.count(GROUP)

    def start(
        self,
        session: Session,
        caller: Caller,
        indices: range | list[int],
        on_done: Callable[[], None] | None = None,
    ) -> Run:
        """Runs the given LPUs of a session in a task the app owns. This replica must hold the
        session's lease (taken by `create` or `acquire_lease`); it is renewed while the task runs.
        With no LPUs to run the run has ended at once (and `on_done` is called now)."""
        run = Run(session, caller, list(indices), self._leases, self._calls_per_session)
        if not run.pending:
            if on_done is not None:
                on_done()
            return run
        run.task = task = self._tasks.spawn(self._run(run), GROUP)
        if on_done is not None:
            task.add_done_callback(lambda _: on_done())
        self._leases.hold(session.guid, task)
        return run

    def runs_here(self, guid: str) -> bool:
        """Whether a run of this replica writes session `guid` (as its own or as a target)."""
        return self._leases.holds(guid)

    async def _finish(self, run: Run, index: int, entry: bytes) -> bool:
        """Writes LPU `index`'s terminal entry to the run's session, and if that write won, to
        its targets; returns whether it won."""
        session = run.session
        won = await self._write(session, session.guid, index, entry)
        if won:
            for guid in list(run.targets):
                await self._write(session, guid, index, entry)
        return won

    async def _write(self, session: Session, guid: str, index: int, entry: bytes) -> bool:
        """finish_lpu, retried while the store is unavailable until the session's deadline (the
        run's own timeout cancels the wait then): a result the upstream gave is worth keeping
        through a short store outage. Full-jitter backoff, doubled up to WRITE_RETRY_MAX, so
        the fan-outs of a replica do not retry in step against a store coming back."""
        backoff = WRITE_RETRY_FIRST
        while True:
            try:
                return await self._store.finish_lpu(guid, index, entry)
            except StoreUnavailable:
                if time.time() >= session.deadline:
                    raise
            self._metrics.store_write_retries.inc()
            await asyncio.sleep(random.uniform(0, backoff))
            backoff = min(backoff * 2, WRITE_RETRY_MAX)

    async def _run(self, run: Run) -> None:
        """Three tasks per LPU, one per call, and no task or task group of the LPU's own: the
        calls keep their LPU's bookkeeping (`_Lpu`), and the run waits for its last call task."""
        session = run.session
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (session.deadline - time.time())
        self._metrics.sessions_in_flight.inc()
        # One bound method and one context for every call task's done callback (a callback
        # added without a context gets a copy of the current one, each time).
        ended, context = run.call_ended, contextvars.copy_context()
        for index in run.indices:
            lpu = _Lpu(index)
            run.lpus.append(lpu)
            for position in range(len(LPU_METHODS)):
                task = loop.create_task(self._call(run, lpu, position))
                task.add_done_callback(ended, context=context)
                lpu.calls.append(task)
        run.in_flight = len(run.indices) * len(LPU_METHODS)
        try:
            try:
                async with asyncio.timeout_at(deadline):
                    await run.idle.wait()
                if run.error is not None:
                    raise run.error
            except TimeoutError:
                self._metrics.sessions_deadline.inc()
                await self._end_calls(run)
                waited = time.time() - session.created_at
                for index in sorted(run.pending):
                    await self._write_failed(run, index, LpuFailed("session", "deadline", "", waited))
            finally:
                # Cancelled (the app closes) or failed: no call task outlives its run.
                await self._end_calls(run)
        except StoreUnavailable:
            # Only once the deadline has passed (writes are retried until then): the unwritten
            # LPUs read as Failed.
            log.warning("fanout_store_unavailable", session=session.guid, unfinished=len(run.pending))
        finally:
            self._metrics.sessions_in_flight.dec()
            run.ended()
        self._metrics.session_complete.observe(time.time() - session.created_at)

    @staticmethod
    async def _end_calls(run: Run) -> None:
        """Cancels the run's call tasks still running and waits until every one has ended."""
        if run.idle.is_set():
            return
        for lpu in run.lpus:
            for task in lpu.calls:
                task.cancel()
        await run.idle.wait()

    async def _call(self, run: Run, lpu: _Lpu, position: int) -> None:
        """One of an LPU's three calls, in its own task; the last to answer writes the LPU's
        Complete entry, the first to fail writes it Failed. Ends without raising (or cancelled):
        what it could not handle becomes the run's `error` and ends the run."""
        try:
            answer = await self._fetch(run, lpu, position)
            if answer is not None:
                lpu.answers[position] = answer
                lpu.left -= 1
                if not lpu.left:
                    await self._complete(run, lpu)
        except LpuFailed as failure:
            if not lpu.done:
                lpu.done = True
                for other, task in enumerate(lpu.calls):
                    if other != position:
                        task.cancel()
                await self._fail(run, lpu.index, failure)
        except Exception as exc:  # a store fault past the deadline, or a bug: the run's to raise
            if run.error is None:
                run.error = exc
                this = lpu.calls[position]
                for each in run.lpus:
                    for task in each.calls:
                        if task is not this:
                            task.cancel()

    async def _complete(self, run: Run, lpu: _Lpu) -> None:
        lpu.done = True
        session, index = run.session, lpu.index
        try:
            visits, calls, disps = lpu.answers
            entry = entry_bytes(COMPLETE, session.lpus[index], visits, calls, disps)
            self._check_size(entry, run, time.perf_counter() - lpu.started)
        except LpuFailed as failure:
            await self._fail(run, index, failure)
            return
        run.pending.discard(index)
        if await self._finish(run, index, entry):
            self._lpu_complete.inc()
        else:
            # The store refused the Complete as late (past the deadline by its clock): it may
            # already have been read as Failed, so Failed it stays.
            late = LpuFailed("session", "deadline", "late", time.time() - session.created_at)
            await self._write_failed(run, index, late)

    async def _fail(self, run: Run, index: int, failure: LpuFailed) -> None:
        run.pending.discard(index)
        await self._write_failed(run, index, failure)

    async def _write_failed(self, run: Run, index: int, failure: LpuFailed) -> None:
        """Writes LPU `index` Failed; if that write won, the run has a Failed LPU (the reuse
        window shares it no more) and the failure is counted and logged."""
        if await self._finish(run, index, failed_entry(run.session.lpus[index])):
            run.failed = True
            self._record_failure(run.session, index, failure)

    def _check_size(self, entry: bytes, run: Run, duration: float) -> None:
        """Counts a Complete entry against its session's bytes, or fails it (`too_large`)."""
        if len(entry) > self._config.max_entry_bytes:
            raise LpuFailed("session", "too_large", "entry bytes", duration)
        if run.entry_bytes + len(entry) > self._config.max_session_bytes:
            raise LpuFailed("session", "too_large", "session bytes", duration)
        run.entry_bytes += len(entry)

    async def _fetch(self, run: Run, lpu: _Lpu, position: int) -> bytes | None:
        """The mapped JSON of one call's answer, LpuFailed, or None when the LPU was already
        done (failed by a sibling) by the time it came."""
        method = LPU_METHODS[position]
        lpu_guid = run.session.lpu_guids[lpu.index]
        started = time.perf_counter()
        try:
            if not run.calls.take():
                await run.calls.wait()
            try:
                body = await self._upstream.for_lpu(method, lpu_guid, run.caller)
            finally:
                run.calls.release()
            if lpu.done:
                return None
            return await map_answer(parse_answer(body, self._caps), MAPPERS[position], self._caps)
        except CallFailure as failure:
            detail = f"status {failure.status}" if failure.status else failure.detail
            raise LpuFailed(method, failure.reason, detail, time.perf_counter() - started) from None
        except MappingError as exc:
            detail = f"{exc.path}: {exc.problem}"
            raise LpuFailed(method, exc.reason, detail, time.perf_counter() - started) from None
        except Exception as exc:  # a bug must fail one LPU, not every LPU of the session
            log.exception("lpu_internal_error", method=method, lpu=lpu_guid)
            raise LpuFailed(method, "internal", type(exc).__name__, time.perf_counter() - started) from None

    async def fail_unfinished(self, session: Session, indices: list[int], detail: str) -> None:
        """Writes the given LPUs Failed at once, past the session's deadline and with no run
        (an orphan no replica finished): each write that wins is counted and logged as a run's
        would be. One try each: a StoreUnavailable is the caller's."""
        waited = time.time() - session.created_at
        for index in indices:
            if await self._store.finish_lpu(session.guid, index, failed_entry(session.lpus[index])):
                self._record_failure(session, index, LpuFailed("session", "deadline", detail, waited))

    def _record_failure(self, session: Session, index: int, failure: LpuFailed) -> None:
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
        held = self._leases.held()
        cancelled = await self._tasks.cancel(GROUP)
        if cancelled:
            log.info("fanout_cancelled", sessions=cancelled)
        await self._leases.release(held)
