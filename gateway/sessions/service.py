"""The rules of the session flow, between the HTTP edge (gateway/http/tickets.py) and the run
(gateway/sessions/fanout.py):

- create: admit the session (limits), share a recent fan-out of the same token (reuse window),
  or fetch the patient's LPU list, store the new session and start its fan-out;
- poll: load the session, check its token binding and poll rate, finish it here if its replica
  is gone (takeover), and render the body.

Store faults come out as StoreUnavailable and StoreFull, upstream faults as GatewayError in the
contract's words; the HTTP edge renders both.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import structlog

from gateway.config import SessionConfig
from gateway.contract import FAILED, GatewayError
from gateway.observability.metrics import Metrics
from gateway.sessions.fanout import Fanout, Run, dumps_kept
from gateway.sessions.limits import SessionLimits
from gateway.sessions.reuse import ReuseIndex
from gateway.sessions.tokens import same_hash, token_hash
from gateway.store.base import SessionStore, StoreUnavailable, TokenLimited
from gateway.store.session import Session
from gateway.upstream.answers import CallFailure
from gateway.upstream.client import Caller, Upstream
from gateway.upstream.mapping import MappingError, map_mkab_list

log = structlog.get_logger("gateway.sessions")


# Sessions whose first final answer this replica served, remembered (oldest out first) so that
# the many polls of one final session are accounted once (gateway/http/old_path.py).
MAX_SERVED_FINAL = 10_000


@dataclass(frozen=True)
class Poll:
    """A poll's answer: the TicketLists body, and whether no LPU is InProgress in it. What the
    old-path accounting reads comes with it, so nothing parses the body again: `first_final`
    when this is the first final answer this replica serves for the session, and for that answer
    its number of LPUs and of Failed ones (0 for every other answer: only the first is counted)."""

    body: bytes
    final: bool
    first_final: bool = False
    lpus: int = 0
    failed: int = 0
    # For the first final answer: the session's polls on this replica (this one included), and
    # the seconds from its creation to this answer (its access line says both).
    polls: int = 0
    to_final_s: float = 0.0


class SessionService:
    def __init__(
        self,
        config: SessionConfig,
        store: SessionStore,
        upstream: Upstream,
        fanout: Fanout,
        limits: SessionLimits,
        metrics: Metrics,
    ) -> None:
        self._config = config
        self.store = store
        self.upstream = upstream
        self.fanout = fanout
        self.limits = limits
        self._metrics = metrics
        self._reuse = ReuseIndex(config.reuse_window, config.max_sessions) if config.reuse_window > 0 else None
        # Token hash → the create of that token now fetching its LPU list (with the window on):
        # at most one per token, gone when its fetch ends; it learns the run to share.
        self._opening: dict[str, asyncio.Future[Run | None]] = {}
        self._served_final: OrderedDict[str, None] = OrderedDict()
        # Polls served of each session not yet final here, oldest session first (bounded too).
        self._polls: dict[str, int] = {}

    async def create(self, token: str, caller: Caller, *, admit: bool = True) -> str:
        """Creates a session for `token` and starts its fan-out; returns the session GUID.

        `admit=False` skips the per-token and per-replica admission: for the shadow compare's
        own sessions, which no client waits on and which have their own cap."""
        if not admit:
            return await self._open(token, caller, None, count_token=False)
        # Admitted before the MKAB call: a refused creation costs the upstream nothing.
        key = token_hash(token)
        admission = self.limits.admit(key)
        try:
            await self._token_quota(self.store.admit(key))
            return await self._open(token, caller, admission.release)
        except BaseException:
            admission.release()
            raise

    async def _token_quota(self, step: Awaitable[None]) -> None:
        """Runs a store step that applies the token's quota; its refusal is a 429 that says when a
        create of this token would be admitted."""
        try:
            await step
        except TokenLimited as limited:
            self._metrics.rejected.labels(limited.limit).inc()
            raise GatewayError("too_many_requests", retry_after=limited.retry_after) from None

    async def _open(
        self, token: str, caller: Caller, on_done: Callable[[], None] | None, *, count_token: bool = True
    ) -> str:
        if not await self.store.ready():
            # Before the upstream call: with the store down the session could not be kept anyway.
            raise StoreUnavailable
        key = token_hash(token)
        opening: asyncio.Future[Run | None] | None = None
        if self._reuse is not None:
            run = self._reuse.find(key, time.monotonic())
            if run is None and key in self._opening:
                # Another create of this token is fetching the LPU list right now (an app opens
                # its screen twice within one MKAB call): share that run rather than start a
                # second one. Its failure leaves this create to fetch on its own.
                run = await asyncio.shield(self._opening[key])
            if run is not None and (guid := await self._share(key, run, count_token)) is not None:
                if on_done is not None:
                    on_done()  # no fan-out of its own
                return guid
            if key not in self._opening:
                opening = self._opening[key] = asyncio.get_running_loop().create_future()
        try:
            guid = await self._fetch_and_start(key, caller, on_done, count_token, opening)
        finally:
            if opening is not None:
                del self._opening[key]
                if not opening.done():
                    opening.set_result(None)
        return guid

    async def _fetch_and_start(
        self,
        key: str,
        caller: Caller,
        on_done: Callable[[], None] | None,
        count_token: bool,
        opening: asyncio.Future[Run | None] | None,
    ) -> str:
        """The MKAB list, the new session stored, its run started; `opening` learns the run
        the creates waiting on this one may share."""
        lpus = await self._patient_lpus(caller)
        if len(lpus) > self._config.max_lpus:
            # A list no patient has: refused whole rather than cut, so that no patient is shown
            # a part of their tickets as if it were all (docs/upstream-isolation.md, "Upstream pool").
            self._metrics.rejected.labels("max_lpus").inc()
            log.warning("mkab_failed", method="mkab", reason="too_large", detail="lpus", lpus=len(lpus))
            raise GatewayError("upstream_failed")
        now = time.time()
        session = Session(
            guid=str(uuid.uuid4()),
            token_hash=key,
            created_at=now,
            deadline=now + self._config.deadline,
            lpus=tuple(dumps_kept(lpu) for lpu in lpus),
            lpu_guids=tuple(lpu["guid"] for lpu in lpus),
        )
        await self._store_new(session, count_token)
        run = self.fanout.start(session, caller, range(len(lpus)), on_done)
        if self._reuse is not None:
            self._reuse.add(key, run, time.monotonic())
        if opening is not None:
            opening.set_result(run)
        return session.guid

    async def _store_new(self, session: Session, count_token: bool) -> None:
        await self._token_quota(self.store.create(session, count_token=count_token))
        self._metrics.sessions_created.inc()

    async def _share(self, key: str, run: Run, count_token: bool) -> str | None:
        """A new session with the results of `run` (see gateway/sessions/reuse.py), or None
        when that run cannot be shared (its session gone from the store, or an LPU Failed)."""
        live = run.running
        source = await self.store.load(run.guid)
        now = time.time()
        if source is None or FAILED in source.states(now):
            if self._reuse is not None:
                self._reuse.forget(key, run)
            return None
        session = Session(
            guid=str(uuid.uuid4()),
            token_hash=source.token_hash,
            created_at=now,
            deadline=source.deadline,
            lpus=source.lpus,
            lpu_guids=source.lpu_guids,
        )
        await self._store_new(session, count_token)
        try:
            # From here on the run writes every result to this session too (and renews its
            # lease); what it wrote since the first load, while this one was being created, is
            # in a second load (no await separates the two). A run that ended meanwhile wrote
            # its last results to the source only: they are in that load too.
            if run.add_target(session.guid) or live:
                source = await self.store.load(run.guid) or source
            # Results go through finish_lpu, as any store stores them (a duplicate is a no-op).
            for index, entry in source.results.items():
                await self.store.finish_lpu(session.guid, index, entry)
        except StoreUnavailable:
            # The session exists; what it lacks reads as Failed at the deadline, as for any
            # fan-out that lost the store (a poll with the token may re-run it: take_over).
            log.warning("reuse_store_unavailable", session=session.guid)
        self._metrics.sessions_reused.inc()
        log.info("session_reused", session=session.guid, shared=run.guid)
        return session.guid

    async def _patient_lpus(self, caller: Caller) -> list[dict[str, Any]]:
        started = time.perf_counter()
        try:
            raw = await self.upstream.mkab(caller)
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

    async def poll(self, guid: str, token: str | None, caller: Callable[[], Caller] | None) -> Poll | None:
        """The session's current answer, or None when this gateway holds no such session.

        `token` is the poll's bearer token; `caller` builds the poll's credentials for upstream
        calls (a takeover), None for a poll without an Authorization header (served by the GUID
        alone, as the legacy service did). A token that is not the session's gets the same 404
        as an unknown GUID: never reveal that a session exists."""
        key = token_hash(token) if token is not None else None
        # A poll with credentials counts against the session's poll limit only with its own token.
        read = await self.store.read_poll(guid.lower(), None if caller is None else key or "")
        session = read.session
        if session is None:
            return None
        if caller is not None and (key is None or not same_hash(session.token_hash, key)):
            raise GatewayError("session_not_found")
        if read.retry_after is not None:
            self._metrics.child(self._metrics.rejected, "poll_rate").inc()
            raise GatewayError("too_many_requests", retry_after=read.retry_after)
        if not read.counted:
            self.limits.check_poll(session.guid)
        if session.orphaned and len(session.results) < len(session.lpus):
            # The replica that ran this session is gone: finish it here (docs/replicas.md).
            await self.take_over(session, caller() if caller is not None else None)
        # The store's clock at the read, which is the one it refuses late Completes by (a
        # finished copy's is older, and harmless: nothing in it depends on the clock).
        now = session.read_at
        final = session.is_final(now)
        self._metrics.counts.add(self._metrics.child(self._metrics.polls, "true" if final else "false"))
        guid = session.guid
        if not final:
            polls = self._polls
            if guid not in polls and len(polls) >= MAX_SERVED_FINAL:
                del polls[next(iter(polls))]
            polls[guid] = polls.get(guid, 0) + 1
            return Poll(session.body(now), False)
        if guid in self._served_final:
            return Poll(session.body(now), True)
        self._served_final[guid] = None
        if len(self._served_final) > MAX_SERVED_FINAL:
            self._served_final.popitem(last=False)
        polls = self._polls.pop(guid, 0) + 1
        body = session.body(now)
        return Poll(body, True, True, len(session.lpus), session.failed(now), polls, now - session.created_at)

    async def take_over(self, session: Session, caller: Caller | None) -> None:
        """Finishes an orphaned session (no replica holds its lease: its replica died or lost the
        store mid-run). Before the deadline, a poll with the session's token (`caller`) re-runs
        the unfinished LPUs here; after it, any poll writes them Failed. A poll without the token
        before the deadline changes nothing: the LPUs read as Failed from the deadline anyway.
        Of replicas polling at once, only the one that takes the lease acts."""
        unfinished = session.unfinished()
        if not session.orphaned or not unfinished or self.fanout.runs_here(session.guid):
            return  # running, finished, or running here (the keeper takes its lapsed lease back)
        late = time.time() >= session.deadline
        if caller is None and not late:
            return
        try:
            if not await self.store.acquire_lease(session.guid):
                return
            result = "failed" if late else "rerun"
            log.info("session_takeover", session=session.guid, result=result, lpus=len(unfinished))
            self._metrics.takeovers.labels(result).inc()
            if caller is not None and result == "rerun":
                self.fanout.start(session, caller, unfinished)
            else:
                await self.fanout.fail_unfinished(session, unfinished, "orphaned")
        except StoreUnavailable:
            log.warning("takeover_store_unavailable", session=session.guid)
