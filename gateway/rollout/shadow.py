"""Shadow mode: the client is served by the legacy service; in the background the gateway runs
its own session for the same token and, once both are final, compares them (gateway.rollout.compare).

Each compare is a task the app owns (cancelled on shutdown), started only after the client's
answer is in hand and never awaited by a request. At most `rollout.shadow_max_concurrent` run
at once: a shadow session beyond that is served exactly the same but not compared. The whole
compare, both sides included, is bounded by `rollout.shadow_timeout`.

The legacy side's final answer is taken from the client's own polls when they pass through
this replica; when none has come within `shadow_poll_interval`, the compare polls the legacy
service itself (with the client's headers), once per interval.

Each compare measures when each side was final (seconds from the create), for the `timing`
class; a legacy answer the compare had to fetch itself is timed when it fetched it, which can only
make the legacy side look slower, never the gateway. The differing (class, field) pairs go to the
window's per-field counters (gateway.rollout.noise), which judge each field regression or noise.

Noise calibration: for a `shadow_noise_sample` share of compared sessions, within
`shadow_noise_per_minute`, the compare opens a second legacy session for the same patient (the
client's headers again) and compares the two legacy answers: what differs there is noise.

Nothing a compare reports carries a value, a token, a session GUID or a pass-through key's text
(gateway.rollout.compare names those by a keyed hash; the key is this process's own).
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import structlog

from gateway.cohorts import UNKNOWN_COHORT, Cohort
from gateway.config import RolloutConfig
from gateway.contract import CREATE_PATH, IN_PROGRESS, POLL_PREFIX, GatewayError
from gateway.observability.metrics import Metrics
from gateway.rollout.compare import (
    LPUS_FIELD,
    REASONS,
    TIMING_FIELD,
    Comparison,
    Timing,
    compare_sessions,
    metric_field,
)
from gateway.rollout.guardrails.engine import Guardrails
from gateway.rollout.legacy import Legacy, LegacyAnswer, LegacyFailure
from gateway.rollout.noise import VERDICTS, Budget, FieldStats, Margin
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
CALIBRATION_RESULTS = ("compared", "over_budget", "incomplete")
MAX_FIELD_LABELS = 200


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
    answered_at: float = 0.0  # monotonic time the final answer passed by


class Shadow:
    def __init__(
        self,
        config: RolloutConfig,
        open_session: OpenSession,
        store: SessionStore,
        legacy: Legacy,
        metrics: Metrics,
        tasks: Tasks,
        guardrails: Guardrails | None = None,
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
        self._guardrails = guardrails
        # Names pass-through keys in this process's reports; never leaves it.
        self._secret = os.urandom(16)
        margin = Margin(config.shadow_noise_relative, config.shadow_noise_absolute)
        self.stats = FieldStats(config.shadow_window, margin)
        self._budget = Budget(config.shadow_noise_per_minute)
        self._random = random.Random()
        self._field_labels: set[str] = set()
        metrics.shadow_results.labels("match", "equal")
        for verdict in ("match", *VERDICTS):
            metrics.shadow_verdicts.labels(verdict)
        for result in CALIBRATION_RESULTS:
            metrics.shadow_calibrations.labels(result)
        # The session-wide fields of each class exist at 0 (content fields appear as they differ).
        for cls, name in (*((c, LPUS_FIELD) for c in ("missing_lpu", "extra_lpu", "order")), ("state", "state")):
            metrics.shadow_differences.labels(cls, name)
        metrics.shadow_differences.labels("timing", TIMING_FIELD)
        metrics.shadow_noise.labels("state")  # a hospital Failed on one legacy read only
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

    def report(self) -> dict[str, Any]:
        """Regression against noise per field over the window, for the admin view."""
        return self.stats.report()

    def begin(
        self,
        created: LegacyAnswer,
        token: str,
        caller: Caller,
        legacy_headers: dict[str, str],
        cohort: Cohort = UNKNOWN_COHORT,
    ) -> bool:
        """Starts comparing the session the legacy service just created for this token (its
        answer to the create is `created`); False when there is nothing to compare or no room.
        `cohort` is the client cohort the guardrails count the result under."""
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
        self._tasks.spawn(self._run(guid, token, caller, legacy_headers, watch, cohort), GROUP)
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
            watch.answer, watch.answered_at = entries, time.monotonic()
            watch.arrived.set()

    async def _run(
        self, guid: str, token: str, caller: Caller, headers: dict[str, str], watch: _Watch, cohort: Cohort
    ) -> None:
        waiting_for = "candidate"
        started = time.monotonic()
        try:
            async with asyncio.timeout(self._config.shadow_timeout):
                candidate, candidate_at = await self._candidate(token, caller, cohort)
                del token
                waiting_for = "legacy"
                legacy, legacy_at = await self._legacy_final(guid, headers, watch)
        except TimeoutError:
            self._count("incomplete", f"{waiting_for}_timeout")
            return
        except _Incomplete as incomplete:
            self._count("incomplete", incomplete.reason)
            return
        finally:
            self._watching.pop(guid, None)
        timing = Timing(legacy=legacy_at - started, gateway=candidate_at - started)
        result = self._compare(legacy, candidate, timing)
        self.stats.add_compare(result.fields)
        regressions = self.stats.regressions(result.fields)
        verdict = "match" if result.match else ("regression" if regressions else "noise")
        self._metrics.shadow_verdicts.labels(verdict).inc()
        for cls, name in result.fields:
            self._metrics.shadow_differences.labels(cls, self._field_label(name)).inc()
        if self._guardrails is not None:
            self._guardrails.record_compare(cohort, regression=bool(regressions))
        if result.match:
            self._count("match", "equal")
        else:
            self._count("mismatch", result.reason)
            self._sample(result, verdict, regressions, len(legacy), timing, started, cohort)
        if self._should_calibrate():
            await self._calibrate(headers, legacy, legacy_at - started)

    def _compare(self, legacy: list[Any], other: list[Any], timing: Timing) -> Comparison:
        config = self._config
        return compare_sessions(
            legacy,
            other,
            config.shadow_ignore_fields,
            timing=timing,
            timing_margin=config.shadow_timing_margin,
            timing_ratio=config.shadow_timing_ratio,
            secret=self._secret,
        )

    def _sample(
        self,
        result: Comparison,
        verdict: str,
        regressions: list[str],
        lpus: int,
        timing: Timing,
        started: float,
        cohort: str,
    ) -> None:
        # Field paths only: no values, no token, no session GUID (a GUID alone can read a session),
        # no pass-through key's text.
        log.warning(
            "shadow_mismatch",
            reason=result.reason,
            cls=result.cls,
            verdict=verdict,
            regressions=regressions,
            paths=list(result.paths),
            paths_total=result.total,
        )
        self._samples.append(
            {
                "at": time.time(),
                # The console's per-cohort classes; a cohort is a closed-set name, not client text.
                "cohort": str(cohort),
                "reason": result.reason,
                "class": result.cls,
                "verdict": verdict,
                "regressions": regressions,
                "classes": {c: n for c, n in result.classes().items() if n},
                "paths": list(result.paths),
                "paths_total": result.total,
                "lpus": lpus,
                "seconds": round(time.monotonic() - started, 3),
                # Each side's time to final, from the create: what the `timing` class compares.
                "final_seconds": {"legacy": round(timing.legacy, 3), "gateway": round(timing.gateway, 3)},
            }
        )

    def _field_label(self, name: str) -> str:
        """A field as a metric label, from a bounded set: a legacy answer full of odd keys adds
        at most MAX_FIELD_LABELS series."""
        label = metric_field(name)
        if label not in self._field_labels:
            if len(self._field_labels) >= MAX_FIELD_LABELS:
                return "other"
            self._field_labels.add(label)
        return label

    def _should_calibrate(self) -> bool:
        sample = self._config.shadow_noise_sample
        if sample <= 0 or self._random.random() >= sample:
            return False
        if not self._budget.take():
            self._metrics.shadow_calibrations.labels("over_budget").inc()
            return False
        return True

    async def _calibrate(self, headers: dict[str, str], legacy: list[Any], legacy_seconds: float) -> None:
        """A second legacy session for the same patient, compared with the first: what differs
        between two reads of the legacy service is noise. Bounded by shadow_timeout like the
        compare; a failure only means no calibration this time."""
        started = time.monotonic()
        try:
            async with asyncio.timeout(self._config.shadow_timeout):
                created = await self._legacy.call("GET", CREATE_PATH, headers, route="shadow_calibrate")
                if created.status != 200:
                    raise _Incomplete("legacy_error")
                try:
                    guid = json.loads(created.body)["session"].lower()
                except (ValueError, TypeError, KeyError, AttributeError):
                    raise _Incomplete("legacy_invalid") from None
                second, second_at = await self._legacy_final(guid, headers, _Watch(), wait=False)
        except (TimeoutError, _Incomplete, LegacyFailure):
            self._metrics.shadow_calibrations.labels("incomplete").inc()
            return
        result = self._compare(legacy, second, Timing(legacy=legacy_seconds, gateway=second_at - started))
        self.stats.add_calibration(result.fields)
        self._metrics.shadow_calibrations.labels("compared").inc()
        for name in {f for _, f in result.fields}:
            self._metrics.shadow_noise.labels(self._field_label(name)).inc()

    async def _candidate(self, token: str, caller: Caller, cohort: Cohort) -> tuple[list[Any], float]:
        """The gateway's own final answer for the same token, from a session no client sees,
        and the monotonic time it was seen final. Its create counts for the guardrails as the
        gateway's answer would have: a failure is the 5xx a client would have had."""
        try:
            guid = await self._open_session(token, caller)
        except (GatewayError, StoreFull, StoreUnavailable) as exc:
            status = exc.kind.status if isinstance(exc, GatewayError) else 503
            if self._guardrails is not None:
                self._guardrails.record_answer(cohort, "create", status)
            raise _Incomplete("candidate_failed") from None
        if self._guardrails is not None:
            self._guardrails.record_answer(cohort, "create", 200)
        while True:
            try:
                session = await self._store.load(guid)
            except StoreUnavailable:
                raise _Incomplete("store_unavailable") from None
            if session is None:
                raise _Incomplete("candidate_failed")
            now = session.read_at  # the store's clock: see Session.read_at
            if session.is_final(now):
                if self._guardrails is not None:
                    self._guardrails.record_final(cohort, len(session.lpus), session.failed(now))
                return json.loads(session.body(now)), time.monotonic()
            await asyncio.sleep(self._config.shadow_poll_interval)

    async def _legacy_final(
        self, guid: str, headers: dict[str, str], watch: _Watch, wait: bool = True
    ) -> tuple[list[Any], float]:
        """The legacy session's final answer and the monotonic time it was seen final: from the
        client's polls if one passes by within an interval (`wait`), else from the compare's own."""
        while True:
            if wait:
                try:
                    async with asyncio.timeout(self._config.shadow_poll_interval):
                        await watch.arrived.wait()
                except TimeoutError:
                    pass
                if watch.answer is not None:
                    return watch.answer, watch.answered_at
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
                return entries, time.monotonic()
            if not wait:
                await asyncio.sleep(self._config.shadow_poll_interval)

    def _count(self, result: str, reason: str) -> None:
        self._metrics.shadow_results.labels(result, reason).inc()
        if result != "mismatch":
            log.info("shadow_result", result=result, reason=reason)

    async def close(self) -> None:
        """Cancels every running compare and waits for them to end."""
        await self._tasks.cancel(GROUP)
